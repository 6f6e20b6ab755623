//! A confidential pod end to end through containerd's CRI, with the simulated TEE (this
//! machine has no SEV-SNP or TDX): the quickstart's main job.
//!
//! The containerd of the `cc` profile of `tests/containerd/start.sh` uses the kata-cc
//! snapshotter for CRI (so the host downloads no layer) and runs the `kata-cc` handler
//! with `tee.kind = "sim"`. The KBS (`kbs::server`, HTTPS) listens on the bridge gateway
//! and trusts simulated evidence carrying the test guest image's launch measurement and
//! the pod's initdata digest; it holds the private key of the encrypted fixture image.
//!
//! 1. The pod's policy generated from its YAML (`policy::gen`, as `kata-cc-policy gen`):
//!    the encrypted image pinned by digest, this container's command, no exec.
//! 2. PullImage on the host: manifest and config only, no layer blob in containerd.
//! 3. RunPodSandbox with the initdata annotation (the policy, aa.toml, cdh.toml): the shim
//!    boots the sim-TEE VM with the initdata disk and HOST_DATA; the agent binds them.
//! 4. CreateContainer of the encrypted image: the agent attests to the KBS, gets the
//!    key, pulls and decrypts the image in the guest; the container prints its secret.
//! 5. ExecSync is refused by the policy.
//! 6. A pod whose initdata the KBS does not expect gets no key: its container is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use k8s_cri::v1 as pb;
use kata_cc_tests::attest::{host_data_of, initdata_toml_policy, initdata_toml_with, start_kbs_with};
use kata_cc_tests::cri::{containerd_cc, unique_name, within, Cri, Pod, KATA_CC, POD_NAMESPACE};
use kata_cc_tests::genpolicy::{generate, kubelet_config};
use protocols::initdata;

fn step(s: &str) {
    eprintln!("==> {s}");
}

