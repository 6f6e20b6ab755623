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
    /// Agent API policy (Rego) enforced on every request. Default: allow everything
    /// (development; TEE pods get theirs from measured initdata).
    #[arg(long)]
    policy: Option<PathBuf>,
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
    if std::process::id() == 1 {
        pid1_main();
    }
    if let Err(e) = run(false) {
        eprintln!("kata-cc-agent: {e:#}");
        std::process::exit(1);
    }
}

/// PID 1 of the VM: never returns (an exiting init panics the kernel). Any failure is
/// printed on the console and the VM is powered off.
fn pid1_main() -> ! {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("kata-cc-agent: FATAL: {info}; powering off");
        guest_agent::init::power_off()
    }));
    // Still single-threaded: setting the environment is sound here.
    std::env::set_var("PATH", guest_agent::init::DEFAULT_PATH);
    guest_agent::init::ensure_console();
    // Leaves the initramfs rootfs for a tmpfs root (re-executes /init when it does).
    if let Err(e) = guest_agent::init::switch_root_if_needed() {
        eprintln!("kata-cc-agent: FATAL: {:#}; powering off", anyhow::Error::new(e));
        guest_agent::init::power_off();
    }
    match run(true) {
        Ok(()) => eprintln!("kata-cc-agent: stopped; powering off"),
        Err(e) => eprintln!("kata-cc-agent: FATAL: {e:#}; powering off"),
    }
    guest_agent::init::power_off()
}

fn run(init_mode: bool) -> anyhow::Result<()> {
    // As PID 1 the arguments come from the kernel command line: use the defaults.
    let args = if init_mode { Args::parse_from(["kata-cc-agent"]) } else { Args::parse() };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .with_writer(std::io::stderr)
        // As PID 1, stderr is the serial console: no colour escapes in the console log.
        .with_ansi(!init_mode)
        .init();
    if init_mode {
        let started = std::time::Instant::now();
        guest_agent::init::setup_guest(&args.cgroup_parent).context("set up the guest as PID 1")?;
        tracing::info!("guest set up in {:?}", started.elapsed());
    }
    // As PID 1: the measured configuration from the initdata disk, if the host attached
    // one. A disk that does not parse is fatal (the error powers the VM off).
    let initdata = if init_mode { guest_agent::initdata::load().context("initdata")? } else { None };
    if let Some(d) = &initdata {
        let has_policy = if d.init.policy().is_some() { "yes" } else { "no" };
        let (device, algorithm, digest) = (d.device.display(), d.init.algorithm, d.digest_hex());
        tracing::info!("initdata: {device} digest {algorithm}:{digest} (policy.rego: {has_policy})");
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
    let policy_src = match &args.policy {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("read policy {}", p.display()))?,
        None => match initdata.as_ref().and_then(|d| d.init.policy()) {
            Some(rego) => rego.to_string(),
            // No initdata policy: allow everything (development). TEE pods will get
            // `default-tee` here once attestation lands.
            None => policy::builtin::ALLOW_ALL.to_string(),
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async move {
        let policy = Arc::new(guest_agent::policy_gate::PolicyCheck::new(&policy_src).context("load the agent policy")?);
        let agent = Arc::new(Agent::new(cfg).with_policy(Arc::clone(&policy)));
        let gate = Gate::allow_all().with_check(policy);
        guest_agent::server::serve(&listen, agent, gate, init_mode).await
    })
}
