//! The `image_guest_pull` storage driver: the container's image is pulled, verified,
//! decrypted and unpacked inside the VM (image-rs), never on the host.
//!
//! Kata's runtime sends, for a container whose image is pulled in the guest, one
//! `Storage` with `driver = "image_guest_pull"`, `source` = the image reference,
//! `driver_options = ["image_guest_pull=<JSON {\"metadata\": {annotations}}>"]`,
//! `fstype = "overlay"` and `mount_point = <shared dir>/<container id>/rootfs`. The agent
//! pulls the image into its per-VM layer cache, mounts an overlay (the image's layers plus
//! a per-container upper dir) at the mount point, and merges the image config
//! (entrypoint/cmd, env, user, working dir) into the spec the way the CRI would have. The
//! sandbox (pause) container, marked by the CRI annotation
//! `io.kubernetes.cri.container-type=sandbox`, gets the guest image's own pause rootfs,
//! bind-mounted read-only: nothing is pulled for it.
//!
//! On any failure nothing of the container's rootfs remains (the overlay is unmounted and
//! its upper dir removed); a layer that failed a check never joins the cache (image-rs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image_rs::decrypt::KeyProvider;
use image_rs::signature::ImagePolicy;
use image_rs::{ImageStore, PullLimits, PullOptions, Reference, RegistryConfig, RootfsMount, UserDb};
use protocols::agent as pb;

use crate::error::AgentError;

/// The storage driver name Kata uses for guest-pulled images.
pub const DRIVER: &str = "image_guest_pull";
/// The CRI annotation that tells a pod's containers apart.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// Its value for the sandbox (pause) container.
pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";

/// The source Kata's shim (and ours) sends for the sandbox container: not an image, the
/// guest's built-in pause rootfs.
pub const PAUSE_PLACEHOLDER: &str = "pause";

/// How images are pulled in this VM.
#[derive(Clone, Default)]
pub struct ImagePullConfig {
    /// Registries reached over plain HTTP (`host[:port]`); every other one over HTTPS.
    pub insecure_registries: Vec<String>,
    /// The image signature policy (containers-policy.json); none: accept any image.
    pub image_policy: Option<ImagePolicy>,
    /// Keys for encrypted layers (the KBS after attestation, in a TEE pod).
    pub keys: Option<Arc<KbsKeys>>,
    /// The pause container's rootfs shipped in the guest image (`None`: a sandbox
    /// container must bring its own image).
    pub pause_rootfs: Option<PathBuf>,
    /// Size and count limits of pulls (initdata `[image.limits]`; defaults otherwise).
    pub limits: ImageLimits,
}

