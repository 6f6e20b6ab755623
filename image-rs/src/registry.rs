//! Registry client: manifests (bounded, verified), configs, blob streams, cosign
//! signatures.
//!
//! `oci-client` negotiates authentication (the `/v2/` challenge, the token realm, basic
//! credentials) and provides the reference and manifest types. The requests themselves are
//! made here on the same `reqwest` so that every body is bounded (manifests, configs,
//! error bodies), every blob is verified by our own [`VerifyingReader`](crate::digest)
//! with uniform errors, descriptor `urls` (foreign layers) are never followed, and a token
//! the registry hands out is checked before it is put in a header.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::StatusCode;
use tokio::sync::Mutex;

use crate::digest::{Algorithm, Digest};
use crate::error::{ImageError, Result};
use crate::signature::{CosignSignature, SignatureError, SignatureSource};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Cosign simple-signing layer media type.
pub const COSIGN_SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Annotation holding a cosign signature.
pub const COSIGN_SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

const ERROR_BODY_LIMIT: usize = 4096;
const SIGNATURE_PAYLOAD_LIMIT: u64 = 1 << 20;
const MAX_SIGNATURES: usize = 32;

/// How registries are reached. Shared by every pull of an [`ImageStore`](crate::ImageStore).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`, as in the image reference) reached over plain HTTP.
    /// Every other registry is reached over HTTPS only.
    pub insecure_registries: Vec<String>,
    /// Limit for establishing a connection.
    pub connect_timeout: Duration,
    /// Limit for the registry to send the next bytes of any answer (a stalled blob).
    pub read_timeout: Duration,
    /// Limit for a whole small request (auth, manifest, config, signatures).
    pub request_timeout: Duration,
    /// Largest manifest or index accepted.
    pub max_manifest_size: u64,
    /// Largest image config accepted.
    pub max_config_size: u64,
    /// PEM CA certificates trusted for HTTPS registries, in addition to the system's.
    pub extra_root_certificates_pem: Vec<Vec<u8>>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure_registries: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_manifest_size: 4 << 20,
            max_config_size: 4 << 20,
            extra_root_certificates_pem: Vec::new(),
        }
    }
}

/// The manifest an image reference resolved to.
#[derive(Debug, Clone)]
pub struct ResolvedManifest {
    /// Digest of what the reference names (the index for a multi-platform image): the
    /// digest signatures are checked on.
    pub top_digest: Digest,
    /// Digest of the linux/amd64 image manifest.
    pub digest: Digest,
    /// The image manifest.
    pub manifest: OciImageManifest,
    /// Its bytes as received (they hash to `digest`).
    pub raw: Bytes,
}

/// A registry session for one image pull: one set of credentials, one token.
pub struct RegistryClient {
    config: Arc<RegistryConfig>,
    http: reqwest::Client,
    oci: oci_client::Client,
    auth: RegistryAuth,
    token: Mutex<Option<HeaderValue>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.config)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

fn transport(image: &Reference, what: &str, e: reqwest::Error, cfg: &RegistryConfig) -> ImageError {
    if e.is_timeout() {
        ImageError::Timeout {
            image: image.to_string(),
            what: what.to_string(),
            seconds: cfg.read_timeout.as_secs(),
        }
    } else {
        ImageError::RegistryUnreachable {
            image: image.to_string(),
            registry: image.resolve_registry().to_string(),
            what: what.to_string(),
            source: Box::new(e),
        }
    }
}

