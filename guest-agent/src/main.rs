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
    /// A registry (`host[:port]`) reached over plain HTTP for guest-pulled images
    /// (repeatable). In the VM: `[image] insecure_registries` of the initdata's cdh.toml.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// containers-policy.json that guest-pulled images must satisfy (default: accept any
    /// image). In the VM: `[image] image_security_policy` of the initdata's cdh.toml.
    #[arg(long)]
    image_policy: Option<PathBuf>,
    /// Private key (PEM or JWK) for encrypted image layers (repeatable; development: in
    /// a TEE pod the keys come from the KBS after attestation).
    #[arg(long = "image-key")]
    image_keys: Vec<PathBuf>,
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
    let mut args = if init_mode { Args::parse_from(["kata-cc-agent"]) } else { Args::parse() };
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
    // As PID 1: the TEE (if any) and the measured configuration from the initdata disk,
    // if the host attached one, bound to the TEE. A disk that does not parse, a TEE whose
    // HOST_DATA / MRCONFIGID does not match it, or a malformed aa.toml is fatal (the
    // error powers the VM off).
    let tee = if init_mode {
        let found = guest_agent::tee::detect(&guest_agent::tee::TeePaths::default()).context("detect the TEE")?;
        guest_agent::tee::attester(found).context("TEE attester")?
    } else {
        None
    };
    match &tee {
        Some(t) => tracing::info!("TEE: {}", t.label()),
        None if init_mode => tracing::info!("TEE: none (not a confidential VM)"),
        None => {}
    }
    if init_mode {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let from_host = guest_agent::init::cmdline_insecure_registries(&cmdline);
        match (&tee, from_host.is_empty()) {
            (_, true) => {}
            (None, false) => {
                tracing::info!("plain-HTTP registries from the kernel command line: {from_host:?}");
                args.insecure_registries.extend(from_host);
            }
            (Some(_), false) => tracing::warn!(
                "{} ignored in a TEE (set insecure_registries in initdata cdh.toml): {from_host:?}",
                guest_agent::init::INSECURE_REGISTRY_PARAM
            ),
        }
    }
    let initdata = if init_mode { guest_agent::initdata::load().context("initdata")? } else { None };
    if let Some(d) = &initdata {
        let has_policy = if d.init.policy().is_some() { "yes" } else { "no" };
        let (device, algorithm, digest) = (d.device.display(), d.init.algorithm, d.digest_hex());
        tracing::info!("initdata: {device} digest {algorithm}:{digest} (policy.rego: {has_policy})");
    }
    if init_mode {
        guest_agent::initdata::bind(initdata.as_ref(), tee.as_ref()).context("initdata")?;
    }
    // A release-tee agent without a TEE runs nothing (see `no_tee`); fixed at build time.
    let no_tee = guest_agent::no_tee::NoTee::required(cfg!(feature = "release-tee"), tee.is_some());
    if no_tee.is_some() {
        tracing::warn!("{}", guest_agent::no_tee::REASON);
    }
    let attestation = guest_agent::attestation::PodAttestation::new(tee, initdata.as_ref()).context("initdata aa.toml")?;
    let image_cfg = image_pull_config(&args, initdata.as_ref(), &attestation, init_mode)?;
    let listen = match (args.listen.clone(), init_mode) {
        (Some(l), _) => l,
        (None, true) => "vsock://-1:1024".to_string(),
        (None, false) => anyhow::bail!("--listen is required when not running as PID 1"),
    };
    let cfg = AgentConfig {
        shared_dir: args.shared_dir,
        // In the VM, Kata's path; as a plain process, below the state dir (not the host's).
        sandbox_dir: if init_mode {
            PathBuf::from(guest_agent::sandbox_storage::SANDBOX_DIR)
        } else {
            args.state_dir.join("sandbox")
        },
        state_dir: args.state_dir,
        cgroup_parent: args.cgroup_parent,
        helper_exe: std::env::current_exe().context("find the agent executable")?,
        init_mode,
    };
    let policy_src = match &args.policy {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("read policy {}", p.display()))?,
        None => match initdata.as_ref().and_then(|d| d.init.policy()) {
            Some(rego) => rego.to_string(),
            // No initdata policy: `default-tee` in a TEE (no workload can run),
            // allow-all without one (development). A release-tee build never falls back
            // to allow-all (without a TEE its gate refuses everything anyway).
            None if cfg!(feature = "release-tee") => policy::builtin::DEFAULT_TEE.to_string(),
            None => {
                let p = attestation.default_policy();
                if p == policy::builtin::DEFAULT_TEE {
                    tracing::info!("policy: no policy.rego in initdata: TEE pod, built-in default-tee policy");
                }
                p.to_string()
            }
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async move {
        let policy = Arc::new(guest_agent::policy_gate::PolicyCheck::new(&policy_src).context("load the agent policy")?);
        let agent = Arc::new(Agent::new(cfg).with_policy(Arc::clone(&policy)).with_image_pull(image_cfg));
        // Both must pass: the policy first, then (for CreateContainer/ExecProcess) attestation.
        let mut gate = Gate::allow_all();
        if let Some(n) = no_tee {
            gate = gate.with_check(Arc::new(n));
        }
        gate = gate.with_check(policy);
        if let Some(attest) = attestation.check() {
            gate = gate.with_check(attest);
        }
        if let Some(api) = attestation.workload_api() {
            let l = guest_agent::api_server::LISTEN;
            let listener = tokio::net::TcpListener::bind(l).await.with_context(|| format!("bind the workload endpoint {l}"))?;
            tracing::info!("workload endpoint on http://{l} (/cdh/resource, /aa/evidence)");
            tokio::spawn(Arc::new(api).serve(listener));
        }
        guest_agent::server::serve(&listen, agent, gate, init_mode).await
    })
}

