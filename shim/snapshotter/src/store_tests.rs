#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

const IMG: &str = "127.0.0.1:5000/busybox:latest";

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn layer(target: &str) -> HashMap<String, String> {
    labels(&[(TARGET_SNAPSHOT_REF, target), (CRI_IMAGE_REF, IMG)])
}

/// Two layers L1 <- L2 recorded as containerd's unpacker would.
fn with_image(store: &mut Store) {
    let r = store.prepare(
        Kind::Active,
        "default/1/extract-1 sha256:l1",
        "",
        layer("sha256:l1"),
    );
    assert_eq!(
        r.unwrap(),
        Prepared::Layer {
            target: "sha256:l1".into()
        }
    );
    let r = store.prepare(
        Kind::Active,
        "default/2/extract-2 sha256:l2",
        "sha256:l1",
        layer("sha256:l2"),
    );
    assert_eq!(
        r.unwrap(),
        Prepared::Layer {
            target: "sha256:l2".into()
        }
    );
}

#[test]
fn layer_prepare_records_committed_target_and_second_time_is_layer_present() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    with_image(&mut store);
    let l2 = store.get("sha256:l2").unwrap();
    assert_eq!(l2.kind, Kind::Committed);
    assert_eq!(l2.parent, "sha256:l1");
    assert_eq!(l2.labels.get(CRI_IMAGE_REF).map(String::as_str), Some(IMG));
    // The Prepare key itself is not kept.
    assert_eq!(store.len(), 2);
    let again = store.prepare(
        Kind::Active,
        "default/3/extract-3 sha256:l2",
        "sha256:l1",
        layer("sha256:l2"),
    );
    assert!(matches!(again, Err(Error::LayerPresent { ref target, .. }) if target == "sha256:l2"));
    assert_eq!(again.unwrap_err().code(), tonic::Code::AlreadyExists);
}

#[test]
fn container_gets_image_ref_from_parent_chain_or_own_label() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    with_image(&mut store);
    let r = store
        .prepare(Kind::Active, "c1", "sha256:l2", HashMap::new())
        .unwrap();
    assert_eq!(
        r,
        Prepared::Container {
            image_ref: IMG.into()
        }
    );
    let own = labels(&[(CRI_IMAGE_REF, "other.example/app:1")]);
    let r = store.prepare(Kind::View, "v1", "sha256:l2", own).unwrap();
    assert_eq!(
        r,
        Prepared::Container {
            image_ref: "other.example/app:1".into()
        }
    );
    assert_eq!(store.get("v1").unwrap().kind, Kind::View);
    // Same key twice.
    let dup = store.prepare(Kind::Active, "c1", "sha256:l2", HashMap::new());
    assert!(matches!(dup, Err(Error::AlreadyExists { .. })));
}

#[test]
fn container_without_any_image_ref_fails_precondition_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let plain = labels(&[(TARGET_SNAPSHOT_REF, "sha256:l1")]);
    store.prepare(Kind::Active, "k", "", plain).unwrap();
    let err = store
        .prepare(Kind::Active, "ctr-7", "sha256:l1", HashMap::new())
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let msg = err.to_string();
    assert!(
        msg.contains("\"ctr-7\"") && msg.contains("--snapshotter-label"),
        "{msg}"
    );
    // containerd 1.6's host unpack (no target label) is refused with its own message.
    let err = store
        .prepare(
            Kind::Active,
            "default/9/extract-12-ab sha256:x",
            "",
            HashMap::new(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::HostUnpack { .. }), "{err}");
}

#[test]
fn bad_parents_and_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    with_image(&mut store);
    let e = store
        .prepare(Kind::Active, "c", "sha256:nope", HashMap::new())
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.to_string().contains("sha256:nope"));
    store
        .prepare(Kind::Active, "c", "sha256:l2", HashMap::new())
        .unwrap();
    let e = store
        .prepare(Kind::Active, "d", "c", HashMap::new())
        .unwrap_err();
    assert!(matches!(e, Error::ParentNotCommitted { .. }), "{e}");
    let e = store
        .prepare(Kind::Active, "", "", HashMap::new())
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let bad_ref = labels(&[(CRI_IMAGE_REF, "a b\n")]);
    let e = store
        .prepare(Kind::Active, "x", "sha256:l2", bad_ref)
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // A comma would split the kata-cc.image-ref= mount option.
    let comma_ref = labels(&[(CRI_IMAGE_REF, "r.example/a:1,rw")]);
    let e = store
        .prepare(Kind::Active, "x", "sha256:l2", comma_ref)
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.to_string().contains("comma"), "{e}");
    let huge = labels(&[("k", &"v".repeat(5000))]);
    let e = store
        .prepare(Kind::Active, "y", "sha256:l2", huge)
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = store
        .prepare(Kind::Active, &"z".repeat(5000), "", HashMap::new())
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let empty_target = labels(&[(TARGET_SNAPSHOT_REF, "")]);
    assert!(store.prepare(Kind::Active, "w", "", empty_target).is_err());
}

