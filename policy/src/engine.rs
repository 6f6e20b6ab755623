//! [`PolicyEngine`]: load an agent policy and decide requests with it.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize as _;

use crate::explain::{self, ExplainError, Explanation};

/// The Rego package every agent policy declares.
pub const PACKAGE: &str = "agent_policy";

/// The name the policy text is loaded under; it appears in regorus' error positions.
const POLICY_FILE: &str = "policy.rego";

/// The debugging escape hatch of Kata's `rules.rego`: when this rule is true, requests that
/// fail the policy are allowed anyway (and the decision says so).
const ALLOW_FAILURES_RULE: &str = "AllowRequestsFailingPolicy";

/// Longest text of a result or policy message quoted in an error or reason.
const MAX_QUOTE: usize = 300;

/// Size and time limits applied by a [`PolicyEngine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Largest request input, as serialized JSON, that is evaluated. Default 1 MiB.
    pub max_input_bytes: usize,
    /// Largest policy text that is loaded. Default 16 MiB (what Kata's agent accepts; a
    /// genpolicy policy is typically 50–300 KiB).
    pub max_policy_bytes: usize,
    /// Longest line of policy text. Default 64 KiB (container env values can be long).
    pub max_policy_line: u32,
    /// Most lines of policy text. Default 200 000.
    pub max_policy_lines: usize,
    /// Wall-clock budget of one evaluation; past it the evaluation fails (and the caller
    /// denies). Default 5 s: it bounds a runaway evaluation, and must not trip on an honest
    /// one in a slow guest (1 s did, for a CreateContainer in a TCG guest on a loaded
    /// 2-core host). `None` disables the check.
    pub eval_timeout: Option<Duration>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            max_input_bytes: 1024 * 1024,
            max_policy_bytes: 16 * 1024 * 1024,
            max_policy_line: 64 * 1024,
            max_policy_lines: 200_000,
            eval_timeout: Some(Duration::from_secs(5)),
        }
    }
}

/// The outcome of checking one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Why, for a denial (and for an allow that only happened because the policy sets
    /// `AllowRequestsFailingPolicy`). `None` for a plain allow.
    pub reason: Option<String>,
}

impl Decision {
    fn allow() -> Self {
        Self { allowed: true, reason: None }
    }

    fn deny(reason: String) -> Self {
        Self { allowed: false, reason: Some(reason) }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.allowed, &self.reason) {
            (true, None) => f.write_str("allowed"),
            (true, Some(r)) => write!(f, "allowed ({r})"),
            (false, Some(r)) => write!(f, "denied: {r}"),
            (false, None) => f.write_str("denied"),
        }
    }
}

/// A message from regorus (parse, analysis or evaluation error), kept as text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RegoError(pub String);

impl RegoError {
    fn from_regorus(e: &impl fmt::Display) -> Self {
        Self(format!("{e:#}"))
    }
}

