//! Image configs from OCI image layouts on disk (`oci-layout`, `index.json`,
//! `blobs/sha256/...`), or from a registry ([`RemoteImages`], e.g.
//! [`super::Registry`]): resolve a reference to a pinned digest and read the config
//! (entrypoint, cmd, env, user, working dir). Every blob read is checked against its digest.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// Largest index, manifest or config blob read.
const MAX_BLOB: u64 = 16 * 1024 * 1024;

pub(crate) const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Errors resolving images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("`{0}` is not a valid image reference")]
    BadReference(String),
    /// A layout or blob could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A layout file or blob is not the expected JSON.
    #[error("{path} is not a valid {what}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What it should be.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A directory is not an OCI image layout.
    #[error("{0} is not an OCI image layout (no oci-layout file)")]
    NotALayout(PathBuf),
    /// A blob's content does not match its digest.
    #[error("blob {digest} in {layout} does not match its digest")]
    DigestMismatch {
        /// The layout.
        layout: PathBuf,
        /// The digest.
        digest: String,
    },
    /// A digest is not `sha256:<64 hex>`.
    #[error("unsupported digest `{0}` (only sha256 is supported)")]
    BadDigest(String),
    /// No layout has the image.
    #[error("image {0} not found in the given OCI layouts (and no registry lookup asked for): pass --oci-layout (a layout holding it, tagged with its name) or --registry")]
    NotFound(String),
    /// The registry lookup failed.
    #[error("image {reference}: registry lookup failed: {message}")]
    Registry {
        /// The reference.
        reference: String,
        /// What went wrong (the registry client's error chain).
        message: String,
    },
    /// A registry returned content that does not match the digest it was asked for.
    #[error("image {reference}: the registry's {what} does not match its digest {digest}")]
    RemoteDigestMismatch {
        /// The reference.
        reference: String,
        /// `manifest`, `index` or `config`.
        what: &'static str,
        /// The digest asked for.
        digest: String,
    },
    /// Several layouts match the reference with different digests.
    #[error("image {reference} is ambiguous: {digests:?} match it; tag it with its full name or pin it by digest")]
    Ambiguous {
        /// The reference.
        reference: String,
        /// The digests that match.
        digests: Vec<String>,
    },
    /// An image index has no manifest for the platform.
    #[error("image {reference}: its index has no manifest for {platform}")]
    NoPlatform {
        /// The reference.
        reference: String,
        /// The platform looked for.
        platform: String,
    },
    /// The pod pins a digest that is not the layout's.
    #[error("image {reference} pins {pinned}, but the layout holds {found}")]
    PinMismatch {
        /// The reference.
        reference: String,
        /// The digest in the reference.
        pinned: String,
        /// The digest the layout has under that name.
        found: String,
    },
}

