//! The agent API policy as a gate [`Check`]: every request is turned into the JSON that
//! Kata's agent feeds its policy (proto field names; unset message fields `null`; enums
//! as numbers; bytes as arrays of numbers) and evaluated by `data.agent_policy.<Request>`.
//!
//! Policies written for Kata therefore see the same input here.

use std::sync::Mutex;

use protobuf::reflect::{ReflectFieldRef, ReflectValueRef, RuntimeFieldType};
use protobuf::MessageDyn;
use serde_json::{Map, Value};

use crate::gate::{Check, Denied, Endpoint, Pending};

/// Error of the policy check itself (not a denial).
#[derive(Debug, thiserror::Error)]
pub enum PolicyGateError {
    /// The policy could not be loaded.
    #[error("cannot load the agent policy")]
    Load(#[source] policy::PolicyError),
    /// The engine lock was poisoned by a panic elsewhere.
    #[error("the policy engine is unavailable")]
    Poisoned,
}

/// The Rego policy engine behind the gate.
#[derive(Debug)]
pub struct PolicyCheck {
    engine: Mutex<policy::PolicyEngine>,
}

impl PolicyCheck {
    /// Loads `rego` as the agent policy.
    pub fn new(rego: &str) -> Result<Self, PolicyGateError> {
        let engine = policy::PolicyEngine::from_rego(rego, None).map_err(PolicyGateError::Load)?;
        Ok(Self { engine: Mutex::new(engine) })
    }

    /// Replaces the policy (after SetPolicy passed the current one). A policy that does
    /// not load leaves the current one in force.
    pub fn replace(&self, rego: &str) -> Result<(), PolicyGateError> {
        let mut e = self.engine.lock().map_err(|_| PolicyGateError::Poisoned)?;
        e.set_policy(rego).map_err(PolicyGateError::Load)
    }

    fn decide(&self, endpoint: Endpoint, input: &str) -> Result<Option<policy::PendingOps>, String> {
        let mut e = self.engine.lock().map_err(|_| "the policy engine is unavailable".to_string())?;
        match e.decide_json(endpoint.request_name(), input) {
            Ok((d, pending)) if d.allowed => Ok(pending),
            Ok((d, _)) => Err(d.reason.unwrap_or_else(|| format!("{} is not allowed", endpoint.request_name()))),
            Err(err) => Err(crate::error::chain(&err)),
        }
    }

    /// The current policy state (`data.pstate`), for tests and diagnostics.
    pub fn pstate(&self) -> Option<serde_json::Value> {
        self.engine.lock().ok().map(|e| e.pstate().clone())
    }
}

#[async_trait::async_trait]
impl Check for PolicyCheck {
    async fn check(&self, endpoint: Endpoint, request: &(dyn MessageDyn + Sync)) -> Result<(), Denied> {
        if let Some(p) = self.admit(endpoint, request).await? {
            self.commit(endpoint, p);
        }
        Ok(())
    }

    /// The policy's state changes (`ops`) wait until the request was carried out.
    async fn admit(&self, endpoint: Endpoint, request: &(dyn MessageDyn + Sync)) -> Result<Option<Pending>, Denied> {
        let input = request_to_json(request).to_string();
        // Evaluation is CPU-bound and short (well under a millisecond for typical
        // policies), so it runs inline rather than hopping to the blocking pool.
        let pending = self.decide(endpoint, &input).map_err(|reason| Denied { endpoint, check: "policy", reason })?;
        Ok(pending.map(Pending::new))
    }