/// Errors of the policy engine. Any of them on a request means the caller must deny it.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy text is over [`PolicyConfig::max_policy_bytes`].
    #[error("policy is {size} bytes, over the limit of {limit} bytes")]
    PolicyTooLarge {
        /// Size of the policy text.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The policy text does not parse (or breaks a line-length/line-count limit).
    #[error("policy does not parse{}", position(*line, *col))]
    Parse {
        /// 1-based line of the error, when regorus reports one.
        line: Option<u32>,
        /// 1-based column of the error, when regorus reports one.
        col: Option<u32>,
        /// regorus' message, with the offending source line.
        #[source]
        source: RegoError,
    },
    /// The policy declares another package than `agent_policy`.
    #[error("policy declares `package {found}`, expected `package {PACKAGE}`")]
    WrongPackage {
        /// The package the policy declared.
        found: String,
    },
    /// The policy parses but fails regorus' analysis (e.g. an unsafe variable).
    #[error("policy does not compile")]
    Compile {
        /// regorus' message.
        #[source]
        source: RegoError,
    },
    /// The data document given with the policy is unusable.
    #[error("policy data document {reason}")]
    InvalidData {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The request name is not a Rego identifier, so it cannot name a rule.
    #[error("`{0}` is not a valid request name")]
    InvalidRequestName(String),
    /// The request input is over [`PolicyConfig::max_input_bytes`]; it was not evaluated.
    #[error("{request} input is over the limit of {limit} bytes of JSON")]
    InputTooLarge {
        /// The request name.
        request: String,
        /// The configured limit.
        limit: usize,
    },
    /// The request input is not JSON.
    #[error("{request} input is not valid JSON")]
    InputJson {
        /// The request name.
        request: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// regorus failed while evaluating the rule (e.g. conflicting values, time limit).
    #[error("evaluating {request} failed")]
    Eval {
        /// The request name.
        request: String,
        /// regorus' message.
        #[source]
        source: RegoError,
    },
    /// The rule produced something other than a bool or an `{allowed, ops}` object.
    #[error("{request} produced {found}; expected a bool or {{\"allowed\": bool, \"ops\": [...]}}")]
    UnexpectedResult {
        /// The request name.
        request: String,
        /// What came back, as (truncated) JSON.
        found: String,
    },
    /// An `ops` entry is not a JSON patch operation.
    #[error("{request} returned `ops` that are not RFC 6902 operations")]
    InvalidOps {
        /// The request name.
        request: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// An `ops` entry addresses something outside `/pstate`.
    #[error("{request} returned an op on `{path}`; ops may only change `/pstate`")]
    OpOutsideState {
        /// The request name.
        request: String,
        /// The offending path.
        path: String,
    },
    /// Applying `ops` to the policy state failed; the state is unchanged.
    #[error("applying {request} ops to the policy state failed")]
    Patch {
        /// The request name.
        request: String,
        /// The patch error.
        #[source]
        source: json_patch::PatchError,
    },
    /// The patched policy state could not be loaded back into the engine.
    #[error("loading the patched policy state failed")]
    State {
        /// regorus' message.
        #[source]
        source: RegoError,
    },
    /// Building an explanation failed.
    #[error("explaining {request} failed")]
    Explain {
        /// The request name.
        request: String,
        /// The cause.
        #[source]
        source: ExplainError,
    },
}

fn position(line: Option<u32>, col: Option<u32>) -> String {
    match (line, col) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

/// A loaded agent policy: a Rego module in `package agent_policy`, an optional data document
/// and the policy state `data.pstate` that the policy's `ops` maintain across requests.
///
/// Each request is checked against the rule named after its request message
/// (`data.agent_policy.CreateContainerRequest`, see [`crate::Rpc::request_name`]), with the
/// request, serialized to JSON with protobuf field names, as `input`.
#[derive(Clone)]
pub struct PolicyEngine {
    engine: regorus::Engine,
    config: PolicyConfig,
    source: String,
    /// The caller's data document (an object without `pstate`), kept to rebuild `data` when
    /// the state changes.
    base_data: regorus::Value,
    pstate: serde_json::Value,
    allow_failures: bool,
    /// Top-level rule names of the policy (`default`s included), read once at load.
    declared: Arc<BTreeSet<String>>,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("config", &self.config)
            .field("policy_bytes", &self.source.len())
            .field("pstate", &self.pstate)
            .field("allow_failures", &self.allow_failures)
            .finish_non_exhaustive()
    }
}

/// What the rule result says, before any state change.
struct Outcome {
    allowed: bool,
    ops: Option<json_patch::Patch>,
    reason: Option<String>,
}

impl PolicyEngine {
    /// Load `source` (Rego, `package agent_policy`) with the default [`PolicyConfig`].
    ///
    /// `data`, if given, must be a JSON object; its members appear under `data.` in the
    /// policy (e.g. `{"policy_data": ...}` is `data.policy_data`). It must not contain
    /// `pstate`, which is the engine's: it starts as `{}`.
    pub fn from_rego(source: &str, data: Option<serde_json::Value>) -> Result<Self, PolicyError> {
        Self::with_config(source, data, PolicyConfig::default())
    }

    /// Like [`PolicyEngine::from_rego`], with explicit limits.
    pub fn with_config(
        source: &str,
        data: Option<serde_json::Value>,
        config: PolicyConfig,
    ) -> Result<Self, PolicyError> {
        let base_data = match data {
            None => regorus::Value::new_object(),
            Some(serde_json::Value::Object(map)) => {
                if map.contains_key("pstate") {
                    return Err(PolicyError::InvalidData { reason: "must not contain `pstate`" });
                }
                regorus::Value::deserialize(&serde_json::Value::Object(map))
                    .map_err(|_| PolicyError::InvalidData { reason: "cannot be converted" })?
            }
            Some(_) => return Err(PolicyError::InvalidData { reason: "must be a JSON object" }),
        };
        let pstate = serde_json::Value::Object(serde_json::Map::new());
        if source.len() > config.max_policy_bytes {
            return Err(PolicyError::PolicyTooLarge {
                size: source.len(),
                limit: config.max_policy_bytes,
            });
        }
        let (rules, data) = hoist_constant_data(source, base_data);
        let engine = build_engine(&rules, &config, &data, &pstate)?;
        // The rule names that matter on the request path, looked up once.
        let declared: BTreeSet<String> = crate::rpc::request_names()
            .into_iter()
            .chain([ALLOW_FAILURES_RULE])
            .filter(|name| engine.has_declared_rule_rooted_at(POLICY_FILE, name).unwrap_or(false))
            .map(str::to_owned)
            .collect();
        let base_data = data;
        let mut this = Self {
            engine,
            config,
            source: source.to_owned(),
            base_data,
            pstate,
            allow_failures: false,
            declared: Arc::new(declared),
        };
        this.allow_failures = this.read_allow_failures();
        Ok(this)
    }

    /// Replace the policy with `new_source`, atomically: if it does not load, the current
    /// policy, data and state stay in force and the error is returned.
    ///
    /// As in Kata (whose `SetPolicyRequest` carries only Rego text), the new policy starts
    /// afresh: `pstate` is reset to `{}` and the data document given to
    /// [`PolicyEngine::from_rego`] is dropped. The caller checks the `SetPolicyRequest`
    /// against the *current* policy before calling this.
    pub fn set_policy(&mut self, new_source: &str) -> Result<(), PolicyError> {
        let fresh = Self::with_config(new_source, None, self.config)?;
        *self = fresh;
        Ok(())
    }

    /// Check a request given as a JSON value. See [`PolicyEngine::evaluate_json`].
    pub fn evaluate(
        &mut self,
        request_name: &str,
        input: &serde_json::Value,
    ) -> Result<Decision, PolicyError> {
        check_request_name(request_name)?;
        if !fits(input, self.config.max_input_bytes) {
            return Err(PolicyError::InputTooLarge {
                request: request_name.to_owned(),
                limit: self.config.max_input_bytes,
            });
        }
        let input = regorus::Value::deserialize(input).map_err(|source| PolicyError::InputJson {
            request: request_name.to_owned(),
            source,
        })?;
        self.evaluate_value(request_name, input)
    }

    /// Check a request given as JSON text (what the agent has after serializing the
    /// protobuf message).
    ///
    /// Evaluates `data.agent_policy.<request_name>`:
    /// - `true` / `false`: allow / deny.
    /// - `{"allowed": bool, "ops": [...]}`: when allowed, `ops` (RFC 6902) are applied to
    ///   `data.pstate` before returning; they may only address `/pstate`. An optional
    ///   `"reason"` string is quoted in a denial.
    /// - undefined (no rule of that name, or no body matched and no `default`): deny.
    ///
    /// An `Err` (oversized input, an evaluation error, a result of another type, ops that do
    /// not apply) means the request must be denied too; the state is then unchanged.
    pub fn evaluate_json(
        &mut self,
        request_name: &str,
        input_json: &str,
    ) -> Result<Decision, PolicyError> {
        let (decision, pending) = self.decide_json(request_name, input_json)?;
        if let Some(p) = pending {
            self.commit(p)?;
        }
        Ok(decision)
    }

    fn evaluate_value(
        &mut self,
        request: &str,
        input: regorus::Value,
    ) -> Result<Decision, PolicyError> {
        let (decision, pending) = self.decide_value(request, input)?;
        if let Some(p) = pending {
            self.commit(p)?;
        }
        Ok(decision)
    }

    /// Like [`PolicyEngine::evaluate_json`], but an allowed request's `ops` are *not*
    /// applied: they come back as [`PendingOps`], for [`PolicyEngine::commit`] once the
    /// request has been carried out. A caller that fails to carry out an allowed request
    /// drops them, so the policy state never records what did not happen (e.g. "sandbox
    /// created" after the agent refused the CreateSandbox).
    pub fn decide_json(
        &mut self,
        request_name: &str,
        input_json: &str,
    ) -> Result<(Decision, Option<PendingOps>), PolicyError> {
        check_request_name(request_name)?;
        if input_json.len() > self.config.max_input_bytes {
            return Err(PolicyError::InputTooLarge {
                request: request_name.to_owned(),
                limit: self.config.max_input_bytes,
            });
        }
        let input: regorus::Value =
            serde_json::from_str(input_json).map_err(|source| PolicyError::InputJson {
                request: request_name.to_owned(),
                source,
            })?;
        self.decide_value(request_name, input)
    }

    /// Applies the ops of an allowed request to `data.pstate` (see
    /// [`PolicyEngine::decide_json`]). On error the state is unchanged.
    pub fn commit(&mut self, pending: PendingOps) -> Result<(), PolicyError> {
        self.apply_ops(&pending.request, pending.ops)
    }

    fn decide_value(
        &mut self,
        request: &str,
        input: regorus::Value,
    ) -> Result<(Decision, Option<PendingOps>), PolicyError> {
        if !self.declares(request) {
            return Ok((self.denied(no_rule_reason(request)), None));
        }
        self.engine.set_input(input);
        let result = self.engine.eval_rule(rule_path(request));
        // Prints are gathered (never written to the console); only explain() reports them.
        let _ = self.engine.take_prints();
        let result = result.map_err(|e| PolicyError::Eval {
            request: request.to_owned(),
            source: RegoError::from_regorus(&e),
        })?;
        let outcome = interpret(request, &result)?;
        if !outcome.allowed {
            let reason = match outcome.reason {
                Some(r) => format!("{request} denied by the policy: {r}"),
                None if result == regorus::Value::Undefined => undefined_reason(request),
                None => format!("{request} denied: the policy rule `{request}` is false"),
            };
            return Ok((self.denied(reason), None));
        }
        if let Some(ops) = &outcome.ops {
            check_ops_paths(request, ops)?;
        }
        let pending = outcome.ops.filter(|o| !o.0.is_empty()).map(|ops| PendingOps { request: request.to_owned(), ops });
        Ok((Decision::allow(), pending))
    }

    /// A denial, unless the policy sets `AllowRequestsFailingPolicy` (Kata's debug switch).
    fn denied(&self, reason: String) -> Decision {
        if self.allow_failures {
            Decision {
                allowed: true,
                reason: Some(format!(
                    "{reason}; allowed anyway because the policy sets {ALLOW_FAILURES_RULE} := true"
                )),
            }
        } else {
            Decision::deny(reason)
        }
    }

    /// Explain how `request_name` is decided for `input`, without changing the policy state.
    ///
    /// Runs the evaluation on a copy of the engine with regorus' line coverage on, then walks
    /// the bodies of the `<request_name>` rule: for each body, the condition where evaluation
    /// stopped (the last condition reached); for a condition that calls helper rules, the same
    /// for those rules (zero-argument helpers are also evaluated on their own to show their
    /// value). Also returns the output of the policy's `print` statements.
    ///
    /// Slower than [`PolicyEngine::evaluate`] (it copies the engine, records coverage and
    /// walks the policy AST): meant for a denial's log entry or an operator's tool, not for
    /// every request.
    pub fn explain(
        &self,
        request_name: &str,
        input: &serde_json::Value,
    ) -> Result<Explanation, PolicyError> {
        check_request_name(request_name)?;
        if !fits(input, self.config.max_input_bytes) {
            return Err(PolicyError::InputTooLarge {
                request: request_name.to_owned(),
                limit: self.config.max_input_bytes,
            });
        }
        let value = regorus::Value::deserialize(input).map_err(|source| PolicyError::InputJson {
            request: request_name.to_owned(),
            source,
        })?;
        // A copy: coverage, prints and state changes stay out of the live engine.
        let mut copy = self.clone();
        let decision = match copy.evaluate_value(request_name, value.clone()) {
            Ok(d) => Ok(d),
            Err(e) => Err(e.to_string()),
        };
        let mut engine = self.engine.clone();
        engine.set_enable_coverage(true);
        engine.set_input(value);
        let declared = self.declares(request_name);
        if declared {
            // Errors here were already reported in `decision`; coverage is what we want.
            let _ = engine.eval_rule(rule_path(request_name));
        }
        explain::build(&mut engine, POLICY_FILE, &self.source, request_name, declared, decision)
            .map_err(|source| PolicyError::Explain { request: request_name.to_owned(), source })
    }

    /// The current policy state, `data.pstate`.
    pub fn pstate(&self) -> &serde_json::Value {
        &self.pstate
    }

    /// The policy text in force.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The limits in force.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Whether the policy sets `AllowRequestsFailingPolicy := true`, which turns every denial
    /// into an allow (an insecure debugging aid of Kata's `rules.rego`).
    pub fn allows_failures(&self) -> bool {
        self.allow_failures
    }

    /// Whether the policy declares a rule named `request_name` (a `default` counts).
    ///
    /// A constant `policy_data := {...}` at the end of the policy is served as data
    /// (`data.agent_policy.policy_data`), not as a rule: see [`PolicyEngine::from_rego`].
    pub fn declares(&self, request_name: &str) -> bool {
        if self.declared.contains(request_name) {
            return true;
        }
        // Request names are looked up at load; other names (helpers) here.
        check_request_name(request_name).is_ok()
            && !crate::rpc::request_names().contains(&request_name)
            && request_name != ALLOW_FAILURES_RULE
            && self.engine.has_declared_rule_rooted_at(POLICY_FILE, request_name).unwrap_or(false)
    }

    /// The top-level rule names the policy declares, sorted.
    pub fn rule_names(&self) -> Result<BTreeSet<String>, PolicyError> {
        explain::rule_names(&self.engine, &self.source)
            .map_err(|source| PolicyError::Explain { request: String::new(), source })
    }

    fn read_allow_failures(&mut self) -> bool {
        if !self.declares(ALLOW_FAILURES_RULE) {
            return false;
        }
        self.engine.set_input(regorus::Value::new_object());
        let v = self.engine.eval_rule(rule_path(ALLOW_FAILURES_RULE));
        let _ = self.engine.take_prints();
        matches!(v, Ok(regorus::Value::Bool(true)))
    }

    fn apply_ops(&mut self, request: &str, ops: json_patch::Patch) -> Result<(), PolicyError> {
        if ops.0.is_empty() {
            return Ok(());
        }
        check_ops_paths(request, &ops)?;
        let mut doc = serde_json::json!({ "pstate": self.pstate.clone() });
        json_patch::patch(&mut doc, &ops)
            .map_err(|source| PolicyError::Patch { request: request.to_owned(), source })?;
        let new_state = doc
            .get_mut("pstate")
            .map(serde_json::Value::take)
            .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
        let state_value = regorus::Value::deserialize(&serde_json::json!({ "pstate": new_state }))
            .map_err(|e| PolicyError::State { source: RegoError(e.to_string()) })?;
        let mut engine = self.engine.clone();
        engine.clear_data();
        engine
            .add_data(self.base_data.clone())
            .and_then(|()| engine.add_data(state_value))
            .map_err(|e| PolicyError::State { source: RegoError::from_regorus(&e) })?;
        // Re-analyse now rather than on the next request, so a failure leaves the old state.
        engine
            .eval_query("true".to_owned(), false)
            .map_err(|e| PolicyError::State { source: RegoError::from_regorus(&e) })?;
        self.engine = engine;
        self.pstate = new_state;
        Ok(())
    }
}

/// Ops may only address `/pstate`.
fn check_ops_paths(request: &str, ops: &json_patch::Patch) -> Result<(), PolicyError> {
    for op in &ops.0 {
        let mut paths = vec![op_path(op)];
        if let Some(from) = op_from(op) {
            paths.push(from);
        }
        for path in paths {
            if !(path == "/pstate" || path.starts_with("/pstate/")) {
                return Err(PolicyError::OpOutsideState { request: request.to_owned(), path: path.to_owned() });
            }
        }
    }
    Ok(())
}

/// The state changes of an allowed request, not yet applied (see
/// [`PolicyEngine::decide_json`]).
#[derive(Debug, Clone)]
pub struct PendingOps {
    request: String,
    ops: json_patch::Patch,
}

/// The name of the data rule of generated policies (ours and genpolicy's).
const POLICY_DATA_RULE: &str = "policy_data";

/// Where [`hoist_constant_data`] puts a generated policy's data in the data document.
const HOISTED: &str = "kata_cc_constants";

/// Serve a trailing constant `policy_data := <JSON object>` from the data document.
///
/// Generated policies (ours and Kata genpolicy's) end with such a rule. As a literal,
/// regorus rebuilds the whole object from its AST on every evaluation and re-analyses it
/// whenever the policy state changes. Here the literal is parsed once, put in the data
/// document as `data.kata_cc_constants.policy_data`, and the rule becomes
/// `policy_data := data.kata_cc_constants.policy_data`: the same value. Only when the text
/// after `:=` is exactly one JSON object up to the end of the file (a Rego object literal
/// of JSON values denotes exactly that JSON value); anything else stays as written.
///
/// Returns the Rego text to load (the policy up to the rule, unchanged, so positions stay
/// the same) and the data document.
fn hoist_constant_data(source: &str, base_data: regorus::Value) -> (String, regorus::Value) {
    let unchanged = |base_data| (source.to_owned(), base_data);
    let marker = format!("\n{POLICY_DATA_RULE} := ");
    let Some(at) = source.rfind(&marker) else { return unchanged(base_data) };
    // Conservative: any other line that starts with `policy_data` (another definition, or
    // a use this function does not need to tell apart) keeps the policy as written.
    let elsewhere = source[..at].lines().any(|l| {
        l.trim_start()
            .strip_prefix(POLICY_DATA_RULE)
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
    });
    if elsewhere {
        return unchanged(base_data);
    }
    let Some(json) = source.get(at + marker.len()..) else { return unchanged(base_data) };
    if !json.trim_start().starts_with('{') {
        return unchanged(base_data);
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return unchanged(base_data);
    };
    let Ok(value) = regorus::Value::deserialize(&value) else { return unchanged(base_data) };
    let taken = matches!(
        base_data.as_object().map(|o| o.contains_key(&regorus::Value::from(HOISTED))),
        Ok(true)
    );
    if taken {
        return unchanged(base_data);
    }
    let mut data = base_data.clone();
    let mut hoisted = regorus::Value::new_object();
    let Ok(inner) = hoisted.as_object_mut() else { return unchanged(base_data) };
    inner.insert(regorus::Value::from(POLICY_DATA_RULE), value);
    let Ok(outer) = data.as_object_mut() else { return unchanged(base_data) };
    outer.insert(regorus::Value::from(HOISTED), hoisted);
    let text = format!("{}data.{HOISTED}.{POLICY_DATA_RULE}\n", &source[..at + marker.len()]);
    (text, data)
}

fn build_engine(
    source: &str,
    config: &PolicyConfig,
    base_data: &regorus::Value,
    pstate: &serde_json::Value,
) -> Result<regorus::Engine, PolicyError> {
    // Rego v1, regorus' default and what Kata's agent (regorus pinned past 0.9) parses;
    // genpolicy's rules.rego and policies with `import future.keywords.*` load as v1.
    let mut engine = load(source, config)?;
    let state = regorus::Value::deserialize(&serde_json::json!({ "pstate": pstate }))
        .map_err(|e| PolicyError::State { source: RegoError(e.to_string()) })?;
    engine
        .add_data(base_data.clone())
        .and_then(|()| engine.add_data(state))
        .map_err(|e| PolicyError::State { source: RegoError::from_regorus(&e) })?;
    // Analyse now: errors surface at load time and the first request pays nothing extra.
    engine
        .eval_query("true".to_owned(), false)
        .map_err(|e| PolicyError::Compile { source: RegoError::from_regorus(&e) })?;
    Ok(engine)
}

fn load(source: &str, config: &PolicyConfig) -> Result<regorus::Engine, PolicyError> {
    let mut engine = regorus::Engine::new();
    // Like Kata: a builtin error (e.g. a bad regex) makes the expression undefined, not the
    // whole evaluation an error; prints are collected, never written to the console.
    engine.set_strict_builtin_errors(false);
    engine.set_gather_prints(true);
    engine.set_policy_length_config(regorus::PolicyLengthConfig {
        max_col: NonZeroU32::new(config.max_policy_line).unwrap_or(NonZeroU32::MIN),
        max_file_bytes: NonZeroUsize::new(config.max_policy_bytes).unwrap_or(NonZeroUsize::MIN),
        max_lines: NonZeroUsize::new(config.max_policy_lines).unwrap_or(NonZeroUsize::MIN),
    });
    if let Some(limit) = config.eval_timeout {
        engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
            limit,
            check_interval: NonZeroU32::new(256).unwrap_or(NonZeroU32::MIN),
        });
    }
    let package = engine
        .add_policy(POLICY_FILE.to_owned(), source.to_owned())
        .map_err(|e| parse_error(&e))?;
    let package = package.strip_prefix("data.").unwrap_or(&package);
    if package != PACKAGE {
        return Err(PolicyError::WrongPackage { found: package.to_owned() });
    }
    Ok(engine)
}

fn parse_error(e: &impl fmt::Display) -> PolicyError {
    let message = format!("{e:#}");
    // regorus reports positions as `--> policy.rego:LINE:COL`.
    let marker = format!("{POLICY_FILE}:");
    let (line, col) = match message.find(&marker) {
        Some(at) => {
            let rest = message.get(at + marker.len()..).unwrap_or("");
            let mut nums = rest.splitn(3, ':').map(|part| {
                let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u32>().ok()
            });
            (nums.next().flatten(), nums.next().flatten())
        }
        None => (None, None),
    };
    PolicyError::Parse { line, col, source: RegoError(message) }
}

fn rule_path(request: &str) -> String {
    format!("data.{PACKAGE}.{request}")
}

fn check_request_name(name: &str) -> Result<(), PolicyError> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err(PolicyError::InvalidRequestName(truncate(name)))
    }
}

