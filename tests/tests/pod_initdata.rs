//! initdata end to end under QEMU/TCG: the host attaches the initdata device image as a
//! virtio-blk disk with the serial `initdata`; the agent (PID 1) reads it, logs its digest
//! and enforces the `policy.rego` it carries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use hypervisor::{Disk, Hypervisor, VmExit, VmSpec};
use kata_cc_tests::{guest_image, guest_spec as spec, qemu_hypervisor, read_stdout_all as read_all, PodVm};
use protocols::agent as pb;
use protocols::initdata::{self, Algorithm, InitData, INITDATA_DISK_SERIAL};
use protocols::protobuf::MessageField;
use protocols::context_with;

const EXEC_DENIED: &str = "exec is forbidden by the initdata policy";

/// `policy/rego/allow-all.rego` with the ExecProcess rule replaced by a denial.
fn policy_without_exec() -> String {
    let allow_all = include_str!("../../policy/rego/allow-all.rego");
    let rule = "default ExecProcessRequest := true\n";
    assert_eq!(allow_all.matches(rule).count(), 1, "allow-all.rego changed");
    allow_all.replace(
        rule,
        &format!("default ExecProcessRequest := {{\"allowed\": false, \"reason\": \"{EXEC_DENIED}\"}}\n"),
    )
}

#[tokio::test]
async fn initdata_disk_policy_is_enforced_and_digest_logged() {
    let toml = InitData::with_policy(Algorithm::Sha256, &policy_without_exec()).to_toml();
    let digest = initdata::digest(Algorithm::Sha256, toml.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("initdata.img");
    std::fs::write(&image, initdata::device_image(toml.as_bytes()).unwrap()).unwrap();

    let disks = vec![Disk { path: image, serial: INITDATA_DISK_SERIAL.to_string() }];
    let pod = PodVm::boot_with_disks("initdata", 512, Vec::new(), disks).await;
    eprintln!("agent ready after {:?}", pod.ready_after);
    let a = &pod.agent;

    let console = pod.console();
    console.lines().filter(|l| l.contains("initdata")).for_each(|l| eprintln!("console: {l}"));
    assert!(console.contains(&format!("digest sha256:{hex}")), "no digest line in the console:\n{console}");

    // CreateContainer/StartContainer are allowed by the initdata policy.
    let mut r = pb::CreateContainerRequest::new();
    r.container_id = "svc".into();
    r.OCI = MessageField::some(protocols::convert::spec_to_grpc(&spec(&["sh", "-c", "echo up; sleep 1000"])));
    a.agent().create_container(context_with(Duration::from_secs(60)), &r).await.unwrap();
    let mut s = pb::StartContainerRequest::new();
    s.container_id = "svc".into();
    a.agent().start_container(a.context(), &s).await.unwrap();
    let mut rd = pb::ReadStreamRequest::new();
    rd.container_id = "svc".into();
    rd.len = 4096;
    let first = a.agent().read_stdout(context_with(Duration::from_secs(60)), &rd).await.unwrap().data;
    assert_eq!(first, b"up\n");

    // ExecProcess is refused with the policy's reason.
    let mut p = protocols::oci::Process::new();
    p.Args = vec!["true".into()];
    p.Cwd = "/".into();
    p.Env = vec!["PATH=/bin".into()];
    p.User = MessageField::some(protocols::oci::User::new());
    let mut e = pb::ExecProcessRequest::new();
    e.container_id = "svc".into();
    e.exec_id = "e1".into();
    e.process = MessageField::some(p);
    match a.agent().exec_process(a.context(), &e).await {
        Err(ttrpc::Error::RpcStatus(st)) => {
            assert_eq!(st.code(), ttrpc::Code::PERMISSION_DENIED, "{st:?}");
            assert!(st.message().contains(EXEC_DENIED), "{st:?}");
        }
        other => panic!("ExecProcess should be denied by the initdata policy: {other:?}"),
    }

    // A one-shot container still runs to completion.
    r.container_id = "once".into();
    r.OCI = MessageField::some(protocols::convert::spec_to_grpc(&spec(&["echo", "done"])));
    a.agent().create_container(context_with(Duration::from_secs(60)), &r).await.unwrap();
    s.container_id = "once".into();
    a.agent().start_container(a.context(), &s).await.unwrap();
    assert_eq!(read_all(a, "once", "").await, "done\n");

    for id in ["svc", "once"] {
        let mut rm = pb::RemoveContainerRequest::new();
        rm.container_id = id.into();
        a.agent().remove_container(a.context(), &rm).await.unwrap();
    }
    let exit = pod.vm.shutdown(Duration::from_secs(5)).await.unwrap();
    eprintln!("shutdown: {exit}");
}

#[tokio::test]
async fn garbage_initdata_disk_powers_the_vm_off() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("garbage.img");
    std::fs::write(&image, vec![0xa5u8; 4096]).unwrap();
    let guest = guest_image();
    let mut spec = VmSpec::new("e2e-initdata-garbage".to_string(), &guest.kernel, dir.path().join("state"));
    spec.initramfs = Some(guest.initramfs.clone());
    spec.memory_mib = 256;
    let console = dir.path().join("console.log");
    spec.console_log = Some(console.clone());
    spec.disks = vec![Disk { path: image, serial: INITDATA_DISK_SERIAL.to_string() }];
    let vm = qemu_hypervisor().start(spec).await.unwrap_or_else(|e| panic!("start VM: {e:?}"));
    let exit = match tokio::time::timeout(Duration::from_secs(90), vm.wait()).await {
        Ok(exit) => exit,
        Err(_) => {
            let log = std::fs::read_to_string(&console).unwrap_or_default();
            vm.shutdown(Duration::from_secs(5)).await.ok();
            panic!("the VM kept running with a garbage initdata disk; console:\n{log}");
        }
    };
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    log.lines().filter(|l| l.contains("FATAL")).for_each(|l| eprintln!("console: {l}"));
    assert!(matches!(exit, VmExit::GuestPoweroff), "{exit}\nconsole:\n{log}");
    assert!(log.contains("FATAL") && log.contains("initdata disk /dev/vd"), "console:\n{log}");
}