/// The encrypted fixture's layer digests, from the registry.
fn layer_digests(registry: &str, repo: &str) -> Vec<String> {
    let out = std::process::Command::new("curl")
        .args(["-fsS", "-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .arg(format!("http://{registry}/v2/{repo}/manifests/latest"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect()
}

const COMMAND: [&str; 3] = ["/bin/sh", "-c", "cat /secret.txt; exec /bin/busybox sleep 3600"];

/// The pod as its author writes it: one container from the encrypted image, no exec.
fn pod_yaml(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {POD_NAMESPACE}\nspec:\n  runtimeClassName: kata-cc\n  containers:\n    - name: secret\n      image: {image}\n      command: {}\n",
        serde_json::to_string(&COMMAND).unwrap()
    )
}

fn cdh_toml(registry: &str) -> String {
    format!("[image]\ninsecure_registries = [\"{registry}\"]\nprivate_key_uris = [\"kbs:///default/image-key/priv\"]\n")
}

#[tokio::test]
async fn confidential_pod_runs_an_encrypted_image_with_a_key_released_after_attestation() {
    let ctrd = containerd_cc();
    ctrd.require_shim();
    let registry = ctrd.registry.clone();
    let image = format!("{registry}/encrypted:latest");
    let key = std::fs::read(kata_cc_tests::registry_dir().join("keys/priv.pem")).unwrap();
    let gateway = registry.split(':').next().unwrap().to_string();

    let name = unique_name("confidential");
    step(&format!("the pod's policy, generated from its YAML (kata-cc-policy gen: {image} pinned by digest, this command, no exec)"));
    let p = generate(pod_yaml(&name, &image), registry.clone(), ctrd.pause_image.clone());
    let pinned = p.data.containers.iter().find(|c| c.name == "secret").unwrap().image.clone();
    assert!(pinned.contains("@sha256:"), "{pinned}");
    eprintln!("    {pinned}; policy {} bytes", p.rego.len());

    step("KBS over HTTPS on the pod network's gateway, trusting the simulated TEE only for the pristine guest image and this pod's initdata (the policy, aa.toml: this KBS, cdh.toml: image key from the KBS)");
    let cdh = cdh_toml(&registry);
    let mut toml = String::new();
    let kbs = start_kbs_with(&gateway, &[("default/image-key/priv", &key)], |url, ca| {
        toml = initdata_toml_policy(&p.rego, url, ca, Some(&cdh));
        host_data_of(&toml)
    })
    .await;
    eprintln!("    KBS {} ; initdata digest (HOST_DATA) {}", kbs.url, kata_cc_tests::attest::hex(&host_data_of(&toml)));

    let mut cri = Cri::connect(&ctrd.sock).await;
    // containerd 1.6 names a container's image by the first reference it holds for the
    // image; the policy accepts only the pinned one (docs/policy.md): drop a tag an
    // earlier run left, as a node that only ever pulled what the YAML names.
    let _ = cri.img.remove_image(pb::RemoveImageRequest { image: Some(pb::ImageSpec { image: image.clone(), ..Default::default() }) }).await;
    step(&format!("PullImage {pinned} on the host through the kata-cc snapshotter"));
    let t = Instant::now();
    cri.pull(&pinned).await;
    let content = std::process::Command::new("ctr")
        .args(["--address", &ctrd.sock.display().to_string(), "-n", "k8s.io", "content", "ls", "-q"])
        .output()
        .unwrap();
    let content = String::from_utf8_lossy(&content.stdout).into_owned();
    let layers = layer_digests(&registry, "encrypted");
    for l in &layers {
        assert!(!content.contains(l.as_str()), "layer {l} was downloaded to the host");
    }
    eprintln!("    pulled in {:?}; layer blobs in containerd's content store: 0 of {}", t.elapsed(), layers.len());

    step("RunPodSandbox (handler kata-cc, simulated TEE) with the initdata annotation");
    let annotation = initdata::encode_annotation(toml.as_bytes()).unwrap();
    let t = Instant::now();
    let pod = Pod::run_named(ctrd, &mut cri, &name, KATA_CC, |c| {
        c.annotations.insert(initdata::ANNOTATION.to_string(), annotation.clone());
    })
    .await;
    eprintln!("    pod {} ready in {:?}", pod.name, t.elapsed());

    step("Create/StartContainer from the encrypted image: the guest attests to the KBS, gets the key, pulls and decrypts the image");
    let cfg = kubelet_config(&p, "secret", &COMMAND, &pinned);
    let t = Instant::now();
    let id = pod.create(&mut cri, cfg).await;
    pod.start(&mut cri, &id).await;
    let line = pod.wait_log_line("secret", |l| !l.is_empty(), Duration::from_secs(60));
    eprintln!("    container output after {:?}: {line}", t.elapsed());
    assert!(line.starts_with("encrypted fixture"), "{line}");

    step("ExecSync into the pod: refused by the pod's policy (from its measured initdata)");
    let req = pb::ExecSyncRequest { container_id: id.clone(), cmd: vec!["/bin/cat".into(), "/secret.txt".into()], timeout: 30 };
    let r = within(Duration::from_secs(60), "ExecSync", cri.rt.exec_sync(req)).await;
    let e = r.expect_err("ExecSync was allowed");
    let msg = e.message();
    eprintln!("    refused: {}", &msg[msg.find("ExecProcess").unwrap_or(0)..]);
    assert!(msg.contains("policy"), "{msg}");
    pod.stop_remove(&mut cri).await;

    step("a pod with initdata the KBS does not expect: its first CreateContainer (the pause container) needs attestation, which the KBS refuses");
    let other = initdata_toml_with(&kbs.url, &kbs.ca_pem, "someone-else", Some(&cdh));
    let name = unique_name("unexpected");
    let log_dir = ctrd.pod_log_dir.join(&name);
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut config = Pod::config(&name, &log_dir);
    config.annotations.insert(initdata::ANNOTATION.to_string(), initdata::encode_annotation(other.as_bytes()).unwrap());
    let req = pb::RunPodSandboxRequest { config: Some(config), runtime_handler: KATA_CC.into() };
    let r = within(Duration::from_secs(300), "RunPodSandbox", cri.rt.run_pod_sandbox(req)).await;
    let _ = std::fs::remove_dir_all(&log_dir);
    let e = match r {
        Ok(ok) => {
            let id = ok.into_inner().pod_sandbox_id;
            let _ = cri.rt.stop_pod_sandbox(pb::StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await;
            let _ = cri.rt.remove_pod_sandbox(pb::RemovePodSandboxRequest { pod_sandbox_id: id }).await;
            panic!("a pod whose initdata the KBS does not trust started");
        }
        Err(e) => e,
    };
    let msg = e.message();
    eprintln!("    refused: {}", &msg[msg.find("attestation").unwrap_or(0)..]);
    assert!(msg.contains("attestation") && msg.contains("HOST_DATA"), "{msg}");
    let _ = image;
}
