//! containerd's snapshot API ([`containerd_snapshots::Snapshotter`]) over the [`Store`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use containerd_snapshots::{api::types::Mount, Info, Kind as ApiKind, Snapshotter, Usage};

use crate::error::{Error, Result};
use crate::filter::Filters;
use crate::rootfs;
use crate::store::{Kind, Prepared, Record, Store};

/// The kata-cc snapshotter. Requests are served one at a time (the store is small and
/// every change is one file write).
#[derive(Debug)]
pub struct GuestPullSnapshotter {
    store: Mutex<Store>,
    /// Absolute path of the empty directory every mount binds (`<root>/guest-pull-rootfs`).
    rootfs: String,
}

impl GuestPullSnapshotter {
    /// Opens the metadata below `root` and makes sure the empty rootfs directory is there
    /// (see [`rootfs::prepare`]).
    pub fn open(root: &Path) -> Result<Self> {
        let store = Store::open(root)?;
        let rootfs = rootfs::prepare(root)?;
        tracing::info!(
            path = %store.path().display(),
            snapshots = store.len(),
            rootfs,
            "metadata loaded"
        );
        Ok(GuestPullSnapshotter {
            store: Mutex::new(store),
            rootfs,
        })
    }

    /// The empty directory every mount binds.
    pub fn rootfs(&self) -> &str {
        &self.rootfs
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the map half-changed (mutations
        // swap in a complete copy), so a poisoned lock is still consistent.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn create(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let op = if kind == Kind::View {
            "view"
        } else {
            "prepare"
        };
        tracing::debug!(op, key, parent, ?labels, "request");
        let result = self.store().prepare(kind, &key, &parent, labels);
        match result {
            Ok(Prepared::Layer { target }) => {
                tracing::info!(
                    key,
                    target,
                    parent,
                    "layer recorded; containerd will not fetch it"
                );
                Err(Error::LayerPresent { key, target })
            }
            Ok(Prepared::Container { image_ref }) => {
                tracing::info!(op, key, parent, image_ref, "container snapshot created");
                Ok(vec![rootfs::mount(&self.rootfs, &image_ref)])
            }
            Err(e) => Err(logged(op, e)),
        }
    }
}

fn logged(op: &str, e: Error) -> Error {
    match e {
        Error::LayerPresent { .. } => tracing::debug!(op, error = %e, "answered"),
        Error::Io { .. } | Error::Corrupt { .. } | Error::Rootfs { .. } => {
            tracing::error!(op, error = %e, "failed")
        }
        _ => tracing::info!(op, error = %e, "refused"),
    }
    e
}

