//! Errors of the snapshotter and their gRPC status codes.

use std::path::PathBuf;

use crate::labels::{CRI_IMAGE_REF, TARGET_SNAPSHOT_REF};

/// Everything that can go wrong. Each variant names the snapshot (or file) concerned and
/// maps to one gRPC code ([`Error::code`]); the status message is the `Display` text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot with this key or name.
    #[error("snapshot {key:?} not found")]
    NotFound {
        /// The key that was looked up.
        key: String,
    },
    /// The parent named in a Prepare/View does not exist.
    #[error("parent snapshot {parent:?} of {key:?} not found")]
    ParentNotFound {
        /// The key being created.
        key: String,
        /// The missing parent.
        parent: String,
    },
    /// A snapshot with this key or name already exists.
    #[error("snapshot {key:?} already exists")]
    AlreadyExists {
        /// The existing key.
        key: String,
    },
    /// A layer Prepare whose target is (now) present. containerd reads AlreadyExists as
    /// "this layer is there, do not fetch or unpack it": for guest pull that is success.
    #[error(
        "target snapshot {target:?} (prepare key {key:?}) already exists: the layer is pulled \
         inside the guest, nothing is fetched or unpacked on the host"
    )]
    LayerPresent {
        /// The Prepare key (`.../extract-... sha256:...`).
        key: String,
        /// The committed layer snapshot (chain ID).
        target: String,
    },
    /// The parent of a Prepare/View is not a committed snapshot.
    #[error("parent {parent:?} of {key:?} is a {kind} snapshot; a parent must be committed")]
    ParentNotCommitted {
        /// The key being created.
        key: String,
        /// The parent.
        parent: String,
        /// The parent's kind.
        kind: &'static str,
    },
    /// Commit of something that is not an active snapshot.
    #[error(
        "cannot commit {key:?}: it is a {kind} snapshot, only active snapshots can be committed"
    )]
    NotActive {
        /// The key.
        key: String,
        /// Its kind.
        kind: &'static str,
    },
    /// Mounts of a committed snapshot.
    #[error("snapshot {key:?} is committed: mounts exist only for active and view snapshots")]
    NoMounts {
        /// The key.
        key: String,
    },
    /// Remove of a snapshot other snapshots are based on.
    #[error(
        "cannot remove snapshot {key:?}: it is the parent of {count} snapshot(s) (e.g. {child:?}); \
         remove those first"
    )]
    HasChildren {
        /// The key.
        key: String,
        /// How many children it has.
        count: usize,
        /// One of them.
        child: String,
    },
    /// A container snapshot for which no image reference could be found.
    #[error(
        "no image reference for snapshot {key:?} (parent {parent:?}): neither its labels nor its \
         parent chain carry {CRI_IMAGE_REF:?}. Pull the image through CRI (crictl/kubelet) or \
         with `kata-cc-snapshotter pull REF`, or set the label on the container snapshot \
         (`ctr run --snapshotter kata-cc --snapshotter-label {CRI_IMAGE_REF}=REF ...`)"
    )]
    NoImageRef {
        /// The key being created.
        key: String,
        /// Its parent.
        parent: String,
    },
    /// containerd tries to unpack a layer on the host (a Prepare with containerd's unpack
    /// key and no target label: a client that fetched the layer blobs itself, such as
    /// containerd 1.6's `ctr image pull`). Guest pull never unpacks on the host.
    #[error(
        "snapshot {key:?} is a host-side unpack of a layer (no {TARGET_SNAPSHOT_REF:?} label): \
         kata-cc pulls images inside the guest and never unpacks layers on the host. \
         `ctr image pull` (containerd 1.6) downloads and unpacks every layer; use \
         `kata-cc-snapshotter pull [--plain-http] REF` or a CRI pull (crictl/kubelet) instead"
    )]
    HostUnpack {
        /// The Prepare key.
        key: String,
    },
    /// A request argument is malformed.
    #[error("invalid request for {key:?}: {reason}")]
    Invalid {
        /// The key the request was about.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A List filter could not be parsed or uses an unsupported operator.
    #[error("invalid snapshot filter {filter:?}: {reason}")]
    Filter {
        /// The filter as sent.
        filter: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the metadata failed.
    #[error("snapshot metadata {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `<root>/guest-pull-rootfs`, the empty directory every mount binds, cannot be used.
    #[error("guest-pull rootfs directory {path}: {reason}")]
    Rootfs {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The metadata file does not parse.
    #[error("snapshot metadata {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(key: &str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }

    /// The gRPC code this error is reported with.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::NotFound { .. } | Error::ParentNotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } | Error::LayerPresent { .. } => Code::AlreadyExists,
            Error::ParentNotCommitted { .. }
            | Error::NotActive { .. }
            | Error::NoMounts { .. }
            | Error::HasChildren { .. }
            | Error::NoImageRef { .. }
            | Error::HostUnpack { .. } => Code::FailedPrecondition,
            Error::Invalid { .. } | Error::Filter { .. } => Code::InvalidArgument,
            Error::Io { .. } | Error::Corrupt { .. } | Error::Rootfs { .. } => Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