impl RegistryClient {
    /// A session with credentials `auth` (anonymous, basic, or a bearer token).
    pub fn new(config: Arc<RegistryConfig>, auth: RegistryAuth) -> Result<Self> {
        let setup = |reason: String| ImageError::Task {
            image: "registry client".into(),
            reason,
        };
        // reqwest and oci-client are built without a bundled crypto provider (the workspace
        // uses ring everywhere): make ring the process default unless one is already set.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = Vec::new();
        for pem in &config.extra_root_certificates_pem {
            roots.push(
                reqwest::Certificate::from_pem(pem)
                    .map_err(|e| setup(format!("extra root certificate: {e}")))?,
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            // A pooled connection idle for long may be dead without the guest knowing
            // (NAT or registry restarts); reusing it costs a read timeout.
            .pool_idle_timeout(Duration::from_secs(5))
            .tls_certs_merge(roots)
            .build()
            .map_err(|e| setup(format!("HTTP client: {}", error_chain(&e))))?;
        let oci_config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(config.insecure_registries.clone()),
            connect_timeout: Some(config.connect_timeout),
            read_timeout: Some(config.read_timeout),
            extra_root_certificates: config
                .extra_root_certificates_pem
                .iter()
                .map(|pem| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            ..Default::default()
        };
        let oci = oci_client::Client::try_from(oci_config)
            .map_err(|e| setup(format!("registry client: {e}")))?;
        Ok(RegistryClient {
            config,
            http,
            oci,
            auth,
            token: Mutex::new(None),
        })
    }

    fn base(&self, image: &Reference) -> String {
        let registry = image.resolve_registry();
        let scheme = if self
            .config
            .insecure_registries
            .iter()
            .any(|r| r == registry)
        {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{registry}/v2/{}", image.repository())
    }

    /// Negotiate a token (or learn that basic/none is used) for pulling `image`.
    async fn authenticate(&self, image: &Reference) -> Result<()> {
        let fut = self.oci.auth(image, &self.auth, RegistryOperation::Pull);
        let token = tokio::time::timeout(self.config.request_timeout, fut)
            .await
            .map_err(|_| ImageError::Timeout {
                image: image.to_string(),
                what: "authentication".into(),
                seconds: self.config.request_timeout.as_secs(),
            })?
            .map_err(|e| match e {
                oci_client::errors::OciDistributionError::RequestError(e) => {
                    transport(image, "authentication", e, &self.config)
                }
                e => ImageError::Auth {
                    image: image.to_string(),
                    source: Box::new(e),
                },
            })?;
        let header = match token {
            Some(token) => Some(
                HeaderValue::try_from(format!("Bearer {token}")).map_err(|e| ImageError::Auth {
                    image: image.to_string(),
                    source: Box::new(e),
                })?,
            ),
            None => None,
        };
        *self.token.lock().await = header;
        Ok(())
    }

    /// GET `url` with the session's credentials; on 401 authenticate once and retry.
    async fn get(
        &self,
        image: &Reference,
        url: &str,
        accept: &str,
        what: &str,
    ) -> Result<reqwest::Response> {
        let mut retried = false;
        loop {
            let mut req = self.http.get(url).header(ACCEPT, accept);
            let token = self.token.lock().await.clone();
            if let Some(token) = token {
                req = req.header(AUTHORIZATION, token);
            } else if let RegistryAuth::Basic(user, pass) = &self.auth {
                req = req.basic_auth(user, Some(pass));
            }
            let resp = req
                .send()
                .await
                .map_err(|e| transport(image, what, e, &self.config))?;
            if resp.status() == StatusCode::UNAUTHORIZED && !retried {
                retried = true;
                self.authenticate(image).await?;
                continue;
            }
            if !resp.status().is_success() {
                let status = resp.status().as_u16();
                let body = read_bounded(resp, ERROR_BODY_LIMIT as u64, true)
                    .await
                    .unwrap_or_default();
                return Err(ImageError::RegistryStatus {
                    image: image.to_string(),
                    what: what.to_string(),
                    status,
                    message: String::from_utf8_lossy(&body).chars().take(300).collect(),
                });
            }
            return Ok(resp);
        }
    }

    async fn with_timeout<T>(
        &self,
        image: &Reference,
        what: &str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::time::timeout(self.config.request_timeout, fut)
            .await
            .map_err(|_| ImageError::Timeout {
                image: image.to_string(),
                what: what.to_string(),
                seconds: self.config.request_timeout.as_secs(),
            })?
    }

    /// GET a manifest by tag or digest, bounded and checked against `expected`; a
    /// timeout or an unreachable registry is retried twice (on a new connection: the
    /// failed one is not returned to the pool).
    async fn fetch_manifest(
        &self,
        image: &Reference,
        reference: &str,
        expected: Option<(&Digest, Option<u64>)>,
    ) -> Result<(Bytes, Digest, Option<String>)> {
        let mut attempt = 0u32;
        loop {
            match self.fetch_manifest_once(image, reference, expected).await {
                Err(e @ (ImageError::Timeout { .. } | ImageError::RegistryUnreachable { .. })) if attempt < 2 => {
                    attempt += 1;
                    tracing::warn!("{}; retrying ({attempt} of 2)", error_chain(&e));
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
                r => return r,
            }
        }
    }

    async fn fetch_manifest_once(
        &self,
        image: &Reference,
        reference: &str,
        expected: Option<(&Digest, Option<u64>)>,
    ) -> Result<(Bytes, Digest, Option<String>)> {
        let what = format!("manifest {reference}");
        let url = format!("{}/manifests/{reference}", self.base(image));
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        self.with_timeout(image, &what, async {
            let resp = self.get(image, &url, &accept, &what).await?;
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
            let body = read_bounded(resp, self.config.max_manifest_size, false)
                .await
                .map_err(|e| self.body_error(image, &what, e, self.config.max_manifest_size))?;
            let digest = match expected {
                Some((d, size)) => {
                    let actual = Digest::of(d.algorithm(), &body);
                    if &actual != d {
                        return Err(ImageError::DigestMismatch {
                            image: image.to_string(),
                            what: "manifest".into(),
                            digest: d.to_string(),
                            actual: actual.to_string(),
                        });
                    }
                    if let Some(size) = size {
                        if body.len() as u64 != size {
                            return Err(ImageError::SizeMismatch {
                                image: image.to_string(),
                                what: "manifest".into(),
                                digest: d.to_string(),
                                expected: size,
                                received: body.len() as u64,
                            });
                        }
                    }
                    actual
                }
                None => Digest::of(Algorithm::Sha256, &body),
            };
            Ok((body, digest, content_type))
        })
        .await
    }

    fn body_error(&self, image: &Reference, what: &str, e: BodyError, limit: u64) -> ImageError {
        match e {
            BodyError::TooLarge => ImageError::TooLarge {
                image: image.to_string(),
                what: what.to_string(),
                limit,
            },
            BodyError::Transport(e) => transport(image, what, e, &self.config),
        }
    }

    /// Resolve `image` (tag or digest) to its linux/amd64 image manifest.
    pub async fn resolve(&self, image: &Reference) -> Result<ResolvedManifest> {
        let pinned = match image.digest() {
            Some(d) => Some(Digest::parse(d).ok_or_else(|| ImageError::Invalid {
                image: image.to_string(),
                what: "reference".into(),
                reason: format!("unsupported digest {d}"),
            })?),
            None => None,
        };
        let reference = match (&pinned, image.tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".to_string(),
        };
        let (body, top_digest, content_type) = self
            .fetch_manifest(image, &reference, pinned.as_ref().map(|d| (d, None)))
            .await?;
        match parse_manifest(image, &body, content_type.as_deref())? {
            Parsed::Image(manifest) => Ok(ResolvedManifest {
                digest: top_digest.clone(),
                top_digest,
                manifest: *manifest,
                raw: body,
            }),
            Parsed::Index(index) => {
                let entry = select_platform(image, &index)?;
                let digest = Digest::parse(&entry.digest).ok_or_else(|| ImageError::Invalid {
                    image: image.to_string(),
                    what: "index".into(),
                    reason: format!("unsupported digest {:?}", entry.digest),
                })?;
                let size = Some(u64::try_from(entry.size).map_err(|_| ImageError::Invalid {
                    image: image.to_string(),
                    what: "index".into(),
                    reason: format!("negative size {}", entry.size),
                })?);
                let (body, digest, content_type) = self
                    .fetch_manifest(image, &digest.to_string(), Some((&digest, size)))
                    .await?;
                match parse_manifest(image, &body, content_type.as_deref())? {
                    Parsed::Image(manifest) => Ok(ResolvedManifest {
                        top_digest,
                        digest,
                        manifest: *manifest,
                        raw: body,
                    }),
                    Parsed::Index(_) => Err(ImageError::Invalid {
                        image: image.to_string(),
                        what: "index".into(),
                        reason: "nested index".into(),
                    }),
                }
            }
        }
    }

    /// Fetch a small blob (config, signature payload) whole, bounded by `limit` and
    /// verified against `desc`.
    pub async fn fetch_small_blob(
        &self,
        image: &Reference,
        desc: &OciDescriptor,
        what: &str,
        limit: u64,
    ) -> Result<Bytes> {
        let digest = descriptor_digest(image, desc, what)?;
        let size = descriptor_size(image, desc, what)?;
        if size > limit {
            return Err(ImageError::TooLarge {
                image: image.to_string(),
                what: format!("{what} {digest}"),
                limit,
            });
        }
        let label = format!("{what} {digest}");
        let url = format!("{}/blobs/{digest}", self.base(image));
        self.with_timeout(image, &label, async {
            let resp = self.get(image, &url, "*/*", &label).await?;
            let body = read_bounded(resp, size, false).await.map_err(|e| match e {
                BodyError::TooLarge => ImageError::SizeMismatch {
                    image: image.to_string(),
                    what: what.to_string(),
                    digest: digest.to_string(),
                    expected: size,
                    received: size + 1,
                },
                BodyError::Transport(e) => transport(image, &label, e, &self.config),
            })?;
            if body.len() as u64 != size {
                return Err(ImageError::SizeMismatch {
                    image: image.to_string(),
                    what: what.to_string(),
                    digest: digest.to_string(),
                    expected: size,
                    received: body.len() as u64,
                });
            }
            let actual = Digest::of(digest.algorithm(), &body);
            if actual != digest {
                return Err(ImageError::DigestMismatch {
                    image: image.to_string(),
                    what: what.to_string(),
                    digest: digest.to_string(),
                    actual: actual.to_string(),
                });
            }
            Ok(body)
        })
        .await
    }

    /// The body of blob `digest` as a stream (not verified here: wrap it in the
    /// pipeline's verifying reader).
    pub async fn blob_stream(
        &self,
        image: &Reference,
        digest: &Digest,
    ) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
        let what = format!("layer {digest}");
        let url = format!("{}/blobs/{digest}", self.base(image));
        let resp = self
            .with_timeout(image, &what, self.get(image, &url, "*/*", &what))
            .await?;
        Ok(resp.bytes_stream().map_err(|e| {
            let kind = if e.is_timeout() {
                std::io::ErrorKind::TimedOut
            } else {
                std::io::ErrorKind::Other
            };
            std::io::Error::new(kind, e)
        }))
    }
}

#[async_trait::async_trait]
impl SignatureSource for RegistryClient {
    async fn cosign_signatures(
        &self,
        image: &Reference,
        manifest_digest: &str,
    ) -> Result<Vec<CosignSignature>, SignatureError> {
        let tag = format!("{}.sig", manifest_digest.replacen(':', "-", 1));
        let fetched = self.fetch_manifest(image, &tag, None).await;
        let (body, _, content_type) = match fetched {
            Ok(found) => found,
            Err(ImageError::RegistryStatus { status: 404, .. }) => return Ok(Vec::new()),
            Err(e) => return Err(SignatureError::source(image.whole(), e)),
        };
        let manifest = match parse_manifest(image, &body, content_type.as_deref()) {
            Ok(Parsed::Image(m)) => m,
            Ok(Parsed::Index(_)) => return Ok(Vec::new()),
            Err(e) => return Err(SignatureError::source(image.whole(), e)),
        };
        let mut out = Vec::new();
        for layer in manifest
            .layers
            .iter()
            .filter(|l| l.media_type == COSIGN_SIMPLESIGNING)
            .take(MAX_SIGNATURES)
        {
            let Some(signature) = layer
                .annotations
                .as_ref()
                .and_then(|a| a.get(COSIGN_SIGNATURE_ANNOTATION))
            else {
                continue;
            };
            let payload = self
                .fetch_small_blob(image, layer, "signature payload", SIGNATURE_PAYLOAD_LIMIT)
                .await
                .map_err(|e| SignatureError::source(image.whole(), e))?;
            out.push(CosignSignature {
                payload: payload.to_vec(),
                signature: signature.clone(),
            });
        }
        Ok(out)
    }
}

enum BodyError {
    TooLarge,
    Transport(reqwest::Error),
}

/// Read a response body, refusing more than `limit` bytes (or truncating to `limit` when
/// `truncate`).
async fn read_bounded(
    mut resp: reqwest::Response,
    limit: u64,
    truncate: bool,
) -> Result<Bytes, BodyError> {
    if !truncate {
        let declared = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(BodyError::TooLarge);
        }
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        let room = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(buf.len());
        if chunk.len() > room {
            if truncate {
                buf.extend_from_slice(&chunk[..room]);
                break;
            }
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

enum Parsed {
    Image(Box<OciImageManifest>),
    Index(OciImageIndex),
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Versioned {
    schema_version: u8,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
}

fn parse_manifest(image: &Reference, body: &[u8], content_type: Option<&str>) -> Result<Parsed> {
    let invalid = |reason: String| ImageError::Invalid {
        image: image.to_string(),
        what: "manifest".into(),
        reason,
    };
    let v: Versioned = serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    if v.schema_version != 2 {
        return Err(invalid(format!(
            "schemaVersion {} (only 2 is supported)",
            v.schema_version
        )));
    }
    let media_type = v.media_type.as_deref().or(content_type);
    let is_index = match media_type {
        Some(OCI_INDEX) | Some(DOCKER_LIST) => true,
        Some(OCI_MANIFEST) | Some(DOCKER_MANIFEST) => false,
        _ => v.manifests.is_some(),
    };
    if is_index {
        let index: OciImageIndex =
            serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
        Ok(Parsed::Index(index))
    } else {
        let manifest: OciImageManifest =
            serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
        Ok(Parsed::Image(Box::new(manifest)))
    }
}

/// `parse_manifest` and the checks `resolve` then makes (platform, digests, sizes),
/// for the fuzz targets (`fuzz/`), with the error as text.
#[doc(hidden)]
pub fn check_manifest_for_fuzzing(
    image: &Reference,
    body: &[u8],
    content_type: Option<&str>,
) -> std::result::Result<(), String> {
    let text = |e: ImageError| e.to_string();
    match parse_manifest(image, body, content_type).map_err(text)? {
        Parsed::Image(m) => std::iter::once(&m.config)
            .chain(&m.layers)
            .try_for_each(|d| {
                descriptor_digest(image, d, "layer")?;
                descriptor_size(image, d, "layer").map(drop)
            })
            .map_err(text),
        Parsed::Index(i) => select_platform(image, &i)
            .map(|e| drop(Digest::parse(&e.digest)))
            .map_err(text),
    }
}

fn platform_name(e: &ImageIndexEntry) -> String {
    match &e.platform {
        Some(p) => match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        },
        None => "unknown".into(),
    }
}

fn select_platform<'a>(image: &Reference, index: &'a OciImageIndex) -> Result<&'a ImageIndexEntry> {
    index
        .manifests
        .iter()
        .find(|e| {
            e.platform.as_ref().is_some_and(|p| {
                p.os.to_string() == "linux" && p.architecture.to_string() == "amd64"
            })
        })
        .ok_or_else(|| ImageError::WrongPlatform {
            image: image.to_string(),
            offered: index.manifests.iter().map(platform_name).collect(),
        })
}

/// The validated digest of `desc`.
pub(crate) fn descriptor_digest(
    image: &Reference,
    desc: &OciDescriptor,
    what: &str,
) -> Result<Digest> {
    Digest::parse(&desc.digest).ok_or_else(|| ImageError::Invalid {
        image: image.to_string(),
        what: what.to_string(),
        reason: format!("unsupported digest {:?}", desc.digest),
    })
}

/// The validated size of `desc`.
pub(crate) fn descriptor_size(image: &Reference, desc: &OciDescriptor, what: &str) -> Result<u64> {
    u64::try_from(desc.size).map_err(|_| ImageError::Invalid {
        image: image.to_string(),
        what: what.to_string(),
        reason: format!("negative size {}", desc.size),
    })
}

/// `e` and its sources, `: `-separated (reqwest's top-level messages say little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
