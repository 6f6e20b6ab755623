//! ocicrypt layer decryption, compatible with `skopeo copy --encryption-key jwe:...`
//! (containers/ocicrypt) and with the Confidential Containers key-provider annotation.
//!
//! Contract used by the pull pipeline:
//! * [`is_encrypted`] tells whether a layer descriptor is an ocicrypt layer
//!   (`...+encrypted` media type).
//! * [`layer_key`] unwraps the layer's symmetric key from its annotations, trying the
//!   private keys of the [`KeyProvider`] on `org.opencontainers.image.enc.keys.jwe`, or
//!   fetching the KEK named by `org.opencontainers.image.enc.keys.provider.attestation-agent`
//!   (`kid` = `kbs:///...`) through [`KeyProvider::get_resource`].
//! * [`LayerKey::reader`] wraps the blob stream in a decrypting [`std::io::Read`]; the HMAC
//!   is checked when the inner reader reaches end of stream, and a mismatch is returned as
//!   an `io::Error` of kind `InvalidData` wrapping [`DecryptError::Hmac`]. The caller must
//!   read to end of stream before accepting the layer.
//!
//! # Format (as ocicrypt writes it)
//! * The blob is the plain layer blob (still gzip/zstd compressed) encrypted with
//!   AES-256-CTR (128-bit big-endian counter starting at the 16-byte `nonce`), and
//!   authenticated with HMAC-SHA256 over the *ciphertext*, keyed with the same 32-byte
//!   symmetric key.
//! * `org.opencontainers.image.enc.pubopts`: base64 of JSON
//!   `{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"<base64>","cipheroptions":{}}`.
//! * The *private options* `{"symkey":"<base64>","digest":"sha256:<plain blob>",
//!   "cipheroptions":{"nonce":"<base64>"}}` are wrapped once per key scheme:
//!   - `org.opencontainers.image.enc.keys.jwe`: comma-separated base64 of JWE JSON
//!     serializations (content `A256GCM`; recipients `RSA-OAEP`, `RSA-OAEP-256`,
//!     `ECDH-ES+A128KW`/`A192KW`/`A256KW` on P-256 or P-384). One recipient is written
//!     flattened with `alg` (and `epk`) in the protected header, several as `recipients`.
//!   - `org.opencontainers.image.enc.keys.provider.attestation-agent`: base64 of JSON
//!     `{"kid":"kbs:///repo/type/tag","wrapped_data":"<base64>","iv":"<base64>",
//!     "wrap_type":"A256GCM"}`; `wrapped_data` is AES-256-GCM(KEK, iv) of the private
//!     options with the 16-byte tag appended (`A256CTR`, 16-byte iv, is accepted too).
//!
//! # Example
//! ```no_run
//! # async fn f(desc: oci_client::manifest::OciDescriptor, blob: std::fs::File,
//! #            pem: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::io::Read;
//! use image_rs::decrypt::{layer_key, LocalKeys};
//!
//! let keys = LocalKeys::new().with_private_key(pem);
//! let key = layer_key(&desc, &keys).await?;
//! let mut plain = Vec::new();
//! key.reader(blob).read_to_end(&mut plain)?; // fails at EOF if the HMAC does not match
//! assert_eq!(key.decrypted_media_type(), "application/vnd.oci.image.layer.v1.tar+gzip");
//! # Ok(()) }
//! ```

mod jwe;
mod keys;
mod provider;

use std::fmt;
use std::io::Read;

use aes::cipher::{KeyIvInit, StreamCipher};
use base64::Engine as _;
use hmac::Mac as _;
use oci_client::manifest::OciDescriptor;
use serde::Deserialize;
use zeroize::Zeroizing;

/// Annotation holding the JWE-wrapped private options.
pub const ANNOTATION_KEYS_JWE: &str = "org.opencontainers.image.enc.keys.jwe";
/// Annotation holding the CoCo key-provider packet (KEK fetched from the KBS).
pub const ANNOTATION_KEYS_PROVIDER_AA: &str =
    "org.opencontainers.image.enc.keys.provider.attestation-agent";
