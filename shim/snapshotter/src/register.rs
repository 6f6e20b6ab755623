//! `kata-cc-snapshotter register-image`: makes an image whose manifest and config are in
//! containerd "unpacked" for kata-cc without any layer blob. It does, through
//! containerd's own API, what containerd's unpacker does for a CRI pull: one Prepare per
//! layer with the target chain ID (`containerd.io/snapshot.ref`) and the image reference
//! (`cri.image-ref`), which the snapshotter records and answers AlreadyExists; and the
//! GC label that ties the layer snapshots to the image. [`crate::pull`] gets the
//! manifest and config into containerd first. containerd 1.6's `ctr image pull` cannot
//! be used for guest pull: it downloads every layer and then asks for a host-side unpack
//! with no labels (see `docs/snapshotter.md`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_snapshots::api::snapshots::v1::{
    snapshots_client::SnapshotsClient, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::containerd_api::{self, Ctx};
use crate::labels::{CRI_IMAGE_REF, TARGET_SNAPSHOT_REF};

/// Largest manifest/index/config blob read.
pub(crate) const MAX_JSON_BLOB: usize = 4 << 20;
/// Label CRI sets with the layer's compressed digest.
const CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// Label CRI sets with the manifest digest.
const CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";

/// What to register.
#[derive(Clone, Debug)]
pub struct RegisterOpts {
    /// containerd's gRPC socket.
    pub containerd: PathBuf,
    /// containerd namespace.
    pub namespace: String,
    /// Snapshotter name in containerd's config (`kata-cc`).
    pub snapshotter: String,
    /// The image name as containerd knows it; also the reference the guest pulls.
    pub image: String,
    /// Platform `os/arch` to pick from an index.
    pub platform: String,
}

/// Errors of `register-image`, each naming the image or blob.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// containerd could not be reached.
    #[error("cannot connect to containerd at {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// A containerd call failed.
    #[error("{what}: {} ({})", .status.message(), .status.code())]
    Api {
        /// What was being done.
        what: String,
        /// containerd's answer.
        status: Box<tonic::Status>,
    },
    /// The namespace is not usable.
    #[error(transparent)]
    Name(#[from] containerd_api::InvalidName),
    /// A manifest, index or config is not what it should be.
    #[error("image {image:?}: {reason}")]
    Image {
        /// The image.
        image: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
pub(crate) struct Platform {
    pub(crate) os: String,
    pub(crate) architecture: String,
    #[serde(default)]
    pub(crate) variant: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct IndexEntry {
    pub(crate) digest: String,
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
}

#[derive(Deserialize)]
pub(crate) struct Manifest {
    #[serde(default)]
    pub(crate) manifests: Option<Vec<IndexEntry>>,
    #[serde(default)]
    pub(crate) config: Option<BlobRef>,
    #[serde(default)]
    pub(crate) layers: Vec<BlobRef>,
}

#[derive(Deserialize)]
pub(crate) struct BlobRef {
    pub(crate) digest: String,
}

#[derive(Deserialize)]
pub(crate) struct Config {
    pub(crate) rootfs: RootFs,
}

#[derive(Deserialize)]
pub(crate) struct RootFs {
    pub(crate) diff_ids: Vec<String>,
}

/// The chain IDs of `diff_ids` (OCI image spec: `ChainID(L0|..|Ln) = sha256(ChainID(L0..
/// Ln-1) + " " + DiffID(Ln))`).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => {
                let sum = Sha256::digest(format!("{prev} {d}").as_bytes());
                let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
                format!("sha256:{hex}")
            }
        };
        out.push(next);
    }
    out
}

/// The host's platform as `os/arch` in OCI terms.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

/// Registers the layers of `opts.image`, which containerd must already have (manifest
/// and config at least, e.g. from `ctr content fetch --metadata-only` of an index), with
/// the snapshotter; returns their chain IDs.
pub async fn register_image(opts: &RegisterOpts) -> Result<Vec<String>, RegisterError> {
    let ctx = connect(opts).await?;
    let ctx = with_lease(&ctx, "register").await?;
    let result = register_leased(&ctx, opts).await;
    release(&ctx).await;
    result
}

pub(crate) async fn connect(opts: &RegisterOpts) -> Result<Ctx, RegisterError> {
    let channel = containerd_api::connect(opts.containerd.clone())
        .await
        .map_err(|source| RegisterError::Connect {
            path: opts.containerd.clone(),
            source,
        })?;
    Ok(Ctx::new(channel, &opts.namespace)?)
}

/// A temporary lease, so that nothing written is collected before the image (and the
/// config's snapshot GC label) references it.
pub(crate) async fn with_lease(ctx: &Ctx, what: &str) -> Result<Ctx, RegisterError> {
    let id = format!(
        "kata-cc-snapshotter-{what}-{}-{}",
        std::process::id(),
        unique()
    );
    ctx.with_new_lease(&id)
        .await
        .map_err(api(format!("creating lease {id}")))
}

pub(crate) async fn release(ctx: &Ctx) {
    if let Err(e) = ctx.delete_lease().await {
        tracing::warn!(lease = ?ctx.lease(), error = %e, "cannot delete the lease");
    }
}

pub(crate) fn unique() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

pub(crate) fn api(what: String) -> impl FnOnce(tonic::Status) -> RegisterError {
    move |status| RegisterError::Api {
        what,
        status: Box::new(status),
    }
}

