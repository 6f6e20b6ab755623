//! Regression tests for the critest specs that kata-cc failed and runc passed (see
//! docs/critest.md): one pod per handler, through the test containerd's CRI, checking what
//! the critest specs check.
//!
//! - stopping a container: a PID 1 with a SIGTERM handler ends on SIGTERM; a PID 1 without
//!   one that is stopped right after its start (critest stops `top` before it installed its
//!   handler) ends at once on kata-cc, not after the grace period;
//! - seccomp RuntimeDefault: the profile loads ("failed to load seccomp context" before)
//!   and is in force in the container's init and in ExecSync processes (`Seccomp: 2`, the
//!   same number of filters and the same no_new_privs: exec'd processes had none before);
//! - an added capability (NET_ADMIN) is usable: a bridge can be made (`brctl addbr`, the
//!   guest kernel needs the bridge module);
//! - pod sysctls, safe (`kernel.shm_rmid_forced`) and unsafe (`fs.mqueue.msg_max`).
//!
//! The kata-cc test needs the shim built (`cargo build -p kata-cc-shim`), the test guest
//! image and QEMU + vhost-device-vsock. Run as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1 as pb;
use kata_cc_tests::cri::{containerd, rpc_timeout, within, Cri, Pod, KATA_CC, RUNC};

fn security(c: &mut pb::ContainerConfig) -> &mut pb::LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// StopContainer with critest's 60 s grace period; returns how long it took and the
/// container's exit code.
async fn stop(cri: &mut Cri, id: &str) -> (Duration, i32) {
    let t0 = Instant::now();
    let req = pb::StopContainerRequest {
        container_id: id.into(),
        timeout: 60,
    };
    within(
        Duration::from_secs(90),
        "StopContainer",
        cri.rt.stop_container(req),
    )
    .await
    .unwrap();
    let took = t0.elapsed();
    let st = cri.container_status(id).await;
    assert_eq!(
        st.state,
        pb::ContainerState::ContainerExited as i32,
        "{st:?}"
    );
    (took, st.exit_code)
}

async fn critest_regressions(handler: &str) {
    let ctrd = containerd();
    if handler == KATA_CC {
        ctrd.require_shim();
    }
    let mut cri = Cri::connect(&ctrd.sock).await;
    cri.pull(&ctrd.busybox_image).await;
    let pod = Pod::run_with(&mut cri, &format!("critest-{handler}"), handler, |p| {
        p.linux.get_or_insert_with(Default::default).sysctls = HashMap::from([
            ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
            ("fs.mqueue.msg_max".to_string(), "100".to_string()),
        ]);
    })
    .await;

    // Graceful stop: a PID 1 with a SIGTERM handler exits 42 on SIGTERM.
    let c = pod
        .create_start(
            &mut cri,
            "term",
            &[
                "/bin/sh",
                "-c",
                "trap 'exit 42' TERM; echo ready; while :; do /bin/busybox sleep 1 & wait $!; done",
            ],
        )
        .await;
    pod.wait_log_line("term", |l| l == "ready", rpc_timeout(handler));
    let (took, code) = stop(&mut cri, &c).await;
    assert!(
        took < Duration::from_secs(30) && code == 42,
        "{handler}: StopContainer took {took:?}, exit code {code} (42: the SIGTERM trap ran)"
    );

    // Pod sysctls, in a container of the pod (its IPC namespace for fs.mqueue).
    let c = pod
        .create_start(&mut cri, "sysctl", &["/bin/busybox", "sleep", "3600"])
        .await;
    for (path, want) in [
        ("/proc/sys/kernel/shm_rmid_forced", "1"),
        ("/proc/sys/fs/mqueue/msg_max", "100"),
    ] {
        assert_eq!(
            cri.exec_ok(&c, &["/bin/cat", path]).await.trim(),
            want,
            "{handler}: {path}"
        );
    }

    // seccomp RuntimeDefault: loads and is in force.
    let mut cfg = Pod::container_config("seccomp", &["/bin/busybox", "sleep", "3600"]);
    security(&mut cfg).seccomp = Some(pb::SecurityProfile {
        profile_type: pb::security_profile::ProfileType::RuntimeDefault as i32,
        ..Default::default()
    });
    let c = pod.create(&mut cri, cfg).await;
    pod.start(&mut cri, &c).await;
    let fields = "^(Seccomp|Seccomp_filters|NoNewPrivs):";
    let init = cri
        .exec_ok(
            &c,
            &["/bin/busybox", "grep", "-E", fields, "/proc/1/status"],
        )
        .await;
    let init: Vec<&str> = init.split_whitespace().collect();
    assert!(
        init.windows(2).any(|w| w == ["Seccomp:", "2"]),
        "{handler}: RuntimeDefault seccomp not in force in the init: {init:?}"
    );
    // The ExecSync process itself (grep reads its own status) has the same filter.
    let exec = cri
        .exec_ok(
            &c,
            &["/bin/busybox", "grep", "-E", fields, "/proc/self/status"],
        )
        .await;
    assert_eq!(
        exec.split_whitespace().collect::<Vec<_>>(),
        init,
        "{handler}: an ExecSync process has not the container's seccomp filter"
    );

    // An added capability is usable: NET_ADMIN makes a bridge.
    let mut cfg = Pod::container_config("netadmin", &["/bin/busybox", "sleep", "3600"]);
    security(&mut cfg).capabilities = Some(pb::Capability {
        add_capabilities: vec!["NET_ADMIN".into()],
        ..Default::default()
    });
    let c = pod.create(&mut cri, cfg).await;
    pod.start(&mut cri, &c).await;
    let (out, err, code) = cri
        .exec_sync(&c, &["/bin/busybox", "brctl", "addbr", "foobar"], 60)
        .await;
    assert_eq!(
        code, 0,
        "{handler}: brctl addbr with NET_ADMIN: {out} {err}"
    );

    // A PID 1 without a SIGTERM handler, stopped right after its start. runc: the kernel
    // drops the SIGTERM and the stop waits the grace period (60 s), so kata-cc only.
    if handler == KATA_CC {
        let c = pod
            .create_start(&mut cri, "nohandler", &["/bin/busybox", "sleep", "3600"])
            .await;
        let (took, code) = stop(&mut cri, &c).await;
        assert!(
            took < Duration::from_secs(30) && code == 137,
            "{handler}: StopContainer took {took:?}, exit code {code} (137: SIGKILL at once)"
        );
    }
    pod.stop_remove(&mut cri).await;
}

#[tokio::test]
async fn critest_regressions_runc() {
    critest_regressions(RUNC).await;
}

#[tokio::test]
async fn critest_regressions_kata_cc() {
    critest_regressions(KATA_CC).await;
}
