//! Pod start through CRI, runc vs kata-cc: the time from RunPodSandbox to the first line
//! a container prints (sandbox, create, start, and for kata-cc the VM boot and the image
//! pull inside the guest), the RSS of the shim serving the pod, and the phases the kata-cc
//! shim logs (`kata-cc timing: phase=<name> ms=<n>` lines in containerd's log).
//!
//! ```sh
//! cargo build --release -p kata-cc-shim            # the shim the bench finds (else debug)
//! cargo bench -p kata-cc-tests --bench pod_start   # as root
//! KATA_CC_BENCH_RUNS=10 KATA_CC_BENCH_RUNTIMES=runc cargo bench -p kata-cc-tests --bench pod_start
//! ```
//! Uses the private test containerd (`tests/containerd/start.sh`); the image is pulled on
//! the host before the first run (kata-cc pulls it again inside each pod's VM, as it would
//! in production). Runs are sequential, so the shim log lines between a pod's
//! RunPodSandbox and its first output line belong to that pod.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kata_cc_tests::cri::{containerd, rpc_timeout, shim_of, timing_phases, Cri, Pod, KATA_CC, RUNC};

struct Run {
    total: Duration,
    sandbox: Duration,
    shim_rss_kib: Option<u64>,
    phases: Vec<(String, u64)>,
}

async fn one_run(cri: &mut Cri, handler: &str) -> Run {
    let ctrd = containerd();
    let log_from = ctrd.log_len();
    let t0 = Instant::now();
    let pod = Pod::run(cri, &format!("bench-{handler}"), handler).await;
    let sandbox = t0.elapsed();
    pod.create_start(
        cri,
        "c1",
        &["/bin/sh", "-c", "echo first-line; exec /bin/busybox sleep 3600"],
    )
    .await;
    pod.wait_log_line("c1", |l| l == "first-line", rpc_timeout(handler));
    let total = t0.elapsed();
    let shim_rss_kib = shim_of(&pod.id).and_then(|p| p.rss_kib());
    let phases = timing_phases(&ctrd.log_since(log_from), None);
    pod.stop_remove(cri).await;
    Run {
        total,
        sandbox,
        shim_rss_kib,
        phases,
    }
}

fn pct<T: Copy + Ord>(mut v: Vec<T>) -> Option<(T, T, T)> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    Some((v[(v.len() - 1) / 2], v[0], v[v.len() - 1]))
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn main() {
    let runs: usize = std::env::var("KATA_CC_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let handlers: Vec<String> = std::env::var("KATA_CC_BENCH_RUNTIMES")
        .unwrap_or_else(|_| format!("{RUNC},{KATA_CC}"))
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let ctrd = containerd();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut results: Vec<(String, Result<Vec<Run>, String>)> = Vec::new();
    for handler in &handlers {
        if handler == KATA_CC && ctrd.shim.is_none() {
            results.push((
                handler.clone(),
                Err("no shim binary: cargo build --release -p kata-cc-shim".into()),
            ));
            continue;
        }
        if let Some(shim) = ctrd.shim.as_ref().filter(|_| handler == KATA_CC) {
            eprintln!("kata-cc shim: {}", shim.display());
        }
        let h = handler.clone();
        let measured = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(async {
                let mut cri = Cri::connect(&ctrd.sock).await;
                cri.pull(&ctrd.busybox_image).await;
                let mut v = Vec::new();
                for i in 0..runs {
                    let r = one_run(&mut cri, &h).await;
                    eprintln!("{h} run {}/{runs}: {} ms", i + 1, ms(r.total));
                    v.push(r);
                }
                v
            })
        }));
        let res = measured.map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        });
        results.push((handler.clone(), res));
    }

    println!();
    println!("pod start = RunPodSandbox -> first output line of the container; {runs} run(s) per runtime");
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>14} {:>16}",
        "runtime", "p50 ms", "min ms", "max ms", "sandbox p50 ms", "shim RSS p50 KiB"
    );
    let mut failed = false;
    for (handler, res) in &results {
        match res {
            Ok(v) => {
                let (p50, min, max) = pct(v.iter().map(|r| r.total).collect()).unwrap();
                let (sb, _, _) = pct(v.iter().map(|r| r.sandbox).collect()).unwrap();
                let rss = pct(v.iter().filter_map(|r| r.shim_rss_kib).collect())
                    .map(|(p, _, _)| p.to_string())
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{handler:<10} {:>9} {:>9} {:>9} {:>14} {:>16}",
                    ms(p50),
                    ms(min),
                    ms(max),
                    ms(sb),
                    rss
                );
            }
            Err(e) => {
                failed = true;
                let first = e.lines().next().unwrap_or("");
                println!("{handler:<10} FAILED: {first}");
            }
        }
    }
    for (handler, res) in &results {
        let Ok(v) = res else { continue };
        if handler != KATA_CC {
            continue;
        }
        // Phase -> values over the runs, in first-seen order.
        let mut order: Vec<String> = Vec::new();
        let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for r in v {
            for (p, m) in &r.phases {
                if !by.contains_key(p) {
                    order.push(p.clone());
                }
                by.entry(p.clone()).or_default().push(*m);
            }
        }
        if order.is_empty() {
            println!(
                "{handler} phases: none logged (no `kata-cc timing: phase=.. ms=..` lines in {})",
                ctrd.log.display()
            );
            continue;
        }
        println!("{handler} phases from the shim log (ms; p50 / min / max over the runs that logged them):");
        for p in order {
            let vals = by.remove(&p).unwrap();
            let n = vals.len();
            let (p50, min, max) = pct(vals).unwrap();
            println!("  {p:<24} {p50:>8} {min:>8} {max:>8}   ({n} value(s))");
        }
    }
    if failed {
        for (handler, res) in &results {
            if let Err(e) = res {
                eprintln!("\n{handler} failed:\n{e}");
            }
        }
        std::process::exit(1);
    }
}
