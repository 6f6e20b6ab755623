//! Behaviour of `PolicyEngine`: result shapes, state ops, default deny, errors, limits,
//! atomic policy replacement and explanations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use policy::{builtin, BodyOutcome, PolicyConfig, PolicyEngine, PolicyError, Rpc};
use serde_json::json;

const SAMPLE: &str = include_str!("policies/sample-pod.rego");

fn input(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/inputs/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const ONE_SANDBOX: &str = r#"
package agent_policy

default CreateSandboxRequest := false

# First sandbox: allowed, its name recorded in the policy state.
CreateSandboxRequest := {"allowed": true, "ops": [{"op": "add", "path": "/pstate/sandbox_name", "value": input.hostname}]} if {
    not data.pstate.sandbox_name
}

# Later ones only with the recorded name (and no state change).
CreateSandboxRequest if {
    input.hostname == data.pstate.sandbox_name
}
"#;

#[test]
fn bool_results() {
    let rego = "package agent_policy\nStartContainerRequest := true\nPauseContainerRequest := false\n";
    let mut e = PolicyEngine::from_rego(rego, None).unwrap();
    assert!(e.evaluate("StartContainerRequest", &json!({})).unwrap().allowed);
    let d = e.evaluate("PauseContainerRequest", &json!({})).unwrap();
    assert!(!d.allowed);
    assert!(d.reason.unwrap().contains("`PauseContainerRequest` is false"));
}

#[test]
fn object_result_ops_change_state_once_then_deny_other_name() {
    let mut e = PolicyEngine::from_rego(ONE_SANDBOX, None).unwrap();
    assert_eq!(e.pstate(), &json!({}));
    let d = e.evaluate("CreateSandboxRequest", &json!({"hostname": "pod-a"})).unwrap();
    assert!(d.allowed, "{d}");
    assert_eq!(e.pstate(), &json!({"sandbox_name": "pod-a"}));

    let d = e.evaluate("CreateSandboxRequest", &json!({"hostname": "pod-b"})).unwrap();
    assert!(!d.allowed);
    assert_eq!(e.pstate(), &json!({"sandbox_name": "pod-a"}), "a denial changes nothing");

    // The same name matches the second body (a plain `true`), state unchanged.
    let d = e.evaluate("CreateSandboxRequest", &json!({"hostname": "pod-a"})).unwrap();
    assert!(d.allowed);
    assert_eq!(e.pstate(), &json!({"sandbox_name": "pod-a"}));
}

#[test]
fn ops_of_a_denied_object_result_are_not_applied() {
    let rego = r#"package agent_policy
CreateSandboxRequest := {"allowed": false, "ops": [{"op": "add", "path": "/pstate/x", "value": 1}], "reason": "sandboxes are closed"}
"#;
    let mut e = PolicyEngine::from_rego(rego, None).unwrap();
    let d = e.evaluate("CreateSandboxRequest", &json!({})).unwrap();
    assert!(!d.allowed);
    assert!(d.reason.unwrap().contains("sandboxes are closed"));
    assert_eq!(e.pstate(), &json!({}));
}

#[test]
fn ops_outside_pstate_or_failing_are_errors_and_leave_state() {
    let rego = r#"package agent_policy
A := {"allowed": true, "ops": [{"op": "add", "path": "/policy_data/x", "value": 1}]}
B := {"allowed": true, "ops": [{"op": "add", "path": "/pstate/a", "value": 1}, {"op": "remove", "path": "/pstate/missing"}]}
C := {"allowed": true}
"#;
    let mut e = PolicyEngine::from_rego(rego, None).unwrap();
    assert!(matches!(e.evaluate("A", &json!({})), Err(PolicyError::OpOutsideState { .. })));
    assert!(matches!(e.evaluate("B", &json!({})), Err(PolicyError::Patch { .. })));
    assert_eq!(e.pstate(), &json!({}), "a failed patch is atomic");
    assert!(e.evaluate("C", &json!({})).unwrap().allowed, "ops are optional");
}

#[test]
fn undefined_rule_is_denied_with_reason() {
    let rego = "package agent_policy\nExecProcessRequest if input.x == 1\n";
    let mut e = PolicyEngine::from_rego(rego, None).unwrap();
    let d = e.evaluate("CreateContainerRequest", &json!({})).unwrap();
    assert!(!d.allowed);
    assert!(d.reason.as_deref().unwrap().contains("no rule for CreateContainerRequest"), "{d}");
    // Declared, but no body matched and no default.
    let d = e.evaluate("ExecProcessRequest", &json!({"x": 2})).unwrap();
    assert!(!d.allowed);
    assert!(d.reason.unwrap().contains("no default"));
    assert!(e.evaluate("ExecProcessRequest", &json!({"x": 1})).unwrap().allowed);
}

#[test]
fn unexpected_results_are_errors_naming_what_came_back() {
    let rego = r#"package agent_policy
A := "yes"
B contains x if { some x in [1, 2] }
C := {"ops": []}
D := {"allowed": "true"}
"#;
    let mut e = PolicyEngine::from_rego(rego, None).unwrap();
    let msg = |r: &str, e: &mut PolicyEngine| e.evaluate(r, &json!({})).unwrap_err().to_string();
    assert!(msg("A", &mut e).contains("a string \"yes\""));
    let b = msg("B", &mut e);
    assert!(b.contains("set of 2 values") && b.contains("several results"), "{b}");
    assert!(msg("C", &mut e).contains("without `allowed`"));
    assert!(msg("D", &mut e).contains("`allowed` is \"true\""));
}

#[test]
fn malformed_policy_reports_position() {
    let rego = "package agent_policy\n\nCreateContainerRequest if {\n    x := \n}\n";
    let err = PolicyEngine::from_rego(rego, None).unwrap_err();
    match &err {
        PolicyError::Parse { line, col, .. } => {
            // Where regorus stops: the `:=` with nothing after it.
            assert_eq!((*line, *col), (Some(4), Some(7)), "{err}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("line 4, column 7"));
    let chain = std::error::Error::source(&err).unwrap().to_string();
    assert!(chain.contains("policy.rego:4:7"), "{chain}");
    let wrong = PolicyEngine::from_rego("package other\nx := 1\n", None).unwrap_err();
    assert!(matches!(wrong, PolicyError::WrongPackage { .. }), "{wrong}");
}

#[test]
fn oversized_input_and_policy_are_refused() {
    let config = PolicyConfig { max_input_bytes: 1000, max_policy_bytes: 2000, ..Default::default() };
    let mut e = PolicyEngine::with_config(builtin::ALLOW_ALL, None, config).unwrap();
    let big = json!({"data": "x".repeat(1000)});
    let err = e.evaluate("WriteStreamRequest", &big).unwrap_err();
    assert!(matches!(err, PolicyError::InputTooLarge { limit: 1000, .. }), "{err}");
    assert!(err.to_string().contains("over the limit of 1000 bytes"));
    let err = e.evaluate_json("WriteStreamRequest", &big.to_string()).unwrap_err();
    assert!(matches!(err, PolicyError::InputTooLarge { .. }));
    assert!(e.evaluate("WriteStreamRequest", &json!({"data": "x"})).unwrap().allowed);

    let err = PolicyEngine::with_config(SAMPLE, None, config).unwrap_err();
    assert!(matches!(err, PolicyError::PolicyTooLarge { .. }), "{err}");

    // The default limit is 1 MiB.
    let mut e = PolicyEngine::from_rego(builtin::ALLOW_ALL, None).unwrap();
    let err = e.evaluate("WriteStreamRequest", &json!({"data": "x".repeat(1 << 20)})).unwrap_err();
    assert!(matches!(err, PolicyError::InputTooLarge { limit: 1_048_576, .. }));
}

#[test]
fn set_policy_is_atomic() {
    let mut e = PolicyEngine::from_rego(ONE_SANDBOX, None).unwrap();
    assert!(e.evaluate("CreateSandboxRequest", &json!({"hostname": "a"})).unwrap().allowed);

    let err = e.set_policy("package agent_policy\nCreateSandboxRequest if {\n").unwrap_err();
    assert!(matches!(err, PolicyError::Parse { .. }));
    // Old policy and its state still in force.
    assert_eq!(e.pstate(), &json!({"sandbox_name": "a"}));
    assert!(!e.evaluate("CreateSandboxRequest", &json!({"hostname": "b"})).unwrap().allowed);

    e.set_policy(builtin::DENY_ALL).unwrap();
    assert_eq!(e.pstate(), &json!({}), "a new policy starts with empty state, as in Kata");
    assert!(!e.evaluate("CreateSandboxRequest", &json!({"hostname": "a"})).unwrap().allowed);
}

#[test]
fn data_document_is_visible_and_pstate_reserved() {
    let rego = "package agent_policy\nExecProcessRequest if input.cmd in data.allowed\n";
    let mut e = PolicyEngine::from_rego(rego, Some(json!({"allowed": ["ls"]}))).unwrap();
    assert!(e.evaluate("ExecProcessRequest", &json!({"cmd": "ls"})).unwrap().allowed);
    assert!(!e.evaluate("ExecProcessRequest", &json!({"cmd": "sh"})).unwrap().allowed);
    assert!(PolicyEngine::from_rego(rego, Some(json!({"pstate": {}}))).is_err());
    assert!(PolicyEngine::from_rego(rego, Some(json!([1]))).is_err());
}

#[test]
fn invalid_request_names_are_refused() {
    let mut e = PolicyEngine::from_rego(builtin::ALLOW_ALL, None).unwrap();
    for bad in ["", "a.b", "x[1]", "CreateContainerRequest; true", "1abc"] {
        assert!(matches!(e.evaluate(bad, &json!({})), Err(PolicyError::InvalidRequestName(_))), "{bad}");
    }
}

#[test]
fn allow_all_covers_every_rpc_and_deny_all_none() {
    let mut allow = PolicyEngine::from_rego(builtin::ALLOW_ALL, None).unwrap();
    let mut deny = PolicyEngine::from_rego(builtin::DENY_ALL, None).unwrap();
    for rpc in Rpc::all() {
        let name = rpc.request_name();
        assert!(allow.declares(name), "{rpc}");
        assert!(allow.evaluate(name, &json!({})).unwrap().allowed, "{rpc}");
        assert!(!deny.evaluate(name, &json!({})).unwrap().allowed, "{rpc}");
    }
    // And nothing else: every rule of allow-all is a request message.
    let names = allow.rule_names().unwrap();
    assert_eq!(names.into_iter().collect::<Vec<_>>(), policy::request_names());
}

#[test]
fn default_tee_builtin_loads_and_denies_containers() {
    let mut e = PolicyEngine::from_rego(builtin::DEFAULT_TEE, None).unwrap();
    assert!(e.evaluate("CreateSandboxRequest", &input("create-sandbox.json")).unwrap().allowed);
    assert!(!e.evaluate("CreateContainerRequest", &input("create-app.json")).unwrap().allowed);
    assert!(!e.evaluate("SetPolicyRequest", &json!({"policy": ""})).unwrap().allowed);
    assert!(e.evaluate("DestroySandboxRequest", &json!({})).unwrap().allowed);
}

#[test]
fn allow_requests_failing_policy_is_honoured_and_reported() {
    let rego = "package agent_policy\ndefault AllowRequestsFailingPolicy := true\nExecProcessRequest := false\n";
    let mut e = PolicyEngine::from_rego(rego, None).unwrap();
    assert!(e.allows_failures());
    let d = e.evaluate("ExecProcessRequest", &json!({})).unwrap();
    assert!(d.allowed);
    assert!(d.reason.unwrap().contains("AllowRequestsFailingPolicy"));
    let sample = PolicyEngine::from_rego(SAMPLE, None).unwrap();
    assert!(!sample.allows_failures());
}

#[test]
fn rego_v1_like_kata() {
    // v0 syntax (a body without `if`) is refused, as by Kata's agent (regorus defaults to v1).
    let v0 = "package agent_policy\nExecProcessRequest { input.ok == true }\n";
    assert!(matches!(PolicyEngine::from_rego(v0, None), Err(PolicyError::Parse { .. })));
    // v0-era imports (as genpolicy's rules.rego has) are fine.
    let rego = "package agent_policy\nimport future.keywords.if\nimport future.keywords.in\n\
        default ExecProcessRequest = false\nExecProcessRequest if { input.ok in [true] }\n";
    let mut e = PolicyEngine::from_rego(rego, None).unwrap();
    assert!(e.evaluate("ExecProcessRequest", &json!({"ok": true})).unwrap().allowed);
}

#[test]
fn explain_names_the_failed_helper_condition() {
    let mut e = PolicyEngine::from_rego(SAMPLE, None).unwrap();
    for (req, file) in [
        ("CreateSandboxRequest", "create-sandbox.json"),
        ("CreateContainerRequest", "create-pause.json"),
    ] {
        assert!(e.evaluate(req, &input(file)).unwrap().allowed);
    }
    let mut app = input("create-app.json");
    app["OCI"]["Process"]["Capabilities"]["Bounding"]
        .as_array_mut()
        .unwrap()
        .push(json!("CAP_SYS_ADMIN"));
    let state_before = e.pstate().clone();
    let why = e.explain("CreateContainerRequest", &app).unwrap();
    let text = why.to_string();
    eprintln!("{text}");
    assert_eq!(e.pstate(), &state_before, "explain changes no state");
    assert!(!why.decision.as_ref().unwrap().allowed);
    let failed = why.failed_conditions();
    // The request rule stopped at allow_process, which stopped at allow_caps, which stopped
    // at the capability check.
    assert!(failed.iter().any(|(r, c)| *r == "CreateContainerRequest" && c.text.contains("allow_process")), "{text}");
    assert!(failed.iter().any(|(r, c)| *r == "allow_process" && c.text.contains("allow_caps")), "{text}");
    assert!(failed.iter().any(|(r, c)| *r == "allow_caps" && c.text.contains("cap in allowed")), "{text}");
    assert!(text.contains("default at line"));

    // An allowed request explains without following helpers.
    let ok = e.explain("CreateContainerRequest", &input("create-app.json")).unwrap();
    assert!(ok.decision.unwrap().allowed);
    assert_eq!(ok.rules.len(), 1);
}

#[test]
fn explain_simple_policy_and_prints() {
    let rego = r#"package agent_policy
default CreateContainerRequest := false
CreateContainerRequest if {
    input.a == 1
    helper
    input.c == 3
}
CreateContainerRequest if {
    input.z == 1
}
helper if {
    x := input.b
    print("helper: b =", x)
    x == 2
}
"#;
    let e = PolicyEngine::from_rego(rego, None).unwrap();
    let why = e.explain("CreateContainerRequest", &json!({"a": 1, "b": 5, "c": 3})).unwrap();
    let main = &why.rules[0];
    assert_eq!(main.name, "CreateContainerRequest");
    assert!(matches!(&main.bodies[0].outcome, BodyOutcome::StoppedAt(c) if c.line == 5 && c.text == "helper"));
    assert!(matches!(&main.bodies[1].outcome, BodyOutcome::ReachedEnd(c) if c.text == "input.z == 1"));
    let helper = &why.rules[1];
    assert_eq!((helper.name.as_str(), helper.value.as_deref()), ("helper", Some("undefined")));
    assert!(matches!(&helper.bodies[0].outcome, BodyOutcome::ReachedEnd(c) if c.text == "x == 2"));
    assert!(why.prints.iter().any(|p| p.contains("helper: b = 5")), "{:?}", why.prints);

    let none = e.explain("ExecProcessRequest", &json!({})).unwrap();
    assert!(none.rules.is_empty());
    assert!(none.to_string().contains("no rule for ExecProcessRequest"));
}

#[test]
fn trailing_constant_policy_data_is_served_as_data_with_the_same_value() {
    let rules = r#"package agent_policy
default ExecProcessRequest := false
ExecProcessRequest if input.cmd in policy_data.allowed
Names := policy_data.names
"#;
    let data = r#"{"allowed": ["ls", "cat"], "names": {"a": [1, 2.5, true, null, "x\"y\u00e9"]}}"#;
    let hoisted = format!("{rules}\npolicy_data := {data}\n");
    // The same rules with policy_data in a form that is not one JSON object: kept as Rego.
    let literal = format!("{rules}\npolicy_data := object.union({data}, {{}})\n");
    let want = serde_json::from_str::<serde_json::Value>(data).unwrap()["names"].clone();
    for (label, rego) in [("hoisted", &hoisted), ("literal", &literal)] {
        let mut e = PolicyEngine::from_rego(rego, None).unwrap_or_else(|err| panic!("{label}: {err:#}"));
        assert!(e.evaluate("ExecProcessRequest", &json!({"cmd": "ls"})).unwrap().allowed, "{label}");
        assert!(!e.evaluate("ExecProcessRequest", &json!({"cmd": "sh"})).unwrap().allowed, "{label}");
        let names = PolicyEngine::from_rego(&rego.replace("Names :=", "ResizeVolumeRequest := {\"allowed\": false, \"reason\": json.marshal(policy_data.names)}\nNames :="), None)
            .unwrap()
            .evaluate("ResizeVolumeRequest", &json!({}))
            .unwrap()
            .reason
            .unwrap();
        assert!(names.contains(&want.to_string()), "{label}: {names}");
        assert_eq!(e.source(), rego.as_str(), "{label}: source() is the text as given");
    }
    // Another definition of policy_data elsewhere: nothing is hoisted, the policy loads as
    // written (and its conflict is regorus' to report at evaluation).
    let twice = format!("{rules}\npolicy_data := {{\"allowed\": [\"sh\"]}} if input.x\n\npolicy_data := {data}\n");
    let mut e = PolicyEngine::from_rego(&twice, None).unwrap();
    assert!(e.evaluate("ExecProcessRequest", &json!({"cmd": "ls"})).unwrap().allowed);
    assert!(matches!(e.evaluate("ExecProcessRequest", &json!({"cmd": "ls", "x": true})), Err(PolicyError::Eval { .. })));
}

/// An allowed request's state change waits for `commit`: a request that was allowed but
/// then not carried out (the agent refused it) leaves the state as it was.
#[test]
fn deferred_ops_apply_only_on_commit() {
    let rego = r#"package agent_policy
CreateSandboxRequest := {"allowed": true, "ops": [{"op": "add", "path": "/pstate/created", "value": true}]} if {
	not data.pstate.created
} else := {"allowed": false, "reason": "sandbox already created"}
"#;
    let mut e = PolicyEngine::from_rego(rego, None).unwrap();
    let (d, pending) = e.decide_json("CreateSandboxRequest", "{}").unwrap();
    assert!(d.allowed && pending.is_some());
    drop(pending); // the agent refused it
    let (d, pending) = e.decide_json("CreateSandboxRequest", "{}").unwrap();
    assert!(d.allowed, "a refused request moved the state on: {d}");
    e.commit(pending.unwrap()).unwrap();
    assert_eq!(e.pstate(), &serde_json::json!({"created": true}));
    let (d, pending) = e.decide_json("CreateSandboxRequest", "{}").unwrap();
    assert!(!d.allowed && pending.is_none());
}
