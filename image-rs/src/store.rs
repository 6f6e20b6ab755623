//! The content-addressed image store: pulls images into a per-pod layer cache and mounts
//! container rootfs from it.
//!
//! Layout under the store root:
//! ```text
//! layers/sha256/<diff_id hex>/     one unpacked, verified layer (overlayfs form)
//! images/sha256/<manifest hex>.json  image metadata: digests, config, diff_ids
//! tmp/                              layers being unpacked (renamed into layers/ when good)
//! ```

use std::collections::HashMap;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use oci_spec::image::ImageConfiguration;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::decrypt::{self, KeyProvider, LayerKey};
use crate::digest::{BlobCheck, Digest, HashingReader, VerifyingReader};
use crate::error::{ImageError, Result};
use crate::limits::{LayerMeter, LayerStats, Limit, LimitHit, MeteredReader, PullLimits};
use crate::registry::{descriptor_digest, descriptor_size, RegistryClient, RegistryConfig};
use crate::signature::{self, ImagePolicy};
use crate::unpack::{self, UnpackError, UnpackOptions};

/// How one image is pulled.
#[derive(Clone)]
pub struct PullOptions {
    /// Registry credentials.
    pub auth: RegistryAuth,
    /// Keys for encrypted layers (`None`: an encrypted layer fails the pull).
    pub keys: Option<Arc<dyn KeyProvider>>,
    /// Signature policy checked on the manifest digest before any layer is fetched.
    pub image_policy: ImagePolicy,
    /// What unpacking accepts (device nodes).
    pub unpack: UnpackOptions,
    /// Sizes and counts the registry may make the guest hold.
    pub limits: PullLimits,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            auth: RegistryAuth::Anonymous,
            keys: None,
            image_policy: ImagePolicy::accept_anything(),
            unpack: UnpackOptions::default(),
            limits: PullLimits::default(),
        }
    }
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("auth", &self.auth)
            .field("keys", &self.keys.is_some())
            .field("unpack", &self.unpack)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A pulled, verified image.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The reference it was pulled by.
    pub reference: String,
    /// Digest of the linux/amd64 image manifest.
    pub manifest_digest: String,
    /// Digest the reference resolved to (the index for multi-platform images); the one
    /// signatures were checked on.
    pub resolved_digest: String,
    /// The image config.
    pub config: ImageConfiguration,
    /// Layer directories, bottom layer first.
    pub layer_dirs: Vec<PathBuf>,
}

/// Image metadata stored by manifest digest.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredImage {
    reference: String,
    manifest_digest: String,
    resolved_digest: String,
    config: serde_json::Value,
    diff_ids: Vec<String>,
}

/// A per-pod image store (see the module docs for its layout).
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    registry: Arc<RegistryConfig>,
    locks: Arc<StdMutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    downloads: Arc<std::sync::atomic::AtomicU64>,
    cache: Arc<CacheState>,
}

/// What the layer cache holds, for the limits: the bytes of every cached layer and of
/// layers being unpacked (charged as they stream), each cached layer's stats, and the
/// layers that pulls in flight use (a failed pull removes the layers it added unless
/// another pull or a stored image uses them).
#[derive(Debug, Default)]
struct CacheState {
    bytes: AtomicU64,
    layers: StdMutex<HashMap<Digest, LayerStats>>,
    pins: StdMutex<HashMap<Digest, usize>>,
}

fn locked<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Layers a pull uses, unpinned when the pull ends (also when it is cancelled).
struct Pins<'a> {
    cache: &'a CacheState,
    layers: Vec<Digest>,
}

impl<'a> Pins<'a> {
    fn new(cache: &'a CacheState, layers: Vec<Digest>) -> Self {
        let mut pins = locked(&cache.pins);
        for d in &layers {
            *pins.entry(d.clone()).or_default() += 1;
        }
        drop(pins);
        Pins { cache, layers }
    }
}

