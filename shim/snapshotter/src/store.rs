//! The snapshot metadata: one map from snapshot key/name to [`Record`], kept in memory
//! and written to `<root>/metadata.json` (see [`crate::persist`]) after every change,
//! before the change is answered. Nothing else lives on the host: there is no layer data.
//!
//! Every mutation runs on a copy of the map that replaces the live one only once it is
//! on disk, so a failed write changes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::labels::{CRI_IMAGE_REF, MAX_KEY_LEN, MAX_LABEL_LEN, TARGET_SNAPSHOT_REF};
use crate::persist;

/// File name of the metadata below the root directory.
pub const METADATA_FILE: &str = "metadata.json";
/// Version of the metadata file format.
const FORMAT_VERSION: u32 = 1;
/// Longest image reference accepted.
const MAX_IMAGE_REF_LEN: usize = 2048;

/// Kind of a snapshot, as in containerd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only view on its parent (View).
    View,
    /// Writable snapshot (Prepare of a container).
    Active,
    /// Committed snapshot: an image layer, or the result of Commit.
    Committed,
}

impl Kind {
    /// The name containerd uses in filters (`kind==committed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// One snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Its kind.
    pub kind: Kind,
    /// Key/name of the parent, empty for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent: String,
    /// Labels as given by containerd (and changed by Update).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Creation time.
    pub created_at: SystemTime,
    /// Time of the last change.
    pub updated_at: SystemTime,
    /// For active and view snapshots: the image reference their mount carries, resolved
    /// at creation. Kept across Commit when the labels lose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,
}

impl Record {
    /// The image reference this snapshot contributes to a chain walk.
    fn image_ref(&self) -> Option<&str> {
        self.labels
            .get(CRI_IMAGE_REF)
            .map(String::as_str)
            .or(self.image_ref.as_deref())
    }
}

/// What a Prepare/View did.
#[derive(Debug, PartialEq)]
pub enum Prepared {
    /// A layer: recorded as the committed snapshot `target`; containerd is to be told it
    /// already exists.
    Layer {
        /// The committed snapshot's name.
        target: String,
    },
    /// An active or view snapshot for a container, whose mount carries `image_ref`.
    Container {
        /// The image reference.
        image_ref: String,
    },
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    snapshots: BTreeMap<String, Record>,
}

/// The metadata store.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    snapshots: BTreeMap<String, Record>,
}

