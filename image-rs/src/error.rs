//! The one error type of the pull pipeline.
//!
//! Every variant names the image reference it concerns and, where a blob is involved, its
//! digest; the cause is wrapped with `#[source]` and not repeated in the message.

use std::path::PathBuf;

use crate::decrypt::DecryptError;
use crate::limits::Limit;
use crate::signature::SignatureError;

/// Why pulling, verifying, unpacking or mounting an image failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The registry could not be reached or did not answer in time.
    #[error("{image}: registry {registry} unreachable ({what})")]
    RegistryUnreachable {
        /// Image reference.
        image: String,
        /// Registry host.
        registry: String,
        /// What was being fetched.
        what: String,
        /// Transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The registry did not answer within the configured time.
    #[error("{image}: registry timed out after {seconds} s while fetching {what}")]
    Timeout {
        /// Image reference.
        image: String,
        /// What was being fetched.
        what: String,
        /// The limit that expired.
        seconds: u64,
    },
    /// The registry answered with an error status.
    #[error("{image}: registry answered {status} for {what}: {message}")]
    RegistryStatus {
        /// Image reference.
        image: String,
        /// What was being fetched.
        what: String,
        /// HTTP status.
        status: u16,
        /// The start of the error body (bounded).
        message: String,
    },
    /// Authentication with the registry failed.
    #[error("{image}: registry authentication failed")]
    Auth {
        /// Image reference.
        image: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A manifest or config is larger than allowed.
    #[error("{image}: {what} larger than the limit of {limit} bytes")]
    TooLarge {
        /// Image reference.
        image: String,
        /// What was being fetched.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A manifest, index or config could not be parsed or is not acceptable.
    #[error("{image}: invalid {what}: {reason}")]
    Invalid {
        /// Image reference.
        image: String,
        /// What was parsed.
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// The image has no manifest for linux/amd64.
    #[error("{image}: no linux/amd64 image; the registry offers {offered:?}")]
    WrongPlatform {
        /// Image reference.
        image: String,
        /// The platforms offered (`os/arch[/variant]`).
        offered: Vec<String>,
    },
    /// A pull limit ([`PullLimits`](crate::PullLimits)) was exceeded: nothing of the layer
    /// was kept.
    #[error("{image}: {what} {digest}: {value} exceeds the limit {limit} = {max}{}", entry_suffix(.entry))]
    LimitExceeded {
        /// Image reference.
        image: String,
        /// `image` (the manifest digest follows) or `layer` (the blob digest follows).
        what: String,
        /// The manifest or layer digest.
        digest: String,
        /// The limit, named as its `[image.limits]` key.
        limit: Limit,
        /// The limit's value.
        max: u64,
        /// The value that exceeded it (at the point of refusal, for streamed counts).
        value: u64,
        /// The tar entry it was hit at, for entry and path limits.
        entry: Option<String>,
    },
    /// A blob's content does not match its digest.
    #[error("{image}: {what} {digest}: content digest is {actual}")]
    DigestMismatch {
        /// Image reference.
        image: String,
        /// `manifest`, `config`, `layer`...
        what: String,
        /// Expected digest.
        digest: String,
        /// Digest of what was received.
        actual: String,
    },
    /// A blob is larger or smaller than its descriptor says.
    #[error("{image}: {what} {digest}: {received} bytes received, descriptor says {expected}")]
    SizeMismatch {
        /// Image reference.
        image: String,
        /// `config`, `layer`...
        what: String,
        /// The blob's digest.
        digest: String,
        /// Size from the descriptor.
        expected: u64,
        /// Bytes received (at the point of refusal when larger).
        received: u64,
    },
    /// The uncompressed layer does not match the config's `rootfs.diff_ids` entry.
    #[error(
        "{image}: layer {digest}: uncompressed digest {actual}, config's diff_id is {diff_id}"
    )]
    DiffIdMismatch {
        /// Image reference.
        image: String,
        /// Layer (blob) digest.
        digest: String,
        /// Expected diff_id.
        diff_id: String,
        /// Digest of the uncompressed stream.
        actual: String,
    },
    /// The layer stream could not be read, decompressed or parsed as tar.
    #[error("{image}: layer {digest}: {context}")]
    Layer {
        /// Image reference.
        image: String,
        /// Layer digest.
        digest: String,
        /// What went wrong.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A layer entry was refused (path escape, device node, ...).
    #[error("{image}: layer {digest}: entry {entry:?} refused: {reason}")]
    UnsafeEntry {
        /// Image reference.
        image: String,
        /// Layer digest.
        digest: String,
        /// The entry's path as in the archive.
        entry: String,
        /// Why.
        reason: String,
    },
    /// An encrypted layer could not be decrypted (no key, wrong key, bad HMAC).
    #[error("{image}: layer {digest}: cannot decrypt")]
    Decrypt {
        /// Image reference.
        image: String,
        /// Layer digest.
        digest: String,
        /// Cause.
        #[source]
        source: DecryptError,
    },
    /// An encrypted layer but no key provider was given.
    #[error("{image}: layer {digest} is encrypted and no keys were given")]
    NoKeys {
        /// Image reference.
        image: String,
        /// Layer digest.
        digest: String,
    },
    /// The layer's media type is not supported.
    #[error("{image}: layer {digest}: unsupported media type {media_type}")]
    UnsupportedMediaType {
        /// Image reference.
        image: String,
        /// Layer digest.
        digest: String,
        /// The media type.
        media_type: String,
    },
    /// The image signature policy refused the image.
    #[error("{image}: refused by the image signature policy")]
    Signature {
        /// Image reference.
        image: String,
        /// Cause.
        #[source]
        source: SignatureError,
    },
    /// Local file-system operation on the cache or a mount failed.
    #[error("{image}: {context} {path}")]
    Io {
        /// Image reference (or the container directory for mounts).
        image: String,
        /// What was being done.
        context: String,
        /// The path involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A background task failed (panicked or was cancelled).
    #[error("{image}: internal task failed: {reason}")]
    Task {
        /// Image reference.
        image: String,
        /// What happened.
        reason: String,
    },
}

impl ImageError {
    /// An [`ImageError::Io`].
    pub(crate) fn io(
        image: impl ToString,
        context: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ImageError::Io {
            image: image.to_string(),
            context: context.into(),
            path: path.into(),
            source,
        }
    }
}

fn entry_suffix(entry: &Option<String>) -> String {
    entry
        .as_ref()
        .map(|e| format!(" (entry {e:?})"))
        .unwrap_or_default()
}

/// Result of this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
