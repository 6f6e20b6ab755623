//! Image signature policy: containers-policy.json with cosign (`sigstoreSigned`)
//! signatures.
//!
//! Contract used by the pull pipeline: [`ImagePolicy`] is a containers-policy.json;
//! [`verify_image`] is called with the manifest digest before any layer is fetched and
//! fails unless the policy's requirements for that image are met. Cosign signatures are
//! fetched through a [`SignatureSource`] (the registry client implements it by reading the
//! `sha256-<hex>.sig` tag).
//!
//! # Policy (the subset of containers-policy.json(5) we implement)
//! * `default`: the requirements for images no scope matches (required, non-empty).
//! * `transports.docker`: scope → requirements. The most specific scope wins, in the
//!   order of containers/image: `host/repo@digest` or `host/repo:tag`, then `host/repo`,
//!   each parent namespace, `host`, then `*.domain` wildcards from the most specific
//!   (`*.b.example.com` before `*.example.com`), then `""` (the transport's default),
//!   then `default`. Other transports are ignored: images come from registries.
//! * Requirements (all of a scope's requirements must hold):
//!   `insecureAcceptAnything`, `reject`, and `sigstoreSigned` with exactly one of
//!   `keyPath`, `keyPaths`, `keyData` (base64 of the PEM), `keyDatas`, and an optional
//!   `signedIdentity` (`matchRepoDigestOrExact`, the default; `matchRepository`;
//!   `matchExact`; `exactReference` + `dockerReference`; `exactRepository` +
//!   `dockerRepository`; `remapIdentity` + `prefix`/`signedPrefix`). A `keyPath` may be a
//!   file in the guest or a `kbs:///repo/type/tag` resource, fetched by
//!   [`ImagePolicy::resolve_kbs_keys`].
//! * `signedBy` (GPG), `sigstoreSigned` with `fulcio`/`rekorPublicKey*` (keyless) and any
//!   other type are refused at parse time with [`SignatureError::Unsupported`].
//!
//! # Cosign signatures
//! A signature is accepted for a `sigstoreSigned` requirement when its base64 ASN.1 DER
//! ECDSA P-256 / SHA-256 signature over the payload verifies with one of the
//! requirement's public keys (PEM SubjectPublicKeyInfo, cosign's default key type), and
//! the payload (simple signing) has `critical.type` = `cosign container image signature`,
//! `critical.image.docker-manifest-digest` = the manifest digest, and a
//! `critical.identity.docker-reference` accepted by `signedIdentity`.
//!
//! # Example
//! ```
//! # async fn f() -> Result<(), image_rs::signature::SignatureError> {
//! use image_rs::signature::{verify_image, ImagePolicy, MemorySignatures};
//!
//! let policy = ImagePolicy::parse(br#"{
//!     "default": [{"type": "reject"}],
//!     "transports": {"docker": {"quay.io/podman": [{"type": "insecureAcceptAnything"}]}}
//! }"#)?;
//! let image = "quay.io/podman/hello:latest".parse().expect("valid reference");
//! let digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
//! verify_image(&policy, &image, digest, &MemorySignatures::new()).await?;
//!
//! let other = "docker.io/library/busybox:latest".parse().expect("valid reference");
//! assert!(verify_image(&policy, &other, digest, &MemorySignatures::new()).await.is_err());
//! # Ok(()) }
//! ```

mod identity;

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use oci_client::Reference;
use p256::ecdsa::signature::Verifier as _;
use serde::Deserialize;
use serde_json::{Map, Value};

use identity::DockerRef;
pub use identity::SignedIdentity;

use crate::decrypt::KeyProvider;

/// `critical.type` of a cosign simple-signing payload.
pub const COSIGN_SIGNATURE_TYPE: &str = "cosign container image signature";
/// The manifest annotation holding a cosign signature (base64).
pub const COSIGN_SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// One cosign signature: the simple-signing payload and its base64 signature
/// (annotation `dev.cosignproject.cosign/signature`).
#[derive(Debug, Clone)]
pub struct CosignSignature {
    /// The payload blob (JSON, `critical.image.docker-manifest-digest`).
    pub payload: Vec<u8>,
    /// The signature over `payload`, base64.
    pub signature: String,
}

/// Where cosign signatures come from.
#[async_trait::async_trait]
pub trait SignatureSource: Send + Sync {
    /// The cosign signatures stored for `manifest_digest` of `image` (none: empty).
    async fn cosign_signatures(
        &self,
        image: &Reference,
        manifest_digest: &str,
    ) -> Result<Vec<CosignSignature>, SignatureError>;
}

