//! The pod VM: boots it for the pod's first container (the CRI sandbox, or a plain
//! `ctr run` container that is its own pod), connects the agent, wires the network, and
//! tears everything down. What `delete` needs after a shim crash is written to
//! `<state_dir>/<id>/state.json` before anything is started.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hypervisor::net::{PodNetConfig, PodNetState};
use hypervisor::qemu::{QemuConfig, QemuHypervisor};
use hypervisor::{Confidential, Hypervisor, MacAddr, NetDevice, SimTeeConfig, TapRef, Vm, VmSpec};
use protocols::agent as pb;
use protocols::{AgentAddr, AgentClient, ConnectOptions};
use serde::{Deserialize, Serialize};

use hypervisor::sizing::{self, ContainerLimits, LimitsSource, SizingError, VmSize};

use crate::config::{Config, StandaloneNetwork, TeeKind};

/// What can go wrong starting a pod VM.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Host-side preparation (state dir, network, initdata).
    #[error("{0}")]
    Prepare(String),
    /// The VM did not start.
    #[error("start the pod VM")]
    Vm(#[source] hypervisor::Error),
    /// The agent did not answer or refused a request.
    #[error("agent: {0}")]
    Agent(String),
}

/// What `delete` needs to clean up after a dead shim.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PersistedState {
    /// The sandbox id.
    pub id: String,
    /// QEMU's pid once it runs.
    pub qemu_pid: Option<u32>,
    /// The pod network to tear down.
    pub net: Option<PodNetState>,
}

/// Where phases of the start went (logged as `kata-cc timing:` lines).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Host network set-up.
    pub network: Duration,
    /// QEMU start (until its sockets are up).
    pub vm_start: Duration,
    /// From QEMU up to the agent answering Health.Check.
    pub agent_ready: Duration,
    /// Interface, routes and CreateSandbox.
    pub sandbox_setup: Duration,
}

/// A running pod VM with its agent.
pub struct Sandbox {
    /// The sandbox id (the CRI pod sandbox id, or the container id for `ctr run`).
    pub id: String,
    /// The VM.
    pub vm: Box<dyn Vm>,
    /// The connected agent.
    pub agent: AgentClient,
    /// `<state_dir>/<id>`.
    pub dir: PathBuf,
    /// The pod network (tap in the pod netns), if any.
    pub net: Option<PodNetState>,
    /// Phases of the start.
    pub timings: Timings,
    /// The VM's size.
    pub size: VmSize,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("id", &self.id).field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// The state directory of sandbox `id`.
pub fn state_dir(cfg: &Config, id: &str) -> PathBuf {
    cfg.runtime.state_dir.join(id)
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// Writes `state` atomically.
pub fn persist(dir: &Path, state: &PersistedState) -> std::io::Result<()> {
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(state).map_err(std::io::Error::other)?)?;
    std::fs::rename(tmp, state_file(dir))
}

/// Reads what a (possibly dead) shim persisted.
pub fn load_persisted(dir: &Path) -> Option<PersistedState> {
    serde_json::from_slice(&std::fs::read(state_file(dir)).ok()?).ok()
}

/// A VM id QEMU accepts (`[A-Za-z0-9_.-]{1,64}`): the sandbox id when it fits,
/// otherwise a prefix of it made safe.
fn vm_id(id: &str) -> String {
    let clean: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '_' }).take(64).collect();
    if clean.is_empty() {
        "pod".into()
    } else {
        clean
    }
}

/// The pod's network namespace from the spec (`None`: the pod has none to join).
pub fn netns_path(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    spec.linux().as_ref()?.namespaces().as_ref()?.iter().find_map(|ns| {
        (ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network).then(|| ns.path().clone()).flatten()
    })
}

/// A container's own limits (OCI `linux.resources`).
pub fn oci_limits(spec: &oci_spec::runtime::Spec) -> ContainerLimits {
    let r = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let cpu = r.as_ref().and_then(|r| r.cpu().clone());
    ContainerLimits {
        memory_limit_bytes: r.as_ref().and_then(|r| r.memory().as_ref()).and_then(|m| m.limit()),
        cpu_quota: cpu.as_ref().and_then(|c| c.quota()),
        cpu_period: cpu.as_ref().and_then(|c| c.period()),
    }
}