fn no_rule_reason(request: &str) -> String {
    format!("no rule for {request} in the policy (default deny)")
}

fn undefined_reason(request: &str) -> String {
    format!(
        "{request} denied: no body of rule `{request}` matched and it has no default (default deny)"
    )
}

fn interpret(request: &str, result: &regorus::Value) -> Result<Outcome, PolicyError> {
    let unexpected = |what: &str| PolicyError::UnexpectedResult {
        request: request.to_owned(),
        found: what.to_owned(),
    };
    match result {
        regorus::Value::Undefined => Ok(Outcome { allowed: false, ops: None, reason: None }),
        regorus::Value::Bool(b) => Ok(Outcome { allowed: *b, ops: None, reason: None }),
        regorus::Value::Object(obj) => {
            let allowed = match obj.get(&regorus::Value::from("allowed")) {
                Some(regorus::Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(unexpected(&format!(
                        "an object whose `allowed` is {}",
                        quote_value(other)
                    )))
                }
                None => {
                    return Err(unexpected(&format!(
                        "an object without `allowed`: {}",
                        quote_value(result)
                    )))
                }
            };
            let ops = match obj.get(&regorus::Value::from("ops")) {
                None | Some(regorus::Value::Null) => None,
                Some(ops) => {
                    let json = serde_json::to_value(ops).map_err(|source| PolicyError::InvalidOps {
                        request: request.to_owned(),
                        source,
                    })?;
                    Some(serde_json::from_value::<json_patch::Patch>(json).map_err(|source| {
                        PolicyError::InvalidOps { request: request.to_owned(), source }
                    })?)
                }
            };
            let reason = match obj.get(&regorus::Value::from("reason")) {
                Some(regorus::Value::String(s)) => Some(truncate(s)),
                _ => None,
            };
            Ok(Outcome { allowed, ops, reason })
        }
        regorus::Value::Set(s) => Err(unexpected(&format!(
            "a set of {} values (several results: is `{request}` a partial rule?): {}",
            s.len(),
            quote_value(result)
        ))),
        other => Err(unexpected(&format!("{} {}", type_name(other), quote_value(other)))),
    }
}

