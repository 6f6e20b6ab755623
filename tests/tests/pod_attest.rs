//! Attestation end to end under QEMU/TCG with the simulated TEE.
//!
//! The host side: the KBS (`kbs::server::KbsServer`, the code behind `kata-cc-kbs`) over
//! HTTPS on the host end of the pod's veth, trusting the simulated root, with reference
//! values {launch measurement of the pristine test guest image
//! (`hypervisor::qemu::sim_launch_measurement`, computed here as `kata-cc measure --tee
//! sim` does), HOST_DATA = the expected pod's initdata digest} and the
//! resource `default/key/k1`. The pod: its initdata (policy + `aa.toml` naming the KBS
//! and its CA) goes through the pod annotation and `hypervisor::initdata::prepare` into
//! the initdata disk and the sim TEE's HOST_DATA; the VM joins the pod network.
//!
//! * `attested_pod_runs_and_reads_its_secret`: CreateContainer triggers attestation,
//!   the container then fetches `k1` from the in-VM endpoint `127.0.0.1:8006` and prints it.
//! * `unexpected_initdata_is_refused_by_the_kbs`: same KBS, another initdata: the guest
//!   binds it (HOST_DATA matches the disk), the KBS refuses it, CreateContainer is
//!   PERMISSION_DENIED naming the attestation failure, and no container exists.
//! * `host_data_mismatch_powers_the_vm_off`: the host launches the sim TEE with a
//!   HOST_DATA that is not the disk's digest: the agent refuses to run.
//! * `tee_pod_without_initdata_gets_the_default_tee_policy`.
//! * `modified_initramfs_is_refused_by_the_kbs` (issue 5): the KBS expects the pristine
//!   test image's launch measurement, the pod boots a copy of its initramfs with one more
//!   archive member: the guest reports the measurement the host computed for what it
//!   booted, the KBS refuses it, CreateContainer is PERMISSION_DENIED naming the
//!   measurement mismatch, and no container exists.
//! * `encrypted_image_is_pulled_in_the_guest_with_a_key_from_the_kbs` (issue 4): the
//!   pod's initdata `cdh.toml` names the loopback registry (reached through the veth) and
//!   a private key held by the KBS; CreateContainer with Kata's `image_guest_pull` storage
//!   attests, fetches the key, pulls and decrypts the JWE-encrypted image in the guest and
//!   runs the container in it; a tampered image is refused and leaves no container.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};

use hypervisor::{Confidential, Hypervisor, ResolvedAccel, SimTeeConfig, VmExit, VmSpec};
use kata_cc_tests::attest::{
    hex, host_data_of, initdata_toml, initdata_toml_with, measurement_with, pristine_measurement, start_kbs, start_kbs_with, SECRET,
};
use kata_cc_tests::{
    configure_pod_network, create_start, guest_image, guest_spec, qemu_hypervisor_with, read_stdout_all, wait_status, PodNetns,
    PodVm,
};
use protocols::agent as pb;
use protocols::context_with;
use protocols::initdata;
use protocols::protobuf::MessageField;

/// The sim TEE config these tests launch with. The measurement is left zero: the QEMU
/// backend fills in the one it computes from what it boots.
fn sim_tee() -> Confidential {
    Confidential::Sim(SimTeeConfig::default())
}

/// Asserts the guest reports `m` as its launch measurement (the agent logs it).
fn assert_measurement(pod: &PodVm, m: &[u8; 48]) {
    let console = pod.console();
    assert!(console.contains(&format!("launch measurement {}", hex(m))), "{console}");
}

/// A subnet `10.208.<k>` unique to this process and test.
fn subnet(i: u32) -> String {
    format!("10.208.{}", (std::process::id() % 60) * 4 + i)
}

/// Boots a sim-TEE pod VM on `netns` whose initdata arrives as the pod annotation.
async fn boot_pod(name: &str, netns: &PodNetns, toml: &str) -> (PodVm, hypervisor::net::PodNetwork) {
    boot_pod_with(name, netns, toml, None).await
}

