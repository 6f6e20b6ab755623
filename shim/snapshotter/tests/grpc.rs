//! The snapshotter binary over its gRPC socket, without containerd: hostile and malformed
//! requests get the right status code and a message naming the key, and the server keeps
//! answering afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_snapshots::api::snapshots::v1::{
    snapshots_client::SnapshotsClient, CommitSnapshotRequest, Info, ListSnapshotsRequest,
    MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
    UpdateSnapshotRequest, UsageRequest, ViewSnapshotRequest,
};
use tonic::Code;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The code and message of a failed call; panics on success.
fn code<T>(r: Result<T, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_errors_and_do_not_hurt_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_kata-cc-snapshotter"))
            .arg("--address")
            .arg(&sock)
            .arg("--root")
            .arg(dir.path().join("root"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "snapshotter did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ch = kata_cc_snapshotter::containerd_api::connect(sock.clone())
        .await
        .unwrap();
    let mut c = SnapshotsClient::new(ch);
    let prep = |key: &str, parent: &str, l: HashMap<String, String>| PrepareSnapshotRequest {
        snapshotter: "kata-cc".into(),
        key: key.into(),
        parent: parent.into(),
        labels: l,
    };

    // A layer: AlreadyExists, recorded.
    let layer = labels(&[
        ("containerd.io/snapshot.ref", "sha256:l1"),
        ("containerd.io/snapshot/cri.image-ref", "r.example/app:1"),
    ]);
    let (k, m) = code(c.prepare(prep("ns/1/extract-1 sha256:l1", "", layer)).await);
    assert_eq!(k, Code::AlreadyExists, "{m}");
    assert!(m.contains("sha256:l1"), "{m}");

    // Malformed things.
    let (k, _) = code(c.prepare(prep("", "", HashMap::new())).await);
    assert_eq!(k, Code::InvalidArgument);
    let (k, m) = code(c.prepare(prep("ns/2/c", "missing", HashMap::new())).await);
    assert_eq!(k, Code::NotFound);
    assert!(m.contains("ns/2/c") && m.contains("missing"), "{m}");
    let (k, m) = code(c.prepare(prep("ns/3/c", "", HashMap::new())).await);
    assert_eq!(k, Code::FailedPrecondition);
    assert!(m.contains("ns/3/c"), "{m}");
    let huge = labels(&[("x", &"y".repeat(70_000))]);
    let (k, _) = code(c.prepare(prep("ns/4/c", "sha256:l1", huge)).await);
    assert_eq!(k, Code::InvalidArgument);
    let list = |f: &str| ListSnapshotsRequest {
        snapshotter: "kata-cc".into(),
        filters: vec![f.into()],
    };
    for bad in ["name~=x", "labels.\"open", "==", "a==b c"] {
        // (The error comes as the stream's status.)
        let mut stream = c.list(list(bad)).await.unwrap().into_inner();
        let (k, m) = code(stream.message().await);
        assert_eq!(k, Code::InvalidArgument, "{bad}: {m}");
    }
    let (k, _) = code(
        c.update(UpdateSnapshotRequest {
            snapshotter: "kata-cc".into(),
            info: None,
            update_mask: None,
        })
        .await,
    );
    assert_eq!(k, Code::FailedPrecondition);
    let (k, _) = code(
        c.update(UpdateSnapshotRequest {
            snapshotter: "kata-cc".into(),
            info: Some(Info {
                name: "sha256:l1".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["kind".into()],
            }),
        })
        .await,
    );
    assert_eq!(k, Code::InvalidArgument);
    for key in ["", "nope", "\u{0}"] {
        let stat = StatSnapshotRequest {
            snapshotter: "kata-cc".into(),
            key: key.into(),
        };
        assert_eq!(code(c.stat(stat).await).0, Code::NotFound);
        let usage = UsageRequest {
            snapshotter: "kata-cc".into(),
            key: key.into(),
        };
        assert_eq!(code(c.usage(usage).await).0, Code::NotFound);
    }
    let (k, _) = code(
        c.commit(CommitSnapshotRequest {
            snapshotter: "kata-cc".into(),
            name: "n".into(),
            key: "sha256:l1".into(),
            labels: HashMap::new(),
        })
        .await,
    );
    assert_eq!(k, Code::FailedPrecondition);

    // The server still works: a view and an active snapshot with their mounts.
    let view = c
        .view(ViewSnapshotRequest {
            snapshotter: "kata-cc".into(),
            key: "ns/5/v".into(),
            parent: "sha256:l1".into(),
            labels: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // One read-only bind of the empty `<root>/guest-pull-rootfs`, the image reference in
    // the kata-cc.image-ref= option; the same for a view and an active snapshot.
    let rootfs = std::fs::canonicalize(dir.path().join("root"))
        .unwrap()
        .join("guest-pull-rootfs");
    assert_eq!(view.mounts.len(), 1);
    assert_eq!(view.mounts[0].r#type, "bind");
    assert_eq!(view.mounts[0].source, rootfs.to_str().unwrap());
    assert_eq!(
        view.mounts[0].options,
        ["ro", "rbind", "kata-cc.image-ref=r.example/app:1"]
    );
    assert_eq!(
        view.mounts[0].options[2].strip_prefix(kata_cc_snapshotter::labels::IMAGE_REF_OPTION),
        Some("r.example/app:1")
    );
    let meta = std::fs::metadata(&rootfs).unwrap();
    assert!(meta.is_dir());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
        0o555
    );
    assert_eq!(std::fs::read_dir(&rootfs).unwrap().count(), 0);
    let mounts = c
        .prepare(prep("ns/6/c", "sha256:l1", HashMap::new()))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(mounts, view.mounts);
    let again = c
        .mounts(MountsRequest {
            snapshotter: "kata-cc".into(),
            key: "ns/6/c".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(again, mounts);
    let (k, _) = code(
        c.remove(RemoveSnapshotRequest {
            snapshotter: "kata-cc".into(),
            key: "sha256:l1".into(),
        })
        .await,
    );
    assert_eq!(k, Code::FailedPrecondition);
    let mut stream = c.list(list("kind==committed")).await.unwrap().into_inner();
    let mut names = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        names.extend(batch.info.into_iter().map(|i| i.name));
    }
    assert_eq!(names, vec!["sha256:l1".to_string()]);
}

#[test]
fn refuses_to_start_when_the_rootfs_dir_is_not_empty() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("root").join("guest-pull-rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::write(rootfs.join("stray"), b"x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kata-cc-snapshotter"))
        .arg("--address")
        .arg(dir.path().join("s.sock"))
        .arg("--root")
        .arg(dir.path().join("root"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("guest-pull-rootfs") && err.contains("not empty"),
        "{err}"
    );
    assert!(!dir.path().join("s.sock").exists());
    assert!(rootfs.join("stray").exists());
}