/// A [`SignatureSource`] from memory, keyed by manifest digest (the image name is not
/// looked at). The test double of the registry's `sha256-<hex>.sig` lookup.
#[derive(Debug, Clone, Default)]
pub struct MemorySignatures {
    by_digest: BTreeMap<String, Vec<CosignSignature>>,
}

impl MemorySignatures {
    /// No signatures for any image.
    pub fn new() -> Self {
        Self::default()
    }
    /// Add `signature` for the manifest `manifest_digest`.
    pub fn with(mut self, manifest_digest: impl Into<String>, signature: CosignSignature) -> Self {
        self.by_digest
            .entry(manifest_digest.into())
            .or_default()
            .push(signature);
        self
    }
}

#[async_trait::async_trait]
impl SignatureSource for MemorySignatures {
    async fn cosign_signatures(
        &self,
        _image: &Reference,
        manifest_digest: &str,
    ) -> Result<Vec<CosignSignature>, SignatureError> {
        Ok(self
            .by_digest
            .get(manifest_digest)
            .cloned()
            .unwrap_or_default())
    }
}

/// Why a policy was refused or an image was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The policy document is not a valid containers-policy.json.
    #[error("invalid image policy: {0}")]
    InvalidPolicy(String),
    /// The policy uses a feature this runtime does not implement.
    #[error("unsupported in image policy: {0}")]
    Unsupported(String),
    /// The policy's requirement for this image is `reject`.
    #[error("image {image} is refused by policy (scope {scope:?} says reject)")]
    Rejected {
        /// The image reference.
        image: String,
        /// The policy scope that matched (`default` for the default).
        scope: String,
    },
    /// A signature is required and the image has none.
    #[error(
        "image {image} ({digest}) is not signed, and scope {scope:?} requires a sigstore signature"
    )]
    Unsigned {
        /// The image reference.
        image: String,
        /// The manifest digest.
        digest: String,
        /// The policy scope that matched.
        scope: String,
    },
    /// Signatures exist but none satisfies the requirement.
    #[error(
        "no valid signature for image {image} ({digest}) under scope {scope:?}: {}",
        reasons.join("; ")
    )]
    NoValidSignature {
        /// The image reference.
        image: String,
        /// The manifest digest.
        digest: String,
        /// The policy scope that matched.
        scope: String,
        /// Why each signature was refused, in order.
        reasons: Vec<String>,
    },
    /// A public key named by the policy cannot be used.
    #[error("policy key {key}: {reason}")]
    Key {
        /// The key's path, `kbs:///` URI, or `keyData`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Fetching the signatures (or a key resource) failed.
    #[error("fetching signatures or keys for {image} failed")]
    Source {
        /// The image reference (or key URI).
        image: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SignatureError {
    /// A [`SignatureError::Source`] for a [`SignatureSource`] whose lookup failed.
    pub fn source(
        image: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        SignatureError::Source {
            image: image.into(),
            source: source.into(),
        }
    }
}

fn invalid(reason: impl std::fmt::Display) -> SignatureError {
    SignatureError::InvalidPolicy(reason.to_string())
}

/// Where a `sigstoreSigned` public key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `keyPath`: a PEM file in the guest, read at verification.
    Path(PathBuf),
    /// `keyPath` = `kbs:///...`: to be fetched with [`ImagePolicy::resolve_kbs_keys`].
    Kbs(String),
    /// `keyData`, or a resolved `kbs:///` key: the PEM itself.
    Data(Vec<u8>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Path(p) => write!(f, "Path({})", p.display()),
            KeySource::Kbs(u) => write!(f, "Kbs({u})"),
            KeySource::Data(d) => write!(f, "Data({} bytes)", d.len()),
        }
    }
}

impl KeySource {
    fn describe(&self) -> String {
        match self {
            KeySource::Path(p) => p.display().to_string(),
            KeySource::Kbs(u) => u.clone(),
            KeySource::Data(_) => "keyData".into(),
        }
    }

    fn load(&self) -> Result<p256::ecdsa::VerifyingKey, SignatureError> {
        use p256::pkcs8::DecodePublicKey as _;
        let key_err = |reason: String| SignatureError::Key {
            key: self.describe(),
            reason,
        };
        let pem = match self {
            KeySource::Path(p) => std::fs::read(p).map_err(|e| key_err(format!("read: {e}")))?,
            KeySource::Kbs(u) => {
                return Err(key_err(format!(
                    "{u} has not been fetched (ImagePolicy::resolve_kbs_keys)"
                )))
            }
            KeySource::Data(d) => d.clone(),
        };
        let text = std::str::from_utf8(&pem).map_err(|_| key_err("not PEM text".into()))?;
        p256::ecdsa::VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| {
            key_err(format!(
                "not an ECDSA P-256 public key in PEM SubjectPublicKeyInfo (cosign's key type): {e}"
            ))
        })
    }
}

