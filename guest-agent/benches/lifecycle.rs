//! Container lifecycle and exec latency: the kata-cc agent (over ttrpc on a unix socket)
//! side by side with Debian's `runc` on the same busybox rootfs, measured in one run.
//!
//! `cargo bench -p guest-agent --bench lifecycle` (as root; needs `runc` and
//! `busybox-static`). `KATA_CC_BENCH_ITERS` sets the iterations (default 40).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Spec;
use protocols::agent as pb;
use protocols::protobuf::MessageField;
use protocols::context_with;

fn spec(root: &Path, args: &[&str]) -> Spec {
    let mut spec = Spec::default();
    let mut r = spec.root().clone().unwrap();
    r.set_path(root.to_path_buf());
    r.set_readonly(Some(false));
    spec.set_root(Some(r));
    let mut p = spec.process().clone().unwrap();
    p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    p.set_terminal(Some(false));
    spec.set_process(Some(p));
    spec
}

struct Stats {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Stats {
    fn pct(&self, p: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        s[((s.len() as f64 - 1.0) * p).round() as usize]
    }
    fn mean(&self) -> Duration {
        self.samples.iter().sum::<Duration>() / self.samples.len() as u32
    }
}

fn ms(d: Duration) -> String {
    format!("{:8.2}", d.as_secs_f64() * 1000.0)
}

fn report(pairs: &[(&Stats, &Stats)]) {
    println!("\n{:<44} {:>8} {:>8} {:>8} {:>8}", "benchmark (ms)", "p50", "p90", "mean", "min");
    for (ours, base) in pairs {
        for s in [ours, base] {
            println!("{:<44} {} {} {} {}", s.name, ms(s.pct(0.5)), ms(s.pct(0.9)), ms(s.mean()), ms(s.pct(0.0)));
        }
        let ratio = ours.pct(0.5).as_secs_f64() / base.pct(0.5).as_secs_f64();
        println!("{:<44} {ratio:8.2}\n", "  ratio agent/runc (p50)");
    }
}

fn runc(args: &[&str]) {
    let st = Command::new("runc").args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit()).status().unwrap();
    assert!(st.success(), "runc {args:?} failed");
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test` run of benches passes nothing useful.
    let iters: usize = std::env::var("KATA_CC_BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    let rootfs = shared.join("bench/rootfs");
    common::busybox_rootfs(&rootfs);
    let rootfs = rootfs.canonicalize().unwrap();

    // runc bundle on the same rootfs.
    let bundle = dir.path().join("runc-bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec(&rootfs, &["true"])).unwrap()).unwrap();

    let mut agent = Command::new(common::AGENT_BIN)
        .args(common::agent_args(dir.path(), "/kata-cc-bench"))
        .spawn()
        .unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (run_ours, exec_ours) = rt.block_on(async {
        let c = common::agent_client(dir.path()).await;
        let a = c.agent();
        let ctx = || context_with(Duration::from_secs(30));
        let true_spec = protocols::convert::spec_to_grpc(&spec(&rootfs, &["true"]));

        let mut run = Vec::new();
        for i in 0..iters + 2 {
            let id = format!("b{i}");
            let t0 = Instant::now();
            let mut cr = pb::CreateContainerRequest::new();
            cr.container_id = id.clone();
            cr.OCI = MessageField::some(true_spec.clone());
            a.create_container(ctx(), &cr).await.unwrap();
            let mut st = pb::StartContainerRequest::new();
            st.container_id = id.clone();
            a.start_container(ctx(), &st).await.unwrap();
            let mut w = pb::WaitProcessRequest::new();
            w.container_id = id.clone();
            assert_eq!(a.wait_process(ctx(), &w).await.unwrap().status, 0);
            let mut rm = pb::RemoveContainerRequest::new();
            rm.container_id = id;
            a.remove_container(ctx(), &rm).await.unwrap();
            if i >= 2 {
                run.push(t0.elapsed());
            }
        }

        let mut cr = pb::CreateContainerRequest::new();
        cr.container_id = "svc".into();
        cr.OCI = MessageField::some(protocols::convert::spec_to_grpc(&spec(&rootfs, &["sleep", "100000"])));
        a.create_container(ctx(), &cr).await.unwrap();
        let mut st = pb::StartContainerRequest::new();
        st.container_id = "svc".into();
        a.start_container(ctx(), &st).await.unwrap();
        let mut exec = Vec::new();
        for i in 0..iters + 2 {
            let t0 = Instant::now();
            let mut p = protocols::oci::Process::new();
            p.Args = vec!["true".into()];
            p.Cwd = "/".into();
            p.Env = vec!["PATH=/bin".into()];
            p.User = MessageField::some(protocols::oci::User::new());
            let mut e = pb::ExecProcessRequest::new();
            e.container_id = "svc".into();
            e.exec_id = format!("e{i}");
            e.process = MessageField::some(p);
            a.exec_process(ctx(), &e).await.unwrap();
            let mut w = pb::WaitProcessRequest::new();
            w.container_id = "svc".into();
            w.exec_id = format!("e{i}");
            assert_eq!(a.wait_process(ctx(), &w).await.unwrap().status, 0);
            if i >= 2 {
                exec.push(t0.elapsed());
            }
        }
        let mut rm = pb::RemoveContainerRequest::new();
        rm.container_id = "svc".into();
        a.remove_container(ctx(), &rm).await.unwrap();
        (run, exec)
    });
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.id() as i32), nix::sys::signal::SIGTERM);
    let _ = agent.wait();

    // runc on the same bundle.
    let b = bundle.to_str().unwrap();
    let mut run_runc = Vec::new();
    for i in 0..iters + 2 {
        let id = format!("kata-cc-bench-{}-{i}", std::process::id());
        let t0 = Instant::now();
        runc(&["run", "--bundle", b, &id]);
        if i >= 2 {
            run_runc.push(t0.elapsed());
        }
    }
    let svc_bundle = dir.path().join("runc-svc");
    std::fs::create_dir_all(&svc_bundle).unwrap();
    std::fs::write(svc_bundle.join("config.json"), serde_json::to_vec(&spec(&rootfs, &["sleep", "100000"])).unwrap()).unwrap();
    let svc = format!("kata-cc-bench-svc-{}", std::process::id());
    runc(&["run", "--detach", "--bundle", svc_bundle.to_str().unwrap(), &svc]);
    let mut exec_runc = Vec::new();
    for i in 0..iters + 2 {
        let t0 = Instant::now();
        runc(&["exec", &svc, "true"]);
        if i >= 2 {
            exec_runc.push(t0.elapsed());
        }
    }
    runc(&["delete", "--force", &svc]);

    println!("iterations: {iters} (after 2 warm-up), rootfs: busybox-static, same bundle for both");
    let a_run = Stats { name: "agent create+start+wait+remove (/bin/true)", samples: run_ours };
    let r_run = Stats { name: "runc run (/bin/true)", samples: run_runc };
    let a_exec = Stats { name: "agent ExecProcess+WaitProcess (true)", samples: exec_ours };
    let r_exec = Stats { name: "runc exec (true)", samples: exec_runc };
    report(&[(&a_run, &r_run), (&a_exec, &r_exec)]);
}