/// A parsed image reference, normalized the way containerd does (`nginx` is
/// `docker.io/library/nginx:latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host, e.g. `docker.io`.
    pub registry: String,
    /// Repository path, e.g. `library/nginx`.
    pub repository: String,
    /// Tag, if given (`latest` is implied when neither tag nor digest is).
    pub tag: Option<String>,
    /// `sha256:...`, if given.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parse `[registry/]repo[:tag][@sha256:digest]`.
    pub fn parse(reference: &str) -> Result<Self, ImageError> {
        let bad = || ImageError::BadReference(reference.to_owned());
        if reference.is_empty() || reference.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((r, d)) => {
                check_digest(d)?;
                (r, Some(d.to_owned()))
            }
            None => (reference, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_owned())),
            _ => (rest, None),
        };
        if name.is_empty() || tag.as_deref() == Some("") {
            return Err(bad());
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => ("docker.io".to_owned(), name.to_owned()),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty() || repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad());
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_owned()) } else { tag };
        Ok(Self { registry, repository, tag, digest })
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository@digest` for a given digest.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }

    /// `registry/repository:tag`, if there is a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }
}

pub(crate) fn check_digest(d: &str) -> Result<(), ImageError> {
    match d.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) => Ok(()),
        _ => Err(ImageError::BadDigest(d.to_owned())),
    }
}

/// What a container takes from its image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `Env`, `NAME=value`.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// `User`: `uid`, `uid:gid`, `name` or `name:group`.
    #[serde(default)]
    pub user: Option<String>,
    /// `WorkingDir`.
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// An image resolved to a digest with its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The reference as resolved (normalized).
    pub reference: ImageRef,
    /// The digest the reference resolves to (of the index or manifest named).
    pub digest: String,
    /// The config.
    pub config: ImageConfig,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
}

#[derive(Deserialize, Clone)]
pub(crate) struct Platform {
    pub(crate) architecture: String,
    pub(crate) os: String,
}

#[derive(Deserialize)]
pub(crate) struct Manifest {
    #[serde(default, rename = "mediaType")]
    pub(crate) media_type: String,
    #[serde(default)]
    pub(crate) manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub(crate) config: Option<Descriptor>,
}

impl Manifest {
    /// Whether this (reached through `desc`) is an index / manifest list.
    pub(crate) fn is_index(&self, desc_media_type: &str) -> bool {
        desc_media_type == MT_OCI_INDEX
            || desc_media_type == MT_DOCKER_LIST
            || self.media_type == MT_OCI_INDEX
            || self.media_type == MT_DOCKER_LIST
            || (self.manifests.is_some() && self.config.is_none())
    }

    /// The entry of an index for `os/arch`.
    pub(crate) fn platform_entry(self, os: &str, arch: &str) -> Option<Descriptor> {
        self.manifests.unwrap_or_default().into_iter().find(|m| {
            m.platform.as_ref().is_some_and(|p| p.os == os && p.architecture == arch)
        })
    }
}

#[derive(Deserialize)]
pub(crate) struct ConfigBlob {
    #[serde(default)]
    pub(crate) config: ImageConfig,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
}

impl ConfigBlob {
    /// The config, if the image is for `os/arch` (or does not say): a single-platform
    /// image of another architecture is refused like an index without the platform.
    pub(crate) fn for_platform(self, os: &str, arch: &str, reference: &str) -> Result<ImageConfig, ImageError> {
        let other = |v: &Option<String>, want: &str| v.as_deref().is_some_and(|v| !v.is_empty() && v != want);
        if other(&self.os, os) || other(&self.architecture, arch) {
            return Err(ImageError::NoPlatform {
                reference: reference.to_owned(),
                platform: format!(
                    "{os}/{arch} (the image is {}/{})",
                    self.os.as_deref().unwrap_or("?"),
                    self.architecture.as_deref().unwrap_or("?")
                ),
            });
        }
        Ok(self.config)
    }
}

/// Where images not found in the layouts are looked up (a registry). A seam so that
/// generation can be tested without the network.
pub trait RemoteImages: Send + Sync {
    /// Resolve `reference` to the digest it names now (the index's for a multi-platform
    /// image) and the config of its `os/arch` image.
    fn resolve(&self, reference: &ImageRef, os: &str, arch: &str) -> Result<(String, ImageConfig), ImageError>;
}

struct Layout {
    root: PathBuf,
    index: Index,
}

/// The OCI image layouts images are resolved in, then (if set) a registry.
#[derive(Default)]
pub struct ImageStore {
    layouts: Vec<Layout>,
    platform: (String, String),
    remote: Option<Box<dyn RemoteImages>>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("layouts", &self.layouts.iter().map(|l| &l.root).collect::<Vec<_>>())
            .field("remote", &self.remote.is_some())
            .finish()
    }
}

impl ImageStore {
    /// An empty store for `platform` (`os/arch`, e.g. `linux/amd64`).
    pub fn new(platform: &str) -> Self {
        let (os, arch) = platform.split_once('/').unwrap_or(("linux", platform));
        Self { layouts: Vec::new(), platform: (os.to_owned(), arch.to_owned()), remote: None }
    }

    /// Look up images that no layout holds in `remote` (tags are resolved to digests there).
    pub fn with_remote(mut self, remote: Box<dyn RemoteImages>) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Add an OCI image layout (a directory with `oci-layout` and `index.json`).
    pub fn add_layout(&mut self, root: &Path) -> Result<(), ImageError> {
        if !root.join("oci-layout").is_file() {
            return Err(ImageError::NotALayout(root.to_owned()));
        }
        let path = root.join("index.json");
        let text = read_limited(&path)?;
        let index = serde_json::from_slice(&text)
            .map_err(|source| ImageError::Json { path, what: "OCI index", source })?;
        self.layouts.push(Layout { root: root.to_owned(), index });
        Ok(())
    }

    /// Add every OCI image layout directly under `dir` (and `dir` itself if it is one).
    pub fn add_layouts_in(&mut self, dir: &Path) -> Result<(), ImageError> {
        if dir.join("oci-layout").is_file() {
            return self.add_layout(dir);
        }
        let entries = std::fs::read_dir(dir)
            .map_err(|source| ImageError::Read { path: dir.to_owned(), source })?;
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join("oci-layout").is_file())
            .collect();
        dirs.sort();
        for d in dirs {
            self.add_layout(&d)?;
        }
        Ok(())
    }

    /// Resolve `reference` to its digest and config.
    ///
    /// A reference with a digest matches the layout entry with that digest. Otherwise an
    /// entry matches if its `io.containerd.image.name` or `org.opencontainers.image.ref.name`
    /// annotation is the reference's full name (normalized), or, failing that, if its
    /// `org.opencontainers.image.ref.name` is just the reference's tag (and only one digest
    /// matches that way).
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let r = ImageRef::parse(reference)?;
        let tagged = r.tagged();
        let mut full = Vec::new();
        let mut by_tag = Vec::new();
        for layout in &self.layouts {
            for d in &layout.index.manifests {
                if let Some(pin) = &r.digest {
                    if &d.digest == pin {
                        full.push((layout, d));
                    }
                    continue;
                }
                let names = ["io.containerd.image.name", "org.opencontainers.image.ref.name"];
                let full_match = names.iter().filter_map(|k| d.annotations.get(*k)).any(|n| {
                    ImageRef::parse(n).ok().and_then(|x| x.tagged()).is_some_and(|t| Some(t) == tagged)
                        && (n.contains('/') || n.contains(':'))
                });
                if full_match {
                    full.push((layout, d));
                } else if d.annotations.get("org.opencontainers.image.ref.name") == r.tag.as_ref() {
                    by_tag.push((layout, d));
                }
            }
        }
        let candidates = if full.is_empty() { by_tag } else { full };
        let mut digests: Vec<String> = candidates.iter().map(|(_, d)| d.digest.clone()).collect();
        digests.sort();
        digests.dedup();
        let (layout, desc) = match (candidates.first(), digests.len()) {
            (Some(c), 1) => *c,
            (None, _) => {
                return match &self.remote {
                    Some(remote) => {
                        let (digest, config) = remote.resolve(&r, &self.platform.0, &self.platform.1)?;
                        check_digest(&digest)?;
                        Ok(ResolvedImage { reference: r, digest, config })
                    }
                    None => Err(ImageError::NotFound(reference.to_owned())),
                };
            }
            _ => return Err(ImageError::Ambiguous { reference: reference.to_owned(), digests }),
        };
        check_digest(&desc.digest)?;
        let config = self.config_of(layout, desc, reference)?;
        Ok(ResolvedImage { reference: r, digest: desc.digest.clone(), config })
    }

    fn config_of(
        &self,
        layout: &Layout,
        desc: &Descriptor,
        reference: &str,
    ) -> Result<ImageConfig, ImageError> {
        let mut desc = desc.clone();
        // An index: pick the platform's manifest (one level, as registries serve them).
        for _ in 0..2 {
            let blob = read_blob(&layout.root, &desc.digest)?;
            let path = blob_path(&layout.root, &desc.digest)?;
            let manifest: Manifest = serde_json::from_slice(&blob)
                .map_err(|source| ImageError::Json { path: path.clone(), what: "manifest", source })?;
            if manifest.is_index(&desc.media_type) {
                let (os, arch) = &self.platform;
                desc = manifest.platform_entry(os, arch).ok_or_else(|| ImageError::NoPlatform {
                    reference: reference.to_owned(),
                    platform: format!("{os}/{arch}"),
                })?;
                check_digest(&desc.digest)?;
                continue;
            }
            let config = manifest.config.ok_or_else(|| ImageError::Json {
                path: path.clone(),
                what: "image manifest (no config)",
                source: serde::de::Error::custom("missing `config`"),
            })?;
            check_digest(&config.digest)?;
            let cpath = blob_path(&layout.root, &config.digest)?;
            let blob = read_blob(&layout.root, &config.digest)?;
            let parsed: ConfigBlob = serde_json::from_slice(&blob)
                .map_err(|source| ImageError::Json { path: cpath, what: "image config", source })?;
            return parsed.for_platform(&self.platform.0, &self.platform.1, reference);
        }
        Err(ImageError::NoPlatform {
            reference: reference.to_owned(),
            platform: format!("{}/{} (nested index)", self.platform.0, self.platform.1),
        })
    }
}

fn blob_path(root: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    check_digest(digest)?;
    let hex = digest.trim_start_matches("sha256:");
    Ok(root.join("blobs").join("sha256").join(hex))
}

fn read_blob(root: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(root, digest)?;
    let data = read_limited(&path)?;
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    if actual != digest {
        return Err(ImageError::DigestMismatch { layout: root.to_owned(), digest: digest.to_owned() });
    }
    Ok(data)
}

fn read_limited(path: &Path) -> Result<Vec<u8>, ImageError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .map_err(|source| ImageError::Read { path: path.to_owned(), source })?;
    let mut data = Vec::new();
    file.take(MAX_BLOB + 1)
        .read_to_end(&mut data)
        .map_err(|source| ImageError::Read { path: path.to_owned(), source })?;
    if data.len() as u64 > MAX_BLOB {
        return Err(ImageError::Read {
            path: path.to_owned(),
            source: std::io::Error::other(format!("larger than {MAX_BLOB} bytes")),
        });
    }
    Ok(data)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn references_normalize_like_containerd() {
        let r = ImageRef::parse("nginx").unwrap();
        assert_eq!(r.name(), "docker.io/library/nginx");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let r = ImageRef::parse("localhost:5000/app:1.0").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("localhost:5000", "app"));
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("ghcr.io/x/y@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.pinned(&d), format!("ghcr.io/x/y@{d}"));
        assert!(ImageRef::parse("x@sha256:abc").is_err());
        assert!(ImageRef::parse("Upper/Case").is_err());
    }
}
