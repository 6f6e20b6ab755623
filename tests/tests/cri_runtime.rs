//! The rest of the CRI RuntimeService, for runc and kata-cc: Status and Version,
//! UpdateContainerResources (read back in the container's cgroup: the guest's for
//! kata-cc), ReopenContainerLog (the kubelet's log rotation), ContainerStats,
//! ListContainerStats (real numbers: working set > 0, CPU usage increasing across a busy
//! loop). And, for kata-cc with a policy generated from the pod's
//! YAML, an update beyond the pod spec's limits refused by the agent with the reason.
//!
//! Needs what tests/cri.rs needs (shim built, test guest image, QEMU). Run as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use k8s_cri::v1 as pb;
use kata_cc_tests::cri::{containerd, read_cri_log, unique_name, within, Cri, Pod, KATA_CC, POD_NAMESPACE, RUNC};

const MIB: i64 = 1024 * 1024;

/// Memory limit and CPU quota (cgroup v2 `memory.max`/`cpu.max`, or v1 files) as the
/// container sees its cgroup.
/// The container's own cgroup directory is either /sys/fs/cgroup (a cgroup namespace) or,
/// on v2 without one, /sys/fs/cgroup/<path from /proc/self/cgroup>.
const READ_LIMITS: &str = "d=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup); \
     for f in /sys/fs/cgroup $d; do [ -f $f/memory.max ] && g=$f; done; \
     if [ -n \"$g\" ]; then m=$(cat $g/memory.max); c=$(cat $g/cpu.max); \
     else m=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); \
     c=\"$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)\"; fi; \
     echo \"$m|$c\"";

fn resources(memory: i64, quota: i64, period: i64) -> pb::LinuxContainerResources {
    pb::LinuxContainerResources {
        memory_limit_in_bytes: memory,
        cpu_quota: quota,
        cpu_period: period,
        ..Default::default()
    }
}

async fn update(cri: &mut Cri, id: &str, r: pb::LinuxContainerResources) -> Result<(), tonic::Status> {
    let req = pb::UpdateContainerResourcesRequest {
        container_id: id.into(),
        linux: Some(r),
        ..Default::default()
    };
    within(Duration::from_secs(120), "UpdateContainerResources", cri.rt.update_container_resources(req))
        .await
        .map(|_| ())
}

fn cpu_nanos(s: &pb::ContainerStats) -> u64 {
    s.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds.as_ref()).map(|v| v.value).unwrap_or(0)
}

fn working_set(s: &pb::ContainerStats) -> u64 {
    s.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map(|v| v.value).unwrap_or(0)
}

