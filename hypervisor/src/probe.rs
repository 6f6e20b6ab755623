//! What this host can run: KVM (and whether it is really usable), TEEs, QEMU,
//! vsock and vhost devices. [`HostCapabilities::probe`] gathers it;
//! [`HostCapabilities::report`] renders it for humans (`kata-cc check`).
//!
//! The probe never fails as a whole: each missing piece is recorded with the reason.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kvm_ioctls::Kvm;

use crate::spec::{Accel, Confidential, ResolvedAccel};

/// `KVM_CAP_VM_TYPES` (Linux 6.10+): bitmap of supported `KVM_CREATE_VM` types.
const KVM_CAP_VM_TYPES: u64 = kvm_bindings::KVM_CAP_VM_TYPES as u64;
/// `KVM_CAP_GUEST_MEMFD`.
const KVM_CAP_GUEST_MEMFD: u64 = kvm_bindings::KVM_CAP_GUEST_MEMFD as u64;

/// Host checks that refuse a launch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// KVM was required but cannot run a stock kernel here.
    #[error("KVM requested but not usable: {0}")]
    KvmUnusable(String),
    /// The host has no SEV-SNP.
    #[error("SEV-SNP requested but this host cannot launch SNP guests: {0}")]
    NoSnp(String),
    /// The host has no TDX.
    #[error("TDX requested but this host cannot launch TDX guests: {0}")]
    NoTdx(String),
    /// QEMU is missing or too old.
    #[error("QEMU not usable: {0}")]
    Qemu(String),
}

/// Kinds of the KVM module found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmFlavor {
    /// `kvm_intel`.
    Intel,
    /// `kvm_amd`.
    Amd,
    /// PVM (`kvm_pvm`): runs only `CONFIG_PVM_GUEST` kernels; stock kernels die in its
    /// emulator and QEMU sits in `internal-error`.
    Pvm,
    /// `/dev/kvm` answers but the vendor module is unknown.
    Unknown,
}

/// Facts about `/dev/kvm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmInfo {
    /// `KVM_GET_API_VERSION` (12 on every supported kernel).
    pub api_version: i32,
    /// Which module backs it.
    pub flavor: KvmFlavor,
    /// Bitmap from `KVM_CAP_VM_TYPES` (bit n = VM type n); 0 if unsupported.
    pub vm_types: u32,
    /// `KVM_CAP_GUEST_MEMFD`.
    pub guest_memfd: bool,
}

impl KvmInfo {
    /// Whether this KVM can run a stock (non-PVM) guest kernel.
    pub fn runs_stock_kernels(&self) -> bool {
        self.api_version == 12 && matches!(self.flavor, KvmFlavor::Intel | KvmFlavor::Amd)
    }

    /// `KVM_X86_SNP_VM` is among the supported VM types.
    pub fn snp_vm_type(&self) -> bool {
        self.vm_types & (1 << kvm_bindings::KVM_X86_SNP_VM) != 0
    }

    /// `KVM_X86_TDX_VM` is among the supported VM types.
    pub fn tdx_vm_type(&self) -> bool {
        self.vm_types & (1 << kvm_bindings::KVM_X86_TDX_VM) != 0
    }
}

/// Facts about the QEMU binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuInfo {
    /// Binary used.
    pub path: PathBuf,
    /// `(major, minor, micro)` from `--version`.
    pub version: (u32, u32, u32),
    /// `-object help` lists `sev-snp-guest`.
    pub sev_snp_guest: bool,
    /// `-object help` lists `tdx-guest` (QEMU 10.1+).
    pub tdx_guest: bool,
}

/// What the host offers. Plain data: tests build it by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCapabilities {
    /// `/dev/kvm`, or why it is unusable.
    pub kvm: Result<KvmInfo, String>,
    /// `/sys/module/kvm_amd/parameters/sev_snp` is `Y`/`1`.
    pub sev_snp_param: bool,
    /// `/sys/module/kvm_intel/parameters/tdx` is `Y`/`1`.
    pub tdx_param: bool,
    /// QEMU, or why it is unusable.
    pub qemu: Result<QemuInfo, String>,
    /// `vhost-device-vsock` on PATH.
    pub vhost_device_vsock: Option<PathBuf>,
    /// `/dev/vhost-vsock` exists (kernel vsock possible).
    pub vhost_vsock_dev: bool,
    /// `/dev/vhost-net` exists (vhost=on possible).
    pub vhost_net_dev: bool,
    /// `/dev/net/tun` exists.
    pub tun_dev: bool,
}