    fn commit(&self, endpoint: Endpoint, pending: Pending) {
        let Some(ops) = pending.into_inner::<policy::PendingOps>() else { return };
        let applied = self.engine.lock().map_err(|_| "the policy engine is unavailable".to_string()).and_then(|mut e| {
            e.commit(ops).map_err(|err| crate::error::chain(&err))
        });
        // The request was carried out but its record could not be kept: later requests
        // that depend on it are refused (fail closed), and the log says why.
        if let Err(e) = applied {
            tracing::warn!("{endpoint}: the policy state could not record this request: {e}");
        }
    }
}

/// The policy input for a request, shaped as Kata's agent serialises it.
pub fn request_to_json(m: &dyn MessageDyn) -> Value {
    let d = m.descriptor_dyn();
    let mut obj = Map::new();
    for oneof in d.oneofs() {
        if oneof.is_synthetic() {
            continue;
        }
        let mut set = Value::Null;
        for f in oneof.fields() {
            if let Some(v) = f.get_singular(m) {
                let mut inner = Map::new();
                inner.insert(f.name().to_string(), value_to_json(&v));
                set = Value::Object(inner);
            }
        }
        obj.insert(oneof.name().to_string(), set);
    }
    for f in d.fields() {
        if f.containing_oneof().is_some_and(|o| !o.is_synthetic()) {
            continue;
        }
        let v = match f.get_reflect(m) {
            ReflectFieldRef::Optional(o) => match o.value() {
                Some(v) => value_to_json(&v),
                None => match f.runtime_field_type() {
                    // An unset proto3 scalar reads as its default; an unset message
                    // field or proto3 `optional` is null.
                    RuntimeFieldType::Singular(_) if f.proto().proto3_optional() || is_message(&f) => Value::Null,
                    _ => value_to_json(&f.get_singular_field_or_default(m)),
                },
            },
            ReflectFieldRef::Repeated(r) => Value::Array(r.into_iter().map(|v| value_to_json(&v)).collect()),
            ReflectFieldRef::Map(mp) => {
                let mut out = Map::new();
                for (k, v) in &mp {
                    let key = match value_to_json(&k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    out.insert(key, value_to_json(&v));
                }
                Value::Object(out)
            }
        };
        obj.insert(f.name().to_string(), v);
    }
    Value::Object(obj)
}

fn is_message(f: &protobuf::reflect::FieldDescriptor) -> bool {
    matches!(f.runtime_field_type(), RuntimeFieldType::Singular(protobuf::reflect::RuntimeType::Message(_)))
}

fn value_to_json(v: &ReflectValueRef<'_>) -> Value {
    match v {
        ReflectValueRef::U32(x) => Value::from(*x),
        ReflectValueRef::U64(x) => Value::from(*x),
        ReflectValueRef::I32(x) => Value::from(*x),
        ReflectValueRef::I64(x) => Value::from(*x),
        ReflectValueRef::F32(x) => serde_json::Number::from_f64(f64::from(*x)).map_or(Value::Null, Value::Number),
        ReflectValueRef::F64(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        ReflectValueRef::Bool(x) => Value::Bool(*x),
        ReflectValueRef::String(s) => Value::String((*s).to_string()),
        ReflectValueRef::Bytes(b) => Value::Array(b.iter().map(|x| Value::from(*x)).collect()),
        ReflectValueRef::Enum(_, n) => Value::from(*n),
        ReflectValueRef::Message(m) => request_to_json(&**m),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use protocols::agent as pb;

    #[test]
    fn json_shape_matches_kata_serde() {
        let mut r = pb::CreateContainerRequest::new();
        r.container_id = "c1".into();
        let mut spec = protocols::oci::Spec::new();
        spec.Version = "1.1.0".into();
        spec.Annotations.insert("a".into(), "b".into());
        r.OCI = protobuf::MessageField::some(spec);
        let j = request_to_json(&r);
        assert_eq!(j["container_id"], "c1");
        assert_eq!(j["exec_id"], "");
        assert_eq!(j["string_user"], Value::Null);
        assert_eq!(j["devices"], serde_json::json!([]));
        assert_eq!(j["OCI"]["Version"], "1.1.0");
        assert_eq!(j["OCI"]["Annotations"]["a"], "b");
        assert_eq!(j["OCI"]["Process"], Value::Null);
        assert_eq!(j["sandbox_pidns"], false);
        assert_eq!(j["stdin_port"], 0);

        let mut w = pb::WriteStreamRequest::new();
        w.data = vec![104, 105];
        assert_eq!(request_to_json(&w)["data"], serde_json::json!([104, 105]));
    }

    #[tokio::test]
    async fn policy_allows_and_denies_with_reason() {
        let rego = r#"package agent_policy
default CreateContainerRequest := false
CreateContainerRequest if { input.container_id == "ok" }
default ExecProcessRequest := {"allowed": false, "reason": "exec is not allowed in this pod"}
"#;
        let check = PolicyCheck::new(rego).unwrap();
        let mut r = pb::CreateContainerRequest::new();
        r.container_id = "ok".into();
        check.check(Endpoint::CreateContainer, &r).await.unwrap();
        r.container_id = "bad".into();
        let e = check.check(Endpoint::CreateContainer, &r).await.unwrap_err();
        assert_eq!(e.check, "policy");
        let e = check.check(Endpoint::ExecProcess, &pb::ExecProcessRequest::new()).await.unwrap_err();
        assert!(e.reason.contains("exec is not allowed"), "{e}");
        // No rule at all: default deny.
        let e = check.check(Endpoint::StartContainer, &pb::StartContainerRequest::new()).await.unwrap_err();
        assert!(e.to_string().contains("StartContainer denied by policy"), "{e}");
    }

    #[tokio::test]
    async fn deny_all_denies_every_endpoint() {
        let check = PolicyCheck::new(policy::builtin::DENY_ALL).unwrap();
        for ep in Endpoint::ALL {
            // Each endpoint with an empty request of its own type would be ideal; the
            // policy decides on the request *name*, so an empty message suffices here.
            let e = check.check(*ep, &pb::StartContainerRequest::new()).await;
            assert!(e.is_err(), "{ep} allowed under deny-all");
        }
    }
}
