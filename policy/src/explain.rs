//! Explanations of decisions: which rule bodies and conditions failed.
//!
//! regorus 0.14 has no per-condition trace for its tree-walking interpreter (its
//! `explanations` feature only defines report types for the RVM). What it does have is line
//! coverage: with it on, every line whose expression was evaluated is recorded. Combined with
//! the policy AST (statement spans), that tells, for each body of a rule, the last condition
//! reached: the one that was false or undefined (a `some` loop reports the furthest any
//! iteration got). Conditions that call helper rules are followed into those rules.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::engine::{quote_value, truncate, Decision, PACKAGE};

/// Most rules one explanation follows.
const MAX_RULES: usize = 24;
/// Deepest helper nesting followed.
const MAX_DEPTH: usize = 6;

/// Why an explanation could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// regorus did not produce the AST or coverage report.
    #[error("regorus could not produce the {what}: {message}")]
    Regorus {
        /// `"AST"` or `"coverage report"`.
        what: &'static str,
        /// regorus' message.
        message: String,
    },
    /// The AST JSON could not be read.
    #[error("the policy AST is not the expected JSON")]
    Ast {
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// How a request was decided, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The request name (the rule evaluated).
    pub request: String,
    /// The decision [`crate::PolicyEngine::evaluate`] would make, or its error message.
    pub decision: Result<Decision, String>,
    /// The request rule first, then the helper rules its failing conditions call.
    pub rules: Vec<RuleTrace>,
    /// Output of the policy's `print` statements during the evaluation.
    pub prints: Vec<String>,
}

/// One rule's bodies and where each stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTrace {
    /// Rule name (top level of `package agent_policy`).
    pub name: String,
    /// 0 for the request rule, 1 for helpers it calls, ...
    pub depth: usize,
    /// For a rule without arguments: its value for this input as JSON, or `"undefined"`.
    /// `None` for functions (their value depends on the arguments).
    pub value: Option<String>,
    /// Line of the rule's `default`, if it has one.
    pub default_line: Option<u32>,
    /// Each body (definition) in source order.
    pub bodies: Vec<BodyTrace>,
}

/// One body of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyTrace {
    /// Line where the body starts.
    pub line: u32,
    /// Where evaluation of the body stopped.
    pub outcome: BodyOutcome,
}

/// Where evaluation of a body stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyOutcome {
    /// No condition of the body was evaluated (e.g. a function never called).
    NotReached,
    /// Evaluation stopped at this condition: it was false or undefined for every attempt.
    StoppedAt(Condition),
    /// Every condition was reached; the body holds only if the last one held (on a denial it
    /// did not, or a loop found no element satisfying the body).
    ReachedEnd(Condition),
}

/// A condition (statement) of a rule body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Line of the statement.
    pub line: u32,
    /// Its source text (whitespace collapsed, truncated).
    pub text: String,
}

impl Explanation {
    /// The conditions where bodies stopped, as `(rule, condition)`, deepest helpers included.
    pub fn failed_conditions(&self) -> Vec<(&str, &Condition)> {
        let mut out = Vec::new();
        for rule in &self.rules {
            for body in &rule.bodies {
                if let BodyOutcome::StoppedAt(c) | BodyOutcome::ReachedEnd(c) = &body.outcome {
                    out.push((rule.name.as_str(), c));
                }
            }
        }
        out
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.decision {
            Ok(d) => writeln!(f, "decision: {d}")?,
            Err(e) => writeln!(f, "decision: error ({e}), so denied")?,
        }
        for rule in &self.rules {
            let indent = "  ".repeat(rule.depth);
            match &rule.value {
                Some(v) => writeln!(f, "{indent}rule {} = {v}", rule.name)?,
                None => writeln!(f, "{indent}function {}", rule.name)?,
            }
            let n = rule.bodies.len();
            for (i, body) in rule.bodies.iter().enumerate() {
                write!(f, "{indent}  body {}/{n} (line {}): ", i + 1, body.line)?;
                match &body.outcome {
                    BodyOutcome::NotReached => writeln!(f, "not evaluated")?,
                    BodyOutcome::StoppedAt(c) => {
                        writeln!(f, "failed at line {}: `{}`", c.line, c.text)?;
                    }
                    BodyOutcome::ReachedEnd(c) => writeln!(
                        f,
                        "reached its last condition, line {}: `{}`",
                        c.line, c.text
                    )?,
                }
            }
            if let Some(line) = rule.default_line {
                writeln!(f, "{indent}  default at line {line}")?;
            }
        }
        if !self.prints.is_empty() {
            writeln!(f, "policy print output:")?;
            for p in &self.prints {
                writeln!(f, "  {p}")?;
            }
        }
        Ok(())
    }
}