/// Image pull settings: flags, then (measured) initdata `cdh.toml`; keys from the flags
/// and the pod's KBS.
fn image_pull_config(
    args: &Args,
    initdata: Option<&guest_agent::initdata::LoadedInitData>,
    attestation: &guest_agent::attestation::PodAttestation,
    init_mode: bool,
) -> anyhow::Result<guest_agent::image_pull::ImagePullConfig> {
    let mut insecure = args.insecure_registries.clone();
    let mut image_policy = match &args.image_policy {
        Some(p) => {
            let json = std::fs::read(p).with_context(|| format!("read --image-policy {}", p.display()))?;
            Some(image_rs::signature::ImagePolicy::parse(&json).with_context(|| format!("--image-policy {}", p.display()))?)
        }
        None => None,
    };
    let mut key_uris = Vec::new();
    let mut limits = guest_agent::image_pull::ImageLimits::default();
    if let Some(cdh) = initdata.and_then(|d| d.init.data.get("cdh.toml")) {
        let c = guest_agent::image_pull::config_from_cdh_toml(cdh).map_err(anyhow::Error::msg).context("initdata")?;
        insecure.extend(c.insecure_registries);
        image_policy = c.image_policy.or(image_policy);
        key_uris = c.private_key_uris;
        limits = c.limits;
    }
    let mut private_keys = Vec::new();
    for k in &args.image_keys {
        private_keys.push(std::fs::read(k).with_context(|| format!("read --image-key {}", k.display()))?);
    }
    let pause = args.shared_dir.join("pause").join("rootfs");
    Ok(guest_agent::image_pull::ImagePullConfig {
        insecure_registries: insecure,
        image_policy,
        keys: Some(Arc::new(guest_agent::image_pull::KbsKeys::new(attestation.kbs_client(), private_keys, key_uris))),
        pause_rootfs: (init_mode && pause.is_dir()).then_some(pause),
        limits,
    })
}
