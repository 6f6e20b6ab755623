//! `kata-cc-kbs --config kbs.toml`: the kata-cc key broker (RCAR 0.4.0 over HTTP).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use kbs::server::{KbsServer, ServerConfig};

/// The kata-cc key broker service.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Override the listen address of the config.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = ServerConfig::load(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    let listen = config.listen;
    if config.allow_simulated {
        eprintln!("kata-cc-kbs: WARNING: allow_simulated = true, simulated TEEs are trusted");
    }
    let server = KbsServer::new(config).context("starting the KBS")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    eprintln!(
        "kata-cc-kbs: listening on http://{}",
        listener.local_addr()?
    );
    tokio::select! {
        r = server.serve(listener) => r.context("serving")?,
        _ = tokio::signal::ctrl_c() => eprintln!("kata-cc-kbs: interrupted"),
    }
    Ok(())
}
