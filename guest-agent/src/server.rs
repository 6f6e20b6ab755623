//! Binding the ttrpc server and running it until a termination signal.

use std::sync::Arc;

use anyhow::Context;

use crate::agent::Agent;
use crate::gate::Gate;

/// Serves the agent API on `listen` (`unix://PATH` or `vsock://CID:PORT`) until
/// SIGTERM/SIGINT; as PID 1 also reaps orphaned processes.
pub async fn serve(listen: &str, agent: Arc<Agent>, gate: Gate, init_mode: bool) -> anyhow::Result<()> {
    if let Some(path) = listen.strip_prefix("unix://") {
        // A stale socket from an earlier run would make bind fail.
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove stale socket {path}")),
        }
    }
    if init_mode {
        crate::init::spawn_reaper().context("install the zombie reaper")?;
    }
    let mut server = ttrpc::r#async::Server::new().bind(listen).with_context(|| format!("bind {listen}"))?;
    for s in crate::service::services(Arc::clone(&agent), gate) {
        server = server.register_service(s);
    }
    server.start().await.with_context(|| format!("serve on {listen}"))?;
    tracing::info!("kata-cc-agent {} serving on {listen}", env!("CARGO_PKG_VERSION"));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    server.shutdown().await.context("stop the server")?;
    agent.shutdown().await;
    Ok(())
}
