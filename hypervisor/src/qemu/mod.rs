//! The QEMU backend: [`QemuHypervisor`] starts [`QemuVm`]s.
//!
//! Launch order: state dir → `vhost-device-vsock` (hybrid vsock) and its socket →
//! QEMU → QMP handshake and a first `query-status`, all within the spec's boot
//! timeout. Then a watchdog task owns both children until the end. Every failure path
//! kills and reaps both processes and removes the sockets, pidfile and state dir; a
//! `Drop` guard does the same if the task itself is dropped.

pub mod cmdline;
mod process;
pub mod qmp;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

pub use process::QemuVm;

use crate::probe::HostCapabilities;
use crate::spec::{Machine, ResolvedAccel, VmSpec};
use crate::{Capabilities, Error, TeeKind, Vm, VsockKind};

/// Failures of the QEMU backend while launching or supervising.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// Creating the state dir or a socket dir failed.
    #[error("cannot prepare {path}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A child exited while the VM was being started.
    #[error("{program} exited during start ({status}); its stderr ends with:\n{stderr}")]
    ExitedDuringStart {
        /// The program.
        program: String,
        /// Exit status.
        status: String,
        /// Last lines of its stderr.
        stderr: String,
    },
    /// The boot deadline passed.
    #[error("{what} not ready within {timeout:?}")]
    BootTimeout {
        /// What was awaited.
        what: String,
        /// The deadline.
        timeout: Duration,
    },
    /// QMP failed during start.
    #[error("QMP handshake failed")]
    Qmp(#[source] qmp::QmpError),
    /// The guest was dead on arrival.
    #[error("VM in state {status} right after start; QEMU stderr ends with:\n{stderr}")]
    CrashedDuringStart {
        /// QEMU run state.
        status: String,
        /// Last lines of QEMU's stderr.
        stderr: String,
    },
}

/// Where the backend finds its programs and how often it polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// QEMU binary (looked up on PATH when it is a bare name).
    pub qemu: PathBuf,
    /// `vhost-device-vsock` binary (looked up on PATH when it is a bare name).
    pub vhost_device_vsock: PathBuf,
    /// How often the watchdog asks QMP for the run state.
    pub poll_interval: Duration,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            qemu: PathBuf::from("qemu-system-x86_64"),
            vhost_device_vsock: PathBuf::from("vhost-device-vsock"),
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// The QEMU backend.
#[derive(Debug)]
pub struct QemuHypervisor {
    config: QemuConfig,
    host: HostCapabilities,
    caps: Capabilities,
}

impl QemuHypervisor {
    /// Probes the host and builds the backend.
    pub fn new(config: QemuConfig) -> Self {
        let host = HostCapabilities::probe(&config.qemu);
        Self::with_host(config, host)
    }

    /// Builds the backend from a given host description (tests, or a cached probe).
    pub fn with_host(config: QemuConfig, host: HostCapabilities) -> Self {
        let mut vsock = Vec::new();
        if host.vhost_device_vsock.is_some() || config.vhost_device_vsock.components().count() > 1 {
            vsock.push(VsockKind::Hybrid);
        }
        if host.vhost_vsock_dev {
            vsock.push(VsockKind::Kernel);
        }
        let mut accels = Vec::new();
        if host.qemu.is_ok() {
            accels.push(ResolvedAccel::Tcg);
            if host.kvm_usable() {
                accels.push(ResolvedAccel::Kvm);
            }
        }
        let mut tee = Vec::new();
        if host.snp().is_ok() {
            tee.push(TeeKind::Snp);
        }
        if host.tdx().is_ok() {
            tee.push(TeeKind::Tdx);
        }
        let caps = Capabilities {
            backend: "qemu",
            vsock,
            tee,
            accels,
            machines: vec![Machine::Q35, Machine::Microvm],
            pause: true,
            hotplug: false,
        };
        Self { config, host, caps }
    }

    /// What the probe found.
    pub fn host(&self) -> &HostCapabilities {
        &self.host
    }