/// Annotation holding the public options (cipher, HMAC).
pub const ANNOTATION_PUBOPTS: &str = "org.opencontainers.image.enc.pubopts";
/// The only layer cipher ocicrypt defines.
pub const CIPHER_AES_256_CTR_HMAC_SHA256: &str = "AES_256_CTR_HMAC_SHA256";

/// Prefix shared by every ocicrypt key annotation (`...keys.jwe`, `...keys.pgp`, ...).
const ANNOTATION_KEYS_PREFIX: &str = "org.opencontainers.image.enc.keys.";

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;
type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Where layer keys come from.
#[async_trait::async_trait]
pub trait KeyProvider: Send + Sync {
    /// Private keys to try on `enc.keys.jwe` recipients (PEM: RSA PKCS#1/PKCS#8, EC
    /// SEC1/PKCS#8; DER of those; or a JWK).
    fn private_keys(&self) -> Vec<Vec<u8>>;
    /// Key material named by a `kbs:///<repo>/<type>/<tag>` URI.
    ///
    /// Implementations report failures as [`DecryptError::ResourceNotFound`] or
    /// [`DecryptError::Resource`] (see [`DecryptError::resource`]).
    async fn get_resource(&self, uri: &str) -> Result<Vec<u8>, DecryptError>;
}