impl std::fmt::Debug for ImagePullConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagePullConfig")
            .field("insecure_registries", &self.insecure_registries)
            .field("image_policy", &self.image_policy.is_some())
            .field("keys", &self.keys.is_some())
            .field("pause_rootfs", &self.pause_rootfs)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Keys for encrypted layers: private keys for JWE recipients (given locally, or
/// `kbs:///` resources fetched from the pod's KBS after attestation), and, for the
/// key-provider annotation, the KEK named by the layer (`kbs:///` from the KBS).
pub struct KbsKeys {
    client: Option<Arc<attestation_agent::KbsClient>>,
    local_keys: Vec<Vec<u8>>,
    key_uris: Vec<String>,
    fetched: tokio::sync::OnceCell<Vec<Vec<u8>>>,
}

impl KbsKeys {
    /// Keys from `client` (if the pod has a KBS): the private keys `key_uris` names, and
    /// `local_keys` (PEM or JWK).
    pub fn new(
        client: Option<Arc<attestation_agent::KbsClient>>,
        local_keys: Vec<Vec<u8>>,
        key_uris: Vec<String>,
    ) -> Self {
        Self { client, local_keys, key_uris, fetched: tokio::sync::OnceCell::new() }
    }

    /// Fetches the private keys named by URI (once per VM; the KBS attests first).
    async fn fetch_private_keys(&self) -> Result<(), AgentError> {
        if self.key_uris.is_empty() {
            return Ok(());
        }
        self.fetched
            .get_or_try_init(|| async {
                let client = self.client.as_ref().ok_or_else(|| {
                    AgentError::FailedPrecondition(
                        "cdh.toml [image] private_key_uris needs a KBS (aa.toml [token_configs.kbs] url)".into(),
                    )
                })?;
                let mut keys = Vec::new();
                for uri in &self.key_uris {
                    let key = client.get_resource(uri).await.map_err(|e| {
                        AgentError::FailedPrecondition(format!("image decryption key {uri}: {}", crate::error::chain(&e)))
                    })?;
                    keys.push(key);
                }
                tracing::info!("image decryption: {} private key(s) fetched from the KBS", keys.len());
                Ok::<_, AgentError>(keys)
            })
            .await
            .map(|_| ())
    }
}

#[async_trait::async_trait]
impl KeyProvider for KbsKeys {
    fn private_keys(&self) -> Vec<Vec<u8>> {
        let mut keys = self.local_keys.clone();
        keys.extend(self.fetched.get().cloned().unwrap_or_default());
        keys
    }

    async fn get_resource(&self, uri: &str) -> Result<Vec<u8>, image_rs::decrypt::DecryptError> {
        let Some(client) = &self.client else {
            return Err(image_rs::decrypt::DecryptError::resource(
                uri,
                "this pod has no KBS (initdata aa.toml [token_configs.kbs] url) to fetch layer keys from",
            ));
        };
        client.get_resource(uri).await.map_err(|e| image_rs::decrypt::DecryptError::resource(uri, e))
    }
}

/// The image settings a pod's initdata can carry, in `cdh.toml` (as CoCo's
/// confidential-data-hub reads it):
///
/// ```toml
/// [image]
/// # registries reached over plain HTTP (kata-cc extension; CoCo uses registries.conf)
/// insecure_registries = ["10.0.0.1:5000"]
/// # a containers-policy.json, inline (kata-cc extension)
/// image_security_policy = '{"default":[{"type":"reject"}]}'
/// # private keys (PEM/JWK) for JWE-encrypted layers, released by the KBS after
/// # attestation (kata-cc extension; CoCo's key-provider annotation needs no setting)
/// private_key_uris = ["kbs:///default/image-key/priv"]
///
/// # what a (hostile) registry may make the guest hold (kata-cc extension); each key
/// # overrides one default of image_rs::PullLimits / RegistryConfig, see ImageLimits
/// [image.limits]
/// max_layer_uncompressed_bytes = 4294967296
/// max_cache_bytes = 2147483648
/// ```
///
/// Unknown keys in `[image]` and `[image.limits]` are refused so a typo cannot silently
/// drop a signature requirement or a limit; other tables of cdh.toml are ignored.
pub fn config_from_cdh_toml(text: &str) -> Result<CdhImage, String> {
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Image {
        #[serde(default)]
        insecure_registries: Vec<String>,
        image_security_policy: Option<String>,
        #[serde(default)]
        private_key_uris: Vec<String>,
        #[serde(default)]
        limits: ImageLimits,
    }
    #[derive(serde::Deserialize)]
    struct Cdh {
        #[serde(default)]
        image: Option<Image>,
    }
    let cdh: Cdh = toml::from_str(text).map_err(|e| format!("cdh.toml: {e}"))?;
    let image = cdh.image.unwrap_or_default();
    let policy = image
        .image_security_policy
        .map(|json| ImagePolicy::parse(json.as_bytes()).map_err(|e| format!("cdh.toml [image] image_security_policy: {e}")))
        .transpose()?;
    for uri in &image.private_key_uris {
        attestation_agent::parse_kbs_uri(uri).map_err(|e| format!("cdh.toml [image] private_key_uris: {e}"))?;
    }
    image.limits.validate().map_err(|e| format!("cdh.toml [image.limits] {e}"))?;
    Ok(CdhImage {
        insecure_registries: image.insecure_registries,
        image_policy: policy,
        private_key_uris: image.private_key_uris,
        limits: image.limits,
    })
}

/// initdata `cdh.toml` `[image.limits]`: what a registry may make the guest hold. Each
/// key, when present, replaces one default; sizes are bytes. The keys are the names of
/// [`image_rs::Limit`] (which errors quote), plus the document sizes of
/// [`RegistryConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageLimits {
    /// [`PullLimits::max_layers`].
    pub max_layers: Option<u64>,
    /// [`PullLimits::max_layer_compressed_bytes`].
    pub max_layer_compressed_bytes: Option<u64>,
    /// [`PullLimits::max_layer_uncompressed_bytes`].
    pub max_layer_uncompressed_bytes: Option<u64>,
    /// [`PullLimits::max_image_compressed_bytes`].
    pub max_image_compressed_bytes: Option<u64>,
    /// [`PullLimits::max_image_uncompressed_bytes`].
    pub max_image_uncompressed_bytes: Option<u64>,
    /// [`PullLimits::max_layer_entries`].
    pub max_layer_entries: Option<u64>,
    /// [`PullLimits::max_image_entries`].
    pub max_image_entries: Option<u64>,
    /// [`PullLimits::max_path_depth`].
    pub max_path_depth: Option<u64>,
    /// [`PullLimits::max_path_length`].
    pub max_path_length: Option<u64>,
    /// [`PullLimits::max_cache_bytes`].
    pub max_cache_bytes: Option<u64>,
    /// [`RegistryConfig::max_manifest_size`].
    pub max_manifest_bytes: Option<u64>,
    /// [`RegistryConfig::max_config_size`].
    pub max_config_bytes: Option<u64>,
}

