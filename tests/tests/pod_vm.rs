//! The pod VM end to end under QEMU/TCG: boot the test guest image, reach the agent over
//! hybrid vsock, run containers in the VM (cgroup v2), and the failure paths.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use hypervisor::{CrashKind, VmExit};
use kata_cc_tests::{create_start, guest_spec as spec, read_stdout_all as read_all, wait_status as wait, PodVm};
use oci_spec::runtime::{LinuxBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};
use protocols::agent as pb;
use protocols::protobuf::MessageField;
use protocols::context_with;

#[tokio::test]
async fn container_in_vm_sees_guest_kernel_and_cgroup_v2_limits() {
    let pod = PodVm::boot("run", 512).await;
    eprintln!("agent ready after {:?}", pod.ready_after);
    let a = &pod.agent;

    // A container prints the guest's kernel release.
    create_start(a, "uname", &spec(&["uname", "-r"])).await;
    assert_eq!(read_all(a, "uname", "").await.trim(), pod.image.kernel_release);
    assert_eq!(wait(a, "uname", "").await, 0);

    // Exec into a running container.
    create_start(a, "svc", &spec(&["sleep", "1000"])).await;
    let mut p = protocols::oci::Process::new();
    p.Args = vec!["sh".into(), "-c".into(), "uname -r; cat /proc/self/cgroup".into()];
    p.Cwd = "/".into();
    p.Env = vec!["PATH=/bin".into()];
    p.User = MessageField::some(protocols::oci::User::new());
    let mut e = pb::ExecProcessRequest::new();
    e.container_id = "svc".into();
    e.exec_id = "e1".into();
    e.process = MessageField::some(p);
    a.agent().exec_process(a.context(), &e).await.unwrap();
    let out = read_all(a, "svc", "e1").await;
    assert!(out.starts_with(&pod.image.kernel_release), "{out:?}");
    assert!(out.contains("0::/"), "cgroup v2 expected in the guest: {out:?}");
    assert_eq!(wait(a, "svc", "e1").await, 0);

    // Stats come from cgroup v2.
    let mut s = pb::StatsContainerRequest::new();
    s.container_id = "svc".into();
    let st = a.agent().stats_container(a.context(), &s).await.unwrap();
    assert!(st.cgroup_stats.memory_stats.usage.usage > 0, "{st:?}");
    assert!(st.cgroup_stats.pids_stats.current >= 1, "{st:?}");

    // A memory limit is enforced on cgroup v2 and the OOM kill is reported.
    let mut oom = spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=2"]);
    let memory = LinuxMemoryBuilder::default().limit(32 * 1024 * 1024).swap(32 * 1024 * 1024).build().unwrap();
    let mut linux = oom.linux().clone().unwrap_or_else(|| LinuxBuilder::default().build().unwrap());
    linux.set_resources(Some(LinuxResourcesBuilder::default().memory(memory).build().unwrap()));
    oom.set_linux(Some(linux));
    let ev = tokio::spawn({
        let a = a.clone();
        async move { a.agent().get_oom_event(context_with(Duration::from_secs(60)), &pb::GetOOMEventRequest::new()).await }
    });
    create_start(a, "oom", &oom).await;
    assert_eq!(wait(a, "oom", "").await, 137);
    assert_eq!(ev.await.unwrap().unwrap().container_id, "oom");

    // The sandbox's pause container from the guest image: runs until SIGTERM, exits 0.
    let mut pause = spec(&["/pause"]);
    let mut root = pause.root().clone().unwrap();
    root.set_path(PathBuf::from("/run/kata-containers/shared/containers/pause/rootfs"));
    pause.set_root(Some(root));
    create_start(a, "pause", &pause).await;
    let mut w = pb::WaitProcessRequest::new();
    w.container_id = "pause".into();
    let still = tokio::time::timeout(Duration::from_millis(500), a.agent().wait_process(context_with(Duration::from_secs(60)), &w)).await;
    assert!(still.is_err(), "pause exited on its own: {still:?}");
    let mut sig = pb::SignalProcessRequest::new();
    sig.container_id = "pause".into();
    sig.signal = 15;
    a.agent().signal_process(a.context(), &sig).await.unwrap();
    assert_eq!(wait(a, "pause", "").await, 0);

    for id in ["uname", "svc", "oom", "pause"] {
        let mut r = pb::RemoveContainerRequest::new();
        r.container_id = id.into();
        a.agent().remove_container(a.context(), &r).await.unwrap();
    }
    let exit = pod.vm.shutdown(Duration::from_secs(5)).await.unwrap();
    eprintln!("shutdown: {exit}");
    assert!(!pod.dir.path().join("state").exists(), "state dir left behind");
}

#[tokio::test]
async fn killing_qemu_surfaces_as_crash_and_agent_errors() {
    let pod = PodVm::boot("kill", 256).await;
    create_start(&pod.agent, "s", &spec(&["sleep", "1000"])).await;
    let pid = pod.vm.pid().unwrap();
    // A long poll in flight when the VM dies must fail, not hang.
    let waiter = tokio::spawn({
        let a = pod.agent.clone();
        async move {
            let mut r = pb::WaitProcessRequest::new();
            r.container_id = "s".into();
            a.agent().wait_process(context_with(Duration::from_secs(60)), &r).await
        }
    });
    std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(15), pod.vm.wait()).await.unwrap();
    assert!(matches!(exit, VmExit::Crashed { kind: CrashKind::QemuExited, .. }), "{exit}");
    let r = tokio::time::timeout(Duration::from_secs(15), waiter).await.unwrap().unwrap();
    assert!(r.is_err(), "WaitProcess should fail when the VM dies: {r:?}");
    assert!(!pod.dir.path().join("state").exists(), "state dir left behind");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}