/// The API's view of a record.
pub fn info(name: &str, r: &Record) -> Info {
    Info {
        kind: match r.kind {
            Kind::View => ApiKind::View,
            Kind::Active => ApiKind::Active,
            Kind::Committed => ApiKind::Committed,
        },
        name: name.to_owned(),
        parent: r.parent.clone(),
        labels: r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<Info>>>;

#[tonic::async_trait]
impl Snapshotter for GuestPullSnapshotter {
    type Error = Error;

    async fn stat(&self, key: String) -> Result<Info> {
        tracing::debug!(key, "stat");
        let store = self.store();
        store.get(&key).map(|r| info(&key, r))
    }

    async fn update(&self, info_in: Info, fieldpaths: Option<Vec<String>>) -> Result<Info> {
        tracing::debug!(name = info_in.name, ?fieldpaths, labels = ?info_in.labels, "update");
        let name = info_in.name;
        let paths = fieldpaths.unwrap_or_default();
        let mut store = self.store();
        store
            .update(&name, info_in.labels, &paths)
            .map(|r| info(&name, &r))
            .map_err(|e| logged("update", e))
    }

    async fn usage(&self, key: String) -> Result<Usage> {
        tracing::debug!(key, "usage");
        // Nothing is stored on the host for any snapshot.
        self.store().get(&key).map(|_| Usage::default())
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>> {
        tracing::debug!(key, "mounts");
        let store = self.store();
        let r = store.get(&key)?;
        if r.kind == Kind::Committed {
            return Err(logged("mounts", Error::NoMounts { key }));
        }
        let image_ref = match &r.image_ref {
            Some(own) => own.clone(),
            None => store
                .image_ref_of_chain(&key)
                .ok_or_else(|| Error::NoImageRef {
                    key: key.clone(),
                    parent: r.parent.clone(),
                })?,
        };
        Ok(vec![rootfs::mount(&self.rootfs, &image_ref)])
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        tracing::debug!(name, key, ?labels, "commit");
        self.store()
            .commit(&name, &key, labels)
            .map_err(|e| logged("commit", e))?;
        tracing::info!(name, key, "committed");
        Ok(())
    }

    async fn remove(&self, key: String) -> Result<()> {
        tracing::debug!(key, "remove");
        self.store().remove(&key).map_err(|e| logged("remove", e))?;
        tracing::info!(key, "removed");
        Ok(())
    }

    async fn clear(&self) -> Result<()> {
        tracing::debug!("cleanup");
        self.store().cleanup()
    }

    type InfoStream = InfoStream;

    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> Result<InfoStream> {
        tracing::debug!(?filters, "list");
        let filters = Filters::parse(&filters).map_err(|e| logged("list", e))?;
        let store = self.store();
        let infos: Vec<Result<Info>> = store
            .iter()
            .filter(|(name, r)| filters.matches(name, r))
            .map(|(name, r)| Ok(info(name, r)))
            .collect();
        Ok(tokio_stream::iter(infos))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::labels::{CRI_IMAGE_REF, IMAGE_REF_OPTION, ROOTFS_DIR, TARGET_SNAPSHOT_REF};

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn active_and_view_get_the_same_read_only_bind_of_the_empty_dir() {
        let dir = tempfile::tempdir().unwrap();
        let s = GuestPullSnapshotter::open(dir.path()).unwrap();
        let rootfs = std::fs::canonicalize(dir.path()).unwrap().join(ROOTFS_DIR);
        assert_eq!(Path::new(s.rootfs()), rootfs);
        let layer = labels(&[
            (TARGET_SNAPSHOT_REF, "sha256:l1"),
            (CRI_IMAGE_REF, "r.example/app:1"),
        ]);
        let e = s
            .prepare("ns/1/extract-1 sha256:l1".into(), String::new(), layer)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::LayerPresent { .. }), "{e}");

        let active = s
            .prepare("ns/2/c".into(), "sha256:l1".into(), HashMap::new())
            .await
            .unwrap();
        let expected = Mount {
            r#type: "bind".into(),
            source: rootfs.to_str().unwrap().into(),
            target: String::new(),
            options: vec![
                "ro".into(),
                "rbind".into(),
                format!("{IMAGE_REF_OPTION}r.example/app:1"),
            ],
        };
        assert_eq!(active, vec![expected.clone()]);
        let view = s
            .view("ns/3/v".into(), "sha256:l1".into(), HashMap::new())
            .await
            .unwrap();
        assert_eq!(view, active);
        assert_eq!(s.mounts("ns/2/c".into()).await.unwrap(), active);
        assert_eq!(s.mounts("ns/3/v".into()).await.unwrap(), active);
        // A container's own label wins over the chain's.
        let own = labels(&[(CRI_IMAGE_REF, "other.example/b:2")]);
        let m = s
            .prepare("ns/4/c".into(), "sha256:l1".into(), own)
            .await
            .unwrap();
        assert_eq!(m[0].options[2], "kata-cc.image-ref=other.example/b:2");
        // Nothing was ever written into the directory.
        assert_eq!(std::fs::read_dir(&rootfs).unwrap().count(), 0);

        // Reopening (a restart) keeps the path and the mounts.
        drop(s);
        let s = GuestPullSnapshotter::open(dir.path()).unwrap();
        assert_eq!(s.mounts("ns/2/c".into()).await.unwrap(), vec![expected]);
    }
}
