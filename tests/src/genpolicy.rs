//! A pod's policy as its author generates it (`policy::gen`, what `kata-cc-policy gen`
//! does), and the container configs the kubelet would send for that pod's YAML.

use k8s_cri::v1 as pb;
use policy::gen::{self, ImageStore, Registry, RegistryOptions, Settings};

use crate::cri::Pod;

/// `kata-cc-policy gen` of one pod's `yaml` with `--registry --insecure-registry
/// <registry>` and settings naming the cluster's `pause_image` and allowing container
/// output to be read (CRI logs, ExecSync output). Runs on its own thread: the registry
/// client has its own runtime.
pub fn generate(yaml: String, registry: String, pause_image: String) -> gen::GeneratedPolicy {
    std::thread::spawn(move || {
        let settings = Settings {
            pause_image,
            request_defaults: gen::RequestDefaults { read_stream: true, ..gen::RequestDefaults::default() },
            ..Settings::default()
        };
        let options = RegistryOptions { insecure: vec![registry], ..RegistryOptions::default() };
        let store = ImageStore::new(&settings.platform).with_remote(Box::new(Registry::new(options).unwrap()));
        let docs = gen::parse_str(std::path::Path::new("pod.yaml"), &yaml).unwrap();
        let mut out = gen::generate(docs, &store, &settings).unwrap_or_else(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            panic!("gen: {msg}")
        });
        assert_eq!(out.policies.len(), 1);
        out.policies.remove(0)
    })
    .join()
    .unwrap()
}

/// The container config the kubelet sends for a YAML container: this client's defaults,
/// `image` (the pinned one), and the kubelet's masked and read-only paths.
pub fn kubelet_config(p: &gen::GeneratedPolicy, name: &str, cmd: &[&str], image: &str) -> pb::ContainerConfig {
    let mut cfg = Pod::container_config(name, cmd);
    cfg.image = Some(pb::ImageSpec { image: image.into(), ..Default::default() });
    let sc = cfg.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    sc.masked_paths = p.data.common.masked_paths.clone();
    sc.readonly_paths = p.data.common.readonly_paths.clone();
    cfg
}

/// Pushes `from` as `to` with the label `kata-cc-test=<to>` added, so that `to` is an image
/// of its own (another config digest) in the test registry (plain HTTP).
pub fn copy_image(from: &str, to: &str) {
    let run = |cmd: &str, args: &[&str]| {
        let out = std::process::Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("run {cmd}: {e}"));
        assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let dir = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}:img", dir.path().join("layout").display());
    let (src, dst) = (format!("docker://{from}"), format!("docker://{to}"));
    run("skopeo", &["--insecure-policy", "copy", "-q", "--src-tls-verify=false", &src, &layout]);
    let image = format!("{}:img", dir.path().join("layout").display());
    let label = format!("kata-cc-test={to}");
    run("umoci", &["config", "--image", &image, "--config.label", &label]);
    run("skopeo", &["--insecure-policy", "copy", "-q", "--dest-tls-verify=false", &layout, &dst]);
}
