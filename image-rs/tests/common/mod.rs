//! Shared by the registry test binaries: the local registry with its fixtures, and stores.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use image_rs::{ImageStore, RegistryConfig};

pub const REGISTRY: &str = "127.0.0.1:5000";

/// Start the registry and push the fixtures (once per test binary; the script itself
/// holds a file lock across binaries). Returns the fixture directory.
pub fn fixtures() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/registry/start.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(
            std::env::var("KATA_CC_REGISTRY_DIR").unwrap_or("/var/tmp/kata-cc-registry".into()),
        )
    })
    .clone()
}

pub fn registry_config() -> RegistryConfig {
    RegistryConfig {
        insecure_registries: vec![REGISTRY.to_string()],
        ..Default::default()
    }
}

/// A fresh store in a temporary directory (kept alive by the returned guard).
pub fn store() -> (tempfile::TempDir, ImageStore) {
    fixtures();
    let dir = tempfile::Builder::new()
        .prefix("image-rs-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let store = ImageStore::new(dir.path().join("store"), registry_config()).unwrap();
    (dir, store)
}

pub fn reference(name: &str) -> image_rs::Reference {
    format!("{REGISTRY}/{name}").parse().unwrap()
}

pub fn private_key() -> Vec<u8> {
    std::fs::read(fixtures().join("keys/priv.pem")).unwrap()
}

pub fn keys() -> Arc<dyn image_rs::decrypt::KeyProvider> {
    Arc::new(image_rs::decrypt::LocalKeys::new().with_private_key(private_key()))
}
