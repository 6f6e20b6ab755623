//! The resource policy: Rego (package `policy`, rule `allow`) evaluated by regorus.
//!
//! Input: `{"claims": <verifier claims and "init_data">, "tee-pubkey": <JWK>,
//! "resource": {"repo", "type", "tag", "path"}}`; data: `{"config": {"allow_simulated":
//! bool}}`. `claims.init_data` is `{"format", "digest"}` of the initdata document the
//! client sent and the KBS checked against HOST_DATA / MRCONFIGID, or `null`.

use std::sync::Mutex;

/// Allows attested sessions; simulated ones only when the config trusts them.
pub const DEFAULT_RESOURCE_POLICY: &str = r#"package policy
import rego.v1

default allow := false

allow if {
    input.claims.simulated == false
}

allow if {
    input.claims.simulated == true
    data.config.allow_simulated == true
}
"#;

/// Why the policy cannot be loaded or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum ResourcePolicyError {
    /// Rego that does not compile.
    #[error("invalid resource policy: {0}")]
    Load(String),
    /// Evaluation failed (not a denial).
    #[error("resource policy evaluation failed: {0}")]
    Eval(String),
}

/// A compiled resource policy.
pub struct ResourcePolicy {
    engine: Mutex<regorus::Engine>,
}

impl std::fmt::Debug for ResourcePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResourcePolicy(..)")
    }
}

impl ResourcePolicy {
    /// Compiles `rego` with `allow_simulated` as `data.config.allow_simulated`.
    pub fn new(rego: &str, allow_simulated: bool) -> Result<Self, ResourcePolicyError> {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy("resource-policy.rego".into(), rego.into())
            .map_err(|e| ResourcePolicyError::Load(e.to_string()))?;
        let data = regorus::Value::from_json_str(
            &serde_json::json!({"config": {"allow_simulated": allow_simulated}}).to_string(),
        )
        .map_err(|e| ResourcePolicyError::Load(e.to_string()))?;
        engine
            .add_data(data)
            .map_err(|e| ResourcePolicyError::Load(e.to_string()))?;
        let p = Self {
            engine: Mutex::new(engine),
        };
        // Compile errors surface now, not on the first request.
        p.allows(&serde_json::json!({"claims": {"simulated": true}}))?;
        Ok(p)
    }

    /// True when `data.policy.allow` is exactly `true` for `input`.
    pub fn allows(&self, input: &serde_json::Value) -> Result<bool, ResourcePolicyError> {
        let input = regorus::Value::from_json_str(&input.to_string())
            .map_err(|e| ResourcePolicyError::Eval(e.to_string()))?;
        let mut engine = self
            .engine
            .lock()
            .map_err(|_| ResourcePolicyError::Eval("policy engine poisoned".into()))?;
        engine.set_input(input);
        let v = engine
            .eval_rule("data.policy.allow".into())
            .map_err(|e| ResourcePolicyError::Eval(e.to_string()))?;
        Ok(v == regorus::Value::Bool(true))
    }
}
