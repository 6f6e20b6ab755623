//! The agent's domain errors and the one place where they become ttrpc statuses.

use ttrpc::Code;

use crate::copy_file::CopyFileError;
use crate::gate::Denied;
use crate::runner::{FailureKind, RunnerError};

/// Everything a request handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request names a container or process the agent does not have.
    #[error("{what} {id:?} not found")]
    NotFound {
        /// "container" or "process".
        what: &'static str,
        /// The id as sent.
        id: String,
    },
    /// The id is already in use.
    #[error("{what} {id:?} already exists")]
    AlreadyExists {
        /// "container", "process" or "sandbox".
        what: &'static str,
        /// The id as sent.
        id: String,
    },
    /// A field of the request is malformed or not allowed.
    #[error("invalid {field}: {why}")]
    InvalidArgument {
        /// Which field (`container_id`, `OCI.Root.Path`, ...).
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// An entry of the OCI spec's `mounts` is not allowed.
    #[error("invalid OCI.Mounts[{index}].{field} {value:?}: {why}")]
    InvalidMount {
        /// Its index in `OCI.Mounts`.
        index: usize,
        /// `source` or `type`.
        field: &'static str,
        /// The value as sent.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The request is valid but the object is in the wrong state for it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The gate refused the request.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The agent does not implement this RPC.
    #[error("{0} is not implemented by the kata-cc agent")]
    Unimplemented(&'static str),
    /// The container runner failed.
    #[error(transparent)]
    Runner(#[from] RunnerError),
    /// CopyFile failed.
    #[error(transparent)]
    CopyFile(#[from] CopyFileError),
    /// The OCI spec could not be converted.
    #[error("invalid OCI spec")]
    Spec(#[from] protocols::convert::ConvertError),
    /// The container's image could not be pulled, verified, decrypted or mounted.
    #[error("guest pull of the container image failed")]
    ImagePull {
        /// The image reference.
        image: String,
        /// What failed (names the layer where there is one).
        #[source]
        source: Box<image_rs::ImageError>,
    },
    /// An I/O operation of the agent itself failed.
    #[error("{op}")]
    Io {
        /// What the agent was doing.
        op: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    /// Shorthand for [`AgentError::InvalidArgument`].
    pub fn invalid(field: &'static str, why: impl Into<String>) -> Self {
        Self::InvalidArgument { field, why: why.into() }
    }

    /// Shorthand for [`AgentError::Io`].
    pub fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let op = op.into();
        move |source| Self::Io { op, source }
    }

    /// The ttrpc status code for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::NotFound { .. } => Code::NOT_FOUND,
            Self::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            Self::InvalidArgument { .. } | Self::InvalidMount { .. } | Self::Spec(_) => Code::INVALID_ARGUMENT,
            Self::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Self::Denied(_) => Code::PERMISSION_DENIED,
            Self::Unimplemented(_) => Code::UNIMPLEMENTED,
            Self::ImagePull { .. } => Code::FAILED_PRECONDITION,
            Self::CopyFile(CopyFileError::PathNotAllowed { .. } | CopyFileError::Escape { .. } | CopyFileError::BadRequest { .. }) => {
                Code::INVALID_ARGUMENT
            }
            Self::Runner(e) => match e.kind() {
                FailureKind::InvalidArgument => Code::INVALID_ARGUMENT,
                FailureKind::InvalidState => Code::FAILED_PRECONDITION,
                FailureKind::NotFound => Code::NOT_FOUND,
                FailureKind::AlreadyExists => Code::ALREADY_EXISTS,
                FailureKind::PermissionDenied => Code::PERMISSION_DENIED,
                FailureKind::Internal => Code::INTERNAL,
            },
            Self::CopyFile(_) | Self::Io { .. } => Code::INTERNAL,
        }
    }
}

/// Renders an error and its whole `source()` chain on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

impl From<AgentError> for ttrpc::Error {
    fn from(e: AgentError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), chain(&e)))
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_code_and_whole_chain() {
        let e = AgentError::Io {
            op: "write config.json".into(),
            source: std::io::Error::other("disk full"),
        };
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::INTERNAL);
                assert_eq!(s.message(), "write config.json: disk full");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
