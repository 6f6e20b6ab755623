//! File-backed resources: `<dir>/<repo>/<type>/<tag>`.

use std::path::PathBuf;

/// A validated `repo/type/tag` (each component `[A-Za-z0-9._-]+`, not `.`/`..`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePath {
    /// Repository.
    pub repo: String,
    /// Type.
    pub kind: String,
    /// Tag.
    pub tag: String,
}

impl std::fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.repo, self.kind, self.tag)
    }
}

/// Why a resource cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not three valid components.
    #[error("invalid resource path {0:?} (want repo/type/tag of [A-Za-z0-9._-])")]
    InvalidPath(String),
    /// No such resource.
    #[error("resource {0} not found")]
    NotFound(ResourcePath),
    /// File system error.
    #[error("resource store I/O on {path}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl ResourcePath {
    /// Parses `repo/type/tag`.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.len() <= 255
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        };
        match parts.as_slice() {
            [r, k, t] if ok(r) && ok(k) && ok(t) => Ok(Self {
                repo: (*r).to_owned(),
                kind: (*k).to_owned(),
                tag: (*t).to_owned(),
            }),
            _ => Err(StoreError::InvalidPath(s.to_owned())),
        }
    }
}

/// Resources on disk.
#[derive(Clone, Debug)]
pub struct ResourceStore {
    root: PathBuf,
}

impl ResourceStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn file(&self, p: &ResourcePath) -> PathBuf {
        self.root.join(&p.repo).join(&p.kind).join(&p.tag)
    }

    /// Reads a resource.
    pub fn get(&self, p: &ResourcePath) -> Result<Vec<u8>, StoreError> {
        let path = self.file(p);
        match std::fs::read(&path) {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(p.clone()))
            }
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Writes a resource atomically (temporary file then rename).
    pub fn set(&self, p: &ResourcePath, data: &[u8]) -> Result<(), StoreError> {
        let path = self.file(p);
        let io = |path: &PathBuf| {
            let path = path.clone();
            move |source| StoreError::Io { path, source }
        };
        let dir = self.root.join(&p.repo).join(&p.kind);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join(format!(".{}.tmp", p.tag));
        std::fs::write(&tmp, data).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }
}