/// A [`KeyProvider`] from local material: private keys (for JWE recipients) and
/// resources by `kbs:///` URI (for the key-provider annotation). Used in tests and on
/// hosts that hold the keys; in the VM the agent's provider asks the KBS instead.
#[derive(Clone, Default)]
pub struct LocalKeys {
    private_keys: Vec<Vec<u8>>,
    resources: std::collections::BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for LocalKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key material is never printed.
        f.debug_struct("LocalKeys")
            .field("private_keys", &self.private_keys.len())
            .field("resources", &self.resources.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LocalKeys {
    /// No keys at all.
    pub fn new() -> Self {
        Self::default()
    }
    /// Add a private key (PEM, DER or JWK bytes).
    pub fn with_private_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.private_keys.push(key.into());
        self
    }
    /// Answer `uri` (`kbs:///repo/type/tag`) with `bytes`.
    pub fn with_resource(mut self, uri: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        self.resources.insert(uri.into(), bytes.into());
        self
    }
}

#[async_trait::async_trait]
impl KeyProvider for LocalKeys {
    fn private_keys(&self) -> Vec<Vec<u8>> {
        self.private_keys.clone()
    }
    async fn get_resource(&self, uri: &str) -> Result<Vec<u8>, DecryptError> {
        self.resources
            .get(uri)
            .cloned()
            .ok_or_else(|| DecryptError::ResourceNotFound {
                uri: uri.to_owned(),
            })
    }
}

/// Why a layer could not be decrypted. Each variant names the step that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecryptError {
    /// The descriptor's media type does not end in `+encrypted`.
    #[error("layer media type {media_type:?} is not an encrypted (ocicrypt) media type")]
    NotEncrypted {
        /// The descriptor's media type.
        media_type: String,
    },
    /// A required annotation is absent.
    #[error("encrypted layer has no {annotation} annotation")]
    MissingAnnotation {
        /// The annotation key.
        annotation: &'static str,
    },
    /// The layer carries no key annotation this runtime can use.
    #[error(
        "encrypted layer has no usable key annotation (supported: keys.jwe, \
         keys.provider.attestation-agent; present: {present:?})"
    )]
    NoKeyAnnotation {
        /// The `org.opencontainers.image.enc.keys.*` schemes that are present (e.g. `pgp`).
        present: Vec<String>,
    },
    /// An annotation (or the JSON/base64 inside it) is malformed.
    #[error("malformed {annotation} annotation: {reason}")]
    MalformedAnnotation {
        /// The annotation key (or the part of it being decoded).
        annotation: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The layer cipher in `pubopts` is not `AES_256_CTR_HMAC_SHA256`.
    #[error("unsupported layer cipher {0:?} (only {CIPHER_AES_256_CTR_HMAC_SHA256} is defined)")]
    UnsupportedCipher(String),
    /// A key-wrapping or content algorithm this runtime does not implement.
    #[error("unsupported {what} {alg:?}")]
    UnsupportedAlgorithm {
        /// What the algorithm is for (e.g. `JWE key algorithm`).
        what: &'static str,
        /// Its name as found in the annotation.
        alg: String,
    },
    /// None of the private keys opens any JWE recipient, and the key provider (if any)
    /// did not help either.
    #[error(
        "no key matched: recipients present: [{}]; {} private key(s) tried{}",
        recipients.join(", "),
        keys_tried,
        attempts_suffix(attempts)
    )]
    NoKeyMatched {
        /// The recipients found on the layer, e.g. `jwe:RSA-OAEP`, `jwe:ECDH-ES+A256KW/P-256`,
        /// `provider.attestation-agent:kbs:///default/key/1`.
        recipients: Vec<String>,
        /// How many private keys the [`KeyProvider`] offered.
        keys_tried: usize,
        /// Why each attempt failed.
        attempts: Vec<String>,
    },
    /// A private key does not open a JWE recipient of its type (it is another key).
    #[error("the key does not open the {alg} recipient")]
    RecipientMismatch {
        /// The recipient's key algorithm.
        alg: String,
    },
    /// A private key offered by the [`KeyProvider`] could not be parsed.
    #[error("private key #{index} is unusable: {reason}")]
    InvalidPrivateKey {
        /// Position of the key in [`KeyProvider::private_keys`].
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The KBS / resource store has no resource at this URI.
    #[error("key resource {uri} not found")]
    ResourceNotFound {
        /// The `kbs:///...` URI.
        uri: String,
    },
    /// Fetching the key resource failed (attestation, network, KBS refusal...).
    #[error("fetching key resource {uri} failed")]
    Resource {
        /// The `kbs:///...` URI.
        uri: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The KEK fetched for the key-provider annotation does not unwrap `wrapped_data`
    /// (AES-GCM authentication failed): wrong key for this layer, or tampered annotation.
    #[error("the key {uri} does not unwrap this layer's key (wrong KEK or tampered wrapped_data)")]
    WrongKek {
        /// The `kbs:///...` URI of the KEK.
        uri: String,
    },
    /// The unwrapped private options are not valid (bad JSON, key or nonce length).
    #[error("unwrapped layer key options are invalid: {0}")]
    InvalidKeyOptions(String),
    /// The ciphertext's HMAC does not match `pubopts.hmac`.
    #[error("layer HMAC mismatch: the ciphertext was modified or truncated")]
    Hmac,
}

fn attempts_suffix(attempts: &[String]) -> String {
    if attempts.is_empty() {
        String::new()
    } else {
        format!(" ({})", attempts.join("; "))
    }
}

impl DecryptError {
    /// A [`DecryptError::Resource`] for a [`KeyProvider`] whose fetch of `uri` failed.
    pub fn resource(
        uri: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        DecryptError::Resource {
            uri: uri.into(),
            source: source.into(),
        }
    }

    fn malformed(annotation: &'static str, reason: impl fmt::Display) -> Self {
        DecryptError::MalformedAnnotation {
            annotation,
            reason: reason.to_string(),
        }
    }
}

/// Whether `desc` is an ocicrypt-encrypted layer.
pub fn is_encrypted(desc: &OciDescriptor) -> bool {
    desc.media_type.ends_with("+encrypted")
}

/// Standard base64, padding optional (Go writes it; be lenient on input).
pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// `[]byte` fields of Go structs: standard base64 in JSON.
fn de_b64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    match s {
        None => Ok(Vec::new()),
        Some(s) => B64.decode(s.as_bytes()).map_err(serde::de::Error::custom),
    }
}

