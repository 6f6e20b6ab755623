//! `kata-cc-snapshotter pull`: a guest-pull image pull for clients without CRI. Fetches
//! the image's index/manifest and config (never a layer) with `ctr content
//! fetch-object`, checks their digests, writes them into containerd's content store with
//! their GC labels, creates the image, then registers its layers with the snapshotter
//! ([`crate::register`]). Everything runs under a temporary containerd lease.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::containerd_api::{Ctx, Descriptor};
use crate::register::{
    api, connect, image_err, parse, pick_platform, register_leased, release, with_lease, Manifest,
    RegisterError, RegisterOpts, MAX_JSON_BLOB,
};

const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// How `pull` gets manifests and configs from the registry: `ctr content fetch-object`,
/// which knows containerd's registry configuration (`--hosts-dir`, `--plain-http`,
/// `--user`, TLS flags) and downloads exactly the object asked for.
#[derive(Clone, Debug)]
pub struct FetchOpts {
    /// The `ctr` binary.
    pub ctr: PathBuf,
    /// Extra `ctr content fetch-object` flags (`--plain-http`, `--user U:P`, ...).
    pub registry_flags: Vec<String>,
}

/// Fetches the image's index/manifest and config (never a layer) into containerd,
/// creates the image, then registers its layers (see [`crate::register::register_image`]);
/// returns their chain IDs.
pub async fn pull(opts: &RegisterOpts, fetch: &FetchOpts) -> Result<Vec<String>, RegisterError> {
    let ctx = connect(opts).await?;
    let ctx = with_lease(&ctx, "pull").await?;
    let result = pull_leased(&ctx, opts, fetch).await;
    release(&ctx).await;
    result
}

fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// `registry/repo` of a reference (without `:tag` and `@digest`).
pub fn repository(reference: &str) -> &str {
    let no_digest = reference.split_once('@').map_or(reference, |(r, _)| r);
    match no_digest.rfind(':') {
        Some(colon) if !no_digest[colon..].contains('/') => &no_digest[..colon],
        _ => no_digest,
    }
}

async fn fetch_object(
    opts: &RegisterOpts,
    fetch: &FetchOpts,
    reference: &str,
) -> Result<Vec<u8>, RegisterError> {
    let mut cmd = tokio::process::Command::new(&fetch.ctr);
    cmd.arg("--address")
        .arg(&opts.containerd)
        .arg("--namespace")
        .arg(&opts.namespace)
        .args(["content", "fetch-object"])
        .args(&fetch.registry_flags)
        .arg(reference)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = cmd.output().await.map_err(|e| {
        image_err(
            &opts.image,
            format!("cannot run {}: {e}", fetch.ctr.display()),
        )
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(image_err(
            &opts.image,
            format!(
                "`ctr content fetch-object {reference}` failed ({}): {}",
                out.status,
                stderr.trim()
            ),
        ));
    }
    if out.stdout.len() > MAX_JSON_BLOB {
        return Err(image_err(
            &opts.image,
            format!("{reference} is larger than {MAX_JSON_BLOB} bytes"),
        ));
    }
    Ok(out.stdout)
}

fn media_type(json: &serde_json::Value) -> String {
    match json.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => m.to_owned(),
        None if json.get("manifests").is_some() => MT_OCI_INDEX.to_owned(),
        None => MT_OCI_MANIFEST.to_owned(),
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == MT_OCI_INDEX || media_type == MT_DOCKER_LIST
}

async fn pull_leased(
    ctx: &Ctx,
    opts: &RegisterOpts,
    fetch: &FetchOpts,
) -> Result<Vec<String>, RegisterError> {
    let image = opts.image.as_str();
    let repo = repository(image);
    let root = fetch_object(opts, fetch, image).await?;
    let root_digest = sha256_digest(&root);
    let root_json: serde_json::Value = parse(image, "its manifest", &root)?;
    let root_type = media_type(&root_json);
    let target = Descriptor {
        media_type: root_type.clone(),
        digest: root_digest.clone(),
        size: i64::try_from(root.len()).unwrap_or(i64::MAX),
        annotations: HashMap::new(),
    };

    let (manifest_digest, manifest_bytes, index) = if is_index(&root_type) {
        let index: Manifest = parse(image, &format!("index {root_digest}"), &root)?;
        let entry = pick_platform(image, index.manifests.unwrap_or_default(), &opts.platform)?;
        let bytes = fetch_object(opts, fetch, &format!("{repo}@{}", entry.digest)).await?;
        let got = sha256_digest(&bytes);
        if got != entry.digest {
            return Err(image_err(
                image,
                format!("manifest {} has digest {got}", entry.digest),
            ));
        }
        (entry.digest, bytes, Some(root))
    } else {
        (root_digest.clone(), root, None)
    };
    let manifest: Manifest = parse(
        image,
        &format!("manifest {manifest_digest}"),
        &manifest_bytes,
    )?;
    let config_digest = manifest
        .config
        .as_ref()
        .ok_or_else(|| image_err(image, format!("manifest {manifest_digest} has no config")))?
        .digest
        .clone();
    let config = fetch_object(opts, fetch, &format!("{repo}@{config_digest}")).await?;
    let got = sha256_digest(&config);
    if got != config_digest {
        return Err(image_err(
            image,
            format!("config {config_digest} has digest {got}"),
        ));
    }

    // Children first, each parent labelled with its GC references.
    let write = |digest: String, data: Vec<u8>, labels: HashMap<String, String>| async move {
        ctx.write_blob(&digest, data, labels)
            .await
            .map_err(api(format!(
                "writing blob {digest} of {image:?} into containerd"
            )))
    };
    write(config_digest.clone(), config, HashMap::new()).await?;
    write(
        manifest_digest.clone(),
        manifest_bytes,
        HashMap::from([(
            "containerd.io/gc.ref.content.config".to_owned(),
            config_digest.clone(),
        )]),
    )
    .await?;
    if let Some(index) = index {
        write(
            root_digest.clone(),
            index,
            HashMap::from([(
                "containerd.io/gc.ref.content.m.0".to_owned(),
                manifest_digest.clone(),
            )]),
        )
        .await?;
    }
    ctx.put_image(image, target)
        .await
        .map_err(api(format!("creating image {image:?}")))?;
    tracing::info!(
        image,
        manifest = manifest_digest,
        config = config_digest,
        "image created (no layer fetched)"
    );
    register_leased(ctx, opts).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_strips_tag_and_digest() {
        assert_eq!(
            repository("127.0.0.1:5000/busybox:latest"),
            "127.0.0.1:5000/busybox"
        );
        assert_eq!(
            repository("127.0.0.1:5000/busybox"),
            "127.0.0.1:5000/busybox"
        );
        assert_eq!(repository("r.io/a/b@sha256:ab"), "r.io/a/b");
        assert_eq!(repository("r.io/a/b:t@sha256:ab"), "r.io/a/b");
        assert_eq!(repository("busybox"), "busybox");
    }
}
