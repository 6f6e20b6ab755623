//! `gen` with registry lookups, against the loopback registry of `tests/registry/start.sh`
//! (Debian's docker-registry on 127.0.0.1:5000, plain HTTP, fixtures pushed with skopeo).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod cli_support;

use std::process::Command;
use std::sync::Once;

use cli_support::*;
use policy::gen::{ImageError, ImageStore, Registry, RegistryOptions};

const REGISTRY: &str = "127.0.0.1:5000";

fn registry_up() {
    static START: Once = Once::new();
    START.call_once(|| {
        let script = crate_dir().join("../tests/registry/start.sh");
        let out = Command::new("bash").arg(&script).output().unwrap();
        assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    });
}

/// What the registry says the tag points at (`Docker-Content-Digest` of a HEAD).
fn head_digest(repo: &str, tag: &str) -> String {
    let out = Command::new("curl")
        .args(["-fsSI", "-H", "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"])
        .arg(format!("http://{REGISTRY}/v2/{repo}/manifests/{tag}"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let headers = String::from_utf8(out.stdout).unwrap();
    headers
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("docker-content-digest:").map(|d| d.trim().to_owned()))
        .unwrap_or_else(|| panic!("no digest header: {headers}"))
}

fn store(platform: &str, insecure: bool) -> ImageStore {
    let options = RegistryOptions {
        insecure: if insecure { vec![REGISTRY.to_owned()] } else { Vec::new() },
        ..Default::default()
    };
    ImageStore::new(platform).with_remote(Box::new(Registry::new(options).unwrap()))
}

#[test]
fn tags_resolve_to_digests_with_the_platform_config() {
    registry_up();
    let s = store("linux/amd64", true);
    let r = s.resolve(&format!("{REGISTRY}/busybox:latest")).unwrap();
    assert_eq!(r.digest, head_digest("busybox", "latest"));
    assert_eq!(r.config.cmd.as_deref(), Some(&["/bin/sh".to_owned()][..]));
    assert!(r.config.env.unwrap_or_default().contains(&"HELLO=world".to_owned()));
    assert_eq!(r.config.working_dir.as_deref(), Some("/tmp"));

    // A pinned reference stays pinned, and yields the same config.
    let pinned = s.resolve(&format!("{REGISTRY}/busybox@{}", r.digest)).unwrap();
    assert_eq!(pinned.digest, r.digest);

    // An index pins to the index's digest; its amd64 entry is the one read.
    let index = s.resolve(&format!("{REGISTRY}/index:latest")).unwrap();
    assert_eq!(index.digest, head_digest("index", "latest"));
    assert_ne!(index.digest, head_digest("index", "amd64"));
    let err = s.resolve(&format!("{REGISTRY}/arm64only:latest")).unwrap_err();
    assert!(matches!(err, ImageError::NoPlatform { .. }), "{err}");
    store("linux/arm64", true).resolve(&format!("{REGISTRY}/arm64only:latest")).unwrap();

    let err = s.resolve(&format!("{REGISTRY}/nothing-here:latest")).unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
}

#[test]
fn plain_http_only_for_insecure_registries() {
    registry_up();
    let err = store("linux/amd64", false).resolve(&format!("{REGISTRY}/busybox:latest")).unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
}

#[test]
fn cli_gen_pins_registry_images() {
    registry_up();
    let images = Images::build();
    let tmp = tempfile::tempdir().unwrap();
    let pod = tmp.path().join("pod.yaml");
    std::fs::write(
        &pod,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: reg}}\nspec:\n  containers:\n    - name: bb\n      image: {REGISTRY}/busybox:latest\n"
        ),
    )
    .unwrap();
    let out = tmp.path().join("out.yaml");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kata-cc-policy"))
            .arg("gen")
            .arg(&pod)
            .arg("--image-config")
            .arg(images.layouts_dir())
            .arg("-o")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let r = run(&[]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("--registry"), "{}", String::from_utf8_lossy(&r.stderr));
    let r = run(&["--registry", "--insecure-registry", REGISTRY]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let yaml = std::fs::read_to_string(&out).unwrap();
    let want = format!("image: {REGISTRY}/busybox@{}", head_digest("busybox", "latest"));
    assert!(yaml.contains(&want), "{yaml}");
}