fn de_b64_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, D::Error> {
    let m = Option::<std::collections::BTreeMap<String, String>>::deserialize(d)?;
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in m.unwrap_or_default() {
        let bytes = B64.decode(v.as_bytes()).map_err(serde::de::Error::custom)?;
        out.insert(k, bytes);
    }
    Ok(out)
}

/// ocicrypt `PublicLayerBlockCipherOptions`.
#[derive(Deserialize)]
struct PublicOptions {
    #[serde(default)]
    cipher: String,
    #[serde(default, deserialize_with = "de_b64")]
    hmac: Vec<u8>,
    #[serde(default, deserialize_with = "de_b64_map")]
    cipheroptions: std::collections::BTreeMap<String, Vec<u8>>,
}

/// ocicrypt `PrivateLayerBlockCipherOptions`.
#[derive(Deserialize)]
struct PrivateOptions {
    #[serde(default, deserialize_with = "de_b64")]
    symkey: Vec<u8>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default, deserialize_with = "de_b64_map")]
    cipheroptions: std::collections::BTreeMap<String, Vec<u8>>,
}

impl Drop for PrivateOptions {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.symkey.zeroize();
    }
}

/// The unwrapped key and cipher options of one layer.
pub struct LayerKey {
    decrypted_media_type: String,
    key: Zeroizing<[u8; 32]>,
    nonce: [u8; 16],
    hmac: [u8; 32],
    plain_digest: Option<String>,
    unwrapped_by: String,
}

impl fmt::Debug for LayerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The symmetric key is never printed.
        f.debug_struct("LayerKey")
            .field("decrypted_media_type", &self.decrypted_media_type)
            .field("plain_digest", &self.plain_digest)
            .field("unwrapped_by", &self.unwrapped_by)
            .finish_non_exhaustive()
    }
}

