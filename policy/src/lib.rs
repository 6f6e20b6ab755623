//! Agent API policy for kata-cc: the Rego engine the guest agent checks every request with.
//!
//! The contract is Kata's: the policy is a Rego module in `package agent_policy`; each agent
//! RPC is checked by evaluating `data.agent_policy.<RequestMessage>` (see [`Rpc`] for the
//! RPC → message table) with the request, serialized to JSON with protobuf field names, as
//! `input`. The rule yields either a bool or `{"allowed": bool, "ops": [...]}`, where `ops` is
//! an RFC 6902 patch applied to `data.pstate`, the policy state kept across requests, when
//! the request is allowed. A request with no rule, or whose rule is undefined, is denied.
//!
//! ```
//! use policy::{PolicyEngine, Rpc};
//! use serde_json::json;
//!
//! let rego = r#"
//! package agent_policy
//!
//! default CreateSandboxRequest := false
//!
//! ## The first sandbox name is recorded; later requests must use the same one.
//! CreateSandboxRequest := {"allowed": true, "ops": ops} if {
//!     not data.pstate.sandbox_id
//!     ops := [{"op": "add", "path": "/pstate/sandbox_id", "value": input.sandbox_id}]
//! }
//! CreateSandboxRequest if { input.sandbox_id == data.pstate.sandbox_id }
//! "#;
//!
//! let mut engine = PolicyEngine::from_rego(rego, None)?;
//! let request = Rpc::CreateSandbox.request_name();
//! assert!(engine.evaluate(request, &json!({"sandbox_id": "a"}))?.allowed);
//! assert_eq!(engine.pstate(), &json!({"sandbox_id": "a"}));
//!
//! let decision = engine.evaluate(request, &json!({"sandbox_id": "b"}))?;
//! assert!(!decision.allowed);
//!
//! // No rule at all for ExecProcessRequest: default deny, and the reason says so.
//! let decision = engine.evaluate("ExecProcessRequest", &json!({}))?;
//! assert!(decision.reason.unwrap_or_default().contains("no rule for ExecProcessRequest"));
//!
//! // Why was the second sandbox denied?
//! let why = engine.explain(request, &json!({"sandbox_id": "b"}))?;
//! assert!(why.to_string().contains("input.sandbox_id == data.pstate.sandbox_id"));
//! # Ok::<(), policy::PolicyError>(())
//! ```
//!
//! Built-in policies ship in [`builtin`]: allow-all, deny-all, and the default for a TEE
//! pod whose initdata carries no policy. [`gen`] generates a pod's policy and initdata from
//! its Kubernetes YAML (the `kata-cc-policy` CLI).

pub mod builtin;
mod engine;
pub mod explain;
pub mod gen;
mod rpc;

pub use engine::{Decision, PendingOps, PolicyConfig, PolicyEngine, PolicyError, RegoError, PACKAGE};
pub use explain::{BodyOutcome, BodyTrace, Condition, ExplainError, Explanation, RuleTrace};
pub use rpc::{request_name, request_names, Rpc, UnknownRpc, RPCS};