impl ImageLimits {
    fn all(&self) -> [(&'static str, Option<u64>); 12] {
        [
            ("max_layers", self.max_layers),
            ("max_layer_compressed_bytes", self.max_layer_compressed_bytes),
            ("max_layer_uncompressed_bytes", self.max_layer_uncompressed_bytes),
            ("max_image_compressed_bytes", self.max_image_compressed_bytes),
            ("max_image_uncompressed_bytes", self.max_image_uncompressed_bytes),
            ("max_layer_entries", self.max_layer_entries),
            ("max_image_entries", self.max_image_entries),
            ("max_path_depth", self.max_path_depth),
            ("max_path_length", self.max_path_length),
            ("max_cache_bytes", self.max_cache_bytes),
            ("max_manifest_bytes", self.max_manifest_bytes),
            ("max_config_bytes", self.max_config_bytes),
        ]
    }

    /// A limit of 0 would refuse every image: refused as a mistake.
    fn validate(&self) -> Result<(), String> {
        match self.all().into_iter().find(|(_, v)| *v == Some(0)) {
            Some((key, _)) => Err(format!("{key} = 0 would refuse every image")),
            None => Ok(()),
        }
    }

    /// The pull limits: the defaults with the keys given replaced.
    pub fn pull_limits(&self) -> PullLimits {
        let d = PullLimits::default();
        PullLimits {
            max_layers: self.max_layers.unwrap_or(d.max_layers),
            max_layer_compressed_bytes: self.max_layer_compressed_bytes.unwrap_or(d.max_layer_compressed_bytes),
            max_layer_uncompressed_bytes: self.max_layer_uncompressed_bytes.unwrap_or(d.max_layer_uncompressed_bytes),
            max_image_compressed_bytes: self.max_image_compressed_bytes.unwrap_or(d.max_image_compressed_bytes),
            max_image_uncompressed_bytes: self.max_image_uncompressed_bytes.unwrap_or(d.max_image_uncompressed_bytes),
            max_layer_entries: self.max_layer_entries.unwrap_or(d.max_layer_entries),
            max_image_entries: self.max_image_entries.unwrap_or(d.max_image_entries),
            max_path_depth: self.max_path_depth.unwrap_or(d.max_path_depth),
            max_path_length: self.max_path_length.unwrap_or(d.max_path_length),
            max_cache_bytes: self.max_cache_bytes.unwrap_or(d.max_cache_bytes),
        }
    }

    /// `registry` with the document size keys given applied.
    pub fn apply_to_registry(&self, registry: &mut RegistryConfig) {
        if let Some(n) = self.max_manifest_bytes {
            registry.max_manifest_size = n;
        }
        if let Some(n) = self.max_config_bytes {
            registry.max_config_size = n;
        }
    }
}

/// The `[image]` settings of an initdata `cdh.toml`.
#[derive(Debug, Default)]
pub struct CdhImage {
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// The signature policy, if any.
    pub image_policy: Option<ImagePolicy>,
    /// Private keys for JWE-encrypted layers, fetched from the KBS.
    pub private_key_uris: Vec<String>,
    /// `[image.limits]`.
    pub limits: ImageLimits,
}

/// The agent's image puller: one layer cache for the whole pod.
#[derive(Debug)]
pub struct ImagePuller {
    cache_root: PathBuf,
    cfg: ImagePullConfig,
    store: tokio::sync::OnceCell<ImageStore>,
}

/// A container rootfs made from a guest-pulled image; unmounted at container removal.
#[derive(Debug)]
pub enum GuestRootfs {
    /// An overlay of the image's layers.
    Image(RootfsMount),
    /// The read-only bind mount of the built-in pause rootfs.
    Pause(PathBuf),
}

impl GuestRootfs {
    /// Unmount and remove the container's rootfs directories.
    pub fn release(self) -> Result<(), AgentError> {
        match self {
            GuestRootfs::Image(m) => m
                .unmount()
                .map_err(|e| AgentError::io("unmount the image rootfs")(std::io::Error::other(e))),
            GuestRootfs::Pause(p) => {
                match nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                    Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
                    Err(e) => return Err(AgentError::io(format!("unmount {}", p.display()))(e.into())),
                }
                let _ = std::fs::remove_dir(&p);
                Ok(())
            }
        }
    }
}