/// Unwrap the key of layer `desc`.
///
/// Tries, in order: every private key of `keys` on every JWE recipient of
/// `enc.keys.jwe` (if the provider offers private keys), then the key-provider
/// annotation (fetching its KEK through [`KeyProvider::get_resource`]). Annotations are
/// untrusted input: malformed ones give an error, never a panic.
pub async fn layer_key(
    desc: &OciDescriptor,
    keys: &dyn KeyProvider,
) -> Result<LayerKey, DecryptError> {
    let decrypted_media_type = desc
        .media_type
        .strip_suffix("+encrypted")
        .ok_or_else(|| DecryptError::NotEncrypted {
            media_type: desc.media_type.clone(),
        })?
        .to_owned();
    let empty = std::collections::BTreeMap::new();
    let annotations = desc.annotations.as_ref().unwrap_or(&empty);

    // Public options first: a layer we cannot decrypt anyway is refused before any
    // key (or KBS round trip) is spent on it.
    let pubopts = parse_pubopts(annotations)?;

    let jwe_annotation = annotations
        .get(ANNOTATION_KEYS_JWE)
        .filter(|v| !v.is_empty());
    let provider_annotation = annotations
        .get(ANNOTATION_KEYS_PROVIDER_AA)
        .filter(|v| !v.is_empty());
    if jwe_annotation.is_none() && provider_annotation.is_none() {
        let present = annotations
            .keys()
            .filter_map(|k| k.strip_prefix(ANNOTATION_KEYS_PREFIX))
            .map(str::to_owned)
            .collect();
        return Err(DecryptError::NoKeyAnnotation { present });
    }

    let mut recipients = Vec::new();
    let mut attempts = Vec::new();
    let private_keys = keys.private_keys();
    let mut unwrapped: Option<(Zeroizing<Vec<u8>>, String)> = None;

    if let Some(value) = jwe_annotation {
        let jwes = jwe::parse_annotation(value)?;
        for j in &jwes {
            recipients.extend(j.recipient_kinds().into_iter().map(|k| format!("jwe:{k}")));
        }
        if !private_keys.is_empty() {
            let parsed = private_keys
                .iter()
                .enumerate()
                .map(|(index, pem)| {
                    keys::PrivateKey::parse(pem)
                        .map_err(|reason| DecryptError::InvalidPrivateKey { index, reason })
                })
                .collect::<Result<Vec<_>, _>>()?;
            'outer: for j in &jwes {
                for (index, key) in parsed.iter().enumerate() {
                    match j.decrypt(key) {
                        Ok((opts, alg)) => {
                            unwrapped = Some((opts, format!("jwe:{alg} (private key #{index})")));
                            break 'outer;
                        }
                        Err(e) => attempts.push(format!("key #{index} ({}): {e}", key.kind())),
                    }
                }
            }
        }
    }

    if unwrapped.is_none() {
        if let Some(value) = provider_annotation {
            let packet = provider::AnnotationPacket::parse(value)?;
            recipients.push(format!("provider.attestation-agent:{}", packet.kid));
            // KBS errors and a wrong KEK are reported as such: they say more than
            // "no key matched".
            let opts = packet.unwrap(keys).await?;
            unwrapped = Some((opts, format!("provider.attestation-agent:{}", packet.kid)));
        }
    }

    let Some((opts_json, unwrapped_by)) = unwrapped else {
        return Err(DecryptError::NoKeyMatched {
            recipients,
            keys_tried: private_keys.len(),
            attempts,
        });
    };

    let private: PrivateOptions = serde_json::from_slice(&opts_json).map_err(|e| {
        DecryptError::InvalidKeyOptions(format!("not ocicrypt private options: {e}"))
    })?;
    let key: [u8; 32] = private.symkey.as_slice().try_into().map_err(|_| {
        DecryptError::InvalidKeyOptions(format!(
            "symkey is {} bytes, AES-256 needs 32",
            private.symkey.len()
        ))
    })?;
    let key = Zeroizing::new(key);
    // ocicrypt looks the nonce up in the public options first, then the private ones.
    let nonce = pubopts
        .cipheroptions
        .get("nonce")
        .or_else(|| private.cipheroptions.get("nonce"))
        .ok_or_else(|| DecryptError::InvalidKeyOptions("no cipheroptions.nonce".into()))?;
    let nonce: [u8; 16] = nonce.as_slice().try_into().map_err(|_| {
        DecryptError::InvalidKeyOptions(format!("nonce is {} bytes, AES-CTR needs 16", nonce.len()))
    })?;
    tracing::debug!(%unwrapped_by, media_type = %desc.media_type, "unwrapped layer key");

    Ok(LayerKey {
        decrypted_media_type,
        key,
        nonce,
        hmac: pubopts.hmac,
        plain_digest: private.digest.clone().filter(|d| !d.is_empty()),
        unwrapped_by,
    })
}

struct CheckedPubOpts {
    hmac: [u8; 32],
    cipheroptions: std::collections::BTreeMap<String, Vec<u8>>,
}