async fn runtime_service(handler: &str) {
    let ctrd = containerd();
    ctrd.require_shim();
    let mut cri = Cri::connect(&ctrd.sock).await;
    cri.pull(&ctrd.busybox_image).await;

    // Status and Version (containerd answers them; the runtime's readiness included).
    let v = cri.rt.version(pb::VersionRequest::default()).await.unwrap().into_inner();
    assert_eq!(v.runtime_name, "containerd", "{v:?}");
    assert!(!v.runtime_version.is_empty() && v.runtime_api_version.starts_with('v'), "{v:?}");
    let st = cri.rt.status(pb::StatusRequest { verbose: false }).await.unwrap().into_inner();
    let conds = st.status.unwrap().conditions;
    for c in ["RuntimeReady", "NetworkReady"] {
        assert!(conds.iter().any(|x| x.r#type == c && x.status), "{c} not true: {conds:?}");
    }

    let pod = Pod::run(&mut cri, &format!("rt-{handler}"), handler).await;
    let id = pod
        .create_start(
            &mut cri,
            "ticker",
            &["/bin/sh", "-c", "i=0; while true; do echo tick-$i; i=$((i+1)); /bin/busybox sleep 0.2; done"],
        )
        .await;
    pod.wait_log_line("ticker", |l| l == "tick-2", Duration::from_secs(120));

    // UpdateContainerResources reaches the container's cgroup (the guest's for kata-cc).
    update(&mut cri, &id, resources(200 * MIB, 50_000, 100_000)).await.unwrap_or_else(|e| panic!("{handler}: update: {e}"));
    let got = cri.exec_ok(&id, &["/bin/sh", "-c", READ_LIMITS]).await;
    assert_eq!(got, format!("{}|50000 100000", 200 * MIB), "{handler}: limits seen in the container");
    update(&mut cri, &id, resources(300 * MIB, 150_000, 100_000)).await.unwrap();
    let got = cri.exec_ok(&id, &["/bin/sh", "-c", READ_LIMITS]).await;
    assert_eq!(got, format!("{}|150000 100000", 300 * MIB), "{handler}: limits after the second update");

    // ReopenContainerLog: the kubelet renames the log, asks for a reopen, and new lines
    // go to a new file at the old path.
    let log = pod.log_path("ticker");
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let req = pb::ReopenContainerLogRequest { container_id: id.clone() };
    within(Duration::from_secs(60), "ReopenContainerLog", cri.rt.reopen_container_log(req))
        .await
        .unwrap_or_else(|e| panic!("{handler}: ReopenContainerLog: {e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_cri_log(&log).len() < 3 {
        assert!(Instant::now() < deadline, "{handler}: no new lines in the reopened {}", log.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old_len = std::fs::metadata(&rotated).unwrap().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(std::fs::metadata(&rotated).unwrap().len(), old_len, "{handler}: the rotated file still grows");
    let first_new = read_cri_log(&log)[0].1.clone();
    let last_old = read_cri_log(&rotated).last().unwrap().1.clone();
    let n = |l: &str| l.strip_prefix("tick-").unwrap().parse::<u64>().unwrap();
    assert_eq!(n(&first_new), n(&last_old) + 1, "{handler}: a line lost or doubled across the rotation");

    // ContainerStats / ListContainerStats with real numbers, CPU increasing.
    let s1 = cri.container_stats(&id).await;
    assert!(working_set(&s1) > 0, "{handler}: working set {s1:?}");
    let _ = cri
        .exec_sync(&id, &["/bin/sh", "-c", "end=$(($(date +%s)+2)); while [ $(date +%s) -lt $end ]; do :; done"], 30)
        .await;
    let s2 = cri.container_stats(&id).await;
    assert!(cpu_nanos(&s2) > cpu_nanos(&s1), "{handler}: CPU usage did not increase: {} -> {}", cpu_nanos(&s1), cpu_nanos(&s2));
    let list = cri
        .rt
        .list_container_stats(pb::ListContainerStatsRequest {
            filter: Some(pb::ContainerStatsFilter { pod_sandbox_id: pod.id.clone(), ..Default::default() }),
        })
        .await
        .unwrap_or_else(|e| panic!("{handler}: ListContainerStats: {e}"))
        .into_inner()
        .stats;
    let mine = list.iter().find(|s| s.attributes.as_ref().is_some_and(|a| a.id == id));
    assert!(mine.is_some_and(|s| working_set(s) > 0), "{handler}: ListContainerStats: {list:?}");
    eprintln!(
        "{handler}: working set {} KiB, CPU {} ms -> {} ms across a 2 s busy loop",
        working_set(&s2) / 1024,
        cpu_nanos(&s1) / 1_000_000,
        cpu_nanos(&s2) / 1_000_000
    );

    // PodSandboxStats is not checked here: containerd 1.6 reads it from the sandbox's host
    // cgroup (it needs the kubelet's cgroup_parent, and for kata-cc the VM's numbers are
    // not in any host cgroup); see docs/streaming.md, open items.

    pod.stop_remove(&mut cri).await;
}

#[tokio::test]
async fn runc_runtime_service() {
    runtime_service(RUNC).await;
}

#[tokio::test]
async fn kata_cc_runtime_service() {
    runtime_service(KATA_CC).await;
}

/// A pod whose policy, generated from its YAML, caps memory at 256 MiB and CPU at 500m:
/// updates inside that pass; one beyond it is refused by the agent, with the reason.
#[tokio::test]
async fn kata_cc_update_beyond_the_policy_is_refused() {
    let ctrd = containerd();
    ctrd.require_shim();
    let name = unique_name("upd-policy");
    // An image of its own, pinned by digest, as the generated policy requires (see
    // tests/cri_policy.rs).
    let image = format!("{}/kata-cc-tests/busybox:update-policy", ctrd.registry);
    kata_cc_tests::genpolicy::copy_image(&ctrd.busybox_image, &image);
    let mut cri = Cri::connect(&ctrd.sock).await;
    let cmd = ["/bin/sh", "-c", "exec /bin/busybox sleep 3600"];
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {POD_NAMESPACE}
spec:
  runtimeClassName: kata-cc
  containers:
    - name: app
      image: {image}
      command: {command}
      resources:
        limits:
          memory: 256Mi
          cpu: 500m
"#,
        command = serde_json::to_string(&cmd).unwrap(),
    );
    let p = kata_cc_tests::genpolicy::generate(yaml, ctrd.registry.clone(), ctrd.pause_image.clone());
    let pinned = p.data.containers.iter().find(|c| c.name == "app").unwrap().image.clone();
    cri.pull(&pinned).await;
    let annotation = protocols::initdata::encode_annotation(p.initdata.as_bytes()).unwrap();
    let pod = Pod::run_named(ctrd, &mut cri, &name, KATA_CC, |c| {
        c.annotations.insert(protocols::initdata::ANNOTATION.to_string(), annotation.clone());
    })
    .await;
    let mut cfg = kata_cc_tests::genpolicy::kubelet_config(&p, "app", &cmd, &pinned);
    cfg.linux.as_mut().unwrap().resources = Some(resources(256 * MIB, 50_000, 100_000));
    let id = pod.create(&mut cri, cfg).await;
    pod.start(&mut cri, &id).await;

    update(&mut cri, &id, resources(128 * MIB, 25_000, 100_000))
        .await
        .unwrap_or_else(|e| panic!("an update within the policy's limits was refused: {e}"));
    let e = update(&mut cri, &id, resources(1024 * MIB, 50_000, 100_000))
        .await
        .expect_err("an update beyond the pod spec's memory limit was applied");
    let msg = e.message().to_string();
    eprintln!("refused: {}", &msg[msg.find("UpdateContainer").unwrap_or(0)..]);
    assert!(msg.contains("policy"), "{msg}");
    assert!(msg.contains("resources.Memory.Limit") && msg.contains("268435456"), "{msg}");
    let e = update(&mut cri, &id, resources(128 * MIB, 200_000, 100_000))
        .await
        .expect_err("an update beyond the pod spec's CPU limit was applied");
    assert!(e.message().contains("resources.CPU") && e.message().contains("500 millicores"), "{}", e.message());
    pod.stop_remove(&mut cri).await;
}
