//! Pod VM boot, measured in one run on this host's accelerator (TCG here):
//! (a) the floor: QEMU + the same kernel + an initramfs whose /init only prints a marker;
//! (b) our pod VM from launch to the agent answering Health.Check;
//! plus host memory (RSS of QEMU + vhost-device-vsock) per pod VM.
//!
//! `cargo bench -p kata-cc-tests --bench boot` (root; needs the test guest image and the
//! tools from hypervisor/tests/setup-host.sh). `KATA_CC_BENCH_ITERS` (default 5).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hypervisor::{Hypervisor, VmSpec};
use kata_cc_tests::{guest_image, qemu_hypervisor, PodVm};

const MARKER: &str = "KATA_CC_FLOOR_BOOTED";

/// An initramfs with a static busybox and an /init that prints the marker and powers off.
fn floor_initramfs(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("floor-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::fs::write(root.join("init"), format!("#!/bin/busybox sh\n/bin/busybox echo {MARKER}\n/bin/busybox poweroff -f\n")).unwrap();
    Command::new("chmod").arg("755").arg(root.join("init")).status().unwrap();
    let out = dir.join("floor.cpio.gz");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("cd {} && find . | sort | cpio -o -H newc --quiet | gzip -n > {}", root.display(), out.display()))
        .status()
        .unwrap();
    assert!(st.success(), "building the floor initramfs needs cpio and gzip");
    out
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn pids_with_arg(needle: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&c).contains(needle) {
                v.push(pid);
            }
        }
    }
    v
}

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(v[v.len() / 2]), ms(v[0]), ms(v[v.len() - 1]))
}

fn main() {
    let iters: usize = std::env::var("KATA_CC_BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let image = guest_image();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let floor = floor_initramfs(dir.path());

    let mut floor_t = Vec::new();
    let mut ours_t = Vec::new();
    let mut rss = Vec::new();
    rt.block_on(async {
        for i in 0..iters {
            // (a) the floor, through the same hypervisor crate and QEMU flags.
            let d = tempfile::tempdir().unwrap();
            let mut spec = VmSpec::new(format!("floor{i}"), &image.kernel, d.path().join("state"));
            spec.initramfs = Some(floor.clone());
            spec.console_log = Some(d.path().join("console.log"));
            let t0 = Instant::now();
            let vm = qemu_hypervisor().start(spec).await.unwrap();
            loop {
                if std::fs::read_to_string(d.path().join("console.log")).unwrap_or_default().contains(MARKER) {
                    break;
                }
                assert!(t0.elapsed() < Duration::from_secs(120), "floor VM did not print the marker");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            floor_t.push(t0.elapsed());
            let _ = vm.shutdown(Duration::ZERO).await;

            // (b) our pod VM to agent ready.
            let pod = PodVm::boot(&format!("bench{i}"), 512).await;
            ours_t.push(pod.ready_after);
            let qemu = pod.vm.pid().unwrap();
            let state = pod.dir.path().join("state");
            let vhost: u64 = pids_with_arg(&state.display().to_string())
                .into_iter()
                .filter(|p| *p != qemu)
                .map(rss_kib)
                .sum();
            rss.push((rss_kib(qemu), vhost));
            let _ = pod.vm.shutdown(Duration::from_secs(2)).await;
        }
    });

    let (f50, fmin, fmax) = stats(floor_t);
    let (o50, omin, omax) = stats(ours_t);
    println!("pod VM boot, {iters} runs each, accelerator: TCG (this host has no usable KVM)");
    println!("{:<52} {:>9} {:>9} {:>9}", "(ms)", "median", "min", "max");
    println!("{:<52} {f50:9.0} {fmin:9.0} {fmax:9.0}", "(a) floor: kernel + /init marker");
    println!("{:<52} {o50:9.0} {omin:9.0} {omax:9.0}", "(b) kata-cc pod VM: launch -> Health.Check answered");
    println!("{:<52} {:9.2}", "ratio (b)/(a), median", o50 / f50);
    rss.sort();
    let (q, v) = rss[rss.len() / 2];
    println!("host memory per pod VM (median run): QEMU RSS {} MiB + vhost-device-vsock RSS {} MiB = {} MiB", q / 1024, v / 1024, (q + v) / 1024);
}