/// The parsed `image_guest_pull` storage of one container.
#[derive(Debug)]
struct GuestPull {
    image: String,
    metadata: HashMap<String, String>,
    mount_point: PathBuf,
}

impl ImagePuller {
    /// A puller whose layer cache lives in `cache_root` (created on first use).
    pub fn new(cache_root: impl Into<PathBuf>, cfg: ImagePullConfig) -> Self {
        Self { cache_root: cache_root.into(), cfg, store: tokio::sync::OnceCell::new() }
    }

    async fn store(&self) -> Result<&ImageStore, AgentError> {
        self.store
            .get_or_try_init(|| async {
                let mut registry = RegistryConfig {
                    insecure_registries: self.cfg.insecure_registries.clone(),
                    ..RegistryConfig::default()
                };
                self.cfg.limits.apply_to_registry(&mut registry);
                tracing::info!(
                    "image pulls: {:?}, manifests up to {} bytes, configs up to {} bytes",
                    self.cfg.limits.pull_limits(),
                    registry.max_manifest_size,
                    registry.max_config_size
                );
                ImageStore::new(&self.cache_root, registry)
                    .map_err(|e| AgentError::io("open the image cache")(std::io::Error::other(e)))
            })
            .await
    }

    /// Handles a CreateContainer's storages: with an `image_guest_pull` entry, pulls the
    /// image, mounts the rootfs at its mount point (which must be `<shared>/<cid>/rootfs`)
    /// and merges the image config into `spec`. Without one, returns `None` and leaves
    /// `spec` alone. Any other storage driver is refused.
    pub async fn prepare(
        &self,
        shared_dir: &Path,
        cid: &str,
        storages: &[pb::Storage],
        spec: &mut oci_spec::runtime::Spec,
    ) -> Result<Option<GuestRootfs>, AgentError> {
        let Some(pull) = parse_storages(shared_dir, cid, storages)? else {
            return Ok(None);
        };
        let sandbox = is_sandbox(spec, &pull.metadata)?;
        if sandbox {
            if let Some(pause) = &self.cfg.pause_rootfs {
                return bind_pause(pause, &pull.mount_point).map(|p| Some(GuestRootfs::Pause(p)));
            }
            // Kata's placeholder names no image: never pull Docker Hub's `pause` for it.
            if pull.image == PAUSE_PLACEHOLDER {
                return Err(AgentError::FailedPrecondition(format!(
                    "sandbox container: storages.source {PAUSE_PLACEHOLDER:?} asks for the guest image's built-in pause rootfs, and this guest has none"
                )));
            }
        }
        if pull.image == PAUSE_PLACEHOLDER {
            return Err(AgentError::invalid(
                "storages.source",
                format!("{PAUSE_PLACEHOLDER:?} names the sandbox's built-in rootfs, and this container is not the sandbox (OCI.Annotations[{CONTAINER_TYPE_ANNOTATION}])"),
            ));
        }
        let image = pull.image.as_str();
        let reference: Reference = image
            .parse()
            .map_err(|e| AgentError::invalid("storages.source", format!("{image:?} is not an image reference: {e}")))?;
        if let Some(k) = &self.cfg.keys {
            k.fetch_private_keys().await?;
        }
        let opts = PullOptions {
            keys: self.cfg.keys.clone().map(|k| k as Arc<dyn KeyProvider>),
            image_policy: self.cfg.image_policy.clone().unwrap_or_else(ImagePolicy::accept_anything),
            limits: self.cfg.limits.pull_limits(),
            ..PullOptions::default()
        };
        let store = self.store().await?;
        let t0 = std::time::Instant::now();
        let pulled = store.pull(&reference, &opts).await.map_err(|e| AgentError::ImagePull {
            image: image.to_string(),
            source: Box::new(e),
        })?;
        let container_dir = pull.mount_point.parent().unwrap_or(shared_dir).to_path_buf();
        let mount = image_rs::mount_rootfs(&pulled, &container_dir)
            .map_err(|e| AgentError::ImagePull { image: image.to_string(), source: Box::new(e) })?;
        let merged = UserDb::from_rootfs(mount.rootfs())
            .map_err(|e| e.to_string())
            .and_then(|users| image_rs::merge_image_config(&pulled.config, spec, &users).map_err(|e| e.to_string()));
        if let Err(why) = merged {
            let _ = mount.unmount();
            return Err(AgentError::invalid("OCI", format!("image {image}: cannot apply its config: {why}")));
        }
        tracing::info!(
            "container {cid}: image {image} ({}) pulled and mounted in {} ms",
            pulled.manifest_digest,
            t0.elapsed().as_millis()
        );
        Ok(Some(GuestRootfs::Image(mount)))
    }
}

