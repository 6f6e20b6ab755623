//! The shim daemon: serves the Task API on the socket containerd chose, under both of
//! its names (`containerd.task.v2.Task` for containerd 1.x, `containerd.task.v3.Task`
//! for 2.x; the messages are the same), until Shutdown.

use std::collections::HashMap;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::shim_async::{create_task, Task};
use containerd_shim::Flags;

use crate::service::TaskService;

/// Task service names the shim answers to.
pub const TASK_SERVICES: [&str; 2] = ["containerd.task.v2.Task", "containerd.task.v3.Task"];

/// Why the daemon could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Setting up (logger, publisher, socket).
    #[error("{what}: {detail}")]
    Setup {
        /// The step.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

fn setup(what: &'static str) -> impl FnOnce(String) -> ServeError {
    move |detail| ServeError::Setup { what, detail }
}

/// The ttrpc services for `svc`, under every name in [`TASK_SERVICES`].
pub fn task_services(svc: &TaskService) -> HashMap<String, ttrpc::r#async::Service> {
    let mut out = HashMap::new();
    for name in TASK_SERVICES {
        let task: Arc<dyn Task + Send + Sync> = Arc::new(svc.clone());
        if let Some((_, service)) = create_task(task).into_iter().next() {
            out.insert(name.to_string(), service);
        }
    }
    out
}

/// Binds `path`; if another shim already serves it, `Ok(None)` (that shim runs the pod).
fn bind(path: &str) -> Result<Option<UnixListener>, String> {
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(path).map_err(|e| format!("remove stale {path}: {e}"))?;
            UnixListener::bind(path).map(Some).map_err(|e| format!("bind {path}: {e}"))
        }
        Err(e) => Err(format!("bind {path}: {e}")),
    }
}

/// Runs the daemon for `flags` until the pod is gone and containerd asked to shut down.
pub async fn serve(flags: &Flags) -> Result<(), ServeError> {
    containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
        .map_err(|e| setup("logger")(e.to_string()))?;
    let socket = flags.socket.strip_prefix("unix://").unwrap_or(&flags.socket).to_string();
    let Some(listener) = bind(&socket).map_err(setup("socket"))? else {
        log::info!("{socket} is served by another shim of this pod");
        let _ = std::fs::write("address", flags.socket.as_bytes());
        return Ok(());
    };
    // containerd passes its event socket; CRI-O passes an empty one (it learns of exits
    // from Wait, not from events).
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
    let publisher = if ttrpc_address.is_empty() {
        log::info!("no TTRPC_ADDRESS: task events are not published");
        None
    } else {
        Some(RemotePublisher::new(&ttrpc_address).await.map_err(|e| setup("event publisher")(e.to_string()))?)
    };
    let exit = Arc::new(ExitSignal::default());
    let svc = TaskService::new(flags.namespace.clone(), publisher, Arc::clone(&exit));
    let listener = ttrpc::r#async::transport::Listener::try_from(listener)
        .map_err(|e| setup("ttrpc listener")(e.to_string()))?;
    let mut server = ttrpc::r#async::Server::new().add_listener(listener).register_service(task_services(&svc));
    server.start().await.map_err(|e| setup("ttrpc server")(e.to_string()))?;
    // `start` copies our stdout until it closes: point it at stderr (/dev/null).
    let _ = nix::unistd::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
    log::info!("kata-cc shim serving {socket}");
    exit.wait().await;
    log::info!("kata-cc shim shutting down");
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn binding_twice_defers_to_the_running_shim_and_replaces_a_stale_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("s/sock");
        let p = p.to_str().unwrap();
        let first = bind(p).unwrap().unwrap();
        assert!(bind(p).unwrap().is_none());
        drop(first);
        assert!(bind(p).unwrap().is_some(), "a stale socket file is replaced");
    }
}