impl HostCapabilities {
    /// Probes this host. `qemu` is the QEMU binary (name looked up on PATH, or a path).
    pub fn probe(qemu: &Path) -> Self {
        Self::probe_at(Path::new("/"), qemu)
    }

    /// Probes with `/sys` and `/dev` looked up under `root` (for tests); KVM ioctls
    /// and QEMU always run for real.
    pub fn probe_at(root: &Path, qemu: &Path) -> Self {
        let sys = |p: &str| root.join(p.trim_start_matches('/'));
        let yes = |p: &str| {
            std::fs::read_to_string(sys(p))
                .map(|s| matches!(s.trim(), "Y" | "y" | "1"))
                .unwrap_or(false)
        };
        Self {
            kvm: probe_kvm(&sys("/dev/kvm"), &sys("/sys/module")),
            sev_snp_param: yes("/sys/module/kvm_amd/parameters/sev_snp"),
            tdx_param: yes("/sys/module/kvm_intel/parameters/tdx"),
            qemu: probe_qemu(qemu),
            vhost_device_vsock: which("vhost-device-vsock"),
            vhost_vsock_dev: sys("/dev/vhost-vsock").exists(),
            vhost_net_dev: sys("/dev/vhost-net").exists(),
            tun_dev: sys("/dev/net/tun").exists(),
        }
    }

    /// Whether KVM can run a stock guest kernel.
    pub fn kvm_usable(&self) -> bool {
        self.kvm
            .as_ref()
            .map(KvmInfo::runs_stock_kernels)
            .unwrap_or(false)
    }

    /// Whether an SNP guest can be launched (module parameter, VM type, QEMU object).
    pub fn snp(&self) -> Result<(), String> {
        if !self.kvm_usable() {
            return Err("KVM cannot run stock kernels here".into());
        }
        if !self.sev_snp_param {
            return Err("kvm_amd sev_snp parameter is not enabled".into());
        }
        if !self.kvm.as_ref().map(KvmInfo::snp_vm_type).unwrap_or(false) {
            return Err("KVM does not offer KVM_X86_SNP_VM".into());
        }
        match &self.qemu {
            Ok(q) if q.sev_snp_guest => Ok(()),
            Ok(q) => Err(format!(
                "QEMU {} has no sev-snp-guest object",
                fmt_version(q.version)
            )),
            Err(e) => Err(e.clone()),
        }
    }

    /// Whether a TDX guest can be launched.
    pub fn tdx(&self) -> Result<(), String> {
        if !self.kvm_usable() {
            return Err("KVM cannot run stock kernels here".into());
        }
        if !self.tdx_param {
            return Err("kvm_intel tdx parameter is not enabled".into());
        }
        if !self.kvm.as_ref().map(KvmInfo::tdx_vm_type).unwrap_or(false) {
            return Err("KVM does not offer KVM_X86_TDX_VM".into());
        }
        match &self.qemu {
            Ok(q) if q.tdx_guest => Ok(()),
            Ok(q) => Err(format!(
                "QEMU {} has no tdx-guest object (needs 10.1+)",
                fmt_version(q.version)
            )),
            Err(e) => Err(e.clone()),
        }
    }

    /// Resolves the accelerator: KVM only if it can run a stock kernel.
    pub fn resolve_accel(&self, wanted: Accel) -> Result<ResolvedAccel, HostError> {
        match wanted {
            Accel::Tcg => Ok(ResolvedAccel::Tcg),
            Accel::Auto if self.kvm_usable() => Ok(ResolvedAccel::Kvm),
            Accel::Auto => Ok(ResolvedAccel::Tcg),
            Accel::Kvm if self.kvm_usable() => Ok(ResolvedAccel::Kvm),
            Accel::Kvm => Err(HostError::KvmUnusable(self.kvm_summary())),
        }
    }

    /// Checks that the host can launch this kind of guest.
    pub fn check_confidential(&self, c: &Confidential) -> Result<(), HostError> {
        match c {
            // The simulated TEE needs nothing from the host (the backend gates it).
            Confidential::None | Confidential::Sim(_) => Ok(()),
            Confidential::Snp(_) => self.snp().map_err(HostError::NoSnp),
            Confidential::Tdx(_) => self.tdx().map_err(HostError::NoTdx),
        }
    }