#[test]
fn remove_refuses_parents_with_children() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    with_image(&mut store);
    store
        .prepare(Kind::Active, "c1", "sha256:l2", HashMap::new())
        .unwrap();
    let e = store.remove("sha256:l2").unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.to_string().contains("c1"), "{e}");
    assert!(store.remove("sha256:l1").is_err());
    store.remove("c1").unwrap();
    store.remove("sha256:l2").unwrap();
    store.remove("sha256:l1").unwrap();
    assert!(store.is_empty());
    assert_eq!(
        store.remove("sha256:l1").unwrap_err().code(),
        tonic::Code::NotFound
    );
}

#[test]
fn commit_of_active_keeps_parent_and_image_ref_refuses_views() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    with_image(&mut store);
    let own = labels(&[(CRI_IMAGE_REF, "app:1")]);
    store.prepare(Kind::Active, "c1", "sha256:l2", own).unwrap();
    store.commit("snap-1", "c1", labels(&[("x", "y")])).unwrap();
    assert!(store.get("c1").is_err());
    let snap = store.get("snap-1").unwrap();
    assert_eq!(
        (snap.kind, snap.parent.as_str()),
        (Kind::Committed, "sha256:l2")
    );
    assert_eq!(snap.labels.get("x").map(String::as_str), Some("y"));
    // A child of the committed snapshot still finds the reference of the container.
    let r = store
        .prepare(Kind::Active, "c2", "snap-1", HashMap::new())
        .unwrap();
    assert_eq!(
        r,
        Prepared::Container {
            image_ref: "app:1".into()
        }
    );
    store
        .prepare(Kind::View, "v", "snap-1", HashMap::new())
        .unwrap();
    assert!(matches!(
        store.commit("n", "v", HashMap::new()),
        Err(Error::NotActive { .. })
    ));
    assert!(matches!(
        store.commit("n", "snap-1", HashMap::new()),
        Err(Error::NotActive { .. })
    ));
    assert!(matches!(
        store.commit("snap-1", "c2", HashMap::new()),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        store.commit("n", "missing", HashMap::new()),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn update_follows_containerd_field_paths() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    with_image(&mut store);
    let before = store.get("sha256:l1").unwrap().clone();
    let r = store
        .update("sha256:l1", labels(&[("a", "1")]), &["labels.a".into()])
        .unwrap();
    assert_eq!(r.labels.get("a").map(String::as_str), Some("1"));
    assert_eq!(r.labels.get(CRI_IMAGE_REF).map(String::as_str), Some(IMG));
    assert!(r.updated_at >= before.updated_at);
    // labels.K absent from the new labels removes it.
    let r = store
        .update("sha256:l1", HashMap::new(), &["labels.a".into()])
        .unwrap();
    assert!(!r.labels.contains_key("a"));
    // No paths: replace all.
    let r = store
        .update("sha256:l1", labels(&[("b", "2")]), &[])
        .unwrap();
    assert_eq!(r.labels.len(), 1);
    let e = store
        .update("sha256:l1", HashMap::new(), &["parent".into()])
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = store.update("nope", HashMap::new(), &[]).unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[test]
fn restart_reloads_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = Store::open(dir.path()).unwrap();
        with_image(&mut store);
        store
            .prepare(Kind::Active, "c1", "sha256:l2", HashMap::new())
            .unwrap();
        store.update("c1", labels(&[("k", "v")]), &[]).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.len(), 3);
    let c1 = store.get("c1").unwrap();
    assert_eq!(c1.image_ref.as_deref(), Some(IMG));
    assert_eq!(c1.labels.get("k").map(String::as_str), Some("v"));
    assert_eq!(store.get("sha256:l2").unwrap().parent, "sha256:l1");
}

#[test]
fn failed_write_changes_nothing_and_corrupt_file_refuses_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut store = Store::open(&root).unwrap();
    with_image(&mut store);
    // Make the next write fail: the metadata path becomes a directory.
    let path = store.path().to_owned();
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let e = store
        .prepare(Kind::Active, "c1", "sha256:l2", HashMap::new())
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal);
    assert!(
        store.get("c1").is_err(),
        "a failed write must not change the live state"
    );
    std::fs::remove_dir(&path).unwrap();

    std::fs::write(&path, b"{\"version\":1,\"snapshots\":{").unwrap();
    let e = Store::open(&root).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("metadata.json"));
    std::fs::write(&path, b"{\"version\":99,\"snapshots\":{}}").unwrap();
    assert!(matches!(Store::open(&root), Err(Error::Corrupt { .. })));
}

#[test]
fn chain_walk_survives_cycles_in_a_hand_edited_file() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let rec = |parent: &str| Record {
        kind: Kind::Committed,
        parent: parent.into(),
        labels: BTreeMap::new(),
        created_at: now,
        updated_at: now,
        image_ref: None,
    };
    let file = FileFormat {
        version: FORMAT_VERSION,
        snapshots: BTreeMap::from([("a".to_string(), rec("b")), ("b".to_string(), rec("a"))]),
    };
    std::fs::write(
        dir.path().join(METADATA_FILE),
        serde_json::to_vec(&file).unwrap(),
    )
    .unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    assert_eq!(store.image_ref_of_chain("a"), None);
    assert!(matches!(
        store.prepare(Kind::Active, "c", "a", HashMap::new()),
        Err(Error::NoImageRef { .. })
    ));
}
