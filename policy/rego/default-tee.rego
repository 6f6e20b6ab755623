# kata-cc built-in policy for a TEE pod whose initdata carries no policy.
#
# The host is not trusted in a TEE pod, and without a policy measured into initdata there is
# nothing saying which containers the owner wants. So no workload may run: this policy allows
# only what a sandbox needs to boot, report and be torn down, so that the pod fails visibly
# (its containers are refused) instead of hanging, and the VM is cleaned up.
#
# Allowed, and why:
#   GuestDetailsRequest    the shim reads the agent's details while starting the sandbox;
#                          read-only, reveals nothing about a workload.
#   CreateSandboxRequest   starting the sandbox; only without guest hooks, kernel modules,
#                          extra storages or a shared PID namespace (the same restrictions
#                          as Kata's genpolicy rules), so the host cannot run code with it.
#   UpdateInterfaceRequest, UpdateRoutesRequest, AddARPNeighborsRequest,
#   ListInterfacesRequest, ListRoutesRequest
#                          pod network setup at start; the network is host-controlled
#                          anyway, and a sandbox whose network setup fails does not start.
#   OnlineCPUMemRequest    onlining hotplugged vCPUs/memory at start (sizing only).
#   GetOOMEventRequest     the shim polls it for the sandbox's lifetime; returns only
#                          container ids of OOM events (there are no containers).
#   DestroySandboxRequest  stopping the sandbox.
#
# Denied (everything else), notably: CreateContainer and every container/process RPC
# (there is no workload to run), ExecProcess, CopyFile and SetIPTables (host-chosen code or
# files in the guest), stdio and metrics RPCs (workload data), SetGuestDateTime and
# ReseedRandomDev, and SetPolicy: accepting a policy from the untrusted host would let it
# lift every restriction. A TEE pod gets its policy from initdata, which is measured.
package agent_policy

default GuestDetailsRequest := true
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true
default AddARPNeighborsRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true
default OnlineCPUMemRequest := true
default GetOOMEventRequest := true
default DestroySandboxRequest := true

default CreateSandboxRequest := false

CreateSandboxRequest if {
	count(object.get(input, "guest_hook_path", "")) == 0
	count(object.get(input, "kernel_modules", [])) == 0
	count(object.get(input, "storages", [])) == 0
	object.get(input, "sandbox_pidns", false) == false
}