fn parse_pubopts(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<CheckedPubOpts, DecryptError> {
    let raw = annotations
        .get(ANNOTATION_PUBOPTS)
        .filter(|v| !v.is_empty())
        .ok_or(DecryptError::MissingAnnotation {
            annotation: ANNOTATION_PUBOPTS,
        })?;
    let json = B64
        .decode(raw.trim().as_bytes())
        .map_err(|e| DecryptError::malformed(ANNOTATION_PUBOPTS, format!("base64: {e}")))?;
    let opts: PublicOptions = serde_json::from_slice(&json)
        .map_err(|e| DecryptError::malformed(ANNOTATION_PUBOPTS, format!("JSON: {e}")))?;
    if opts.cipher != CIPHER_AES_256_CTR_HMAC_SHA256 {
        return Err(DecryptError::UnsupportedCipher(opts.cipher));
    }
    let hmac: [u8; 32] = opts.hmac.as_slice().try_into().map_err(|_| {
        DecryptError::malformed(
            ANNOTATION_PUBOPTS,
            format!("hmac is {} bytes, HMAC-SHA256 has 32", opts.hmac.len()),
        )
    })?;
    Ok(CheckedPubOpts {
        hmac,
        cipheroptions: opts.cipheroptions,
    })
}

impl LayerKey {
    /// The media type of the layer once decrypted (the encrypted one minus `+encrypted`).
    pub fn decrypted_media_type(&self) -> &str {
        &self.decrypted_media_type
    }

    /// The digest of the plain (still compressed) blob recorded by the encrypter in the
    /// private options (`digest`), if any. Informative: ocicrypt fills it with the
    /// source descriptor's digest, which is not the plaintext's digest when the copy
    /// also recompressed the layer; the pipeline's diff_id check is what binds the
    /// content.
    pub fn plain_digest(&self) -> Option<&str> {
        self.plain_digest.as_deref()
    }

    /// Which recipient unwrapped the key (for logs), e.g. `jwe:RSA-OAEP (private key #0)`
    /// or `provider.attestation-agent:kbs:///default/key/1`.
    pub fn unwrapped_by(&self) -> &str {
        &self.unwrapped_by
    }

    /// A reader yielding the plaintext of `inner` (the encrypted blob).
    pub fn reader<R: Read>(&self, inner: R) -> DecryptReader<R> {
        DecryptReader {
            inner,
            cipher: Aes256Ctr::new(self.key.as_ref().into(), (&self.nonce).into()),
            mac: <HmacSha256 as hmac::Mac>::new_from_slice(self.key.as_ref())
                .map_err(|_| ())
                .ok(),
            expected: self.hmac,
            state: ReaderState::Streaming,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderState {
    Streaming,
    Verified,
    Failed,
}

/// Decrypting reader; checks the HMAC at end of stream.
///
/// Bytes are returned as they are decrypted (AES-CTR is a stream cipher), so the
/// plaintext seen before end of stream is *not yet authenticated*: a consumer must read
/// until `Ok(0)` and discard everything if an error comes instead. After an HMAC
/// mismatch every further read fails too.
pub struct DecryptReader<R> {
    inner: R,
    cipher: Aes256Ctr,
    /// `None` only if HMAC construction failed, which cannot happen for HMAC (any key
    /// length is valid); treated as a mismatch rather than unwrapped.
    mac: Option<HmacSha256>,
    expected: [u8; 32],
    state: ReaderState,
}

impl<R: fmt::Debug> fmt::Debug for DecryptReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptReader")
            .field("inner", &self.inner)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<R> DecryptReader<R> {
    /// The wrapped (encrypted) reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

fn hmac_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, DecryptError::Hmac)
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.state {
            ReaderState::Verified => return Ok(0),
            ReaderState::Failed => return Err(hmac_error()),
            ReaderState::Streaming => {}
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            // End of the ciphertext: the verdict, in constant time.
            let ok = match self.mac.take() {
                Some(mac) => mac.verify_slice(&self.expected).is_ok(),
                None => false,
            };
            if ok {
                self.state = ReaderState::Verified;
                return Ok(0);
            }
            self.state = ReaderState::Failed;
            return Err(hmac_error());
        }
        let chunk = buf.get_mut(..n).ok_or_else(|| {
            std::io::Error::other("inner reader returned more bytes than the buffer holds")
        })?;
        if let Some(mac) = self.mac.as_mut() {
            mac.update(chunk);
        }
        self.cipher.apply_keystream(chunk);
        Ok(n)
    }
}
