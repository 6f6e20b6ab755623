//! `kata-cc-agent`: the guest agent binary. As PID 1 of the pod VM it sets up the guest
//! and serves the agent API on vsock port 1024; as a plain process it serves on the
//! address given with `--listen` (e.g. a unix socket, for tests and development).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use guest_agent::agent::{Agent, AgentConfig};
use guest_agent::gate::Gate;

/// kata-cc guest agent (Kata agent API over ttrpc).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to serve on: vsock://CID:PORT (CID -1 = any) or unix://PATH.
    /// Default: vsock://-1:1024 as PID 1, otherwise required.
    #[arg(long)]
    listen: Option<String>,
    /// Directory below which container rootfs and CopyFile destinations must lie.
    #[arg(long, default_value = "/run/kata-containers/shared/containers")]
    shared_dir: PathBuf,
    /// The agent's state directory (bundles, runner state).
    #[arg(long, default_value = "/run/kata-cc")]
    state_dir: PathBuf,
    /// cgroup parent of the containers.
    #[arg(long, default_value = "/kata-cc")]
    cgroup_parent: String,
    /// Log filter (tracing syntax: info, debug, guest_agent=trace, ...).
    #[arg(long, default_value = "info")]
    log: String,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    // Before anything starts a thread: the per-container runner is this binary re-run.
    if argv.get(1).map(String::as_str) == Some(guest_agent::runner::HELPER_ARG) {
        std::process::exit(guest_agent::runner::helper_main());
    }
    if let Err(e) = run() {
        eprintln!("kata-cc-agent: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let init_mode = std::process::id() == 1;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    if init_mode {
        guest_agent::init::mount_kernel_filesystems().context("set up the guest as PID 1")?;
        guest_agent::init::load_modules_from_list(std::path::Path::new(guest_agent::init::MODULES_LIST))
            .context("load kernel modules")?;
    }
    let listen = match (args.listen, init_mode) {
        (Some(l), _) => l,
        (None, true) => "vsock://-1:1024".to_string(),
        (None, false) => anyhow::bail!("--listen is required when not running as PID 1"),
    };
    let cfg = AgentConfig {
        shared_dir: args.shared_dir,
        state_dir: args.state_dir,
        cgroup_parent: args.cgroup_parent,
        helper_exe: std::env::current_exe().context("find the agent executable")?,
        init_mode,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async move {
        let agent = Arc::new(Agent::new(cfg));
        guest_agent::server::serve(&listen, agent, Gate::allow_all(), init_mode).await
    })
}
