//! Pulls that depend on decrypt.rs and signature.rs: encrypted images (skopeo
//! `--encryption-key jwe:pub.pem`) and signature policies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;

use base64::Engine as _;
use common::*;
use image_rs::signature::ImagePolicy;
use image_rs::{ImageError, PullOptions};

#[tokio::test]
async fn encrypted_image_with_the_key() {
    let (_d, store) = store();
    let opts = PullOptions {
        keys: Some(keys()),
        ..Default::default()
    };
    let pulled = store
        .pull(&reference("encrypted:latest"), &opts)
        .await
        .unwrap();
    let secret = std::fs::read_to_string(pulled.layer_dirs[0].join("secret.txt")).unwrap();
    assert!(secret.starts_with("encrypted fixture"));
    assert!(pulled.layer_dirs[0].join("bin/busybox").exists());
}

#[tokio::test]
async fn encrypted_image_without_keys() {
    let (_d, store) = store();
    let err = store
        .pull(&reference("encrypted:latest"), &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NoKeys { .. }), "{err}");
    assert!(err.to_string().contains("encrypted:latest"), "{err}");
}

#[tokio::test]
async fn encrypted_image_with_the_wrong_key() {
    let (d, store) = store();
    let other = d.path().join("other.pem");
    let st = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&other)
        .arg("2048")
        .output()
        .unwrap();
    assert!(st.status.success());
    let opts = PullOptions {
        keys: Some(Arc::new(
            image_rs::decrypt::LocalKeys::new().with_private_key(std::fs::read(&other).unwrap()),
        )),
        ..Default::default()
    };
    let err = store
        .pull(&reference("encrypted:latest"), &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Decrypt { .. }), "{err}");
    assert_eq!(
        std::fs::read_dir(store.root().join("layers/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn policy_requiring_signatures_refuses_an_unsigned_image() {
    let (_d, store) = store();
    // A real P-256 key; the image has no signature at all.
    let (d2, _) = store_dir_key();
    let key = std::fs::read(d2.path().join("pub.pem")).unwrap();
    let policy = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {"127.0.0.1:5000": [{
            "type": "sigstoreSigned",
            "keyData": base64::engine::general_purpose::STANDARD.encode(&key),
            "signedIdentity": {"type": "matchRepository"}
        }]}}
    });
    let policy = ImagePolicy::parse(policy.to_string().as_bytes()).unwrap();
    let opts = PullOptions {
        image_policy: policy,
        ..Default::default()
    };
    let err = store
        .pull(&reference("busybox:latest"), &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Signature { .. }), "{err}");
    // Refused before any layer was fetched.
    assert_eq!(store.layers_downloaded(), 0);
}

fn store_dir_key() -> (tempfile::TempDir, ()) {
    let d = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "key.pem",
    ]);
    run(&["ec", "-in", "key.pem", "-pubout", "-out", "pub.pem"]);
    (d, ())
}

fn sigstore_policy(key_pem: &[u8]) -> ImagePolicy {
    let policy = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {"127.0.0.1:5000/signed": [{
            "type": "sigstoreSigned",
            "keyData": base64::engine::general_purpose::STANDARD.encode(key_pem),
            "signedIdentity": {"type": "matchRepository"}
        }]}}
    });
    ImagePolicy::parse(policy.to_string().as_bytes()).unwrap()
}

#[tokio::test]
async fn signed_image_accepted_with_its_key() {
    let (_d, store) = store();
    let key = std::fs::read(fixtures().join("keys/cosign.pub")).unwrap();
    let opts = PullOptions {
        image_policy: sigstore_policy(&key),
        ..Default::default()
    };
    let pulled = store
        .pull(&reference("signed:latest"), &opts)
        .await
        .unwrap();
    assert!(pulled.layer_dirs[0].join("bin/busybox").exists());
    // The same policy rejects every other repository.
    let err = store
        .pull(&reference("busybox:latest"), &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Signature { .. }), "{err}");
}

#[tokio::test]
async fn signed_image_refused_with_another_key() {
    let (_d, store) = store();
    let (other, _) = store_dir_key();
    let key = std::fs::read(other.path().join("pub.pem")).unwrap();
    let opts = PullOptions {
        image_policy: sigstore_policy(&key),
        ..Default::default()
    };
    let err = store
        .pull(&reference("signed:latest"), &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Signature { .. }), "{err}");
    assert!(err.to_string().contains("signed:latest"), "{err}");
    assert_eq!(store.layers_downloaded(), 0);
}
