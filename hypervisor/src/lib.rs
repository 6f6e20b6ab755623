//! The host side of "one VM per pod".
//!
//! A [`Hypervisor`] starts a [`Vm`] from a [`VmSpec`]. The QEMU backend
//! ([`qemu::QemuHypervisor`]) turns the spec into a command line with a pure function
//! ([`qemu::cmdline::qemu_args`], pinned by golden tests), starts
//! `vhost-device-vsock` for hybrid vsock and QEMU as children it owns, talks QMP, and
//! runs a watchdog that turns every way a VM can die (QEMU exit, vsock daemon exit,
//! `internal-error`/`guest-panicked` states) into a reported [`VmExit`] with both
//! processes reaped and the state directory removed.
//!
//! [`probe::HostCapabilities`] says what the host can run (KVM that can really run a
//! stock kernel, SEV-SNP, TDX, QEMU, vhost devices); the accelerator is chosen from it
//! at run time. [`sizing::size_vm`] derives the VM size from a pod's limits.
//! [`initdata::prepare`] turns a pod's initdata annotation into the initdata disk and the
//! TEE launch field (SNP HOST_DATA, TDX MRCONFIGID, or the simulated TEE's HOST_DATA;
//! [`Confidential::Sim`] is refused unless `QemuConfig::allow_simulated_tee`; the QEMU
//! backend gives a sim VM the launch measurement [`qemu::sim_launch_measurement`] computes
//! from its kernel, initramfs, command line and vCPUs). With the
//! `fake` feature, [`fake::FakeHypervisor`] records calls and injects failures for other
//! crates' unit tests.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use hypervisor::{qemu::{QemuConfig, QemuHypervisor}, Hypervisor, VmSpec};
//!
//! # async fn run() -> Result<(), hypervisor::Error> {
//! let hv = QemuHypervisor::new(QemuConfig::default());
//! print!("{}", hv.host().report());
//!
//! let mut spec = VmSpec::new("pod-1", "/opt/kata-cc/vmlinuz", "/run/kata-cc/vm/pod-1");
//! spec.initramfs = Some("/opt/kata-cc/initramfs.img".into());
//! spec.console_log = Some("/var/log/kata-cc/pod-1.log".into());
//! spec.memory_mib = 1024;
//!
//! let vm = hv.start(spec).await?;
//! println!("agent at {}", vm.agent_address()); // hvsock:///run/kata-cc/vm/pod-1/vm.vsock:1024
//! let exit = vm.shutdown(Duration::from_secs(5)).await?;
//! println!("stopped: {exit}");
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod initdata;
pub mod net;
pub mod probe;
pub mod qemu;
pub mod sizing;
pub mod spec;

pub use spec::{
    Accel, Confidential, Disk, MacAddr, Machine, NetDevice, QgsAddress, ResolvedAccel,
    SimTeeConfig, SnpConfig, TapRef, TdxConfig, VmSpec, Vsock, USER_NET_GATEWAY, USER_NET_GUEST,
};

/// Errors of the hypervisor API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend cannot do this.
    #[error("not supported by the {backend} backend: {what}")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// What was asked.
        what: String,
    },
    /// The spec is invalid.
    #[error("invalid VM spec")]
    Spec(#[source] spec::SpecError),
    /// The host cannot run this VM.
    #[error("host check failed")]
    Host(#[source] probe::HostError),
    /// No QEMU command line could be built.
    #[error("cannot build the QEMU command line")]
    Cmdline(#[source] qemu::cmdline::CmdlineError),
    /// Starting or controlling QEMU failed.
    #[error("QEMU backend failed")]
    Qemu(#[source] qemu::QemuError),
    /// A QMP command failed.
    #[error("QMP command failed")]
    Qmp(#[source] qemu::qmp::QmpError),
    /// The VM has already stopped.
    #[error("the VM is not running ({0})")]
    NotRunning(VmExit),
    /// A failure injected by the fake backend.
    #[error("injected failure: {0}")]
    Injected(String),
}

/// Kinds of host-guest channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsockKind {
    /// Through `vhost-device-vsock` and a unix socket.
    Hybrid,
    /// Kernel vhost-vsock.
    Kernel,
}

/// Kinds of TEE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeeKind {
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
}

/// What a backend can do on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Backend name, for messages.
    pub backend: &'static str,
    /// Channels it can set up.
    pub vsock: Vec<VsockKind>,
    /// TEEs it can launch.
    pub tee: Vec<TeeKind>,
    /// Accelerators usable here.
    pub accels: Vec<ResolvedAccel>,
    /// Machine types.
    pub machines: Vec<Machine>,
    /// Whether `pause`/`resume` work.
    pub pause: bool,
    /// Whether devices can be hot-plugged (none can, yet).
    pub hotplug: bool,
}

impl Capabilities {
    /// Checks a spec against what the backend can do.
    pub fn check(&self, spec: &VmSpec) -> Result<(), Error> {
        let unsupported = |what: String| {
            Err(Error::Unsupported {
                backend: self.backend,
                what,
            })
        };
        let vsock = match spec.vsock {
            Vsock::Hybrid { .. } => VsockKind::Hybrid,
            Vsock::Kernel { .. } => VsockKind::Kernel,
        };
        if !self.vsock.contains(&vsock) {
            return unsupported(format!("{vsock:?} vsock"));
        }
        if !self.machines.contains(&spec.machine) {
            return unsupported(format!("machine {}", spec.machine));
        }
        let needed = match spec.accel {
            Accel::Kvm => Some(ResolvedAccel::Kvm),
            Accel::Tcg => Some(ResolvedAccel::Tcg),
            Accel::Auto => None,
        };
        match needed {
            Some(a) if !self.accels.contains(&a) => return unsupported(format!("accelerator {a}")),
            None if self.accels.is_empty() => return unsupported("any accelerator".into()),
            _ => {}
        }
        let tee = match spec.confidential {
            Confidential::None | Confidential::Sim(_) => None,
            Confidential::Snp(_) => Some(TeeKind::Snp),
            Confidential::Tdx(_) => Some(TeeKind::Tdx),
        };
        if let Some(t) = tee {
            if !self.tee.contains(&t) {
                return unsupported(format!("{t:?} guests on this host"));
            }
        }
        Ok(())
    }
}

/// Where the host reaches the guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddress {
    /// Hybrid vsock: dial `path`, write `CONNECT <port>\n`, read `OK <n>\n`.
    Hybrid {
        /// Unix socket of the vsock daemon.
        path: PathBuf,
        /// Agent port.
        port: u32,
    },
    /// Kernel vsock.
    Vsock {
        /// Guest CID.
        cid: u32,
        /// Agent port.
        port: u32,
    },
}

