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
use std::sync::{Arc, Mutex as StdMutex};

use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use oci_spec::image::ImageConfiguration;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::decrypt::{self, KeyProvider, LayerKey};
use crate::digest::{BlobCheck, Digest, HashingReader, VerifyingReader};
use crate::error::{ImageError, Result};
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
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            auth: RegistryAuth::Anonymous,
            keys: None,
            image_policy: ImagePolicy::accept_anything(),
            unpack: UnpackOptions::default(),
        }
    }
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("auth", &self.auth)
            .field("keys", &self.keys.is_some())
            .field("unpack", &self.unpack)
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
}

/// What one layer pull needs.
struct LayerJob<'a> {
    image: &'a Reference,
    client: &'a RegistryClient,
    desc: &'a OciDescriptor,
    diff_id: Digest,
    opts: &'a PullOptions,
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
            root,
            registry: Arc::new(registry),
            locks: Arc::default(),
            downloads: Arc::default(),
        })
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
        let mut layer_dirs = Vec::with_capacity(diff_ids.len());
        for (desc, diff_id) in manifest.layers.iter().zip(diff_ids) {
            let diff_id = Digest::parse(diff_id)
                .ok_or_else(|| invalid(format!("unsupported diff_id {diff_id:?}")))?;
            let job = LayerJob {
                image,
                client: &client,
                desc,
                diff_id,
                opts,
            };
            layer_dirs.push(self.ensure_layer(job).await?);
        }
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

    /// Make sure the layer is in the cache: one download per diff_id at a time.
    async fn ensure_layer(&self, job: LayerJob<'_>) -> Result<PathBuf> {
        let image = job.image;
        let digest = descriptor_digest(image, job.desc, "layer")?;
        let size = descriptor_size(image, job.desc, "layer")?;
        let dest = self.layer_dir(&job.diff_id);
        let lock = self.lock_for(&job.diff_id.to_string());
        let _guard = lock.lock().await;
        if dest.is_dir() {
            tracing::debug!(%image, layer = %digest, "layer cached");
            return Ok(dest);
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
            Ok(()) => match std::fs::rename(&tmp, &dest) {
                Ok(()) => Ok(dest),
                Err(e) => {
                    let _ = unpack::remove_tree(&tmp);
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
}

impl PipelineCtx {
    fn layer_err(&self, context: &str, source: io::Error) -> ImageError {
        if let Some(check) = BlobCheck::from_io(&source) {
            return self.check_err(check);
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

/// registry body → digest/size check → decrypt → decompress → diff_id → unpack, then every
/// stream drained to its end so each check really ran.
fn run_pipeline<R: Read>(body: R, ctx: PipelineCtx) -> Result<()> {
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
            let mut hashed = HashingReader::new(decompressed, ctx.diff_id.algorithm());
            unpack::unpack(&mut hashed, &ctx.dest, &ctx.unpack).map_err(|e| match e {
                UnpackError::Stream(e) => ctx.layer_err("reading the layer", e),
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