/// Whether the container is the sandbox (pause) container. Decided by the spec's CRI
/// annotation, which the policy checks (generated policies match it against the pod's
/// containers), never by the storage's `driver_options` metadata, which it does not: a
/// metadata that says otherwise is refused rather than trusted.
fn is_sandbox(spec: &oci_spec::runtime::Spec, metadata: &HashMap<String, String>) -> Result<bool, AgentError> {
    let from_spec = spec.annotations().as_ref().and_then(|a| a.get(CONTAINER_TYPE_ANNOTATION)).map(String::as_str);
    let spec_sandbox = from_spec == Some(CONTAINER_TYPE_SANDBOX);
    if let Some(meta) = metadata.get(CONTAINER_TYPE_ANNOTATION) {
        // (A spec without CRI annotations, e.g. `ctr run`, may come with a metadata that
        // says "container": only a disagreement about being the sandbox matters.)
        if (meta == CONTAINER_TYPE_SANDBOX) != spec_sandbox {
            return Err(AgentError::invalid(
                "storages.driver_options",
                format!(
                    "metadata {CONTAINER_TYPE_ANNOTATION}={meta:?} disagrees with OCI.Annotations[{CONTAINER_TYPE_ANNOTATION}]={from_spec:?}"
                ),
            ));
        }
    }
    Ok(spec_sandbox)
}

/// Finds the `image_guest_pull` storage among `storages` and checks it.
fn parse_storages(shared_dir: &Path, cid: &str, storages: &[pb::Storage]) -> Result<Option<GuestPull>, AgentError> {
    let mut found = None;
    for s in storages {
        if s.driver != DRIVER {
            return Err(AgentError::invalid(
                "storages",
                format!("storage driver {:?} is not supported (only {DRIVER:?})", s.driver),
            ));
        }
        if found.is_some() {
            return Err(AgentError::invalid("storages", format!("more than one {DRIVER:?} storage")));
        }
        if s.source.is_empty() {
            return Err(AgentError::invalid("storages.source", "the image reference is empty"));
        }
        let expected = shared_dir.join(cid).join("rootfs");
        if Path::new(&s.mount_point) != expected {
            return Err(AgentError::invalid(
                "storages.mount_point",
                format!("{:?} must be {}", s.mount_point, expected.display()),
            ));
        }
        let mut metadata = HashMap::new();
        for opt in &s.driver_options {
            let Some((key, value)) = opt.split_once('=') else {
                return Err(AgentError::invalid("storages.driver_options", format!("{opt:?} is not key=value")));
            };
            if key != DRIVER {
                return Err(AgentError::invalid("storages.driver_options", format!("unknown option {key:?}")));
            }
            #[derive(serde::Deserialize)]
            struct Volume {
                #[serde(default)]
                metadata: HashMap<String, String>,
            }
            let v: Volume = serde_json::from_str(value)
                .map_err(|e| AgentError::invalid("storages.driver_options", format!("{DRIVER} is not valid JSON: {e}")))?;
            metadata = v.metadata;
        }
        found = Some(GuestPull { image: s.source.clone(), metadata, mount_point: expected });
    }
    Ok(found)
}

