//! The QEMU backend: [`QemuHypervisor`] starts [`QemuVm`]s.
//!
//! Launch order: state dir → `vhost-device-vsock` (hybrid vsock) and its socket →
//! QEMU → QMP handshake and a first `query-status`, all within the spec's boot
//! timeout. Then a watchdog task owns both children until the end. Every failure path
//! kills and reaps both processes and removes the sockets, pidfile and state dir; a
//! `Drop` guard does the same if the task itself is dropped.

pub mod cmdline;
mod measure;
mod process;
pub mod qmp;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

pub use measure::{sim_launch_measurement, SimMeasureError, SIM_MEASUREMENT_DOMAIN};
pub use process::QemuVm;

use crate::probe::HostCapabilities;
use crate::spec::{Confidential, Machine, ResolvedAccel, VmSpec};
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
    /// The boot files of a simulated-TEE VM could not be measured.
    #[error("cannot compute the simulated TEE's launch measurement")]
    SimMeasurement(#[source] SimMeasureError),
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
    /// Accept specs with [`Confidential::Sim`], the simulated TEE (development and CI).
    /// Off by default: such a spec is refused.
    pub allow_simulated_tee: bool,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            qemu: PathBuf::from("qemu-system-x86_64"),
            vhost_device_vsock: PathBuf::from("vhost-device-vsock"),
            poll_interval: Duration::from_millis(500),
            allow_simulated_tee: false,
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

    /// The argv QEMU would get for `spec` on this host (for `--dry-run` and logs). For
    /// the simulated TEE this reads the boot files, as `start` does, to fill in the
    /// launch measurement.
    pub fn command_line(&self, spec: &VmSpec) -> Result<Vec<String>, Error> {
        let accel = self.preflight(spec)?;
        if spec.confidential.is_simulated() {
            let mut spec = spec.clone();
            fill_sim_measurement(&mut spec, accel)?;
            return cmdline::qemu_args(&spec, accel).map_err(Error::Cmdline);
        }
        cmdline::qemu_args(spec, accel).map_err(Error::Cmdline)
    }

    fn preflight(&self, spec: &VmSpec) -> Result<ResolvedAccel, Error> {
        spec.validate().map_err(Error::Spec)?;
        if spec.confidential.is_simulated() {
            if !self.config.allow_simulated_tee {
                return Err(Error::Unsupported {
                    backend: "qemu",
                    what: "the simulated TEE (QemuConfig::allow_simulated_tee is off)".into(),
                });
            }
            tracing::warn!(id = %spec.id, "starting a VM with the SIMULATED TEE: not confidential, development only");
        }
        // Host errors say more than "unsupported" for a TEE the host lacks.
        self.host
            .check_confidential(&spec.confidential)
            .map_err(Error::Host)?;
        let accel = self.host.resolve_accel(spec.accel).map_err(Error::Host)?;
        self.caps.check(spec)?;
        Ok(accel)
    }
}

/// Sets the simulated TEE's launch measurement to [`sim_launch_measurement`] of what is
/// booted, whatever the spec carried: the guest must report what the host really
/// launches. No-op for other VMs.
fn fill_sim_measurement(spec: &mut VmSpec, accel: ResolvedAccel) -> Result<(), Error> {
    if !spec.confidential.is_simulated() {
        return Ok(());
    }
    let m = sim_launch_measurement(spec, accel)
        .map_err(|e| Error::Qemu(QemuError::SimMeasurement(e)))?;
    if let Confidential::Sim(sim) = &mut spec.confidential {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        if sim.measurement != [0; 48] && sim.measurement != m {
            tracing::warn!(id = %spec.id, given = %hex(&sim.measurement), "replacing the simulated TEE's launch measurement given in the spec by the computed one");
        }
        sim.measurement = m;
        tracing::info!(id = %spec.id, measurement = %hex(&m), "simulated TEE launch measurement");
    }
    Ok(())
}