/// [`boot_pod`], with another initramfs than the test image's.
async fn boot_pod_with(name: &str, netns: &PodNetns, toml: &str, initramfs: Option<PathBuf>) -> (PodVm, hypervisor::net::PodNetwork) {
    let net = hypervisor::net::setup(&hypervisor::net::PodNetConfig {
        netns: netns.path(),
        tap_name: "tap0_kata".into(),
        veth: None,
    })
    .unwrap();
    let annotations = HashMap::from([(initdata::ANNOTATION.to_string(), initdata::encode_annotation(toml.as_bytes()).unwrap())]);
    let nic = net.net_device();
    let pristine = initramfs.is_none();
    let mut booted = None;
    let pod = PodVm::boot_custom(name, 384, true, |spec, dir| {
        spec.net = vec![nic];
        if let Some(i) = initramfs {
            spec.initramfs = Some(i);
        }
        spec.confidential = sim_tee();
        let init = hypervisor::initdata::prepare(spec, &annotations, dir).unwrap().unwrap();
        assert_eq!(init.raw, toml.as_bytes());
        // The measurement of the spec exactly as it is started.
        booted = Some(hypervisor::qemu::sim_launch_measurement(spec, ResolvedAccel::Tcg).unwrap());
    })
    .await;
    let booted = booted.unwrap();
    if pristine {
        // What the KBS expects is the value of the VM really booted.
        assert_eq!(hex(&booted), hex(&pristine_measurement()));
    }
    // The guest reports the measurement the host computed.
    assert_measurement(&pod, &booted);
    configure_pod_network(&pod.agent, &net).await;
    (pod, net)
}

fn print_console(pod: &PodVm, filter: &[&str]) {
    pod.console().lines().filter(|l| filter.iter().any(|f| l.contains(f))).for_each(|l| eprintln!("console: {l}"));
}

fn create_request(id: &str, args: &[&str]) -> pb::CreateContainerRequest {
    let mut r = pb::CreateContainerRequest::new();
    r.container_id = id.into();
    r.OCI = MessageField::some(protocols::convert::spec_to_grpc(&guest_spec(args)));
    r
}

#[tokio::test]
async fn attested_pod_runs_and_reads_its_secret() {
    let netns = PodNetns::new("att", 1, &subnet(1));
    let mut toml = String::new();
    let kbs = start_kbs(&netns.host_ip(), |url, ca| {
        toml = initdata_toml(url, ca, "a");
        host_data_of(&toml)
    })
    .await;
    let (pod, net) = boot_pod("attest-ok", &netns, &toml).await;
    eprintln!("agent ready after {:?}; KBS {}", pod.ready_after, kbs.url);
    let console = pod.console();
    assert!(console.contains("initdata bound: sim (SIMULATED SEV-SNP, NOT A TEE) HOST_DATA"), "{console}");
    assert!(console.contains("workload endpoint on http://127.0.0.1:8006"), "{console}");

    // CreateContainer attests first; the container then reads k1 from the in-VM endpoint.
    let fetch = "printf 'GET /cdh/resource/default/key/k1 HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 60 127.0.0.1 8006";
    let a = &pod.agent;
    let started = Instant::now();
    a.agent()
        .create_container(context_with(Duration::from_secs(90)), &create_request("fetch", &["/bin/busybox", "sh", "-c", fetch]))
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\nconsole:\n{}", pod.console()));
    let create_took = started.elapsed();
    let mut s = pb::StartContainerRequest::new();
    s.container_id = "fetch".into();
    a.agent().start_container(a.context(), &s).await.unwrap();
    let out = read_stdout_all(a, "fetch", "").await;
    assert_eq!(wait_status(a, "fetch", "").await, 0, "{out}\nconsole:\n{}", pod.console());
    assert!(out.starts_with("HTTP/1.0 200 OK\r\n") && out.ends_with(&format!("\r\n\r\n{SECRET}")), "{out:?}");

    // Attested once for the VM's life: a second container needs no new attempt.
    create_start(a, "again", &guest_spec(&["echo", "again"])).await;
    assert_eq!(read_stdout_all(a, "again", "").await, "again\n");

    print_console(&pod, &["TEE", "initdata", "attest", "workload endpoint"]);
    let console = pod.console();
    let attested: Vec<&str> = console.lines().filter(|l| l.contains("attestation: attested from")).collect();
    assert_eq!(attested.len(), 1, "{console}");
    assert!(attested[0].contains("sim (SIMULATED SEV-SNP, NOT A TEE)") && attested[0].contains("(triggered by CreateContainer)"));
    eprintln!("FIGURE: CreateContainer incl. attestation took {create_took:?} on the host; guest: {}", attested[0]);

    pod.vm.shutdown(Duration::from_secs(2)).await.unwrap();
    hypervisor::net::teardown(&net.state).unwrap();
}

