//! Pulls from the local registry (tests/registry/start.sh): verification, platforms,
//! compression, whiteouts, cache sharing, failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::time::Duration;

use common::*;
use image_rs::{ImageError, ImageStore, PullOptions, RegistryConfig};

fn no_leftovers(store: &ImageStore) {
    let tmp: Vec<_> = std::fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "temporary layer dirs left: {tmp:?}");
}

#[tokio::test]
async fn busybox_by_tag_then_by_digest() {
    let (_d, store) = store();
    let image = reference("busybox:latest");
    let pulled = store.pull(&image, &PullOptions::default()).await.unwrap();
    assert_eq!(pulled.layer_dirs.len(), 1);
    let bb = pulled.layer_dirs[0].join("bin/busybox");
    let md = std::fs::metadata(&bb).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o755);
    assert_eq!(md.len(), std::fs::metadata("/bin/busybox").unwrap().len());
    assert_eq!(
        std::fs::read_link(pulled.layer_dirs[0].join("bin/sh"))
            .unwrap()
            .to_str(),
        Some("busybox")
    );
    let tmp = std::fs::metadata(pulled.layer_dirs[0].join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    let cfg = pulled.config.config().as_ref().unwrap();
    assert_eq!(cfg.cmd().as_ref().unwrap(), &["/bin/sh"]);
    assert!(pulled.manifest_digest.starts_with("sha256:"));
    assert_eq!(store.layers_downloaded(), 1);
    no_leftovers(&store);

    // By digest: same image, the layer comes from the cache.
    let by_digest = reference(&format!("busybox@{}", pulled.manifest_digest));
    let again = store
        .pull(&by_digest, &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(again.layer_dirs, pulled.layer_dirs);
    assert_eq!(store.layers_downloaded(), 1);
    // Metadata stored by manifest digest.
    let stored = store.get(&pulled.manifest_digest).unwrap().unwrap();
    assert_eq!(stored.layer_dirs, pulled.layer_dirs);

    // A digest the registry does not have.
    let missing = reference(&format!("busybox@sha256:{}", "0".repeat(64)));
    let err = store
        .pull(&missing, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::RegistryStatus { status: 404, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("busybox@sha256:000"), "{err}");
}

#[tokio::test]
async fn whiteouts_become_overlay_form_and_mount() {
    let (d, store) = store();
    let pulled = store
        .pull(&reference("multi:latest"), &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(pulled.layer_dirs.len(), 3);
    let l2 = &pulled.layer_dirs[1];
    let wh = std::fs::symlink_metadata(l2.join("data/a")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!l2.join("data/.wh.a").exists());
    assert!(!l2.join("opq/.wh..wh..opq").exists());
    let opaque = rustix::fs::getxattr(
        l2.join("opq").as_path(),
        "trusted.overlay.opaque",
        &mut [0u8; 8],
    )
    .unwrap();
    assert_eq!(opaque, 1);

    let container = d.path().join("c1");
    let mount = image_rs::mount_rootfs(&pulled, &container).unwrap();
    let root = mount.rootfs().to_path_buf();
    assert!(
        !root.join("data/a").exists(),
        "whiteout did not hide data/a"
    );
    assert_eq!(std::fs::read_to_string(root.join("data/b")).unwrap(), "b\n");
    assert_eq!(
        std::fs::read_to_string(root.join("data/link-to-b")).unwrap(),
        "b\n"
    );
    assert_eq!(std::fs::read_to_string(root.join("data/c")).unwrap(), "c\n");
    assert!(
        !root.join("opq/x").exists(),
        "opaque dir still shows lower content"
    );
    assert!(!root.join("opq/sub").exists());
    assert_eq!(std::fs::read_to_string(root.join("opq/z")).unwrap(), "z\n");
    // Writes go to the container's upper dir, never to the shared layers.
    std::fs::write(root.join("data/new"), "n").unwrap();
    assert!(container.join("upper/data/new").exists());
    assert!(!pulled
        .layer_dirs
        .iter()
        .any(|l| l.join("data/new").exists()));
    mount.unmount().unwrap();
    assert!(!container.join("upper").exists());
    assert!(!container.join("rootfs/data").exists());
}

#[tokio::test]
async fn zstd_layers() {
    let (_d, store) = store();
    let pulled = store
        .pull(&reference("zstd:latest"), &PullOptions::default())
        .await
        .unwrap();
    let bb = std::fs::read(pulled.layer_dirs[0].join("bin/busybox")).unwrap();
    assert_eq!(bb, std::fs::read("/bin/busybox").unwrap());
}

#[tokio::test]
async fn tampered_blob_is_refused_and_leaves_nothing() {
    let (_d, store) = store();
    let err = store
        .pull(&reference("tampered:latest"), &PullOptions::default())
        .await
        .unwrap_err();
    match &err {
        ImageError::DigestMismatch {
            image,
            what,
            digest,
            ..
        } => {
            assert!(image.contains("tampered"));
            assert_eq!(what, "layer");
            assert!(digest.starts_with("sha256:"));
        }
        e => panic!("expected a digest mismatch, got {e}"),
    }
    no_leftovers(&store);
    assert_eq!(
        std::fs::read_dir(store.root().join("layers/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn truncated_blob_is_refused() {
    let (_d, store) = store();
    let err = store
        .pull(&reference("truncated:latest"), &PullOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ImageError::SizeMismatch { expected, received, .. } if received < expected),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
    no_leftovers(&store);
    assert_eq!(
        std::fs::read_dir(store.root().join("layers/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn platforms() {
    let (_d, store) = store();
    let err = store
        .pull(&reference("arm64only:latest"), &PullOptions::default())
        .await
        .unwrap_err();
    match &err {
        ImageError::WrongPlatform { image, offered } => {
            assert!(image.contains("arm64only"));
            assert_eq!(offered, &["linux/arm64"]);
        }
        e => panic!("expected wrong platform, got {e}"),
    }
    let pulled = store
        .pull(&reference("index:latest"), &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(pulled.layer_dirs[0].join("arch.txt")).unwrap(),
        "amd64\n"
    );
    assert_ne!(pulled.manifest_digest, pulled.resolved_digest);
}

#[tokio::test]
async fn concurrent_pulls_download_each_layer_once() {
    let (_d, store) = store();
    let image = reference("busybox:latest");
    let opts = PullOptions::default();
    let zstd = reference("zstd:latest");
    let (a, b, c) = tokio::join!(
        store.pull(&image, &opts),
        store.pull(&image, &opts),
        store.pull(&zstd, &opts)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a.layer_dirs, b.layer_dirs);
    // zstd:latest has the same uncompressed layer: one diff_id, one directory.
    assert_eq!(a.layer_dirs, c.layer_dirs);
    assert_eq!(store.layers_downloaded(), 1);
}

#[tokio::test]
async fn registry_down_is_a_clear_error() {
    let store_dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let cfg = RegistryConfig {
        insecure_registries: vec!["127.0.0.1:9".into()],
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let store = ImageStore::new(store_dir.path(), cfg).unwrap();
    let image: image_rs::Reference = "127.0.0.1:9/busybox:latest".parse().unwrap();
    let err = store
        .pull(&image, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::RegistryUnreachable { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("127.0.0.1:9/busybox:latest"),
        "{err}"
    );
}

#[tokio::test]
async fn stalled_registry_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock); // accept, never answer
        }
    });
    let store_dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let cfg = RegistryConfig {
        insecure_registries: vec![addr.clone()],
        read_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let store = ImageStore::new(store_dir.path(), cfg).unwrap();
    let image: image_rs::Reference = format!("{addr}/busybox:latest").parse().unwrap();
    let started = std::time::Instant::now();
    let err = store
        .pull(&image, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    server.abort();
}

#[tokio::test]
async fn https_is_used_unless_configured_insecure() {
    // The loopback registry speaks plain HTTP; without the insecure entry the client must
    // try HTTPS and fail instead of falling back.
    let store_dir = tempfile::tempdir_in("/var/tmp").unwrap();
    fixtures();
    let store = ImageStore::new(store_dir.path(), RegistryConfig::default()).unwrap();
    let err = store
        .pull(&reference("busybox:latest"), &PullOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::RegistryUnreachable { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn oversized_manifest_is_refused() {
    let store_dir = tempfile::tempdir_in("/var/tmp").unwrap();
    fixtures();
    let cfg = RegistryConfig {
        max_manifest_size: 100,
        ..registry_config()
    };
    let store = ImageStore::new(store_dir.path(), cfg).unwrap();
    let err = store
        .pull(&reference("busybox:latest"), &PullOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::TooLarge { limit: 100, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn https_registry_with_its_ca() {
    let dir = fixtures();
    let store_dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let ca = std::fs::read(dir.join("tls/ca.crt")).unwrap();
    let cfg = RegistryConfig {
        extra_root_certificates_pem: vec![ca],
        ..Default::default()
    };
    let store = ImageStore::new(store_dir.path(), cfg).unwrap();
    let image: image_rs::Reference = "127.0.0.1:5443/busybox:latest".parse().unwrap();
    let pulled = store.pull(&image, &PullOptions::default()).await.unwrap();
    assert!(pulled.layer_dirs[0].join("bin/busybox").exists());
}

#[tokio::test]
async fn https_registry_with_an_unknown_ca_is_refused() {
    fixtures();
    let store_dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = ImageStore::new(store_dir.path(), RegistryConfig::default()).unwrap();
    let image: image_rs::Reference = "127.0.0.1:5443/busybox:latest".parse().unwrap();
    let err = store
        .pull(&image, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::RegistryUnreachable { .. }),
        "{err}"
    );
    assert_eq!(store.layers_downloaded(), 0);
}