/// One policy requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Requirement {
    /// `insecureAcceptAnything`: no check.
    InsecureAcceptAnything,
    /// `reject`: never.
    Reject,
    /// `sigstoreSigned`: a cosign signature by one of `keys` whose identity satisfies
    /// `signed_identity`.
    SigstoreSigned {
        /// The public keys; a signature by any of them counts.
        keys: Vec<KeySource>,
        /// How the signature's `docker-reference` must relate to the image.
        signed_identity: SignedIdentity,
    },
}

/// A containers-policy.json.
#[derive(Debug, Clone)]
pub struct ImagePolicy {
    default: Vec<Requirement>,
    docker: BTreeMap<String, Vec<Requirement>>,
}

impl ImagePolicy {
    /// Parse a containers-policy.json document.
    pub fn parse(json: &[u8]) -> Result<Self, SignatureError> {
        let doc: Value = serde_json::from_slice(json).map_err(|e| invalid(format!("JSON: {e}")))?;
        let obj = doc
            .as_object()
            .ok_or_else(|| invalid("the document is not a JSON object"))?;
        for k in obj.keys() {
            if k != "default" && k != "transports" {
                return Err(invalid(format!("unknown top-level field {k:?}")));
            }
        }
        let default = parse_requirements(
            "default",
            obj.get("default")
                .ok_or_else(|| invalid("no `default` requirements"))?,
        )?;
        let mut docker = BTreeMap::new();
        if let Some(transports) = obj.get("transports") {
            let transports = transports
                .as_object()
                .ok_or_else(|| invalid("`transports` is not an object"))?;
            if let Some(scopes) = transports.get("docker") {
                let scopes = scopes
                    .as_object()
                    .ok_or_else(|| invalid("`transports.docker` is not an object"))?;
                for (scope, reqs) in scopes {
                    validate_docker_scope(scope)?;
                    let where_ = format!("transports.docker[{scope:?}]");
                    docker.insert(scope.clone(), parse_requirements(&where_, reqs)?);
                }
            }
        }
        Ok(ImagePolicy { default, docker })
    }

    /// The policy used when the pod gives none: accept any image (signatures not required).
    pub fn accept_anything() -> Self {
        ImagePolicy {
            default: vec![Requirement::InsecureAcceptAnything],
            docker: BTreeMap::new(),
        }
    }

    /// The scope that governs `image` (`None`: `default`) and its requirements.
    pub fn requirements_for(&self, image: &Reference) -> (Option<&str>, &[Requirement]) {
        let r = DockerRef::from_reference(image);
        let mut candidates = Vec::new();
        if let Some(d) = &r.digest {
            candidates.push(format!("{}@{d}", r.name));
        }
        if let Some(t) = &r.tag {
            candidates.push(format!("{}:{t}", r.name));
        }
        candidates.extend(r.namespaces());
        candidates.push(String::new());
        for c in candidates {
            if let Some((scope, reqs)) = self.docker.get_key_value(&c) {
                return (Some(scope.as_str()), reqs.as_slice());
            }
        }
        (None, self.default.as_slice())
    }

    /// Fetch every `keyPath` that is a `kbs:///` URI through `keys` (in the guest: the
    /// KBS, after attestation) and keep the PEM in the policy.
    pub async fn resolve_kbs_keys(
        mut self,
        keys: &dyn KeyProvider,
    ) -> Result<Self, SignatureError> {
        let all = std::iter::once(&mut self.default).chain(self.docker.values_mut());
        for reqs in all {
            for req in reqs.iter_mut() {
                if let Requirement::SigstoreSigned { keys: sources, .. } = req {
                    for source in sources.iter_mut() {
                        if let KeySource::Kbs(uri) = source {
                            let pem = keys
                                .get_resource(uri)
                                .await
                                .map_err(|e| SignatureError::source(uri.clone(), e))?;
                            *source = KeySource::Data(pem);
                        }
                    }
                }
            }
        }
        Ok(self)
    }
}

