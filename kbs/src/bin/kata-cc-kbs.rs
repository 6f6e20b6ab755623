//! `kata-cc-kbs --config kbs.toml`: the kata-cc key broker (RCAR 0.4.0 over HTTPS, or
//! plain HTTP on loopback).

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
    /// TLS certificate chain (PEM); overrides `tls_cert` (needs a key too).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); overrides `tls_key`.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Token signing key file (created 0600 when missing); overrides `token_key`.
    #[arg(long)]
    token_key: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Every client connection is a file descriptor: take all the kernel allows us.
    match kbs::server::raise_nofile_limit() {
        Ok((soft, _)) => eprintln!("kata-cc-kbs: RLIMIT_NOFILE {soft}"),
        Err(e) => eprintln!("kata-cc-kbs: cannot raise RLIMIT_NOFILE: {e}"),
    }
    let mut config = ServerConfig::load(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if args.tls_cert.is_some() {
        config.tls_cert = args.tls_cert;
    }
    if args.tls_key.is_some() {
        config.tls_key = args.tls_key;
    }
    if args.token_key.is_some() {
        config.token_key = args.token_key;
    }
    let listen = config.listen;
    if config.token_key.is_none() {
        eprintln!("kata-cc-kbs: no token_key: tokens are signed by a fresh key and do not survive a restart");
    }
    if config.insecure_http && config.tls_cert.is_none() {
        eprintln!(
            "kata-cc-kbs: WARNING: insecure_http = true, plain HTTP may be served off loopback"
        );
    }
    if config.allow_simulated {
        eprintln!("kata-cc-kbs: WARNING: allow_simulated = true, simulated TEEs are trusted");
    }
    let server = KbsServer::new(config).context("starting the KBS")?;
    let listener = kbs::server::listen(listen).with_context(|| format!("binding {listen}"))?;
    server
        .check_listener(&listener)
        .context("starting the KBS")?;
    eprintln!(
        "kata-cc-kbs: listening on {}://{}",
        if server.is_tls() { "https" } else { "http" },
        listener.local_addr()?
    );
    tokio::select! {
        r = server.serve(listener) => r.context("serving")?,
        _ = tokio::signal::ctrl_c() => eprintln!("kata-cc-kbs: interrupted"),
    }
    Ok(())
}
