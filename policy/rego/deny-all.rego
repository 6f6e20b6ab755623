# kata-cc built-in policy: deny every agent request.
#
# No rule is defined, so every data.agent_policy.<Request> is undefined and the engine
# denies it (default deny). SetPolicyRequest is denied too: this policy cannot be replaced
# from the host.
package agent_policy
