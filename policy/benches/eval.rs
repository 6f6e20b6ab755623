//! Policy load and evaluation latency, with the allow-all policy as the in-run baseline.
//!
//! `cargo bench -p policy` (or `cargo bench -p policy -- --quick`). Each figure is the
//! distribution of single calls timed with `Instant` (p50/p99/max), so no statistics
//! framework is needed. The realistic policy is `tests/policies/sample-pod.rego` (genpolicy
//! shape, policy_data for 3 containers); inputs are `tests/inputs/*.json`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use policy::{builtin, PolicyEngine};

const SAMPLE: &str = include_str!("../tests/policies/sample-pod.rego");
const SANDBOX: &str = include_str!("../tests/inputs/create-sandbox.json");
const PAUSE: &str = include_str!("../tests/inputs/create-pause.json");
const APP: &str = include_str!("../tests/inputs/create-app.json");
const EXEC: &str = include_str!("../tests/inputs/exec-app.json");
const READ: &str = include_str!("../tests/inputs/read-stream-app.json");

struct Stats {
    name: String,
    samples: Vec<Duration>,
}

impl Stats {
    fn pct(&self, p: f64) -> Duration {
        let i = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples[i]
    }

    fn print(&self) {
        println!(
            "{:<58} n={:<5} p50={:>10.1?} p99={:>10.1?} max={:>10.1?}",
            self.name,
            self.samples.len(),
            self.pct(0.50),
            self.pct(0.99),
            self.samples.last().copied().unwrap_or_default(),
        );
    }
}

/// Time `n` calls of `f`; `setup` runs untimed before each call and its output is passed in.
fn measure<S, T>(name: &str, n: usize, mut setup: impl FnMut() -> S, mut f: impl FnMut(S) -> T) -> Stats {
    for _ in 0..(n / 10).max(3) {
        black_box(f(setup()));
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let s = setup();
        let t = Instant::now();
        black_box(f(s));
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    let stats = Stats { name: name.to_owned(), samples };
    stats.print();
    stats
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

/// An engine with the sandbox and pause container created, as when the app container comes.
fn prepared(rego: &str) -> PolicyEngine {
    let mut e = PolicyEngine::from_rego(rego, None).unwrap();
    assert!(e.evaluate("CreateSandboxRequest", &json(SANDBOX)).unwrap().allowed);
    assert!(e.evaluate("CreateContainerRequest", &json(PAUSE)).unwrap().allowed);
    e
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n_load, n_eval) = if quick { (20, 200) } else { (100, 2000) };
    println!(
        "policy: {} bytes / {} lines; CreateContainerRequest input {} bytes",
        SAMPLE.len(),
        SAMPLE.lines().count(),
        APP.len()
    );

    println!("-- load (parse + analyse)");
    measure("load allow-all.rego (baseline)", n_load, || (), |()| {
        PolicyEngine::from_rego(builtin::ALLOW_ALL, None).unwrap()
    });
    let load = measure("load sample-pod.rego", n_load, || (), |()| PolicyEngine::from_rego(SAMPLE, None).unwrap());

    let app = json(APP);
    let exec = json(EXEC);
    let read = json(READ);
    let mut bad_image = app.clone();
    bad_image["OCI"]["Annotations"]["io.kubernetes.cri.image-name"] =
        serde_json::Value::from(format!("ghcr.io/example/shop-api@sha256:{}", "0".repeat(64)));

    println!("-- evaluate: allow-all baseline");
    let mut base = prepared(builtin::ALLOW_ALL);
    measure("allow-all CreateContainerRequest", n_eval, || (), |()| {
        base.evaluate("CreateContainerRequest", &app).unwrap()
    });
    measure("allow-all ExecProcessRequest", n_eval, || (), |()| base.evaluate("ExecProcessRequest", &exec).unwrap());
    measure("allow-all ReadStreamRequest", n_eval, || (), |()| base.evaluate("ReadStreamRequest", &read).unwrap());

    println!("-- evaluate: sample-pod policy");
    let ready = prepared(SAMPLE);
    // Allowed creation: the rule's ops record the container in pstate (state update included).
    let create = measure(
        "CreateContainerRequest allowed (+ pstate ops)",
        n_eval,
        || ready.clone(),
        |mut e| {
            let d = e.evaluate("CreateContainerRequest", &app).unwrap();
            assert!(d.allowed);
            e
        },
    );
    // The same rule work without the state commit: the rule renamed, wrapped in a bool rule.
    let no_ops = SAMPLE.replacen(
        "CreateContainerRequest := {\"allowed\": true, \"ops\": ops} if {",
        "CreateContainerRequest if create_container.allowed\n\ncreate_container := {\"allowed\": true, \"ops\": ops} if {",
        1,
    );
    assert_ne!(no_ops, SAMPLE);
    let mut rule_only = prepared(&no_ops);
    measure("CreateContainerRequest allowed, rule only (no commit)", n_eval, || (), |()| {
        assert!(rule_only.evaluate("CreateContainerRequest", &app).unwrap().allowed);
    });
    let mut e = ready.clone();
    measure("CreateContainerRequest denied (image digest)", n_eval, || (), |()| {
        let d = e.evaluate("CreateContainerRequest", &bad_image).unwrap();
        assert!(!d.allowed);
    });
    measure("CreateContainerRequest allowed, JSON text input", n_eval, || ready.clone(), |mut e| {
        assert!(e.evaluate_json("CreateContainerRequest", APP).unwrap().allowed);
        e
    });
    let mut running = ready.clone();
    assert!(running.evaluate("CreateContainerRequest", &app).unwrap().allowed);
    let exec_stats = measure("ExecProcessRequest allowed", n_eval, || (), |()| {
        assert!(running.evaluate("ExecProcessRequest", &exec).unwrap().allowed);
    });
    let read_stats = measure("ReadStreamRequest allowed", n_eval, || (), |()| {
        assert!(running.evaluate("ReadStreamRequest", &read).unwrap().allowed);
    });

    println!("-- explain (denial diagnosis, not on the request path)");
    measure("explain CreateContainerRequest denied", (n_eval / 10).max(20), || (), |()| {
        e.explain("CreateContainerRequest", &bad_image).unwrap()
    });

    let ok = |d: Duration, goal: Duration| if d < goal { "ok" } else { "MISSED" };
    println!("-- goals");
    println!("load p50 {:?} < 10 ms: {}", load.pct(0.5), ok(load.pct(0.5), Duration::from_millis(10)));
    println!(
        "CreateContainer p50 {:?} < 100 µs: {}",
        create.pct(0.5),
        ok(create.pct(0.5), Duration::from_micros(100))
    );
    println!("ExecProcess p50 {:?}, ReadStream p50 {:?}", exec_stats.pct(0.5), read_stats.pct(0.5));
}