fn type_name(v: &regorus::Value) -> &'static str {
    match v {
        regorus::Value::Null => "null",
        regorus::Value::Bool(_) => "a bool",
        regorus::Value::Number(_) => "a number",
        regorus::Value::String(_) => "a string",
        regorus::Value::Array(_) => "an array",
        regorus::Value::Set(_) => "a set",
        regorus::Value::Object(_) => "an object",
        regorus::Value::Undefined => "undefined",
    }
}

/// Compact JSON of a value, cut at [`MAX_QUOTE`] bytes.
pub(crate) fn quote_value(v: &regorus::Value) -> String {
    truncate(&serde_json::to_string(v).unwrap_or_else(|_| "<unprintable>".to_owned()))
}

pub(crate) fn truncate(s: &str) -> String {
    if s.len() <= MAX_QUOTE {
        return s.to_owned();
    }
    let mut end = MAX_QUOTE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn op_path(op: &json_patch::PatchOperation) -> String {
    use json_patch::PatchOperation as P;
    match op {
        P::Add(o) => o.path.to_string(),
        P::Remove(o) => o.path.to_string(),
        P::Replace(o) => o.path.to_string(),
        P::Move(o) => o.path.to_string(),
        P::Copy(o) => o.path.to_string(),
        P::Test(o) => o.path.to_string(),
    }
}

fn op_from(op: &json_patch::PatchOperation) -> Option<String> {
    use json_patch::PatchOperation as P;
    match op {
        P::Move(o) => Some(o.from.to_string()),
        P::Copy(o) => Some(o.from.to_string()),
        _ => None,
    }
}

/// Whether `value` serializes to at most `limit` bytes of JSON (stops counting past it).
fn fits(value: &serde_json::Value, limit: usize) -> bool {
    struct Counter {
        n: usize,
        limit: usize,
    }
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.n = self.n.saturating_add(buf.len());
            if self.n > self.limit {
                Err(io::Error::other("over limit"))
            } else {
                Ok(buf.len())
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Counter { n: 0, limit }, value).is_ok()
}