fn validate_docker_scope(scope: &str) -> Result<(), SignatureError> {
    let bad = |why: &str| invalid(format!("docker scope {scope:?}: {why}"));
    if scope.is_empty() {
        return Ok(());
    }
    if scope.chars().any(|c| c.is_whitespace()) || scope.contains("://") {
        return Err(bad("not a registry/repository name"));
    }
    if let Some(domain) = scope.strip_prefix("*.") {
        if domain.is_empty() || domain.contains(['/', ':', '*', '@']) {
            return Err(bad("a wildcard scope is `*.` followed by a domain name"));
        }
        return Ok(());
    }
    if scope.contains('*') {
        return Err(bad("`*` is only allowed as a leading `*.` of a domain"));
    }
    if scope.starts_with('/') || scope.ends_with('/') {
        return Err(bad("leading or trailing `/`"));
    }
    let host = scope.split('/').next().unwrap_or_default();
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return Err(bad(
            "must start with a registry host (e.g. docker.io/library/busybox, not busybox)",
        ));
    }
    Ok(())
}

fn parse_requirements(where_: &str, v: &Value) -> Result<Vec<Requirement>, SignatureError> {
    let list = v
        .as_array()
        .ok_or_else(|| invalid(format!("{where_}: requirements must be a list")))?;
    if list.is_empty() {
        return Err(invalid(format!("{where_}: empty requirement list")));
    }
    list.iter().map(|r| parse_requirement(where_, r)).collect()
}

fn only_fields(
    where_: &str,
    obj: &Map<String, Value>,
    allowed: &[&str],
) -> Result<(), SignatureError> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(invalid(format!("{where_}: unknown field {k:?}")));
        }
    }
    Ok(())
}

fn parse_requirement(where_: &str, v: &Value) -> Result<Requirement, SignatureError> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(format!("{where_}: a requirement must be an object")))?;
    let ty = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{where_}: requirement without a `type`")))?;
    match ty {
        "insecureAcceptAnything" => {
            only_fields(where_, obj, &["type"])?;
            Ok(Requirement::InsecureAcceptAnything)
        }
        "reject" => {
            only_fields(where_, obj, &["type"])?;
            Ok(Requirement::Reject)
        }
        "signedBy" => Err(SignatureError::Unsupported(format!(
            "{where_}: `signedBy` (GPG simple signing) is not supported; use `sigstoreSigned`"
        ))),
        "sigstoreSigned" => {
            for keyless in [
                "fulcio",
                "rekorPublicKeyPath",
                "rekorPublicKeyData",
                "rekorPublicKeyPaths",
                "rekorPublicKeyDatas",
                "pki",
            ] {
                if obj.contains_key(keyless) {
                    return Err(SignatureError::Unsupported(format!(
                        "{where_}: sigstoreSigned `{keyless}` (keyless / Rekor / PKI); only public keys"
                    )));
                }
            }
            only_fields(
                where_,
                obj,
                &[
                    "type",
                    "keyPath",
                    "keyPaths",
                    "keyData",
                    "keyDatas",
                    "signedIdentity",
                ],
            )?;
            let keys = parse_keys(where_, obj)?;
            let signed_identity = match obj.get("signedIdentity") {
                None => SignedIdentity::MatchRepoDigestOrExact,
                Some(v) => SignedIdentity::parse(where_, v)?,
            };
            Ok(Requirement::SigstoreSigned {
                keys,
                signed_identity,
            })
        }
        other => Err(SignatureError::Unsupported(format!(
            "{where_}: requirement type {other:?}"
        ))),
    }
}

fn parse_keys(where_: &str, obj: &Map<String, Value>) -> Result<Vec<KeySource>, SignatureError> {
    let given: Vec<&str> = ["keyPath", "keyPaths", "keyData", "keyDatas"]
        .into_iter()
        .filter(|k| obj.contains_key(*k))
        .collect();
    if given.len() != 1 {
        return Err(invalid(format!(
            "{where_}: sigstoreSigned needs exactly one of keyPath, keyPaths, keyData, keyDatas (got {given:?})"
        )));
    }
    let field = given.first().copied().unwrap_or_default();
    let strings: Vec<String> = match obj.get(field) {
        Some(Value::String(s)) if !field.ends_with('s') => vec![s.clone()],
        Some(Value::Array(a)) if field.ends_with('s') && !a.is_empty() => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(format!("{where_}: {field} must hold strings")))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(invalid(format!(
                "{where_}: {field} must be {}",
                if field.ends_with('s') {
                    "a non-empty list of strings"
                } else {
                    "a string"
                }
            )))
        }
    };
    strings
        .into_iter()
        .map(|s| {
            if field.starts_with("keyPath") {
                if s.starts_with("kbs:///") {
                    Ok(KeySource::Kbs(s))
                } else if s.starts_with('/') {
                    Ok(KeySource::Path(PathBuf::from(s)))
                } else {
                    Err(invalid(format!(
                        "{where_}: keyPath {s:?} must be absolute or kbs:///"
                    )))
                }
            } else {
                crate::decrypt::B64
                    .decode(s.as_bytes())
                    .map(KeySource::Data)
                    .map_err(|e| invalid(format!("{where_}: {field}: base64: {e}")))
            }
        })
        .collect()
}

