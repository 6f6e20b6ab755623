//! Table-driven policy tests: every `tests/cases/*.json` file names a policy and a list of
//! requests with the expected decision; each case runs on a fresh engine (after its
//! `before` steps, which must be allowed) through the same `PolicyEngine` the agent uses.
//!
//! Case file format:
//! ```json
//! { "policy": "rego/allow-all.rego",            // relative to the crate root
//!   "cases": [ { "description": "...",
//!                "request": "CreateContainerRequest",
//!                "input": {...} | "input_file": "tests/inputs/x.json",
//!                "input_patch": [RFC 6902 ops applied to the input],
//!                "before": [ {"request": ..., "input"/"input_file"/"input_patch": ...} ],
//!                "allowed": true } ] }
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::{Path, PathBuf};

use policy::PolicyEngine;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    policy: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    request: String,
    #[serde(default)]
    input: Option<serde_json::Value>,
    #[serde(default)]
    input_file: Option<String>,
    #[serde(default)]
    input_patch: Option<json_patch::Patch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    #[serde(flatten)]
    step: Step,
    #[serde(default)]
    before: Vec<Step>,
    allowed: bool,
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn input_of(step: &Step) -> serde_json::Value {
    let mut input = match (&step.input, &step.input_file) {
        (Some(v), None) => v.clone(),
        (None, Some(f)) => serde_json::from_str(&read(&crate_dir().join(f))).unwrap(),
        (None, None) => serde_json::json!({}),
        (Some(_), Some(_)) => panic!("both input and input_file"),
    };
    if let Some(patch) = &step.input_patch {
        json_patch::patch(&mut input, patch).unwrap();
    }
    input
}

#[test]
fn policy_cases() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(crate_dir().join("tests/cases"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "case files missing");

    let mut failures = Vec::new();
    let mut total = 0;
    for file in &files {
        let cases: CaseFile = serde_json::from_str(&read(file))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let rego = read(&crate_dir().join(&cases.policy));
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for case in &cases.cases {
            total += 1;
            let mut engine = PolicyEngine::from_rego(&rego, None).unwrap();
            for step in &case.before {
                let d = engine.evaluate(&step.request, &input_of(step)).unwrap();
                assert!(d.allowed, "{name}: {}: setup {} denied: {d}", case.description, step.request);
            }
            let input = input_of(&case.step);
            match engine.evaluate(&case.step.request, &input) {
                Ok(d) if d.allowed == case.allowed => {}
                Ok(d) => {
                    let why = engine.explain(&case.step.request, &input).unwrap();
                    failures.push(format!(
                        "{name}: {}: expected allowed={}, got {d}\n{why}",
                        case.description, case.allowed
                    ));
                }
                Err(e) => failures.push(format!("{name}: {}: error {e:?}", case.description)),
            }
        }
    }
    assert!(failures.is_empty(), "{} of {total} cases failed:\n{}", failures.len(), failures.join("\n"));
    eprintln!("{total} policy cases from {} files passed", files.len());
}
