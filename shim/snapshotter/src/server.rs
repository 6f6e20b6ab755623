//! The gRPC server on a unix socket.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;

use crate::service::GuestPullSnapshotter;

/// Errors of starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket's directory could not be made or the socket not bound.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process answers on the socket.
    #[error("{path} is in use: another snapshotter is already listening there")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The gRPC server failed.
    #[error("gRPC server on {path}: {source}")]
    Serve {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Binds `path` (creating its directory, replacing a stale socket but never a live one
/// nor anything that is not a socket), with mode 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let listen_err = |source| ServeError::Listen {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(listen_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; refusing to replace it",
            )));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServeError::InUse {
                path: path.to_owned(),
            });
        }
        tracing::info!(path = %path.display(), "removing stale socket");
        std::fs::remove_file(path).map_err(listen_err)?;
    }
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(listen_err)?;
    Ok(listener)
}

/// Serves `snapshotter` on `listener` (bound at `path`) until `shutdown` completes, then
/// removes the socket.
pub async fn serve(
    snapshotter: GuestPullSnapshotter,
    listener: UnixListener,
    path: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let result = tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(snapshotter)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(|source| ServeError::Serve {
            path: path.to_owned(),
            source,
        });
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the socket");
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn replaces_stale_socket_refuses_live_socket_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("s.sock");
        let live = bind(&path).await.unwrap();
        assert!(matches!(bind(&path).await, Err(ServeError::InUse { .. })));
        drop(live);
        // The socket file is still there but nobody listens: replaced.
        let _again = bind(&path).await.unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(bind(&file).await.is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