    fn kvm_summary(&self) -> String {
        match &self.kvm {
            Err(e) => e.clone(),
            Ok(k) => match k.flavor {
                KvmFlavor::Pvm => {
                    "/dev/kvm is PVM (kvm_pvm), which runs only CONFIG_PVM_GUEST kernels; \
                                   stock kernels stop with a KVM emulation failure"
                        .into()
                }
                KvmFlavor::Unknown => "/dev/kvm is backed by neither kvm_intel nor kvm_amd".into(),
                _ if k.api_version != 12 => format!("unexpected KVM API version {}", k.api_version),
                _ => "usable".into(),
            },
        }
    }

    /// A human-readable multi-line report.
    pub fn report(&self) -> String {
        let mut r = String::new();
        let mark = |ok: bool| if ok { "ok  " } else { "no  " };
        match &self.kvm {
            Ok(k) => {
                let _ = writeln!(
                    r,
                    "{}kvm: /dev/kvm API {} ({:?}), guest_memfd {}, VM types {:#x}",
                    mark(self.kvm_usable()),
                    k.api_version,
                    k.flavor,
                    if k.guest_memfd { "yes" } else { "no" },
                    k.vm_types
                );
                if !self.kvm_usable() {
                    let _ = writeln!(r, "      {}", self.kvm_summary());
                }
            }
            Err(e) => {
                let _ = writeln!(r, "no  kvm: {e}");
            }
        }
        let accel = if self.kvm_usable() {
            "kvm"
        } else {
            "tcg (emulation, slow)"
        };
        let _ = writeln!(r, "    accelerator chosen for Auto: {accel}");
        let snp = self.snp();
        let _ = writeln!(
            r,
            "{}sev-snp: {}",
            mark(snp.is_ok()),
            snp.err().unwrap_or_else(|| "available".into())
        );
        let tdx = self.tdx();
        let _ = writeln!(
            r,
            "{}tdx: {}",
            mark(tdx.is_ok()),
            tdx.err().unwrap_or_else(|| "available".into())
        );
        match &self.qemu {
            Ok(q) => {
                let _ = writeln!(
                    r,
                    "{}qemu: {} {}{}",
                    mark(q.version.0 >= 10),
                    q.path.display(),
                    fmt_version(q.version),
                    if q.version.0 < 10 {
                        " (10.0+ recommended: older TCG boots oops)"
                    } else {
                        ""
                    }
                );
            }
            Err(e) => {
                let _ = writeln!(r, "no  qemu: {e}");
            }
        }
        match &self.vhost_device_vsock {
            Some(p) => {
                let _ = writeln!(r, "ok  hybrid vsock: {}", p.display());
            }
            None => {
                let _ = writeln!(r, "no  hybrid vsock: vhost-device-vsock not on PATH (cargo install vhost-device-vsock)");
            }
        }
        let _ = writeln!(
            r,
            "{}kernel vsock: /dev/vhost-vsock",
            mark(self.vhost_vsock_dev)
        );
        let _ = writeln!(
            r,
            "{}vhost-net: /dev/vhost-net (taps use vhost=off without it)",
            mark(self.vhost_net_dev)
        );
        let _ = writeln!(r, "{}tun: /dev/net/tun", mark(self.tun_dev));
        r
    }
}

fn fmt_version(v: (u32, u32, u32)) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
}

fn probe_kvm(dev: &Path, modules: &Path) -> Result<KvmInfo, String> {
    if !dev.exists() {
        return Err(format!("{} does not exist", dev.display()));
    }
    let cpath = std::ffi::CString::new(dev.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} contains a NUL byte", dev.display()))?;
    let kvm =
        Kvm::new_with_path(&cpath).map_err(|e| format!("cannot open {}: {e}", dev.display()))?;
    let flavor = if modules.join("kvm_pvm").exists() {
        KvmFlavor::Pvm
    } else if modules.join("kvm_intel").exists() {
        KvmFlavor::Intel
    } else if modules.join("kvm_amd").exists() {
        KvmFlavor::Amd
    } else {
        KvmFlavor::Unknown
    };
    // check_extension_raw returns the capability's value; negative means error.
    let vm_types = u32::try_from(kvm.check_extension_raw(KVM_CAP_VM_TYPES)).unwrap_or(0);
    let guest_memfd = kvm.check_extension_raw(KVM_CAP_GUEST_MEMFD) > 0;
    Ok(KvmInfo {
        api_version: kvm.get_api_version(),
        flavor,
        vm_types,
        guest_memfd,
    })
}