/// A statement of a body: its line, text and the names it refers to.
struct Stmt {
    line: u32,
    text: String,
    names: BTreeSet<String>,
}

struct Body {
    line: u32,
    stmts: Vec<Stmt>,
}

#[derive(Default)]
struct RuleInfo {
    is_function: bool,
    default_line: Option<u32>,
    bodies: Vec<Body>,
}

/// Build the explanation from an engine that has just evaluated `request` with coverage on.
pub(crate) fn build(
    engine: &mut regorus::Engine,
    file: &str,
    source: &str,
    request: &str,
    declared: bool,
    decision: Result<Decision, String>,
) -> Result<Explanation, ExplainError> {
    let prints = engine.take_prints().unwrap_or_default();
    let covered = covered_lines(engine, file)?;
    let rules = rule_table(engine, source)?;
    let denied = !matches!(decision, Ok(Decision { allowed: true, .. }));

    let mut traces = Vec::new();
    if declared {
        let mut seen = BTreeSet::from([request.to_owned()]);
        let mut queue = vec![(request.to_owned(), 0usize)];
        while let Some((name, depth)) = queue.pop() {
            let Some(info) = rules.get(&name) else { continue };
            let value = if info.is_function {
                None
            } else {
                Some(match engine.eval_rule(format!("data.{PACKAGE}.{name}")) {
                    Ok(regorus::Value::Undefined) => "undefined".to_owned(),
                    Ok(v) => quote_value(&v),
                    Err(e) => format!("error: {}", truncate(&e.to_string())),
                })
            };
            // A helper that holds is not why the request failed: name it, skip its bodies.
            let holds = depth > 0
                && value.as_deref().is_some_and(|v| v != "false" && v != "undefined");
            if holds {
                continue;
            }
            let mut trace = RuleTrace {
                name: name.clone(),
                depth,
                value,
                default_line: info.default_line,
                bodies: Vec::new(),
            };
            let mut helpers = Vec::new();
            for body in &info.bodies {
                let outcome = body_outcome(body, &covered);
                if let BodyOutcome::StoppedAt(_) | BodyOutcome::ReachedEnd(_) = outcome {
                    if denied && depth < MAX_DEPTH {
                        let last = body.stmts.iter().rev().find(|s| covered.contains(&s.line));
                        for helper in last.into_iter().flat_map(|s| &s.names) {
                            if rules.contains_key(helper) && seen.insert(helper.clone()) {
                                helpers.push((helper.clone(), depth + 1));
                            }
                        }
                    }
                }
                trace.bodies.push(BodyTrace { line: body.line, outcome });
            }
            traces.push(trace);
            if traces.len() >= MAX_RULES {
                break;
            }
            // Depth-first, in source order.
            queue.extend(helpers.into_iter().rev());
        }
    }
    Ok(Explanation { request: request.to_owned(), decision, rules: traces, prints })
}

fn body_outcome(body: &Body, covered: &BTreeSet<u32>) -> BodyOutcome {
    let reached = body.stmts.iter().rposition(|s| covered.contains(&s.line));
    match reached {
        None => BodyOutcome::NotReached,
        Some(i) => {
            let Some(stmt) = body.stmts.get(i) else { return BodyOutcome::NotReached };
            let c = Condition { line: stmt.line, text: stmt.text.clone() };
            if i + 1 == body.stmts.len() {
                BodyOutcome::ReachedEnd(c)
            } else {
                BodyOutcome::StoppedAt(c)
            }
        }
    }
}