/// The size of the pod VM `spec` starts, and where its limits came from: the CRI
/// runtime's sandbox annotations (containerd or CRI-O), else for a container that is its
/// own pod its `linux.resources`; the rule is [`sizing::size_vm`] (docs/architecture.md,
/// "Pod VM size").
pub fn pod_size(cfg: &Config, spec: &oci_spec::runtime::Spec) -> Result<(VmSize, &'static str), SizingError> {
    let ann = spec.annotations().clone().unwrap_or_default();
    let is_sandbox = ann.get(crate::rootfs::CONTAINER_TYPE).is_some_and(|t| t == "sandbox");
    let (limits, source) = match sizing::pod_limits(&ann)? {
        Some((l, LimitsSource::Containerd)) => (l, "containerd sandbox annotations"),
        Some((l, LimitsSource::CriO)) => (l, "CRI-O pod resources annotation"),
        None if is_sandbox => (ContainerLimits::default(), "no pod limits given"),
        None => (oci_limits(spec), "the container's linux.resources"),
    };
    Ok((sizing::size_vm(&cfg.sizing(), &[limits]), source))
}

/// Starts the pod VM for `id` as `spec` (the sandbox or standalone container spec) asks.
/// On error nothing is left: VM, network and state dir are gone.
pub async fn start(cfg: &Config, id: &str, spec: &oci_spec::runtime::Spec) -> Result<Sandbox, SandboxError> {
    let dir = state_dir(cfg, id);
    if dir.exists() {
        return Err(SandboxError::Prepare(format!(
            "state dir {} already exists: a pod with id {id} is running or was not cleaned up",
            dir.display()
        )));
    }
    create_private_dir(&dir).map_err(|e| SandboxError::Prepare(format!("create {}: {e}", dir.display())))?;
    let mut state = PersistedState { id: id.to_string(), ..Default::default() };
    match start_in(cfg, id, spec, &dir, &mut state).await {
        Ok(sb) => Ok(sb),
        Err(e) => {
            if let Some(net) = &state.net {
                if let Err(te) = hypervisor::net::teardown(net) {
                    tracing::warn!("pod {id}: network teardown after a failed start: {te}");
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o711).create(parent)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

async fn start_in(
    cfg: &Config,
    id: &str,
    spec: &oci_spec::runtime::Spec,
    dir: &Path,
    state: &mut PersistedState,
) -> Result<Sandbox, SandboxError> {
    let mut timings = Timings::default();
    let is_tee = matches!(cfg.tee.kind, TeeKind::Snp | TeeKind::Tdx);

    // Network: a tap in the pod's netns joined to its CNI interface; without a netns,
    // what the configuration says.
    let t = Instant::now();
    let netns = netns_path(spec);
    let pod_net = match &netns {
        Some(ns) => {
            let n = hypervisor::net::setup(&PodNetConfig::new(ns))
                .map_err(|e| SandboxError::Prepare(format!("pod network in {}: {}", ns.display(), error_chain(e))))?;
            state.net = Some(n.state.clone());
            persist(dir, state).map_err(|e| SandboxError::Prepare(format!("persist state: {e}")))?;
            Some(n)
        }
        None => None,
    };
    timings.network = t.elapsed();

    let (size, source) = pod_size(cfg, spec).map_err(|e| SandboxError::Prepare(format!("pod VM size: {e}")))?;
    if size.capped {
        tracing::warn!(
            "pod {id}: limits ({source}) exceed hypervisor.max_vcpus {} / max_memory_mib {}: capped",
            cfg.hypervisor.max_vcpus,
            cfg.hypervisor.max_memory_mib
        );
    }
    tracing::info!("kata-cc sizing: pod={id} vcpus={} memory_mib={} from {source}", size.vcpus, size.memory_mib);
    let mut vm = VmSpec::new(vm_id(id), &cfg.hypervisor.kernel, dir.join("vm"));
    vm.initramfs = Some(cfg.hypervisor.initramfs.clone());
    vm.vcpus = size.vcpus;
    vm.memory_mib = size.memory_mib;
    vm.console_log = Some(dir.join("console.log"));
    vm.boot_timeout = cfg.boot_timeout();
    let mut params: Vec<String> =
        cfg.hypervisor.kernel_params.split_ascii_whitespace().map(str::to_string).collect();
    // Only a VM without a TEE honours these (a TEE pod takes registry settings from its
    // measured initdata), and in a TEE they would only change the launch measurement.
    if cfg.tee.kind == TeeKind::None {
        for r in &cfg.agent.insecure_registries {
            params.push(format!("kata_cc.insecure_registry={r}"));
        }
    }
    vm.cmdline = params.join(" ");
    vm.confidential = match cfg.tee.kind {
        TeeKind::None => Confidential::None,
        TeeKind::Sim => Confidential::Sim(SimTeeConfig::default()),
        TeeKind::Snp => Confidential::Snp(hypervisor::SnpConfig {
            firmware: cfg.hypervisor.firmware.clone().unwrap_or_default(),
            ..Default::default()
        }),
        // The quote generation service where Kata expects it (host vsock port 4050).
        TeeKind::Tdx => Confidential::Tdx(hypervisor::TdxConfig {
            mrconfigid: [0; 48],
            quote_generation_socket: Some(hypervisor::QgsAddress::Vsock { cid: 2, port: 4050 }),
            firmware: cfg.hypervisor.firmware.clone().unwrap_or_default(),
        }),
    };
    if let Some(n) = &pod_net {
        vm.net.push(n.net_device());
    } else if cfg.runtime.standalone_network == StandaloneNetwork::User && !is_tee {
        vm.net.push(NetDevice { tap: TapRef::User, mac: MacAddr([0x02, 0x6b, 0x63, 0x63, 0x00, 0x01]) });
    }
    // initdata: only from an allow-listed annotation.
    let annotations: Vec<(String, String)> = spec
        .annotations()
        .iter()
        .flatten()
        .filter(|(k, _)| cfg.annotation_enabled(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    hypervisor::initdata::prepare(&mut vm, annotations, dir)
        .map_err(|e| SandboxError::Prepare(format!("initdata: {}", error_chain(e))))?;

    let hv = QemuHypervisor::new(QemuConfig {
        qemu: cfg.hypervisor.qemu.clone(),
        vhost_device_vsock: cfg.hypervisor.vhost_device_vsock.clone(),
        allow_simulated_tee: cfg.tee.allow_simulated,
        ..QemuConfig::default()
    });
    let mut stalls = 0;
    let (vm, agent) = loop {
        let t = Instant::now();
        let vm = hv.start(vm.clone()).await.map_err(SandboxError::Vm)?;
        timings.vm_start = t.elapsed();
        state.qemu_pid = vm.pid();
        persist(dir, state).map_err(|e| SandboxError::Prepare(format!("persist state: {e}")))?;
        let t = Instant::now();
        match wait_agent(cfg, vm.as_ref(), dir).await {
            Ok(agent) => {
                timings.agent_ready = t.elapsed();
                break (vm, agent);
            }
            Err(e) => {
                let _ = vm.shutdown(Duration::ZERO).await;
                match e {
                    AgentWait::Stalled if stalls < MAX_STALL_REBOOTS => {
                        stalls += 1;
                        // The next VM's console starts empty: the stall detector looks
                        // for the agent's line in it; this one is kept beside it.
                        let _ = std::fs::rename(dir.join("console.log"), dir.join("console-stalled.log"));
                        tracing::warn!(
                            "pod {id}: the agent serves in the guest but its vsock channel has not answered for {}s: booting a new VM",
                            CHANNEL_STALL.as_secs()
                        );
                    }
                    AgentWait::Stalled => {
                        return Err(SandboxError::Agent(format!(
                            "not ready: the agent serves in the guest but its vsock channel did not answer within {}s, {} boots in a row; console: {}",
                            CHANNEL_STALL.as_secs(),
                            stalls + 1,
                            console_tail(dir)
                        )))
                    }
                    AgentWait::Failed(e) => return Err(e),
                }
            }
        }
    };

    let t = Instant::now();
    if let Err(e) = setup_guest(&agent, id, spec, pod_net.as_ref(), cfg, is_tee).await {
        let _ = vm.shutdown(Duration::ZERO).await;
        return Err(e);
    }
    timings.sandbox_setup = t.elapsed();
    tracing::info!(
        "kata-cc timing: pod={id} network_ms={} vm_start_ms={} agent_ready_ms={} sandbox_setup_ms={}",
        timings.network.as_millis(),
        timings.vm_start.as_millis(),
        timings.agent_ready.as_millis(),
        timings.sandbox_setup.as_millis()
    );
    Ok(Sandbox { id: id.to_string(), vm, agent, dir: dir.to_path_buf(), net: state.net.clone(), timings, size })
}

/// How long the agent's vsock channel may stay silent once the agent has said on the
/// console that it serves, before the VM is given up as stalled. Under TCG the first
/// answer comes within milliseconds of that line; a hybrid-vsock `CONNECT` that
/// vhost-device-vsock leaves unanswered stays so for every later attempt to that VM
/// (seen in about one boot in several hundred under load), and only a new VM recovers.
const CHANNEL_STALL: Duration = Duration::from_secs(30);
/// New VMs booted for a stalled channel before the pod fails.
const MAX_STALL_REBOOTS: u32 = 1;
/// The line the guest agent prints once it listens (guest-agent `server.rs`).
const AGENT_SERVING: &str = "serving on vsock://";

/// Why waiting for the agent ended without one.
enum AgentWait {
    /// The agent serves in the guest, but its channel does not answer (see [`CHANNEL_STALL`]).
    Stalled,
    /// Anything else: no point in booting again.
    Failed(SandboxError),
}

/// The agent of `vm`, ready (Health answered), within the boot timeout.
async fn wait_agent(cfg: &Config, vm: &dyn Vm, dir: &Path) -> Result<AgentClient, AgentWait> {
    let addr: AgentAddr = vm.agent_address().to_string().parse().map_err(|e| {
        AgentWait::Failed(SandboxError::Agent(format!("agent address {}: {e}", vm.agent_address())))
    })?;
    let opts = ConnectOptions { request_timeout: Duration::from_secs(cfg.agent.timeout_secs), ..ConnectOptions::default() };
    let deadline = Instant::now() + cfg.boot_timeout();
    let console = dir.join("console.log");
    tokio::select! {
        r = AgentClient::wait_ready(&addr, opts, deadline) => r.map_err(|e| {
            AgentWait::Failed(SandboxError::Agent(format!("not ready: {}; console: {}", error_chain(e), console_tail(dir))))
        }),
        exit = vm.wait() => Err(AgentWait::Failed(SandboxError::Agent(format!(
            "the VM stopped while booting ({exit}); console: {}",
            console_tail(dir)
        )))),
        () = channel_stalled(&console, CHANNEL_STALL) => Err(AgentWait::Stalled),
    }
}

/// Returns `grace` after the agent's serving line appeared in `console` (never, if it
/// does not).
async fn channel_stalled(console: &Path, grace: Duration) {
    loop {
        if std::fs::read(console).is_ok_and(|b| b.windows(AGENT_SERVING.len()).any(|w| w == AGENT_SERVING.as_bytes())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(grace).await;
}

/// Interface, routes and neighbours of the pod network (or the user-mode NIC), then
/// CreateSandbox with the pod's hostname and shm storage.
async fn setup_guest(
    agent: &AgentClient,
    sandbox_id: &str,
    spec: &oci_spec::runtime::Spec,
    net: Option<&hypervisor::net::PodNetwork>,
    cfg: &Config,
    is_tee: bool,
) -> Result<(), SandboxError> {
    let a = agent.agent();
    let err = |what: &'static str| move |e: ttrpc::Error| SandboxError::Agent(format!("{what}: {e}"));
    let (interface, routes, neighbors) = match net {
        Some(n) => (Some(n.interface.clone()), n.routes.clone(), n.neighbors.clone()),
        None if cfg.runtime.standalone_network == StandaloneNetwork::User && !is_tee => user_net(),
        None => (None, Vec::new(), Vec::new()),
    };
    if let Some(i) = interface {
        let mut r = pb::UpdateInterfaceRequest::new();
        r.interface = protocols::protobuf::MessageField::some(i);
        a.update_interface(agent.context(), &r).await.map_err(err("UpdateInterface"))?;
        if !routes.is_empty() {
            let mut r = pb::UpdateRoutesRequest::new();
            let mut rs = pb::Routes::new();
            rs.Routes = routes;
            r.routes = protocols::protobuf::MessageField::some(rs);
            a.update_routes(agent.context(), &r).await.map_err(err("UpdateRoutes"))?;
        }
        if !neighbors.is_empty() {
            let mut r = pb::AddARPNeighborsRequest::new();
            let mut ns = pb::ARPNeighbors::new();
            ns.ARPNeighbors = neighbors;
            r.neighbors = protocols::protobuf::MessageField::some(ns);
            a.add_arp_neighbors(agent.context(), &r).await.map_err(err("AddARPNeighbors"))?;
        }
    }
    let mut r = pb::CreateSandboxRequest::new();
    // The CRI sandbox id, as Kata's shim sends it (generated policies check its shape).
    r.sandbox_id = sandbox_id.to_string();
    r.hostname = spec.hostname().clone().unwrap_or_default();
    // The pod's /dev/shm, which every container binds (Kata's scheme).
    r.storages = vec![crate::rootfs::sandbox_shm_storage()];
    a.create_sandbox(agent.context(), &r).await.map_err(err("CreateSandbox"))?;
    Ok(())
}

/// The guest side of QEMU's user-mode network: eth0 10.0.2.15/24, default via 10.0.2.2.
fn user_net() -> (Option<protocols::types::Interface>, Vec<protocols::types::Route>, Vec<protocols::types::ARPNeighbor>) {
    use protocols::types as t;
    let mut ip = t::IPAddress::new();
    ip.address = hypervisor::USER_NET_GUEST.into();
    ip.mask = "24".into();
    ip.family = protocols::protobuf::EnumOrUnknown::new(t::IPFamily::v4);
    let mut i = t::Interface::new();
    i.device = "eth0".into();
    i.name = "eth0".into();
    i.hwAddr = "02:6b:63:63:00:01".into();
    i.mtu = 1500;
    i.IPAddresses = vec![ip];
    let mut r = t::Route::new();
    r.gateway = hypervisor::USER_NET_GATEWAY.into();
    r.device = "eth0".into();
    r.family = protocols::protobuf::EnumOrUnknown::new(t::IPFamily::v4);
    (Some(i), vec![r], Vec::new())
}

impl Sandbox {
    /// Refuses a container whose own limits exceed the VM (no CPU or memory hotplug:
    /// the pod's size is fixed at boot).
    pub fn check_fits(&self, cid: &str, spec: &oci_spec::runtime::Spec) -> Result<(), String> {
        sizing::check_fits(&self.size, cid, &oci_limits(spec)).map_err(|e| e.to_string())
    }

    /// Stops the VM (graceful for `grace`, then killed), tears down the network and
    /// removes the state dir. Idempotent.
    pub async fn stop(&self, grace: Duration) {
        let id = &self.id;
        match self.vm.shutdown(grace).await {
            Ok(exit) => tracing::info!("pod {id}: VM stopped: {exit}"),
            Err(e) => tracing::warn!("pod {id}: VM shutdown: {e}"),
        }
        if let Some(n) = &self.net {
            if let Err(e) = hypervisor::net::teardown(n) {
                tracing::warn!("pod {id}: network teardown: {e}");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("pod {id}: remove {}: {e}", self.dir.display());
            }
        }
    }
}

/// Cleans up after a shim that died: kills its QEMU (only if that pid still runs our
/// QEMU for this sandbox), the vsock daemon it started, the network, and the state dir.
/// Returns whether there was anything to clean.
pub fn cleanup_dead(cfg: &Config, id: &str) -> bool {
    let dir = state_dir(cfg, id);
    if !dir.exists() {
        return false;
    }
    let state = load_persisted(&dir);
    let vm_dir = dir.join("vm");
    if let Some(pid) = state.as_ref().and_then(|s| s.qemu_pid) {
        kill_if_ours(pid, &vm_dir);
    }
    // The vhost-device-vsock daemon's command line names our state dir too.
    for pid in processes_mentioning(&vm_dir) {
        kill_if_ours(pid, &vm_dir);
    }
    if let Some(net) = state.as_ref().and_then(|s| s.net.as_ref()) {
        if let Err(e) = hypervisor::net::teardown(net) {
            tracing::warn!("pod {id}: network teardown: {e}");
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!("pod {id}: remove {}: {e}", dir.display());
    }
    true
}

fn cmdline_of(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

fn kill_if_ours(pid: u32, vm_dir: &Path) {
    let Some(cmd) = cmdline_of(pid) else { return };
    if !cmd.contains(&*vm_dir.to_string_lossy()) {
        tracing::warn!("pid {pid} is not ours any more ({cmd:?}); not killing it");
        return;
    }
    let Ok(raw) = i32::try_from(pid) else { return };
    let p = nix::unistd::Pid::from_raw(raw);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    // Not our child (the shim that started it is gone): wait for /proc to drop it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && std::path::Path::new(&format!("/proc/{pid}")).exists() {
        let _ = nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| cmdline_of(*pid).is_some_and(|c| c.contains(&needle)))
        .collect()
}

/// The last lines of the console log, for error messages.
pub fn console_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join(" | ")
}

/// `error: cause: cause` (anyhow's alternate format).
pub fn error_chain<E: std::error::Error + Send + Sync + 'static>(e: E) -> String {
    format!("{:#}", anyhow::Error::new(e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The stall timer starts only with the agent's serving line, and then runs `grace`.
    #[tokio::test]
    async fn the_stall_timer_starts_when_the_agent_says_it_serves() {
        let tmp = tempfile::tempdir().unwrap();
        let console = tmp.path().join("console.log");
        std::fs::write(&console, "Booting from ROM...\nguest set up\n").unwrap();
        let grace = Duration::from_millis(200);
        assert!(tokio::time::timeout(Duration::from_secs(1), channel_stalled(&console, grace)).await.is_err(), "fired without the line");
        std::fs::write(&console, "guest set up\nINFO kata_cc_agent: kata-cc-agent 0.1.0 serving on vsock://-1:1024\n").unwrap();
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), channel_stalled(&console, grace)).await.unwrap();
        assert!(t.elapsed() >= grace);
    }

    fn spec(ann: &[(&str, &str)], mem: Option<i64>, quota: Option<i64>) -> oci_spec::runtime::Spec {
        let json = serde_json::json!({
            "ociVersion": "1.1.0",
            "annotations": ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::HashMap<_, _>>(),
            "linux": { "resources": { "memory": { "limit": mem }, "cpu": { "quota": quota, "period": 100000 } } }
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn pod_size_sources() {
        let cfg = Config::parse("[hypervisor]\nkernel=\"/k\"\ninitramfs=\"/i\"\n", Path::new("c")).unwrap();
        let gib = 1i64 << 30;
        // containerd's sandbox annotations win over the pause container's resources.
        let s = spec(
            &[
                (crate::rootfs::CONTAINER_TYPE, "sandbox"),
                (sizing::CRI_SANDBOX_CPU_QUOTA, "300000"),
                (sizing::CRI_SANDBOX_CPU_PERIOD, "100000"),
                (sizing::CRI_SANDBOX_MEMORY, "3221225472"),
            ],
            None,
            Some(50_000),
        );
        let (size, src) = pod_size(&cfg, &s).unwrap();
        assert_eq!((size.vcpus, size.memory_mib, src), (3, 3328, "containerd sandbox annotations"));
        // A CRI sandbox without limits: the default, not the pause container's resources.
        let s = spec(&[(crate::rootfs::CONTAINER_TYPE, "sandbox")], Some(4 * gib), Some(400_000));
        assert_eq!(pod_size(&cfg, &s).unwrap().0, VmSize { vcpus: 1, memory_mib: 512, capped: false });
        // `ctr run --memory-limit --cpus`: the container's own limits.
        let (size, src) = pod_size(&cfg, &spec(&[], Some(gib), Some(200_000))).unwrap();
        assert_eq!((size.vcpus, size.memory_mib, src), (2, 1280, "the container's linux.resources"));
        // A bad annotation is an error naming it.
        let e = pod_size(&cfg, &spec(&[(sizing::CRI_SANDBOX_MEMORY, "lots")], None, None)).unwrap_err().to_string();
        assert!(e.contains(sizing::CRI_SANDBOX_MEMORY) && e.contains("lots"), "{e}");
    }

    #[test]
    fn vm_ids_are_safe() {
        assert_eq!(vm_id("abc-1.x_y"), "abc-1.x_y");
        assert_eq!(vm_id("a/b c"), "a_b_c");
        assert_eq!(vm_id(&"f".repeat(80)).len(), 64);
        assert_eq!(vm_id(""), "pod");
    }

    #[test]
    fn persisted_state_round_trips_and_dead_cleanup_removes_the_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = Config::parse(
            &format!("[hypervisor]\nkernel=\"/k\"\ninitramfs=\"/i\"\n[runtime]\nstate_dir={:?}\n", tmp.path()),
            Path::new("c"),
        )
        .unwrap();
        assert!(!cleanup_dead(&cfg, "p1"));
        let dir = state_dir(&cfg, "p1");
        create_private_dir(&dir).unwrap();
        // A pid that is not ours (this test process) must survive the cleanup.
        let me = std::process::id();
        persist(&dir, &PersistedState { id: "p1".into(), qemu_pid: Some(me), net: None }).unwrap();
        assert_eq!(load_persisted(&dir).unwrap().qemu_pid, Some(me));
        assert!(cleanup_dead(&cfg, "p1"));
        assert!(!dir.exists());
    }
}