#[tokio::test]
async fn unexpected_initdata_is_refused_by_the_kbs() {
    let netns = PodNetns::new("att", 2, &subnet(2));
    let mut toml = String::new();
    // The KBS expects tenant "a"; the pod brings tenant "b".
    let _kbs = start_kbs(&netns.host_ip(), |url, ca| {
        toml = initdata_toml(url, ca, "b");
        host_data_of(&initdata_toml(url, ca, "a"))
    })
    .await;
    let (pod, net) = boot_pod("attest-bad", &netns, &toml).await;
    // The guest bound its (different) initdata fine: HOST_DATA is the disk's digest.
    assert!(pod.console().contains(&format!("HOST_DATA = {} matches", hex(&host_data_of(&toml)))), "{}", pod.console());

    assert_refused_by_kbs(&pod, &format!("HOST_DATA {} is not one of", hex(&host_data_of(&toml)))).await;
    print_console(&pod, &["attest"]);
    pod.vm.shutdown(Duration::from_secs(2)).await.unwrap();
    hypervisor::net::teardown(&net.state).unwrap();
}

/// One newc cpio archive holding the regular file `/<name>` and the trailer.
fn cpio_newc(name: &str, data: &[u8]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, data: &[u8]) {
        let fields = [ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    let mut out = Vec::new();
    entry(&mut out, 1, 0o100644, name, data);
    entry(&mut out, 0, 0, "TRAILER!!!", b"");
    out
}

/// A copy of the test image's initramfs with one more gzip'ed cpio member appended (the
/// kernel unpacks concatenated archives): the guest boots as before, but it is another
/// image.
fn modified_initramfs(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let mut image = std::fs::read(guest_image().initramfs).unwrap();
    let mut gzip = std::process::Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    gzip.stdin.take().unwrap().write_all(&cpio_newc("kata-cc-modified", b"not the measured image\n")).unwrap();
    let out = gzip.wait_with_output().unwrap();
    assert!(out.status.success() && out.stdout.starts_with(&[0x1f, 0x8b]), "gzip failed");
    image.extend_from_slice(&out.stdout);
    let path = dir.join("initramfs-modified.cpio.gz");
    std::fs::write(&path, image).unwrap();
    path
}

#[tokio::test]
async fn modified_initramfs_is_refused_by_the_kbs() {
    let scratch = tempfile::tempdir().unwrap();
    let initramfs = modified_initramfs(scratch.path());
    let (pristine, modified) = (pristine_measurement(), measurement_with(&initramfs));
    assert_ne!(pristine, modified);
    let netns = PodNetns::new("att", 4, &subnet(0));
    let mut toml = String::new();
    // The KBS expects the pristine image and this very initdata: only the image differs.
    let _kbs = start_kbs(&netns.host_ip(), |url, ca| {
        toml = initdata_toml(url, ca, "a");
        host_data_of(&toml)
    })
    .await;
    let (pod, net) = boot_pod_with("attest-modimg", &netns, &toml, Some(initramfs)).await;
    // It boots (and binds its initdata) like the pristine image, reporting its own measurement.
    assert_measurement(&pod, &modified);
    assert!(pod.console().contains(&format!("HOST_DATA = {} matches", hex(&host_data_of(&toml)))), "{}", pod.console());

    assert_refused_by_kbs(&pod, &format!("measurement {} is not one of [\"{}\"]", hex(&modified), hex(&pristine))).await;
    print_console(&pod, &["attest", "launch measurement"]);
    pod.vm.shutdown(Duration::from_secs(2)).await.unwrap();
    hypervisor::net::teardown(&net.state).unwrap();
}

#[tokio::test]
async fn host_data_mismatch_powers_the_vm_off() {
    let toml = initdata_toml("https://192.0.2.1:1", "", "a");
    let annotations = [(initdata::ANNOTATION, initdata::encode_annotation(toml.as_bytes()).unwrap())];
    let guest = guest_image();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = VmSpec::new("e2e-attest-mismatch".to_string(), &guest.kernel, dir.path().join("state"));
    spec.initramfs = Some(guest.initramfs.clone());
    spec.memory_mib = 256;
    let console = dir.path().join("console.log");
    spec.console_log = Some(console.clone());
    spec.confidential = sim_tee();
    hypervisor::initdata::prepare(&mut spec, annotations, dir.path()).unwrap().unwrap();
    // A lying host: the disk holds one document, the TEE is launched for another.
    let Confidential::Sim(sim) = &mut spec.confidential else { unreachable!() };
    sim.host_data = host_data_of(&initdata_toml("https://192.0.2.1:1", "", "other"));
    let vm = qemu_hypervisor_with(true).start(spec).await.unwrap_or_else(|e| panic!("start VM: {e:?}"));
    let exit = match tokio::time::timeout(Duration::from_secs(90), vm.wait()).await {
        Ok(exit) => exit,
        Err(_) => {
            let log = std::fs::read_to_string(&console).unwrap_or_default();
            vm.shutdown(Duration::from_secs(5)).await.ok();
            panic!("the VM kept running with a HOST_DATA that does not match its initdata; console:\n{log}");
        }
    };
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    log.lines().filter(|l| l.contains("FATAL")).for_each(|l| eprintln!("console: {l}"));
    assert!(matches!(exit, VmExit::GuestPoweroff), "{exit}\nconsole:\n{log}");
    assert!(log.contains("FATAL") && log.contains("initdata digest does not match sim (SIMULATED SEV-SNP, NOT A TEE) HOST_DATA"), "{log}");
}

#[tokio::test]
async fn tee_pod_without_initdata_gets_the_default_tee_policy() {
    let pod = PodVm::boot_custom("attest-notoml", 256, true, |spec, _| {
        spec.confidential = sim_tee();
    })
    .await;
    assert_measurement(&pod, &pristine_measurement());
    let a = &pod.agent;
    let console = pod.console();
    assert!(console.contains("built-in default-tee policy"), "{console}");
    // Sandbox set-up requests pass; containers are refused by the policy (before any
    // attestation attempt, which could not succeed either: no KBS is configured).
    a.agent().get_guest_details(a.context(), &pb::GuestDetailsRequest::new()).await.unwrap();
    match a.agent().create_container(context_with(Duration::from_secs(60)), &create_request("c", &["true"])).await {
        Err(ttrpc::Error::RpcStatus(st)) => {
            assert_eq!(st.code(), ttrpc::Code::PERMISSION_DENIED, "{st:?}");
            assert!(st.message().contains("CreateContainer denied by policy"), "{st:?}");
        }
        other => panic!("CreateContainer must be refused: {other:?}"),
    }
    pod.vm.shutdown(Duration::from_secs(2)).await.unwrap();
}


/// Forwards TCP connections from `listen` to `to` (the guest reaches the host through
/// the veth address; the registry listens on loopback).
async fn forward(listen: &str, to: &'static str) {
    let l = tokio::net::TcpListener::bind(listen).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
}

/// CreateContainer as Kata sends it for a guest-pulled `image`.
fn guest_pull_request(id: &str, image: &str, args: &[&str]) -> pb::CreateContainerRequest {
    let rootfs = format!("/run/kata-containers/shared/containers/{id}/rootfs");
    let mut spec = guest_spec(args);
    let mut root = spec.root().clone().unwrap();
    root.set_path(rootfs.clone().into());
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let mut storage = pb::Storage::new();
    storage.driver = "image_guest_pull".into();
    storage.source = image.into();
    storage.fstype = "overlay".into();
    storage.mount_point = rootfs;
    storage.driver_options = vec![r#"image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"container"}}"#.into()];
    let mut r = pb::CreateContainerRequest::new();
    r.container_id = id.into();
    r.storages = vec![storage];
    r.OCI = MessageField::some(protocols::convert::spec_to_grpc(&spec));
    r
}

#[tokio::test]
async fn encrypted_image_is_pulled_in_the_guest_with_a_key_from_the_kbs() {
    let key = std::fs::read(kata_cc_tests::registry_dir().join("keys/priv.pem")).unwrap();
    let netns = PodNetns::new("att", 3, &subnet(3));
    let registry = format!("{}:5000", netns.host_ip());
    forward(&registry, "127.0.0.1:5000").await;
    let cdh = format!("[image]\ninsecure_registries = [\"{registry}\"]\nprivate_key_uris = [\"kbs:///default/image-key/priv\"]\n");
    let mut toml = String::new();
    let _kbs = start_kbs_with(&netns.host_ip(), &[("default/image-key/priv", &key)], |url, ca| {
        toml = initdata_toml_with(url, ca, "image", Some(&cdh));
        host_data_of(&toml)
    })
    .await;
    let (pod, net) = boot_pod("attest-image", &netns, &toml).await;
    let a = &pod.agent;

    let started = Instant::now();
    let r = guest_pull_request("enc", &format!("{registry}/encrypted:latest"), &["/bin/busybox", "cat", "/secret.txt"]);
    a.agent()
        .create_container(context_with(Duration::from_secs(120)), &r)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\nconsole:\n{}", pod.console()));
    let create_took = started.elapsed();
    let mut s = pb::StartContainerRequest::new();
    s.container_id = "enc".into();
    a.agent().start_container(a.context(), &s).await.unwrap();
    let out = read_stdout_all(a, "enc", "").await;
    assert_eq!(wait_status(a, "enc", "").await, 0, "{out}");
    assert!(out.starts_with("encrypted fixture "), "{out:?}");
    print_console(&pod, &["TEE", "initdata", "attest", "image", "pulled"]);
    eprintln!("container output (/secret.txt of the decrypted image): {}", out.trim());
    eprintln!("FIGURE: CreateContainer (attest + key from KBS + guest pull + decrypt + unpack) {create_took:?}");

    // A layer changed in the registry: refused, and no container exists.
    let r = guest_pull_request("bad", &format!("{registry}/tampered:latest"), &["/bin/busybox", "true"]);
    match a.agent().create_container(context_with(Duration::from_secs(120)), &r).await {
        Err(ttrpc::Error::RpcStatus(st)) => {
            eprintln!("tampered image refused: {}", st.message());
            assert!(st.message().contains("tampered:latest") && st.message().contains("digest"), "{st:?}");
        }
        other => panic!("a tampered image must be refused: {other:?}"),
    }
    assert_no_container(a, "bad").await;
    pod.vm.shutdown(Duration::from_secs(2)).await.unwrap();
    hypervisor::net::teardown(&net.state).unwrap();
}

/// CreateContainer "c" must be refused by the attest gate, the KBS's answer containing
/// `expect`; no container may exist afterwards.
async fn assert_refused_by_kbs(pod: &PodVm, expect: &str) {
    let a = &pod.agent;
    let r = create_request("c", &["echo", "must not run"]);
    match a.agent().create_container(context_with(Duration::from_secs(90)), &r).await {
        Err(ttrpc::Error::RpcStatus(st)) => {
            eprintln!("CreateContainer refused: {}", st.message());
            assert_eq!(st.code(), ttrpc::Code::PERMISSION_DENIED, "{st:?}");
            let m = st.message();
            assert!(m.contains("CreateContainer denied by attestation: attestation required: attest: KBS answered 401"), "{m}");
            assert!(m.contains(expect), "{m}");
        }
        other => panic!("CreateContainer must be refused: {other:?}\nconsole:\n{}", pod.console()),
    }
    assert_no_container(a, "c").await;
}

/// StartContainer of `id` answers NOT_FOUND: no such container exists.
async fn assert_no_container(a: &protocols::AgentClient, id: &str) {
    let mut s = pb::StartContainerRequest::new();
    s.container_id = id.into();
    match a.agent().start_container(a.context(), &s).await {
        Err(ttrpc::Error::RpcStatus(st)) => assert_eq!(st.code(), ttrpc::Code::NOT_FOUND, "{st:?}"),
        other => panic!("no container {id:?} should exist: {other:?}"),
    }
}