pub(crate) fn image_err(image: &str, reason: String) -> RegisterError {
    RegisterError::Image {
        image: image.to_owned(),
        reason,
    }
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    image: &str,
    what: &str,
    bytes: &[u8],
) -> Result<T, RegisterError> {
    serde_json::from_slice(bytes).map_err(|e| image_err(image, format!("{what}: {e}")))
}

/// The index entry for `platform` (`os/arch[/variant]`).
pub(crate) fn pick_platform(
    image: &str,
    entries: Vec<IndexEntry>,
    platform: &str,
) -> Result<IndexEntry, RegisterError> {
    let mut parts = platform.splitn(3, '/');
    let os = parts.next().unwrap_or("linux");
    let arch = parts.next().unwrap_or_default();
    let variant = parts.next();
    entries
        .into_iter()
        .find(|e| {
            e.platform.as_ref().is_some_and(|p| {
                p.os == os
                    && p.architecture == arch
                    && (variant.is_none() || p.variant.as_deref() == variant)
            })
        })
        .ok_or_else(|| image_err(image, format!("its index has no manifest for {platform}")))
}

pub(crate) async fn register_leased(
    ctx: &Ctx,
    opts: &RegisterOpts,
) -> Result<Vec<String>, RegisterError> {
    let image = opts.image.as_str();
    let ns = &opts.namespace;
    let found = ctx.get_image(image).await.map_err(api(format!(
        "image {image:?} in namespace {ns:?} (get it first: kata-cc-snapshotter pull {image})"
    )))?;
    let target = found
        .target
        .ok_or_else(|| image_err(image, "containerd has no target descriptor for it".into()))?;
    let read = |digest: String| async move {
        ctx.read_blob(&digest, MAX_JSON_BLOB)
            .await
            .map_err(api(format!("reading blob {digest} of {image:?}")))
    };
    let mut manifest_digest = target.digest.clone();
    let mut manifest: Manifest = parse(
        image,
        &format!("blob {manifest_digest}"),
        &read(manifest_digest.clone()).await?,
    )?;
    if let Some(entries) = manifest.manifests.take() {
        let entry = pick_platform(image, entries, &opts.platform)?;
        manifest_digest = entry.digest;
        manifest = parse(
            image,
            &format!("manifest {manifest_digest}"),
            &read(manifest_digest.clone()).await?,
        )?;
    }
    let config_digest = manifest
        .config
        .ok_or_else(|| image_err(image, format!("manifest {manifest_digest} has no config")))?
        .digest;
    let config: Config = parse(
        image,
        &format!("config {config_digest}"),
        &read(config_digest.clone()).await?,
    )?;
    let diff_ids = config.rootfs.diff_ids;
    if diff_ids.is_empty() || diff_ids.len() != manifest.layers.len() {
        return Err(image_err(
            image,
            format!(
                "config {config_digest} lists {} diff IDs for {} layers",
                diff_ids.len(),
                manifest.layers.len()
            ),
        ));
    }
    let chain = chain_ids(&diff_ids);
    let top = chain.last().cloned().unwrap_or_default();

    // The GC reference image -> config -> top snapshot (-> its parents), as containerd's
    // unpacker sets it.
    let gc_label = format!("containerd.io/gc.ref.snapshot.{}", opts.snapshotter);
    ctx.set_content_label(&config_digest, &gc_label, &top)
        .await
        .map_err(api(format!(
            "labelling config {config_digest} with {gc_label}"
        )))?;

    let mut snapshots = SnapshotsClient::new(ctx.channel.clone());
    let unique = unique();
    for (i, chain_id) in chain.iter().enumerate() {
        let parent = if i == 0 {
            String::new()
        } else {
            chain[i - 1].clone()
        };
        let key = format!("kata-cc-register-{unique}-{i} {chain_id}");
        let labels = HashMap::from([
            (TARGET_SNAPSHOT_REF.to_owned(), chain_id.clone()),
            (CRI_IMAGE_REF.to_owned(), image.to_owned()),
            (
                CRI_LAYER_DIGEST.to_owned(),
                manifest.layers[i].digest.clone(),
            ),
            (CRI_MANIFEST_DIGEST.to_owned(), manifest_digest.clone()),
        ]);
        let req = ctx.request(PrepareSnapshotRequest {
            snapshotter: opts.snapshotter.clone(),
            key: key.clone(),
            parent,
            labels,
        });
        match snapshots.prepare(req).await {
            Err(status) if status.code() == Code::AlreadyExists => {
                tracing::info!(
                    chain_id,
                    layer = manifest.layers[i].digest,
                    "layer registered"
                );
            }
            Err(status) => {
                return Err(api(format!(
                    "preparing layer {chain_id} in snapshotter {:?}",
                    opts.snapshotter
                ))(status))
            }
            Ok(_) => {
                // Not our snapshotter: it made an ordinary active snapshot. Undo it.
                let req = ctx.request(RemoveSnapshotRequest {
                    snapshotter: opts.snapshotter.clone(),
                    key,
                });
                let _ = snapshots.remove(req).await;
                return Err(image_err(
                    image,
                    format!(
                        "snapshotter {:?} created an active snapshot for layer {chain_id} instead of \
                         recording it: is it kata-cc-snapshotter?",
                        opts.snapshotter
                    ),
                ));
            }
        }
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        let sum = Sha256::digest(b"sha256:aaaa sha256:bbbb");
        let hex: String = sum.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(c[1], format!("sha256:{hex}"));
        assert!(chain_ids(&[]).is_empty());
    }
}
