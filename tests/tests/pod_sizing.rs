//! Pod VM sizing through the CRI: a pod whose `LinuxPodSandboxConfig.resources` carry
//! `limits: cpu 3, memory 3Gi` (what the kubelet sends: quota 300000 per 100000 µs,
//! 3221225472 bytes) boots a VM of 3 vCPUs and 3 GiB + `overhead_memory_mib`, seen from
//! inside the guest (`nproc`, `/proc/meminfo` through ExecSync); a pod without limits gets
//! the configuration's default size; a container whose own limit is larger than its pod's
//! VM is refused with the field, value and limit.
//!
//! containerd's CRI plugin turns those resources into the sandbox annotations
//! `io.kubernetes.cri.sandbox-cpu-quota/-cpu-period/-memory` from containerd 1.6.0 on
//! (pkg/cri/server/sandbox_run_linux.go in v1.6.x, internal/cri/server/podsandbox/
//! sandbox_run_linux.go in 2.x), so the same assertions hold on 1.6, 1.7 and 2.x.
//!
//! Needs what tests/tests/cri.rs needs (shim built, test guest image, QEMU). Run as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use k8s_cri::v1 as pb;
use kata_cc_tests::cri::{containerd, within, Cri, Pod, KATA_CC};

const SLEEP: &[&str] = &["/bin/busybox", "sleep", "3600"];
const GIB: i64 = 1 << 30;
/// The test configuration's sizing keys are the defaults (`hypervisor::sizing`).
const DEFAULT_VCPUS: u64 = 1;
const DEFAULT_MEMORY_MIB: u64 = 512;
const OVERHEAD_MEMORY_MIB: u64 = 256;

fn mem_total_kib(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {meminfo}"))
}

/// `phase=vm_boot ms=N` of pod `id` in the containerd log since `from`.
fn vm_boot_ms(log: &str, id: &str) -> Option<u64> {
    log.lines()
        .filter(|l| l.contains(&format!("pod={id} phase=vm_boot")))
        .find_map(|l| {
            l.split("ms=")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
}

/// Runs a pod (with `resources` if given), starts one container, and returns the guest's
/// nproc, MemTotal (KiB) and the VM boot time (ms), then removes the pod.
async fn guest_size(
    cri: &mut Cri,
    prefix: &str,
    resources: Option<pb::LinuxContainerResources>,
) -> (u64, u64, Option<u64>, String) {
    let ctrd = containerd();
    let from = ctrd.log_len();
    let pod = Pod::run_with(cri, prefix, KATA_CC, |c| {
        c.linux.as_mut().unwrap().resources = resources;
    })
    .await;
    let cid = pod.create_start(cri, "c", SLEEP).await;
    let nproc: u64 = cri
        .exec_ok(&cid, &["/bin/busybox", "nproc"])
        .await
        .trim()
        .parse()
        .unwrap();
    let meminfo = cri
        .exec_ok(&cid, &["/bin/busybox", "cat", "/proc/meminfo"])
        .await;
    let log = ctrd.log_since(from);
    let boot = vm_boot_ms(&log, &pod.id);
    let sizing = log
        .lines()
        .find(|l| l.contains("kata-cc sizing:") && l.contains(&pod.id))
        .unwrap_or("")
        .to_string();
    let id = pod.id.clone();
    // A container asking for more memory than the VM has is refused, naming the limit.
    let mut big = Pod::container_config("big", SLEEP);
    big.linux = Some(pb::LinuxContainerConfig {
        resources: Some(pb::LinuxContainerResources {
            memory_limit_in_bytes: 64 * GIB,
            ..Default::default()
        }),
        ..Default::default()
    });
    // CRI CreateContainer only records it; StartContainer creates the shim task.
    let big_id = pod.create(cri, big).await;
    let e = within(
        Duration::from_secs(120),
        "StartContainer big",
        cri.rt.start_container(pb::StartContainerRequest {
            container_id: big_id,
        }),
    )
    .await
    .expect_err("a container with a 64 GiB limit must not fit");
    let msg = e.message().to_string();
    assert!(
        msg.contains("linux.resources.memory.limit = 65536 MiB")
            && msg.contains("does not fit in the pod VM"),
        "{msg}"
    );
    pod.stop_remove(cri).await;
    eprintln!("pod {id}: {sizing}");
    (nproc, mem_total_kib(&meminfo), boot, sizing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_limits_size_the_vm_seen_from_the_guest() {
    let ctrd = containerd();
    ctrd.require_shim();
    let mut cri = Cri::connect(&ctrd.sock).await;
    cri.pull(&ctrd.busybox_image).await;

    let limits = pb::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 300_000,
        cpu_shares: 3072,
        memory_limit_in_bytes: 3 * GIB,
        ..Default::default()
    };
    let (nproc, mem_kib, boot_sized, sizing) = guest_size(&mut cri, "sized", Some(limits)).await;
    let vm_mib = 3 * 1024 + OVERHEAD_MEMORY_MIB;
    eprintln!("sized pod: nproc={nproc} MemTotal={mem_kib} kB (VM {vm_mib} MiB) vm_boot_ms={boot_sized:?}");
    assert!(
        sizing.contains(&format!(
            "vcpus=3 memory_mib={vm_mib} from containerd sandbox annotations"
        )),
        "{sizing}"
    );
    assert_eq!(nproc, 3, "guest nproc of a cpu: 3 pod");
    // MemTotal is the VM's RAM less what the kernel reserves (its image, page tables).
    assert!(
        mem_kib >= 3 * 1024 * 1024,
        "MemTotal {mem_kib} kB < 3 GiB asked"
    );
    assert!(
        mem_kib <= vm_mib * 1024,
        "MemTotal {mem_kib} kB > the VM's {vm_mib} MiB"
    );

    let (nproc, mem_kib, boot_default, sizing) = guest_size(&mut cri, "unsized", None).await;
    eprintln!("default pod: nproc={nproc} MemTotal={mem_kib} kB vm_boot_ms={boot_default:?}");
    assert!(
        sizing.contains(&format!(
            "vcpus={DEFAULT_VCPUS} memory_mib={DEFAULT_MEMORY_MIB}"
        )),
        "{sizing}"
    );
    assert_eq!(nproc, DEFAULT_VCPUS);
    assert!(
        mem_kib <= DEFAULT_MEMORY_MIB * 1024 && mem_kib > DEFAULT_MEMORY_MIB * 1024 / 2,
        "MemTotal {mem_kib} kB"
    );
    eprintln!("kata-cc sizing figures: vm_boot_ms sized(3 vCPU, {vm_mib} MiB)={boot_sized:?} default=({boot_default:?})");
}