#[async_trait]
impl crate::Hypervisor for QemuHypervisor {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn start(&self, spec: VmSpec) -> Result<Box<dyn Vm>, Error> {
        let accel = self.preflight(&spec)?;
        let spec = if spec.confidential.is_simulated() {
            // Hashing the kernel and initramfs takes a moment: off the async threads.
            let kernel = spec.kernel.clone();
            tokio::task::spawn_blocking(move || {
                let mut spec = spec;
                fill_sim_measurement(&mut spec, accel).map(|()| spec)
            })
            .await
            .map_err(|e| {
                Error::Qemu(QemuError::SimMeasurement(SimMeasureError {
                    what: "kernel",
                    path: kernel,
                    source: std::io::Error::other(e.to_string()),
                }))
            })??
        } else {
            spec
        };
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

    #[tokio::test]
    async fn simulated_tee_needs_explicit_permission() {
        let mut spec = VmSpec::new("p", "/k", "/run/p");
        spec.confidential = Confidential::Sim(crate::SimTeeConfig::default());
        let hv = QemuHypervisor::with_host(QemuConfig::default(), pvm_host());
        let err = hv.start(spec.clone()).await.unwrap_err();
        assert!(
            matches!(&err, Error::Unsupported { what, .. } if what.contains("allow_simulated_tee")),
            "{err:?}"
        );
        assert!(hv.command_line(&spec).is_err());
        let allowed = QemuConfig {
            allow_simulated_tee: true,
            ..QemuConfig::default()
        };
        let hv = QemuHypervisor::with_host(allowed, pvm_host());
        // The boot files are measured: a missing kernel is an error, before QEMU runs.
        let err = hv.start(spec.clone()).await.unwrap_err();
        assert!(
            matches!(&err, Error::Qemu(QemuError::SimMeasurement(e)) if e.what == "kernel" && e.path == std::path::Path::new("/k")),
            "{err:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), b"kernel").unwrap();
        std::fs::write(dir.path().join("i"), b"initrd").unwrap();
        spec.kernel = dir.path().join("k");
        spec.initramfs = Some(dir.path().join("i"));
        let args = hv.command_line(&spec).unwrap();
        let i = args.iter().position(|a| a == "-fw_cfg").unwrap();
        assert!(args[i + 1].starts_with("name=opt/kata-cc/sim-tee,string={"));
        // It runs under TCG here, unlike SNP/TDX.
        let i = args.iter().position(|a| a == "-accel").unwrap();
        assert_eq!(args[i + 1], "tcg");
        // The guest gets the computed launch measurement, whatever the spec carried.
        let m = sim_launch_measurement(&spec, ResolvedAccel::Tcg).unwrap();
        assert_ne!(m, [0; 48]);
        let want = crate::SimTeeConfig {
            measurement: m,
            host_data: [0; 32],
        };
        let fw_cfg = |args: &[String]| {
            let i = args.iter().position(|a| a == "-fw_cfg").unwrap();
            args[i + 1].clone()
        };
        assert_eq!(
            fw_cfg(&args),
            format!(
                "name=opt/kata-cc/sim-tee,string={}",
                want.fw_cfg_content().replace(',', ",,")
            )
        );
        spec.confidential = Confidential::Sim(crate::SimTeeConfig {
            measurement: [0x5a; 48],
            host_data: [0; 32],
        });
        assert_eq!(fw_cfg(&hv.command_line(&spec).unwrap()), fw_cfg(&args));
        // Another initramfs, another measurement.
        std::fs::write(dir.path().join("i"), b"initrd, modified").unwrap();
        assert_ne!(fw_cfg(&hv.command_line(&spec).unwrap()), fw_cfg(&args));
    }

    #[test]
    fn command_line_resolves_auto_to_tcg_on_pvm() {
        let hv = QemuHypervisor::with_host(QemuConfig::default(), pvm_host());
        let args = hv.command_line(&VmSpec::new("p", "/k", "/run/p")).unwrap();
        let i = args.iter().position(|a| a == "-accel").unwrap();
        assert_eq!(args[i + 1], "tcg");
    }
}