impl fmt::Display for AgentAddress {
    /// `hvsock://<path>:<port>` or `vsock://<cid>:<port>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentAddress::Hybrid { path, port } => write!(f, "hvsock://{}:{port}", path.display()),
            AgentAddress::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
        }
    }
}

/// Why a VM crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashKind {
    /// QEMU exited (non-zero or by a signal) without being asked.
    QemuExited,
    /// The vsock daemon died; the agent channel is gone.
    VsockDaemonExited,
    /// QEMU reports a state the guest cannot leave (`internal-error`, e.g. a KVM
    /// emulation failure, `guest-panicked`, `io-error`, `watchdog`).
    GuestState,
    /// The guest reported a panic (`GUEST_PANICKED`).
    GuestPanicked,
    /// The watchdog went away without seeing the end (runtime shut down).
    Lost,
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// Stopped on request; `forced` if it had to be killed.
    Shutdown {
        /// Killed after the grace period and `quit`.
        forced: bool,
    },
    /// The guest powered off by itself (QEMU exited with status 0).
    GuestPoweroff,
    /// Died.
    Crashed {
        /// What happened.
        kind: CrashKind,
        /// Details: exit status, QEMU state, the last lines of the process's stderr.
        detail: String,
    },
}

impl VmExit {
    /// Whether this is a crash.
    pub fn is_crash(&self) -> bool {
        matches!(self, VmExit::Crashed { .. })
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::Shutdown { forced: false } => f.write_str("shut down"),
            VmExit::Shutdown { forced: true } => {
                f.write_str("killed after the shutdown grace period")
            }
            VmExit::GuestPoweroff => f.write_str("guest powered off"),
            VmExit::Crashed { kind, detail } => write!(f, "crashed ({kind:?}): {detail}"),
        }
    }
}

/// Life cycle of a started VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmState {
    /// vCPUs run.
    Running,
    /// Paused by [`Vm::pause`].
    Paused,
    /// Gone; processes reaped and files removed.
    Stopped(VmExit),
}

/// A backend that starts VMs.
#[async_trait]
pub trait Hypervisor: Send + Sync + fmt::Debug {
    /// What this backend can do here.
    fn capabilities(&self) -> &Capabilities;

    /// Starts a VM. On error nothing is left behind (processes, sockets, state dir).
    async fn start(&self, spec: VmSpec) -> Result<Box<dyn Vm>, Error>;
}

/// A running VM. Dropping it stops the VM (killed, files removed).
#[async_trait]
pub trait Vm: Send + Sync + fmt::Debug {
    /// The spec's id.
    fn id(&self) -> &str;

    /// Where the guest agent listens.
    fn agent_address(&self) -> &AgentAddress;

    /// The serial console log, if kept.
    fn console_log(&self) -> Option<&Path>;

    /// The VMM's process id, if there is a process.
    fn pid(&self) -> Option<u32>;

    /// Current state.
    fn state(&self) -> VmState;

    /// Waits until the VM has stopped and everything is cleaned up.
    async fn wait(&self) -> VmExit;

    /// Pauses the vCPUs.
    async fn pause(&self) -> Result<(), Error>;

    /// Resumes after [`Vm::pause`].
    async fn resume(&self) -> Result<(), Error>;

    /// Asks the guest to power off, waits up to `grace`, then quits QEMU and finally
    /// kills it. Returns how the VM ended (a crash if it had crashed before). Idempotent.
    async fn shutdown(&self, grace: Duration) -> Result<VmExit, Error>;
}
