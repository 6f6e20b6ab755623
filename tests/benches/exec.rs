//! Exec round trip through the CRI streaming path, runc vs kata-cc in the same run: the
//! CRI `Exec` call, the websocket to containerd's streaming URL (`v4.channel.k8s.io`, as
//! `kubectl exec` speaks it), `/bin/true` in the container, and the exit status frame.
//! For kata-cc that is shim → agent ExecProcess/WaitProcess over vsock in the pod VM.
//!
//! ```sh
//! cargo bench -p kata-cc-tests --bench exec                       # as root
//! KATA_CC_BENCH_RUNS=50 KATA_CC_BENCH_RUNTIMES=kata-cc cargo bench -p kata-cc-tests --bench exec
//! ```
//! Uses the private test containerd (`tests/containerd/start.sh`) and the shim it finds
//! (as `tests/tests/cri.rs`). Per runtime: one pod, one `sleep` container, 3 warm-up
//! round trips, then `KATA_CC_BENCH_RUNS` (default 20) measured ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use kata_cc_tests::cri::{containerd, Cri, Pod, KATA_CC, RUNC};
use kata_cc_tests::streaming::{exec_session, Exit};

const WARMUP: usize = 3;

async fn round_trips(cri: &mut Cri, handler: &str, runs: usize) -> Vec<f64> {
    let pod = Pod::run(cri, &format!("bench-exec-{handler}"), handler).await;
    let id = pod
        .create_start(cri, "plain", &["/bin/busybox", "sleep", "3600"])
        .await;
    let mut ms = Vec::new();
    for i in 0..WARMUP + runs {
        let t0 = Instant::now();
        let mut s = exec_session(cri, &id, &["/bin/true"], false, false).await;
        assert_eq!(s.finish(Duration::from_secs(120)).await, Exit::Success, "{handler}");
        if i >= WARMUP {
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    pod.stop_remove(cri).await;
    ms.sort_by(f64::total_cmp);
    ms
}

fn pct(v: &[f64], p: usize) -> f64 {
    v[(v.len() * p / 100).min(v.len() - 1)]
}

fn main() {
    let runs: usize = std::env::var("KATA_CC_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20).max(1);
    let wanted = std::env::var("KATA_CC_BENCH_RUNTIMES").unwrap_or_else(|_| format!("{RUNC} {KATA_CC}"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let ctrd = containerd();
        let mut cri = Cri::connect(&ctrd.sock).await;
        cri.pull(&ctrd.busybox_image).await;
        let mut rows = Vec::new();
        for h in [RUNC, KATA_CC] {
            if !wanted.split_whitespace().any(|w| w == h) {
                continue;
            }
            if h == KATA_CC {
                ctrd.require_shim();
            }
            rows.push((h, round_trips(&mut cri, h, runs).await));
        }
        println!("exec round trip through the CRI streaming URL ({runs} runs after {WARMUP} warm-up; ms)");
        println!("{:<8} {:>8} {:>8} {:>8} {:>8}", "runtime", "min", "p50", "p90", "max");
        for (h, v) in &rows {
            println!("{h:<8} {:>8.1} {:>8.1} {:>8.1} {:>8.1}", v[0], pct(v, 50), pct(v, 90), v[v.len() - 1]);
        }
    });
}
