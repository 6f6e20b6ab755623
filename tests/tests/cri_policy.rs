//! A pod whose agent policy was generated from its YAML (`policy::gen`, what
//! `kata-cc-policy gen` does) runs through containerd's CRI with our shim: the requests
//! the shim sends for the pod (CreateSandbox with the pod's shm, the pause container,
//! CopyFile of hosts/hostname/resolv.conf, CreateContainer, ExecProcess) are the ones the
//! generated policy expects, and changed ones are refused.
//!
//! The default profile of `tests/containerd/start.sh` (no TEE): the pod's initdata
//! annotation carries the policy, the agent enforces it; no KBS is involved.
//!
//! 1. The pod YAML (name and namespace as this CRI client sends them, busybox from the
//!    pod-side registry, an `kata-cc.io/exec-allow` annotation) → policy, with the images
//!    (busybox, and the cluster's pause image) looked up in the registry.
//! 2. RunPodSandbox with the initdata; Create/StartContainer of the pinned image; its
//!    output is read (the settings allow ReadStream).
//! 3. ExecSync of the allowed command works; any other is refused by the policy.
//! 4. A container whose command differs from the YAML is refused by the agent's
//!    CreateContainer (CRI StartContainer in containerd 1.6), naming `OCI.Process.Args`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use k8s_cri::v1 as pb;
use kata_cc_tests::cri::{containerd, unique_name, within, Cri, Pod, KATA_CC, POD_NAMESPACE};
use kata_cc_tests::genpolicy::{copy_image, generate, kubelet_config};
use protocols::initdata;

fn step(s: &str) {
    eprintln!("==> {s}");
}

const ALLOWED_EXEC: [&str; 3] = ["/bin/sh", "-c", "echo exec-allowed"];
const COMMAND: [&str; 3] = ["/bin/sh", "-c", "echo hello-from-policy-pod; exec /bin/busybox sleep 3600"];

/// The pod as its author writes it.
fn pod_yaml(name: &str, image: &str) -> String {
    let json = |v: &[&str]| serde_json::to_string(v).unwrap();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {POD_NAMESPACE}
  annotations:
    kata-cc.io/exec-allow: '[{exec}]'
spec:
  runtimeClassName: kata-cc
  containers:
    - name: app
      image: {image}
      command: {command}
"#,
        exec = json(&ALLOWED_EXEC),
        command = json(&COMMAND),
    )
}

#[tokio::test]
async fn generated_policy_admits_the_pod_as_the_shim_runs_it_and_nothing_else() {
    let ctrd = containerd();
    ctrd.require_shim();
    let name = unique_name("gen-policy");
    // An image of its own (not the harness' busybox, which containerd holds by tag):
    // containerd 1.6 names a container's image (`io.kubernetes.cri.image-name`, which the
    // shim asks the guest to pull) by the first reference it stores for that image id,
    // a tag when it has one, and the policy accepts only the digest the YAML is pinned to
    // (see docs/policy.md).
    let tagged = format!("{}/kata-cc-tests/busybox:policy", ctrd.registry);
    copy_image(&ctrd.busybox_image, &tagged);

    step(&format!("policy for pod {POD_NAMESPACE}/{name} generated from its YAML ({tagged}, pause {})", ctrd.pause_image));
    let p = generate(pod_yaml(&name, &tagged), ctrd.registry.clone(), ctrd.pause_image.clone());
    let app = p.data.containers.iter().find(|c| c.name == "app").unwrap();
    let pinned = app.image.clone();
    assert!(pinned.contains("@sha256:"), "{pinned}");
    assert_eq!(app.exec_commands, vec![ALLOWED_EXEC.map(String::from).to_vec()]);
    eprintln!("    app pinned to {pinned}; policy {} bytes", p.rego.len());

    let mut cri = Cri::connect(&ctrd.sock).await;
    step(&format!("PullImage {pinned} (the kubelet pulls what the generated YAML names)"));
    cri.pull(&pinned).await;

    step("RunPodSandbox with the initdata annotation carrying the generated policy");
    let annotation = initdata::encode_annotation(p.initdata.as_bytes()).unwrap();
    let pod = Pod::run_named(ctrd, &mut cri, &name, KATA_CC, |c| {
        c.annotations.insert(initdata::ANNOTATION.to_string(), annotation.clone());
    })
    .await;

    step("Create/StartContainer app: allowed by the policy, its output is read");
    let cfg = kubelet_config(&p, "app", &COMMAND, &pinned);
    let id = pod.create(&mut cri, cfg.clone()).await;
    pod.start(&mut cri, &id).await;
    let line = pod.wait_log_line("app", |l| !l.is_empty(), Duration::from_secs(60));
    assert_eq!(line, "hello-from-policy-pod");

    step("ExecSync of the allowed command");
    let out = cri.exec_ok(&id, &ALLOWED_EXEC).await;
    assert_eq!(out, "exec-allowed");

    step("ExecSync of another command: refused by the policy");
    let req = pb::ExecSyncRequest { container_id: id.clone(), cmd: vec!["/bin/cat".into(), "/etc/hostname".into()], timeout: 30 };
    let e = within(Duration::from_secs(60), "ExecSync", cri.rt.exec_sync(req)).await.expect_err("a command the policy does not list ran");
    let msg = e.message();
    eprintln!("    refused: {}", &msg[msg.find("ExecProcess").unwrap_or(0)..]);
    assert!(msg.contains("policy") && msg.contains("process.Args"), "{msg}");

    step("a container with a command the YAML does not have: the agent's CreateContainer refuses it, naming the field");
    // containerd 1.6 creates the task (the shim's Create, the agent's CreateContainer) in
    // CRI StartContainer; CRI CreateContainer only records the container.
    let bad = kubelet_config(&p, "evil", &["/bin/sh", "-c", "echo evil"], &pinned);
    let bad_cmd = |mut c: pb::ContainerConfig| {
        c.metadata = Some(pb::ContainerMetadata { name: "app".into(), attempt: 1 });
        c.log_path = "app-1.log".into();
        c
    };
    let bad_id = pod.create(&mut cri, bad_cmd(bad)).await;
    let req = pb::StartContainerRequest { container_id: bad_id.clone() };
    let r = within(Duration::from_secs(300), "StartContainer", cri.rt.start_container(req)).await;
    let e = r.expect_err("a container with another command was started");
    let msg = e.message();
    eprintln!("    refused: {}", &msg[msg.find("CreateContainer").unwrap_or(0)..]);
    assert!(msg.contains("CreateContainer denied by policy"), "{msg}");
    assert!(msg.contains(r#"app: OCI.Process.Args: sent ["/bin/sh","-c","echo evil"]"#), "{msg}");
    assert!(!pod.log_path("app-1").exists() || std::fs::read_to_string(pod.log_path("app-1")).unwrap().is_empty());

    pod.stop_remove(&mut cri).await;
}