    /// The argv QEMU would get for `spec` on this host (for `--dry-run` and logs).
    pub fn command_line(&self, spec: &VmSpec) -> Result<Vec<String>, Error> {
        let accel = self.preflight(spec)?;
        cmdline::qemu_args(spec, accel).map_err(Error::Cmdline)
    }

    fn preflight(&self, spec: &VmSpec) -> Result<ResolvedAccel, Error> {
        spec.validate().map_err(Error::Spec)?;
        // Host errors say more than "unsupported" for a TEE the host lacks.
        self.host
            .check_confidential(&spec.confidential)
            .map_err(Error::Host)?;
        let accel = self.host.resolve_accel(spec.accel).map_err(Error::Host)?;
        self.caps.check(spec)?;
        Ok(accel)
    }
}

#[async_trait]
impl crate::Hypervisor for QemuHypervisor {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn start(&self, spec: VmSpec) -> Result<Box<dyn Vm>, Error> {
        let accel = self.preflight(&spec)?;
        let args = cmdline::qemu_args(&spec, accel).map_err(Error::Cmdline)?;
        tracing::info!(id = %spec.id, %accel, "starting QEMU");
        tracing::debug!(args = ?args, "QEMU command line");
        let vm = process::launch(&self.config, spec, args)
            .await
            .map_err(Error::Qemu)?;
        Ok(Box::new(vm))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
mod tests {
    use super::*;
    use crate::probe::{KvmFlavor, KvmInfo, QemuInfo};
    use crate::spec::{Confidential, SnpConfig, Vsock};
    use crate::Hypervisor as _;

    fn pvm_host() -> HostCapabilities {
        HostCapabilities {
            kvm: Ok(KvmInfo {
                api_version: 12,
                flavor: KvmFlavor::Pvm,
                vm_types: 1,
                guest_memfd: true,
            }),
            sev_snp_param: false,
            tdx_param: false,
            qemu: Ok(QemuInfo {
                path: "/usr/bin/qemu-system-x86_64".into(),
                version: (10, 0, 2),
                sev_snp_guest: true,
                tdx_guest: false,
            }),
            vhost_device_vsock: Some("/usr/bin/vhost-device-vsock".into()),
            vhost_vsock_dev: false,
            vhost_net_dev: false,
            tun_dev: true,
        }
    }

    #[tokio::test]
    async fn tee_on_host_without_tee_is_a_clear_error() {
        let hv = QemuHypervisor::with_host(QemuConfig::default(), pvm_host());
        let mut spec = VmSpec::new("p", "/k", "/run/p");
        spec.confidential = Confidential::Snp(SnpConfig::default());
        let err = hv.start(spec).await.unwrap_err();
        let msg = format!("{}", err);
        let src = std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default();
        assert!(
            matches!(err, Error::Host(crate::probe::HostError::NoSnp(_))),
            "{msg}"
        );
        assert!(src.contains("SEV-SNP"), "{src}");
    }

    #[tokio::test]
    async fn kernel_vsock_unsupported_without_device() {
        let hv = QemuHypervisor::with_host(QemuConfig::default(), pvm_host());
        let mut spec = VmSpec::new("p", "/k", "/run/p");
        spec.vsock = Vsock::Kernel { cid: 5 };
        assert!(matches!(
            hv.start(spec).await,
            Err(Error::Unsupported { .. })
        ));
        assert_eq!(hv.capabilities().vsock, vec![VsockKind::Hybrid]);
        assert_eq!(hv.capabilities().accels, vec![ResolvedAccel::Tcg]);
    }

    #[test]
    fn command_line_resolves_auto_to_tcg_on_pvm() {
        let hv = QemuHypervisor::with_host(QemuConfig::default(), pvm_host());
        let args = hv.command_line(&VmSpec::new("p", "/k", "/run/p")).unwrap();
        let i = args.iter().position(|a| a == "-accel").unwrap();
        assert_eq!(args[i + 1], "tcg");
    }
}