/// Bind-mounts the built-in pause rootfs read-only at `target`.
fn bind_pause(pause: &Path, target: &Path) -> Result<PathBuf, AgentError> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(target).map_err(AgentError::io(format!("create {}", target.display())))?;
    mount(Some(pause), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| AgentError::io(format!("bind the pause rootfs at {}", target.display()))(e.into()))?;
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Err(e) = mount(None::<&str>, target, None::<&str>, ro, None::<&str>) {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
        return Err(AgentError::io(format!("make {} read-only", target.display()))(e.into()));
    }
    Ok(target.to_path_buf())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn storage(source: &str, mount_point: &str, opts: &[&str]) -> pb::Storage {
        let mut s = pb::Storage::new();
        s.driver = DRIVER.into();
        s.source = source.into();
        s.mount_point = mount_point.into();
        s.fstype = "overlay".into();
        s.driver_options = opts.iter().map(|o| o.to_string()).collect();
        s
    }

    #[tokio::test]
    async fn sandbox_placeholder_is_never_pulled_without_a_built_in_pause() {
        let dir = tempfile::tempdir().unwrap();
        let puller = ImagePuller::new(dir.path().join("images"), ImagePullConfig::default());
        let shared = dir.path().join("shared");
        let mp = shared.join("p1/rootfs");
        let opt = r#"image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"sandbox"}}"#;
        let st = storage(PAUSE_PLACEHOLDER, mp.to_str().unwrap(), &[opt]);
        let mut spec = spec_of_type(CONTAINER_TYPE_SANDBOX);
        let e = puller.prepare(&shared, "p1", &[st], &mut spec).await.unwrap_err().to_string();
        assert!(e.contains("built-in pause rootfs"), "{e}");
        assert!(!dir.path().join("images").exists(), "something was pulled");
    }

    fn spec_of_type(kind: &str) -> oci_spec::runtime::Spec {
        let mut spec = oci_spec::runtime::Spec::default();
        spec.set_annotations(Some(HashMap::from([(CONTAINER_TYPE_ANNOTATION.to_string(), kind.to_string())])));
        spec
    }

    /// The host cannot make an app container the pause container (or the reverse)
    /// through the storage metadata, which the policy does not check: the checked spec
    /// annotation decides, and a disagreeing metadata is refused before anything happens.
    #[tokio::test]
    async fn sandbox_or_not_comes_from_the_checked_annotation() {
        let dir = tempfile::tempdir().unwrap();
        let pause = dir.path().join("pause-rootfs");
        std::fs::create_dir_all(&pause).unwrap();
        let cfg = ImagePullConfig { pause_rootfs: Some(pause), ..ImagePullConfig::default() };
        let puller = ImagePuller::new(dir.path().join("images"), cfg);
        let shared = dir.path().join("shared");
        let mp = shared.join("c1/rootfs");
        let meta = |kind: &str| format!(r#"image_guest_pull={{"metadata":{{"io.kubernetes.cri.container-type":"{kind}"}}}}"#);
        for (spec_kind, meta_kind) in [("container", "sandbox"), ("sandbox", "container")] {
            let st = storage("example.com/app@sha256:00", mp.to_str().unwrap(), &[&meta(meta_kind)]);
            let mut spec = spec_of_type(spec_kind);
            let e = puller.prepare(&shared, "c1", &[st], &mut spec).await.unwrap_err().to_string();
            assert!(e.contains("disagrees with OCI.Annotations"), "{spec_kind}/{meta_kind}: {e}");
            assert!(!mp.exists(), "{spec_kind}/{meta_kind}: something was mounted");
        }
        // Without the annotation a container is not the sandbox, whatever the metadata.
        let st = storage(PAUSE_PLACEHOLDER, mp.to_str().unwrap(), &[]);
        let mut spec = oci_spec::runtime::Spec::default();
        let e = puller.prepare(&shared, "c1", &[st], &mut spec).await.unwrap_err().to_string();
        assert!(e.contains("is not the sandbox") && !mp.exists(), "{e}");
    }

    #[test]
    fn cdh_toml_image_section() {
        let c = config_from_cdh_toml(
            "[image]\ninsecure_registries = [\"10.0.0.1:5000\"]\nimage_security_policy = '{\"default\":[{\"type\":\"reject\"}]}'\nprivate_key_uris = [\"kbs:///default/image-key/priv\"]\n[kbc]\nname = \"cc_kbc\"\n",
        )
        .unwrap();
        assert_eq!(c.insecure_registries, ["10.0.0.1:5000"]);
        assert!(c.image_policy.is_some());
        assert_eq!(c.private_key_uris, ["kbs:///default/image-key/priv"]);
        assert!(config_from_cdh_toml("").unwrap().insecure_registries.is_empty());
        let e = config_from_cdh_toml("[image]\nprivate_key_uris = [\"http://x/y\"]\n").unwrap_err();
        assert!(e.contains("private_key_uris"), "{e}");
        let e = config_from_cdh_toml("[image]\ninsecure_registry = [\"x\"]\n").unwrap_err();
        assert!(e.contains("insecure_registry"), "{e}");
        let e = config_from_cdh_toml("[image]\nimage_security_policy = '{\"default\":[{\"type\":\"signedBy\"}]}'\n").unwrap_err();
        assert!(e.contains("image_security_policy"), "{e}");
    }

    #[test]
    fn cdh_toml_image_limits() {
        let c = config_from_cdh_toml(
            "[image]\ninsecure_registries = [\"r:5000\"]\n[image.limits]\nmax_layers = 16\nmax_cache_bytes = 1073741824\nmax_manifest_bytes = 65536\n",
        )
        .unwrap();
        let l = c.limits.pull_limits();
        let d = PullLimits::default();
        assert_eq!((l.max_layers, l.max_cache_bytes), (16, 1 << 30));
        assert_eq!(l.max_layer_uncompressed_bytes, d.max_layer_uncompressed_bytes);
        let mut reg = RegistryConfig::default();
        c.limits.apply_to_registry(&mut reg);
        assert_eq!((reg.max_manifest_size, reg.max_config_size), (65536, RegistryConfig::default().max_config_size));
        // Absent: the defaults.
        assert_eq!(config_from_cdh_toml("[image]\n").unwrap().limits, ImageLimits::default());
        for (toml, want) in [
            ("[image.limits]\nmax_layer = 3\n", "max_layer"),
            ("[image.limits]\nmax_layers = -1\n", "max_layers"),
            ("[image.limits]\nmax_layers = \"4GiB\"\n", "max_layers"),
            ("[image.limits]\nmax_path_depth = 0\n", "max_path_depth = 0"),
        ] {
            let e = config_from_cdh_toml(toml).unwrap_err();
            assert!(e.contains(want), "{toml}: {e}");
        }
    }

    #[test]
    fn parses_kata_shaped_storage() {
        let shared = Path::new("/run/kata-containers/shared/containers");
        let s = storage(
            "docker.io/library/busybox:latest",
            "/run/kata-containers/shared/containers/c1/rootfs",
            &[r#"image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"sandbox"}}"#],
        );
        let p = parse_storages(shared, "c1", &[s]).unwrap().unwrap();
        assert_eq!(p.image, "docker.io/library/busybox:latest");
        assert_eq!(p.metadata[CONTAINER_TYPE_ANNOTATION], CONTAINER_TYPE_SANDBOX);
        assert!(parse_storages(shared, "c1", &[]).unwrap().is_none());
    }

    #[test]
    fn refuses_bad_storages() {
        let shared = Path::new("/shared");
        let ok = "/shared/c1/rootfs";
        let cases = [
            (storage("busybox", "/elsewhere/rootfs", &[]), "mount_point"),
            (storage("busybox", "/shared/c2/rootfs", &[]), "mount_point"),
            (storage("", ok, &[]), "source"),
            (storage("busybox", ok, &["image_guest_pull={"]), "not valid JSON"),
            (storage("busybox", ok, &["other=1"]), "unknown option"),
            (storage("busybox", ok, &["novalue"]), "key=value"),
        ];
        for (s, want) in cases {
            let e = parse_storages(shared, "c1", &[s]).unwrap_err().to_string();
            assert!(e.contains(want), "{e} should mention {want}");
        }
        let mut other = storage("busybox", ok, &[]);
        other.driver = "virtio-fs".into();
        let e = parse_storages(shared, "c1", &[other]).unwrap_err().to_string();
        assert!(e.contains("virtio-fs"), "{e}");
        let two = [storage("busybox", ok, &[]), storage("busybox", ok, &[])];
        assert!(parse_storages(shared, "c1", &two).unwrap_err().to_string().contains("more than one"));
    }
}