impl Store {
    /// Opens (creating the directory if needed) the store below `root` and loads what a
    /// previous run left.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|source| Error::Io {
            path: root.to_owned(),
            source,
        })?;
        let path = root.join(METADATA_FILE);
        let snapshots = match persist::read(&path)? {
            None => BTreeMap::new(),
            Some(bytes) => parse(&path, &bytes)?,
        };
        Ok(Store { path, snapshots })
    }

    /// Path of the metadata file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of snapshots.
    pub fn len(&self) -> usize {
        self.snapshots.len()
    }

    /// Whether there are no snapshots.
    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
    }

    /// The snapshot `key`.
    pub fn get(&self, key: &str) -> Result<&Record> {
        self.snapshots.get(key).ok_or_else(|| Error::NotFound {
            key: key.to_owned(),
        })
    }

    /// All snapshots, ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Record)> {
        self.snapshots.iter()
    }

    /// Prepare (`kind` Active) or View (`kind` View). A request carrying
    /// [`TARGET_SNAPSHOT_REF`] is an image layer: it is recorded as that committed
    /// snapshot (or found already there, which is [`Error::LayerPresent`] too). Anything
    /// else is a container snapshot, which needs an image reference (own label or one on
    /// its parent chain).
    pub fn prepare(
        &mut self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Prepared> {
        check_key(key)?;
        let labels = check_labels(key, labels)?;
        self.check_parent(key, parent)?;

        if let Some(target) = labels.get(TARGET_SNAPSHOT_REF) {
            if target.is_empty() {
                return Err(Error::invalid(
                    key,
                    format!("label {TARGET_SNAPSHOT_REF} is empty"),
                ));
            }
            check_key(target)?;
            if self.snapshots.contains_key(target) {
                return Err(Error::LayerPresent {
                    key: key.to_owned(),
                    target: target.clone(),
                });
            }
            if let Some(image_ref) = labels.get(CRI_IMAGE_REF) {
                check_image_ref(key, image_ref)?;
            }
            let target = target.clone();
            let now = SystemTime::now();
            let record = Record {
                kind: Kind::Committed,
                parent: parent.to_owned(),
                labels,
                created_at: now,
                updated_at: now,
                image_ref: None,
            };
            self.mutate(|map| {
                map.insert(target.clone(), record);
                Ok(())
            })?;
            return Ok(Prepared::Layer { target });
        }

        if self.snapshots.contains_key(key) {
            return Err(Error::AlreadyExists {
                key: key.to_owned(),
            });
        }
        if is_unpack_key(key) && !labels.contains_key(CRI_IMAGE_REF) {
            return Err(Error::HostUnpack {
                key: key.to_owned(),
            });
        }
        let image_ref = match labels.get(CRI_IMAGE_REF) {
            Some(own) => {
                check_image_ref(key, own)?;
                own.clone()
            }
            None => self
                .image_ref_of_chain(parent)
                .ok_or_else(|| Error::NoImageRef {
                    key: key.to_owned(),
                    parent: parent.to_owned(),
                })?,
        };
        let now = SystemTime::now();
        let record = Record {
            kind,
            parent: parent.to_owned(),
            labels,
            created_at: now,
            updated_at: now,
            image_ref: Some(image_ref.clone()),
        };
        self.mutate(|map| {
            map.insert(key.to_owned(), record);
            Ok(())
        })?;
        Ok(Prepared::Container { image_ref })
    }

    /// Commits the active snapshot `key` as the committed snapshot `name` (same parent,
    /// the given labels) and removes `key`.
    pub fn commit(&mut self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<()> {
        check_key(name)?;
        let labels = check_labels(name, labels)?;
        let active = self.get(key)?;
        if active.kind != Kind::Active {
            return Err(Error::NotActive {
                key: key.to_owned(),
                kind: active.kind.as_str(),
            });
        }
        if self.snapshots.contains_key(name) {
            return Err(Error::AlreadyExists {
                key: name.to_owned(),
            });
        }
        if let Some(image_ref) = labels.get(CRI_IMAGE_REF) {
            check_image_ref(name, image_ref)?;
        }
        let now = SystemTime::now();
        let record = Record {
            kind: Kind::Committed,
            parent: active.parent.clone(),
            image_ref: active.image_ref.clone(),
            labels,
            created_at: now,
            updated_at: now,
        };
        self.mutate(|map| {
            map.remove(key);
            map.insert(name.to_owned(), record);
            Ok(())
        })
    }

    /// Removes `key`; refused while other snapshots have it as parent.
    pub fn remove(&mut self, key: &str) -> Result<()> {
        self.get(key)?;
        let children: Vec<&str> = self.children(key).collect();
        if let Some(child) = children.first() {
            return Err(Error::HasChildren {
                key: key.to_owned(),
                count: children.len(),
                child: (*child).to_owned(),
            });
        }
        self.mutate(|map| {
            map.remove(key);
            Ok(())
        })
    }

    /// Updates the labels of `name` as containerd's Update does: no field paths (or
    /// `labels`) replaces all labels, `labels.K` sets or (absent in `labels`) removes K.
    /// Other fields are immutable.
    pub fn update(
        &mut self,
        name: &str,
        labels: HashMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<Record> {
        let mut record = self.get(name)?.clone();
        let new = check_labels(name, labels)?;
        if fieldpaths.is_empty() {
            record.labels = new;
        } else {
            for path in fieldpaths {
                if path == "labels" {
                    record.labels = new.clone();
                } else if let Some(label) = path.strip_prefix("labels.") {
                    match new.get(label) {
                        Some(v) => record.labels.insert(label.to_owned(), v.clone()),
                        None => record.labels.remove(label),
                    };
                } else {
                    return Err(Error::invalid(
                        name,
                        format!("cannot update field {path:?}: only labels are mutable"),
                    ));
                }
            }
        }
        if let Some(image_ref) = record.labels.get(CRI_IMAGE_REF) {
            check_image_ref(name, image_ref)?;
        }
        record.updated_at = SystemTime::now();
        let stored = record.clone();
        self.mutate(|map| {
            map.insert(name.to_owned(), stored);
            Ok(())
        })?;
        Ok(record)
    }

    /// Keys of the snapshots whose parent is `key`.
    pub fn children<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.snapshots
            .iter()
            .filter(move |(_, r)| r.parent == key)
            .map(|(k, _)| k.as_str())
    }

    /// The first image reference found walking from `start` towards the root.
    pub fn image_ref_of_chain(&self, start: &str) -> Option<String> {
        let mut seen = HashSet::new();
        let mut cur = start;
        while !cur.is_empty() && seen.insert(cur) {
            let record = self.snapshots.get(cur)?;
            if let Some(r) = record.image_ref() {
                return Some(r.to_owned());
            }
            cur = &record.parent;
        }
        None
    }

    /// Removes leftover temporary files (containerd's Cleanup).
    pub fn cleanup(&self) -> Result<()> {
        persist::remove_stale_tmp(&self.path)
    }

    fn check_parent(&self, key: &str, parent: &str) -> Result<()> {
        if parent.is_empty() {
            return Ok(());
        }
        match self.snapshots.get(parent) {
            None => Err(Error::ParentNotFound {
                key: key.to_owned(),
                parent: parent.to_owned(),
            }),
            Some(r) if r.kind != Kind::Committed => Err(Error::ParentNotCommitted {
                key: key.to_owned(),
                parent: parent.to_owned(),
                kind: r.kind.as_str(),
            }),
            Some(_) => Ok(()),
        }
    }

    fn mutate<T>(
        &mut self,
        f: impl FnOnce(&mut BTreeMap<String, Record>) -> Result<T>,
    ) -> Result<T> {
        let mut next = self.snapshots.clone();
        let out = f(&mut next)?;
        let file = FileFormat {
            version: FORMAT_VERSION,
            snapshots: next,
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| Error::Corrupt {
            path: self.path.clone(),
            reason: format!("cannot serialise: {e}"),
        })?;
        persist::write_atomic(&self.path, &bytes)?;
        self.snapshots = file.snapshots;
        Ok(out)
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Record>> {
    let file: FileFormat = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if file.version != FORMAT_VERSION {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            reason: format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                file.version
            ),
        });
    }
    for (key, record) in &file.snapshots {
        if !record.parent.is_empty() && !file.snapshots.contains_key(&record.parent) {
            tracing::warn!(
                key,
                parent = record.parent,
                "snapshot's parent is missing from the metadata"
            );
        }
    }
    Ok(file.snapshots)
}