fn probe_qemu(qemu: &Path) -> Result<QemuInfo, String> {
    let path = if qemu.components().count() > 1 {
        qemu.to_owned()
    } else {
        which(&qemu.to_string_lossy())
            .ok_or_else(|| format!("{} not found on PATH", qemu.display()))?
    };
    let run = |args: &[&str]| -> Result<String, String> {
        let out = std::process::Command::new(&path)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let version = parse_qemu_version(&run(&["--version"])?)
        .ok_or_else(|| format!("cannot parse `{} --version`", path.display()))?;
    let objects = run(&["-object", "help"])?;
    let has = |name: &str| objects.lines().any(|l| l.trim() == name);
    Ok(QemuInfo {
        sev_snp_guest: has("sev-snp-guest"),
        tdx_guest: has("tdx-guest"),
        path,
        version,
    })
}

/// Parses `QEMU emulator version 10.0.2 (Debian ...)`.
pub fn parse_qemu_version(out: &str) -> Option<(u32, u32, u32)> {
    let rest = out.lines().next()?.split("version ").nth(1)?;
    let ver = rest.split_whitespace().next()?;
    let mut it = ver.split('.').map(|p| p.parse::<u32>().ok());
    let major = it.next()??;
    let minor = it.next().flatten().unwrap_or(0);
    let micro = it.next().flatten().unwrap_or(0);
    Some((major, minor, micro))
}

/// Looks a program up on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
mod tests {
    use super::*;

    fn host(flavor: KvmFlavor, vm_types: u32) -> HostCapabilities {
        HostCapabilities {
            kvm: Ok(KvmInfo {
                api_version: 12,
                flavor,
                vm_types,
                guest_memfd: true,
            }),
            sev_snp_param: true,
            tdx_param: false,
            qemu: Ok(QemuInfo {
                path: "/usr/bin/qemu".into(),
                version: (10, 0, 2),
                sev_snp_guest: true,
                tdx_guest: false,
            }),
            vhost_device_vsock: None,
            vhost_vsock_dev: false,
            vhost_net_dev: false,
            tun_dev: true,
        }
    }

    #[test]
    fn pvm_resolves_to_tcg() {
        let h = host(KvmFlavor::Pvm, 1);
        assert!(!h.kvm_usable());
        assert_eq!(h.resolve_accel(Accel::Auto), Ok(ResolvedAccel::Tcg));
        assert!(
            matches!(h.resolve_accel(Accel::Kvm), Err(HostError::KvmUnusable(m)) if m.contains("PVM"))
        );
        assert!(h.report().contains("PVM"));
    }

    #[test]
    fn amd_with_snp() {
        let h = host(KvmFlavor::Amd, 1 | 1 << 2 | 1 << 3 | 1 << 4);
        assert_eq!(h.resolve_accel(Accel::Auto), Ok(ResolvedAccel::Kvm));
        assert_eq!(h.snp(), Ok(()));
        assert!(h.tdx().is_err());
        assert!(matches!(
            h.check_confidential(&Confidential::Tdx(crate::spec::TdxConfig {
                mrconfigid: [0; 48],
                quote_generation_socket: None,
                firmware: "/f".into()
            })),
            Err(HostError::NoTdx(_))
        ));
        let no_type = host(KvmFlavor::Amd, 1);
        assert!(no_type.snp().unwrap_err().contains("KVM_X86_SNP_VM"));
    }

    #[test]
    fn version_parse() {
        assert_eq!(
            parse_qemu_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)\nCopyright"),
            Some((10, 0, 2))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.15\n"),
            Some((7, 2, 15))
        );
        assert_eq!(parse_qemu_version("garbage"), None);
    }

    #[test]
    fn probe_this_host_does_not_panic() {
        let h = HostCapabilities::probe(Path::new("qemu-system-x86_64"));
        let report = h.report();
        assert!(report.contains("kvm"));
        // This machine's /dev/kvm is PVM (see docs/FACTS.md): Auto must not pick KVM.
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert!(!h.kvm_usable());
        }
    }
}