impl Drop for Pins<'_> {
    fn drop(&mut self) {
        let mut pins = locked(&self.cache.pins);
        for d in &self.layers {
            if let Some(n) = pins.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(d);
                }
            }
        }
    }
}

/// What one layer pull needs.
struct LayerJob<'a> {
    image: &'a Reference,
    client: &'a RegistryClient,
    desc: &'a OciDescriptor,
    diff_id: Digest,
    opts: &'a PullOptions,
    /// What the image's layers below this one hold.
    image_before: LayerStats,
}

enum Compression {
    None,
    Gzip,
    Zstd,
}

impl ImageStore {
    /// A store rooted at `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>, registry: RegistryConfig) -> Result<Self> {
        let root = root.into();
        for sub in [
            "layers/sha256",
            "layers/sha512",
            "images/sha256",
            "images/sha512",
            "tmp",
        ] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p)
                .map_err(|e| ImageError::io("image store", "creating", &p, e))?;
        }
        Ok(ImageStore {
            cache: Arc::new(scan_cache(&root)?),
            root,
            registry: Arc::new(registry),
            locks: Arc::default(),
            downloads: Arc::default(),
        })
    }

    /// Bytes the layer cache holds (decompressed tar bytes of cached layers and of
    /// layers being unpacked), as counted against [`PullLimits::max_cache_bytes`].
    pub fn cache_bytes(&self) -> u64 {
        self.cache.bytes.load(Ordering::SeqCst)
    }

    /// How many layer blobs this store has fetched (cache misses), for tests and metrics.
    pub fn layers_downloaded(&self) -> u64 {
        self.downloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the layer with uncompressed digest `diff_id` lives once pulled.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root
            .join("layers")
            .join(format!("{:?}", diff_id.algorithm()).to_lowercase())
            .join(diff_id.hex())
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = match self.locks.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(key.to_string()).or_default().clone()
    }

    /// Pull `image`: resolve to linux/amd64, check the signature policy, fetch and verify
    /// the config, then fetch, verify, decrypt and unpack every layer not yet cached.
    pub async fn pull(&self, image: &Reference, opts: &PullOptions) -> Result<PulledImage> {
        let client = RegistryClient::new(self.registry.clone(), opts.auth.clone())?;
        let resolved = client.resolve(image).await?;
        signature::verify_image(
            &opts.image_policy,
            image,
            &resolved.top_digest.to_string(),
            &client,
        )
        .await
        .map_err(|source| ImageError::Signature {
            image: image.to_string(),
            source,
        })?;
        let manifest = &resolved.manifest;
        check_manifest_limits(image, &resolved.digest, manifest, &opts.limits)?;
        let config_raw = client
            .fetch_small_blob(
                image,
                &manifest.config,
                "config",
                self.registry.max_config_size,
            )
            .await?;
        let invalid = |reason: String| ImageError::Invalid {
            image: image.to_string(),
            what: "config".into(),
            reason,
        };
        let config: ImageConfiguration =
            serde_json::from_slice(&config_raw).map_err(|e| invalid(e.to_string()))?;
        let (os, arch) = (config.os().to_string(), config.architecture().to_string());
        if os != "linux" || arch != "amd64" {
            return Err(ImageError::WrongPlatform {
                image: image.to_string(),
                offered: vec![format!("{os}/{arch}")],
            });
        }
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers.len() {
            return Err(invalid(format!(
                "{} diff_ids for {} layers",
                diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let parsed = diff_ids
            .iter()
            .map(|d| Digest::parse(d).ok_or_else(|| invalid(format!("unsupported diff_id {d:?}"))))
            .collect::<Result<Vec<_>>>()?;
        let pins = Pins::new(&self.cache, parsed.clone());
        let mut added = Vec::new();
        let layers = self
            .ensure_layers(image, &resolved, &client, opts, &parsed, &mut added)
            .await;
        let layer_dirs = match layers {
            Ok(dirs) => dirs,
            Err(e) => {
                self.remove_unused(&added).await;
                drop(pins);
                return Err(e);
            }
        };
        drop(pins);
        let stored = StoredImage {
            reference: image.to_string(),
            manifest_digest: resolved.digest.to_string(),
            resolved_digest: resolved.top_digest.to_string(),
            config: serde_json::from_slice(&config_raw).map_err(|e| invalid(e.to_string()))?,
            diff_ids: diff_ids.clone(),
        };
        self.store_metadata(image, &resolved.digest, &stored)?;
        Ok(PulledImage {
            reference: image.to_string(),
            manifest_digest: resolved.digest.to_string(),
            resolved_digest: resolved.top_digest.to_string(),
            config,
            layer_dirs,
        })
    }

    fn metadata_path(&self, manifest: &Digest) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{:?}", manifest.algorithm()).to_lowercase())
            .join(format!("{}.json", manifest.hex()))
    }

    fn store_metadata(
        &self,
        image: &Reference,
        manifest: &Digest,
        stored: &StoredImage,
    ) -> Result<()> {
        let path = self.metadata_path(manifest);
        let tmp = path.with_extension(format!(
            "json.{}.{}.tmp",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let data = serde_json::to_vec_pretty(stored).map_err(|e| ImageError::Task {
            image: image.to_string(),
            reason: format!("serializing metadata: {e}"),
        })?;
        std::fs::write(&tmp, data).map_err(|e| ImageError::io(image, "writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| ImageError::io(image, "renaming", &path, e))
    }

    /// A previously pulled image, from the metadata stored by manifest digest (its layers
    /// must still be present).
    pub fn get(&self, manifest_digest: &str) -> Result<Option<PulledImage>> {
        let Some(d) = Digest::parse(manifest_digest) else {
            return Ok(None);
        };
        let path = self.metadata_path(&d);
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io(manifest_digest, "reading", &path, e)),
        };
        let invalid = |reason: String| ImageError::Invalid {
            image: manifest_digest.to_string(),
            what: "stored metadata".into(),
            reason,
        };
        let stored: StoredImage =
            serde_json::from_slice(&data).map_err(|e| invalid(e.to_string()))?;
        let config: ImageConfiguration =
            serde_json::from_value(stored.config).map_err(|e| invalid(e.to_string()))?;
        let mut layer_dirs = Vec::new();
        for id in &stored.diff_ids {
            let d = Digest::parse(id).ok_or_else(|| invalid(format!("diff_id {id:?}")))?;
            let dir = self.layer_dir(&d);
            if !dir.is_dir() {
                return Ok(None);
            }
            layer_dirs.push(dir);
        }
        Ok(Some(PulledImage {
            reference: stored.reference,
            manifest_digest: stored.manifest_digest,
            resolved_digest: stored.resolved_digest,
            config,
            layer_dirs,
        }))
    }

    /// Every layer of `manifest` in the cache, bottom first, the image's totals checked
    /// against the limits; the layers this call unpacked are pushed to `added`.
    async fn ensure_layers(
        &self,
        image: &Reference,
        resolved: &crate::registry::ResolvedManifest,
        client: &RegistryClient,
        opts: &PullOptions,
        diff_ids: &[Digest],
        added: &mut Vec<Digest>,
    ) -> Result<Vec<PathBuf>> {
        let limits = &opts.limits;
        let mut dirs = Vec::with_capacity(diff_ids.len());
        let mut total = LayerStats::default();
        for (desc, diff_id) in resolved.manifest.layers.iter().zip(diff_ids) {
            let job = LayerJob {
                image,
                client,
                desc,
                diff_id: diff_id.clone(),
                opts,
                image_before: total,
            };
            let (dir, stats, new) = self.ensure_layer(job).await?;
            if new {
                added.push(diff_id.clone());
            }
            dirs.push(dir);
            total.bytes = total.bytes.saturating_add(stats.bytes);
            total.entries = total.entries.saturating_add(stats.entries);
            // A new layer was checked while it streamed; a cached one is checked here.
            let over = [
                (
                    Limit::ImageUncompressed,
                    limits.max_image_uncompressed_bytes,
                    total.bytes,
                ),
                (Limit::ImageEntries, limits.max_image_entries, total.entries),
            ]
            .into_iter()
            .find(|(_, max, value)| value > max);
            if let Some((limit, max, value)) = over {
                return Err(ImageError::LimitExceeded {
                    image: image.to_string(),
                    what: "image".into(),
                    digest: resolved.digest.to_string(),
                    limit,
                    max,
                    value,
                    entry: None,
                });
            }
        }
        Ok(dirs)
    }

    /// After a failed pull: remove the layers it added that no other pull in flight and
    /// no stored image uses (a verified layer is harmless, but the pull's bytes should
    /// not stay charged to the cache).
    async fn remove_unused(&self, added: &[Digest]) {
        for d in added {
            let lock = self.lock_for(&d.to_string());
            let _guard = lock.lock().await;
            let others = locked(&self.cache.pins).get(d).copied().unwrap_or(0) > 1;
            if others || self.stored_images_use(d) {
                continue;
            }
            let dir = self.layer_dir(d);
            match unpack::remove_tree(&dir) {
                Ok(()) => {
                    if let Some(stats) = locked(&self.cache.layers).remove(d) {
                        self.cache.bytes.fetch_sub(stats.bytes, Ordering::SeqCst);
                    }
                    tracing::info!(layer = %d, "removed a layer of a failed pull");
                }
                Err(e) => {
                    tracing::warn!(path = %dir.display(), error = %e, "could not remove a layer of a failed pull")
                }
            }
        }
    }

    /// Whether the metadata of a stored image lists `diff_id`.
    fn stored_images_use(&self, diff_id: &Digest) -> bool {
        let needle = diff_id.to_string();
        for algo in ["sha256", "sha512"] {
            let Ok(dir) = std::fs::read_dir(self.root.join("images").join(algo)) else {
                continue;
            };
            for entry in dir.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let stored = std::fs::read(&path)
                    .ok()
                    .and_then(|data| serde_json::from_slice::<StoredImage>(&data).ok());
                match stored {
                    Some(s) if !s.diff_ids.contains(&needle) => {}
                    // In use, or unreadable: keep the layer.
                    _ => return true,
                }
            }
        }
        false
    }

    /// The stats of a cached layer (measured once if this store did not unpack it).
    fn cached_stats(&self, diff_id: &Digest, dir: &Path) -> LayerStats {
        if let Some(s) = locked(&self.cache.layers).get(diff_id) {
            return *s;
        }
        let stats = measure_layer(dir);
        locked(&self.cache.layers).insert(diff_id.clone(), stats);
        self.cache.bytes.fetch_add(stats.bytes, Ordering::SeqCst);
        stats
    }

    /// Make sure the layer is in the cache: one download per diff_id at a time. Returns
    /// its directory, its stats, and whether this call unpacked it.
    async fn ensure_layer(&self, job: LayerJob<'_>) -> Result<(PathBuf, LayerStats, bool)> {
        let image = job.image;
        let digest = descriptor_digest(image, job.desc, "layer")?;
        let size = descriptor_size(image, job.desc, "layer")?;
        let dest = self.layer_dir(&job.diff_id);
        let lock = self.lock_for(&job.diff_id.to_string());
        let _guard = lock.lock().await;
        if dest.is_dir() {
            tracing::debug!(%image, layer = %digest, "layer cached");
            let stats = self.cached_stats(&job.diff_id, &dest);
            return Ok((dest, stats, false));
        }

        let key = if decrypt::is_encrypted(job.desc) {
            let keys = job.opts.keys.as_ref().ok_or_else(|| ImageError::NoKeys {
                image: image.to_string(),
                digest: digest.to_string(),
            })?;
            let key = decrypt::layer_key(job.desc, keys.as_ref())
                .await
                .map_err(|source| ImageError::Decrypt {
                    image: image.to_string(),
                    digest: digest.to_string(),
                    source,
                })?;
            Some(key)
        } else {
            None
        };
        let media_type = key
            .as_ref()
            .map_or(job.desc.media_type.as_str(), |k| k.decrypted_media_type());
        let compression =
            compression_of(media_type).ok_or_else(|| ImageError::UnsupportedMediaType {
                image: image.to_string(),
                digest: digest.to_string(),
                media_type: media_type.to_string(),
            })?;

        let tmp = self.root.join("tmp").join(format!(
            "{}-{}-{}",
            job.diff_id.hex(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir(&tmp).map_err(|e| ImageError::io(image, "creating", &tmp, e))?;

        let result = async {
            let stream = job.client.blob_stream(image, &digest).await?;
            self.downloads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let reader = SyncIoBridge::new(StreamReader::new(stream));
            let ctx = PipelineCtx {
                image: image.to_string(),
                digest,
                size,
                diff_id: job.diff_id.clone(),
                compression,
                key,
                unpack: job.opts.unpack.clone(),
                dest: tmp.clone(),
                read_timeout_secs: self.registry.read_timeout.as_secs(),
                limits: job.opts.limits.clone(),
                image_before: job.image_before,
                cache: self.cache.clone(),
            };
            tokio::task::spawn_blocking(move || run_pipeline(reader, ctx))
                .await
                .map_err(|e| ImageError::Task {
                    image: image.to_string(),
                    reason: e.to_string(),
                })?
        }
        .await;
        match result {
            Ok(stats) => match std::fs::rename(&tmp, &dest) {
                Ok(()) => {
                    locked(&self.cache.layers).insert(job.diff_id.clone(), stats);
                    Ok((dest, stats, true))
                }
                Err(e) => {
                    let _ = unpack::remove_tree(&tmp);
                    self.cache.bytes.fetch_sub(stats.bytes, Ordering::SeqCst);
                    Err(ImageError::io(image, "renaming layer into", &dest, e))
                }
            },
            Err(e) => {
                if let Err(rm) = unpack::remove_tree(&tmp) {
                    tracing::warn!(path = %tmp.display(), error = %rm, "could not remove failed layer");
                }
                Err(e)
            }
        }
    }
}

/// The limits a manifest is held to before anything is fetched: the layer count, each
/// layer's declared size, and their sum (the blob reader refuses more than declared).
fn check_manifest_limits(
    image: &Reference,
    manifest_digest: &Digest,
    manifest: &oci_client::manifest::OciImageManifest,
    limits: &PullLimits,
) -> Result<()> {
    let exceeded = |what: &str, digest: String, limit, max, value| ImageError::LimitExceeded {
        image: image.to_string(),
        what: what.into(),
        digest,
        limit,
        max,
        value,
        entry: None,
    };
    let count = manifest.layers.len() as u64;
    if count > limits.max_layers {
        let d = manifest_digest.to_string();
        return Err(exceeded(
            "image",
            d,
            Limit::Layers,
            limits.max_layers,
            count,
        ));
    }
    let mut total = 0u64;
    for desc in &manifest.layers {
        let size = descriptor_size(image, desc, "layer")?;
        if size > limits.max_layer_compressed_bytes {
            let (max, d) = (limits.max_layer_compressed_bytes, desc.digest.clone());
            return Err(exceeded("layer", d, Limit::LayerCompressed, max, size));
        }
        total = total.saturating_add(size);
    }
    if total > limits.max_image_compressed_bytes {
        let (max, d) = (
            limits.max_image_compressed_bytes,
            manifest_digest.to_string(),
        );
        return Err(exceeded("image", d, Limit::ImageCompressed, max, total));
    }
    Ok(())
}

/// The cache as found on disk when a store opens: every layer measured.
fn scan_cache(root: &Path) -> Result<CacheState> {
    let state = CacheState::default();
    for algo in ["sha256", "sha512"] {
        let dir = root.join("layers").join(algo);
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| ImageError::io("image store", "reading", &dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(d) = name
                .to_str()
                .and_then(|h| Digest::parse(&format!("{algo}:{h}")))
            else {
                continue;
            };
            let stats = measure_layer(&entry.path());
            state.bytes.fetch_add(stats.bytes, Ordering::SeqCst);
            locked(&state.layers).insert(d, stats);
        }
    }
    Ok(state)
}

/// A layer directory measured the way its tar stream was counted: a 512-byte header per
/// entry, file data rounded up to 512-byte records (without walking into symlinks).
fn measure_layer(dir: &Path) -> LayerStats {
    let mut stats = LayerStats::default();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(md) = entry.path().symlink_metadata() else {
                continue;
            };
            stats.entries += 1;
            stats.bytes = stats
                .bytes
                .saturating_add(512)
                .saturating_add(if md.is_file() {
                    md.len().div_ceil(512) * 512
                } else {
                    0
                });
            if md.is_dir() {
                todo.push(entry.path());
            }
        }
    }
    stats
}

static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn compression_of(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

struct PipelineCtx {
    image: String,
    digest: Digest,
    size: u64,
    diff_id: Digest,
    compression: Compression,
    key: Option<LayerKey>,
    unpack: UnpackOptions,
    dest: PathBuf,
    read_timeout_secs: u64,
    limits: PullLimits,
    image_before: LayerStats,
    cache: Arc<CacheState>,
}

impl PipelineCtx {
    fn layer_err(&self, context: &str, source: io::Error) -> ImageError {
        if let Some(check) = BlobCheck::from_io(&source) {
            return self.check_err(check);
        }
        if let Some(hit) = LimitHit::from_io(&source) {
            return self.limit_err(hit, None);
        }
        if source
            .get_ref()
            .is_some_and(|e| e.is::<decrypt::DecryptError>())
        {
            return match source
                .into_inner()
                .map(|e| e.downcast::<decrypt::DecryptError>())
            {
                Some(Ok(e)) => ImageError::Decrypt {
                    image: self.image.clone(),
                    digest: self.digest.to_string(),
                    source: *e,
                },
                _ => ImageError::Task {
                    image: self.image.clone(),
                    reason: format!("layer {}: decryption failed", self.digest),
                },
            };
        }
        if source.kind() == io::ErrorKind::TimedOut {
            return ImageError::Timeout {
                image: self.image.clone(),
                what: format!("layer {}", self.digest),
                seconds: self.read_timeout_secs,
            };
        }
        ImageError::Layer {
            image: self.image.clone(),
            digest: self.digest.to_string(),
            context: context.to_string(),
            source,
        }
    }

    fn limit_err(&self, hit: &LimitHit, entry: Option<String>) -> ImageError {
        ImageError::LimitExceeded {
            image: self.image.clone(),
            what: "layer".into(),
            digest: self.digest.to_string(),
            limit: hit.limit,
            max: hit.max,
            value: hit.value,
            entry,
        }
    }

    fn check_err(&self, check: &BlobCheck) -> ImageError {
        match check {
            BlobCheck::Digest { actual } => ImageError::DigestMismatch {
                image: self.image.clone(),
                what: "layer".into(),
                digest: self.digest.to_string(),
                actual: actual.to_string(),
            },
            BlobCheck::Truncated { expected, received } => ImageError::SizeMismatch {
                image: self.image.clone(),
                what: "layer".into(),
                digest: self.digest.to_string(),
                expected: *expected,
                received: *received,
            },
            BlobCheck::TooLong { expected } => ImageError::SizeMismatch {
                image: self.image.clone(),
                what: "layer".into(),
                digest: self.digest.to_string(),
                expected: *expected,
                received: expected.saturating_add(1),
            },
        }
    }
}

/// registry body → digest/size check → decrypt → decompress → limits → diff_id → unpack,
/// then every stream drained to its end so each check really ran. On failure the bytes
/// charged to the cache are refunded (the caller removes the directory).
fn run_pipeline<R: Read>(body: R, ctx: PipelineCtx) -> Result<LayerStats> {
    let meter = LayerMeter::new(&ctx.limits, ctx.image_before, &ctx.cache.bytes);
    let result = run_metered(body, &ctx, &meter);
    if result.is_err() {
        ctx.cache
            .bytes
            .fetch_sub(meter.stats().bytes, Ordering::SeqCst);
    }
    result.map(|()| meter.stats())
}

fn run_metered<R: Read>(body: R, ctx: &PipelineCtx, meter: &LayerMeter<'_>) -> Result<()> {
    let mut blob = VerifyingReader::new(body, ctx.digest.clone(), ctx.size);
    let inner: Result<Digest> = (|| {
        let mut plain: Box<dyn Read + '_> = match &ctx.key {
            Some(key) => Box::new(key.reader(&mut blob)),
            None => Box::new(&mut blob),
        };
        let actual = {
            let decompressed: Box<dyn Read + '_> = match ctx.compression {
                Compression::None => Box::new(&mut plain),
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
                    BufReader::with_capacity(128 * 1024, &mut plain),
                )),
                Compression::Zstd => Box::new(
                    zstd::stream::read::Decoder::new(&mut plain)
                        .map_err(|e| ctx.layer_err("starting zstd", e))?,
                ),
            };
            let metered = MeteredReader::new(decompressed, meter);
            let mut hashed = HashingReader::new(metered, ctx.diff_id.algorithm());
            unpack::unpack(&mut hashed, &ctx.dest, &ctx.unpack, meter).map_err(|e| match e {
                UnpackError::Stream(e) => ctx.layer_err("reading the layer", e),
                UnpackError::Limit { entry, hit } => ctx.limit_err(&hit, Some(entry)),
                UnpackError::Unsafe { entry, reason } => ImageError::UnsafeEntry {
                    image: ctx.image.clone(),
                    digest: ctx.digest.to_string(),
                    entry,
                    reason,
                },
                UnpackError::Fs {
                    entry,
                    context,
                    source,
                } => ImageError::Layer {
                    image: ctx.image.clone(),
                    digest: ctx.digest.to_string(),
                    context: format!("{context} for entry {entry:?}"),
                    source,
                },
            })?;
            io::copy(&mut hashed, &mut io::sink())
                .map_err(|e| ctx.layer_err("reading past the tar end", e))?;
            hashed.finish()
        };
        io::copy(&mut plain, &mut io::sink())
            .map_err(|e| ctx.layer_err("reading to the end of the blob", e))?;
        Ok(actual)
    })();
    // A limit refuses the layer whatever its digest: do not fetch the rest of it.
    let inner = match inner {
        Err(e @ ImageError::LimitExceeded { .. }) => return Err(e),
        other => other,
    };
    // Whatever happened above, the blob's own digest decides first: a tampered blob is
    // reported as such, not as the decompression error it caused.
    let drained = io::copy(&mut blob, &mut io::sink());
    if let Err(e) = &drained {
        if let Some(check) = BlobCheck::from_io(e) {
            return Err(ctx.check_err(check));
        }
    }
    let actual = inner?;
    if let Err(e) = drained {
        return Err(ctx.layer_err("reading the blob", e));
    }
    if !blob.verified() {
        return Err(ImageError::Task {
            image: ctx.image.clone(),
            reason: format!("layer {} not verified at end of stream", ctx.digest),
        });
    }
    if actual != ctx.diff_id {
        return Err(ImageError::DiffIdMismatch {
            image: ctx.image.clone(),
            digest: ctx.digest.to_string(),
            diff_id: ctx.diff_id.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}