/// Whether `key` is containerd's unpack key (`[NS/ID/]extract-UNIQUE sha256:CHAIN`).
fn is_unpack_key(key: &str) -> bool {
    let last = key.rsplit('/').next().unwrap_or(key);
    last.starts_with("extract-") && last.contains(" sha256:")
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid(key, "the snapshot key is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::invalid(
            &key[..key.floor_char_boundary_compat(64)],
            format!(
                "the snapshot key is {} bytes long (at most {MAX_KEY_LEN})",
                key.len()
            ),
        ));
    }
    if key.contains('\0') {
        return Err(Error::invalid(key, "the snapshot key contains a NUL byte"));
    }
    Ok(())
}

fn check_labels(key: &str, labels: HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    for (k, v) in &labels {
        if k.is_empty() {
            return Err(Error::invalid(key, "a label has an empty key"));
        }
        if k.len() + v.len() > MAX_LABEL_LEN {
            return Err(Error::invalid(
                key,
                format!(
                    "label {:?} is longer than {MAX_LABEL_LEN} bytes",
                    truncate(k, 64)
                ),
            ));
        }
    }
    Ok(labels.into_iter().collect())
}

fn check_image_ref(key: &str, image_ref: &str) -> Result<()> {
    let bad = if image_ref.is_empty() {
        "is empty"
    } else if image_ref.len() > MAX_IMAGE_REF_LEN {
        "is too long"
    } else if image_ref
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        // (A comma would split the `kata-cc.image-ref=` mount option wherever options
        // are joined, as in `mount -o`; no valid image reference has one.)
        "contains whitespace, control characters or a comma"
    } else {
        return Ok(());
    };
    Err(Error::invalid(
        key,
        format!(
            "label {CRI_IMAGE_REF} {bad}: {:?}",
            truncate(image_ref, 128)
        ),
    ))
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary_compat(max)]
}

/// `str::floor_char_boundary` is unstable; this is the same for our use.
trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, index: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, index: usize) -> usize {
        if index >= self.len() {
            return self.len();
        }
        (0..=index)
            .rev()
            .find(|&i| self.is_char_boundary(i))
            .unwrap_or(0)
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
