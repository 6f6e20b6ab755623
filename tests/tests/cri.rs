//! The CRI path end to end: a private containerd (`tests/containerd/start.sh`) driven over
//! its CRI socket as the kubelet would, for the runc baseline and for kata-cc (one VM per
//! pod, the image pulled inside the guest).
//!
//! Each lifecycle test: RunPodSandbox, CreateContainer + StartContainer for three
//! containers, the container log, ExecSync, ContainerStats, exit codes, StopContainer,
//! RemoveContainer, StopPodSandbox, RemovePodSandbox, and nothing left on the host. Two
//! containers of a pod share its network (IP, hostname) and, for kata-cc, its VM: the same
//! guest kernel (the test image's, not the host's) and boot id.
//!
//! Crash tests (kata-cc): the shim killed with SIGKILL, and QEMU killed with SIGKILL; in
//! both the pod's containers are reported exited, the pod can be stopped and removed, and
//! no QEMU, vhost-device-vsock or shim process of the pod is left.
//!
//! The kata-cc tests need the shim built (`cargo build -p kata-cc-shim`), the test guest
//! image (`deploy/guest/build-image.sh --variant test`) and QEMU + vhost-device-vsock
//! (`hypervisor/tests/setup-host.sh`). Run as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use k8s_cri::v1 as pb;
use kata_cc_tests::cri::{
    containerd, host_boot_id, host_kernel_release, kill9, processes_mentioning, read_cri_log, rpc_timeout, shim_of,
    wait_nothing_left, within, Cri, Pod, KATA_CC, RUNC,
};

const SLEEP: &[&str] = &["/bin/busybox", "sleep", "3600"];

/// The full lifecycle of a two-container pod on `handler`.
async fn pod_lifecycle(handler: &str) {
    let ctrd = containerd();
    let guest_kernel = (handler == KATA_CC).then(|| {
        ctrd.require_shim();
        kata_cc_tests::guest_image().kernel_release
    });
    let host_kernel = host_kernel_release();
    let mut cri = Cri::connect(&ctrd.sock).await;
    cri.pull(&ctrd.busybox_image).await;
    let slow = rpc_timeout(handler);

    let pod = Pod::run(&mut cri, &format!("cri-{handler}"), handler).await;
    let status = cri.pod_status(&pod.id).await;
    assert_eq!(status.state, pb::PodSandboxState::SandboxReady as i32, "{status:?}");
    let pod_ip = status.network.map(|n| n.ip).unwrap_or_default();
    assert!(
        pod_ip.starts_with("10.88."),
        "pod IP {pod_ip:?} not from the test network 10.88.0.0/16"
    );

    // c1 writes to its log (stdout and stderr, the image's env), then sleeps; c2 sleeps.
    let c1 = pod
        .create_start(
            &mut cri,
            "c1",
            &["/bin/sh", "-c", "echo hello-from-c1; echo to-stderr >&2; echo kernel=$(/bin/busybox uname -r); echo HELLO=$HELLO; exec /bin/busybox sleep 3600"],
        )
        .await;
    let c2 = pod.create_start(&mut cri, "c2", SLEEP).await;
    pod.wait_log_line("c1", |l| l.starts_with("HELLO="), slow);
    let log = read_cri_log(&pod.log_path("c1"));
    let has = |stream: &str, line: &str| log.iter().any(|(s, l)| s == stream && l == line);
    assert!(has("stdout", "hello-from-c1"), "c1 log: {log:?}");
    assert!(has("stderr", "to-stderr"), "c1 log: {log:?}");
    assert!(
        has("stdout", "HELLO=world"),
        "the image config's Env is not applied; c1 log: {log:?}"
    );

    // Same kernel and boot id in both containers: the VM's (kata-cc) or the host's (runc).
    let k1 = cri.exec_ok(&c1, &["/bin/busybox", "uname", "-r"]).await;
    let k2 = cri.exec_ok(&c2, &["/bin/busybox", "uname", "-r"]).await;
    assert_eq!(k1, k2, "the two containers of one pod run on different kernels");
    assert!(has("stdout", &format!("kernel={k1}")), "c1 log: {log:?}");
    let b1 = cri.exec_ok(&c1, &["/bin/cat", "/proc/sys/kernel/random/boot_id"]).await;
    let b2 = cri.exec_ok(&c2, &["/bin/cat", "/proc/sys/kernel/random/boot_id"]).await;
    assert_eq!(b1, b2, "the two containers of one pod do not share a kernel instance");
    match &guest_kernel {
        Some(guest) => {
            assert_eq!(&k1, guest, "kata-cc container does not run the test guest kernel");
            assert_ne!(k1, host_kernel, "kata-cc container runs on the host kernel");
            assert_ne!(b1, host_boot_id(), "kata-cc container shares the host's boot id");
        }
        None => {
            assert_eq!(k1, host_kernel);
            assert_eq!(b1, host_boot_id());
        }
    }

    // One network: the pod's hostname and IP in both.
    for c in [&c1, &c2] {
        assert_eq!(cri.exec_ok(c, &["/bin/busybox", "hostname"]).await, pod.name);
        let addrs = cri
            .exec_ok(c, &["/bin/busybox", "ip", "-4", "-o", "addr", "show"])
            .await;
        assert!(
            addrs.contains(&format!("inet {pod_ip}/")),
            "pod IP {pod_ip} not in {c}: {addrs}"
        );
    }

    // ExecSync: exit status and stderr.
    let (out, err, code) = cri
        .exec_sync(&c2, &["/bin/sh", "-c", "echo out; echo err >&2; exit 7"], 60)
        .await;
    assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", 7));

    // ContainerStats.
    let stats = cri.container_stats(&c1).await;
    assert_eq!(
        stats.attributes.as_ref().map(|a| a.id.as_str()),
        Some(c1.as_str()),
        "{stats:?}"
    );
    let ws = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value);
    assert!(ws.is_some_and(|v| v > 0), "no memory working set in {stats:?}");
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map(|v| v.value);
    assert!(cpu.is_some_and(|v| v > 0), "no CPU usage in {stats:?}");

    // A container that exits by itself, with its status.
    let c3 = pod
        .create_start(&mut cri, "c3", &["/bin/sh", "-c", "echo bye; exit 3"])
        .await;
    let st = cri.wait_exited(&c3, slow).await;
    assert_eq!(st.exit_code, 3, "{st:?}");
    pod.wait_log_line("c3", |l| l == "bye", Duration::from_secs(30));

    // StopContainer (sleep as PID 1 ignores SIGTERM: killed after the grace period).
    let req = pb::StopContainerRequest {
        container_id: c1.clone(),
        timeout: 2,
    };
    within(slow, "StopContainer", cri.rt.stop_container(req)).await.unwrap();
    let st = cri.container_status(&c1).await;
    assert_eq!(st.state, pb::ContainerState::ContainerExited as i32, "{st:?}");
    assert_ne!(st.exit_code, 0, "{st:?}");
    for c in [&c1, &c3] {
        let req = pb::RemoveContainerRequest {
            container_id: c.clone(),
        };
        within(slow, "RemoveContainer", cri.rt.remove_container(req))
            .await
            .unwrap();
    }
    let filter = pb::ContainerFilter {
        pod_sandbox_id: pod.id.clone(),
        ..Default::default()
    };
    let left = cri
        .rt
        .list_containers(pb::ListContainersRequest { filter: Some(filter) })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = left.containers.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, [c2.as_str()], "after removing c1 and c3");
    // The pod goes on with c2.
    assert_eq!(
        cri.exec_ok(&c2, &["/bin/busybox", "echo", "still-here"]).await,
        "still-here"
    );

    let id = pod.id.clone();
    pod.stop_remove(&mut cri).await;
    let err = cri
        .rt
        .pod_sandbox_status(pb::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await;
    assert!(err.is_err(), "pod {id} still known after RemovePodSandbox");
    wait_nothing_left(&id, Duration::from_secs(60));
}