/// The simple-signing payload, exactly the fields containers/image accepts.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    critical: Critical,
    #[serde(default)]
    #[allow(dead_code)]
    optional: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Critical {
    #[serde(rename = "type")]
    ty: String,
    image: PayloadImage,
    identity: PayloadIdentity,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayloadImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayloadIdentity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

/// Check one signature against one requirement's keys and identity rule.
fn check_signature(
    sig: &CosignSignature,
    keys: &[p256::ecdsa::VerifyingKey],
    identity: &SignedIdentity,
    image: &DockerRef,
    manifest_digest: &str,
) -> Result<(), String> {
    let der = crate::decrypt::B64
        .decode(sig.signature.trim().as_bytes())
        .map_err(|e| format!("signature is not base64: {e}"))?;
    let signature = p256::ecdsa::Signature::from_der(&der)
        .map_err(|_| "signature is not an ASN.1 DER ECDSA P-256 signature".to_owned())?;
    if !keys
        .iter()
        .any(|k| k.verify(&sig.payload, &signature).is_ok())
    {
        return Err("not signed by any of the policy's keys".into());
    }
    // Only now, authenticated, is the payload looked at.
    let payload: Payload = serde_json::from_slice(&sig.payload)
        .map_err(|e| format!("signed payload is not a cosign simple-signing payload: {e}"))?;
    if payload.critical.ty != COSIGN_SIGNATURE_TYPE {
        return Err(format!(
            "payload critical.type is {:?}, not {COSIGN_SIGNATURE_TYPE:?}",
            payload.critical.ty
        ));
    }
    if payload.critical.image.docker_manifest_digest != manifest_digest {
        return Err(format!(
            "signature is for manifest {}, not {manifest_digest}",
            payload.critical.image.docker_manifest_digest
        ));
    }
    let signed = &payload.critical.identity.docker_reference;
    let signed_ref = DockerRef::parse(signed)
        .map_err(|e| format!("signed identity {signed:?} is not a docker reference: {e}"))?;
    if !identity.accepts(image, &signed_ref) {
        return Err(format!(
            "signed identity {signed} does not match {} under {}",
            image.string(),
            identity.name()
        ));
    }
    Ok(())
}

/// Check `image` (whose manifest has digest `manifest_digest`) against `policy`.
///
/// `manifest_digest` is the digest of the manifest the reference resolves to at the
/// top level (for a multi-platform image, the index, as cosign signs it by default).
/// Every requirement of the governing scope must hold; a `sigstoreSigned` requirement
/// holds when at least one signature satisfies it.
pub async fn verify_image(
    policy: &ImagePolicy,
    image: &Reference,
    manifest_digest: &str,
    source: &dyn SignatureSource,
) -> Result<(), SignatureError> {
    let (scope, reqs) = policy.requirements_for(image);
    let scope = scope.map_or_else(|| "default".to_owned(), str::to_owned);
    let name = image.whole();
    if reqs.contains(&Requirement::Reject) {
        return Err(SignatureError::Rejected { image: name, scope });
    }
    let docker_ref = DockerRef::from_reference(image);
    let mut signatures: Option<Vec<CosignSignature>> = None;
    for req in reqs {
        let Requirement::SigstoreSigned {
            keys,
            signed_identity,
        } = req
        else {
            continue;
        };
        let verifying: Vec<_> = keys.iter().map(KeySource::load).collect::<Result<_, _>>()?;
        let sigs = match &signatures {
            Some(s) => s,
            None => signatures.insert(source.cosign_signatures(image, manifest_digest).await?),
        };
        if sigs.is_empty() {
            return Err(SignatureError::Unsigned {
                image: name,
                digest: manifest_digest.to_owned(),
                scope,
            });
        }
        let mut reasons = Vec::new();
        let mut ok = false;
        for (i, sig) in sigs.iter().enumerate() {
            match check_signature(
                sig,
                &verifying,
                signed_identity,
                &docker_ref,
                manifest_digest,
            ) {
                Ok(()) => {
                    ok = true;
                    break;
                }
                Err(why) => reasons.push(format!("signature #{i}: {why}")),
            }
        }
        if !ok {
            return Err(SignatureError::NoValidSignature {
                image: name,
                digest: manifest_digest.to_owned(),
                scope,
                reasons,
            });
        }
    }
    tracing::info!(image = %name, digest = manifest_digest, %scope, "image accepted by signature policy");
    Ok(())
}