fn covered_lines(engine: &regorus::Engine, file: &str) -> Result<BTreeSet<u32>, ExplainError> {
    let report = engine.get_coverage_report().map_err(|e| ExplainError::Regorus {
        what: "coverage report",
        message: e.to_string(),
    })?;
    Ok(report
        .files
        .into_iter()
        .filter(|f| f.path == file)
        .flat_map(|f| f.covered)
        .collect())
}

/// The top-level rule names a policy declares.
pub(crate) fn rule_names(
    engine: &regorus::Engine,
    source: &str,
) -> Result<BTreeSet<String>, ExplainError> {
    Ok(rule_table(engine, source)?.into_keys().collect())
}

/// Rules of the policy by (root) name, from regorus' AST JSON.
fn rule_table(
    engine: &regorus::Engine,
    source: &str,
) -> Result<BTreeMap<String, RuleInfo>, ExplainError> {
    let ast = engine
        .get_ast_as_json()
        .map_err(|e| ExplainError::Regorus { what: "AST", message: e.to_string() })?;
    let ast: serde_json::Value =
        serde_json::from_str(&ast).map_err(|source| ExplainError::Ast { source })?;
    let mut table: BTreeMap<String, RuleInfo> = BTreeMap::new();
    let modules = ast.as_array().map(Vec::as_slice).unwrap_or_default();
    for module in modules {
        let rules = module
            .pointer("/ast/rules")
            .and_then(serde_json::Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for rule in rules {
            if let Some(default) = rule.get("Default") {
                if let Some(name) = default.get("refr").and_then(root_name) {
                    table.entry(name).or_default().default_line = line_of(default);
                }
            } else if let Some(spec) = rule.get("Spec") {
                let Some((kind, head)) =
                    spec.get("head").and_then(|h| h.as_object()).and_then(|h| h.iter().next())
                else {
                    continue;
                };
                let Some(name) = head.get("refr").and_then(root_name) else { continue };
                let entry = table.entry(name).or_default();
                entry.is_function |= kind == "Func";
                let bodies = spec
                    .get("bodies")
                    .and_then(serde_json::Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                for body in bodies {
                    let stmts = body
                        .pointer("/query/stmts")
                        .and_then(serde_json::Value::as_array)
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    let stmts = stmts
                        .iter()
                        .map(|s| Stmt {
                            line: line_of(s).unwrap_or(0),
                            text: span_text(s, source),
                            names: var_names(s),
                        })
                        .collect();
                    entry.bodies.push(Body { line: line_of(body).unwrap_or(0), stmts });
                }
            }
        }
    }
    Ok(table)
}

fn line_of(node: &serde_json::Value) -> Option<u32> {
    node.pointer("/span/line")
        .and_then(serde_json::Value::as_u64)
        .and_then(|l| u32::try_from(l).ok())
}

fn span_text(node: &serde_json::Value, source: &str) -> String {
    let offset = |key: &str| {
        node.get("span")
            .and_then(|s| s.get(key))
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
    };
    let text = match (offset("start"), offset("end")) {
        (Some(start), Some(end)) => source.get(start..end).unwrap_or(""),
        _ => "",
    };
    truncate(&text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The first variable of a rule head reference: `a` for `a.b.c`.
fn root_name(refr: &serde_json::Value) -> Option<String> {
    let (kind, node) = refr.as_object()?.iter().next()?;
    match kind.as_str() {
        "Var" => node.get("value")?.as_str().map(str::to_owned),
        _ => root_name(node.get("refr")?),
    }
}

/// Every variable name mentioned in a statement.
fn var_names(node: &serde_json::Value) -> BTreeSet<String> {
    fn walk(node: &serde_json::Value, out: &mut BTreeSet<String>) {
        match node {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    if key == "Var" {
                        if let Some(name) = value.get("value").and_then(serde_json::Value::as_str) {
                            out.insert(name.to_owned());
                        }
                    }
                    walk(value, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(node, &mut out);
    out
}