#[tokio::test]
async fn runc_pod_lifecycle() {
    pod_lifecycle(RUNC).await;
}

#[tokio::test]
async fn kata_cc_pod_lifecycle() {
    pod_lifecycle(KATA_CC).await;
}

/// A kata-cc pod with one sleeping container that has printed `ready`; returns it and the
/// container id, after checking its VM processes can be found by the sandbox id.
async fn ready_kata_pod(cri: &mut Cri, prefix: &str) -> (Pod, String) {
    containerd().require_shim();
    cri.pull(&containerd().busybox_image).await;
    let pod = Pod::run(cri, prefix, KATA_CC).await;
    let c = pod
        .create_start(
            cri,
            "c1",
            &["/bin/sh", "-c", "echo ready; exec /bin/busybox sleep 3600"],
        )
        .await;
    pod.wait_log_line("c1", |l| l == "ready", rpc_timeout(KATA_CC));
    let procs = processes_mentioning(&pod.id);
    for prog in ["qemu-system", "vhost-device-vsock"] {
        assert!(
            procs.iter().any(|p| p.program().starts_with(prog)),
            "no {prog} process whose argv mentions sandbox {} (the shim must name the pod's VM files after it): {procs:?}",
            pod.id
        );
    }
    (pod, c)
}

#[tokio::test]
async fn kata_cc_shim_killed_pod_cleans_up() {
    let mut cri = Cri::connect(&containerd().sock).await;
    let (pod, c) = ready_kata_pod(&mut cri, "cri-shim-kill").await;
    let shim = shim_of(&pod.id).unwrap_or_else(|| panic!("no shim process with -id {}", pod.id));
    assert!(shim.program().contains("kata-cc"), "{shim:?}");
    kill9(shim.pid);

    // containerd notices the dead shim: the task is reported exited.
    cri.wait_exited(&c, Duration::from_secs(120)).await;
    let id = pod.id.clone();
    pod.stop_remove_after_shim_death(&mut cri).await;
    wait_nothing_left(&id, Duration::from_secs(120));
}

#[tokio::test]
async fn kata_cc_qemu_killed_containers_exit_and_pod_cleans_up() {
    let mut cri = Cri::connect(&containerd().sock).await;
    let (pod, c) = ready_kata_pod(&mut cri, "cri-qemu-kill").await;
    let qemu = processes_mentioning(&pod.id)
        .into_iter()
        .find(|p| p.program().starts_with("qemu-system"))
        .unwrap();
    kill9(qemu.pid);

    let st = cri.wait_exited(&c, Duration::from_secs(180)).await;
    assert_ne!(
        st.exit_code, 0,
        "a container whose VM died must not report success: {st:?}"
    );
    // The sandbox is reported not ready.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let s = cri.pod_status(&pod.id).await;
        if s.state == pb::PodSandboxState::SandboxNotready as i32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pod still ready after its VM died: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let id = pod.id.clone();
    pod.stop_remove(&mut cri).await;
    wait_nothing_left(&id, Duration::from_secs(120));
}
