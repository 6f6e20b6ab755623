//! What a VM should look like: [`VmSpec`] and its parts, with validation.
//!
//! A spec is plain data. [`VmSpec::validate`] checks everything that can be checked
//! without touching the host (names, sizes, the kernel command line, TEE rules); the
//! backend checks the host separately.

use std::fmt;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest kernel command line x86 Linux accepts (`COMMAND_LINE_SIZE`), NUL included.
pub const MAX_CMDLINE_LEN: usize = 2047;
/// `sun_path` is 108 bytes including the terminating NUL.
pub const MAX_UNIX_SOCKET_PATH: usize = 107;
/// Guest CID used on the device side of hybrid vsock (each VM has its own daemon).
pub const HYBRID_GUEST_CID: u32 = 3;
/// Port the guest agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Problems found in a [`VmSpec`] before anything is started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The VM id is empty, too long or has characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid VM id {0:?}: use 1-64 characters of [A-Za-z0-9_.-]")]
    InvalidId(String),
    /// vCPU count out of range.
    #[error("vcpus must be between 1 and {max}, got {got}")]
    Vcpus {
        /// Requested count.
        got: u32,
        /// Largest accepted count.
        max: u32,
    },
    /// Memory size out of range.
    #[error("memory_mib must be between {min} and {max}, got {got}")]
    Memory {
        /// Requested size.
        got: u64,
        /// Smallest accepted size.
        min: u64,
        /// Largest accepted size.
        max: u64,
    },
    /// The extra kernel parameters have leading or trailing whitespace (the SNP
    /// measurement trims the command line, so both sides would disagree).
    #[error("kernel cmdline has leading or trailing whitespace: {0:?}")]
    CmdlineWhitespace(String),
    /// The kernel command line has a control character (newline, NUL, ...).
    #[error("kernel cmdline contains a control character")]
    CmdlineControl,
    /// The kernel command line is longer than the kernel accepts.
    #[error("kernel cmdline is {0} bytes, more than {MAX_CMDLINE_LEN}")]
    CmdlineTooLong(usize),
    /// A path is not valid UTF-8 (QEMU options are built as strings).
    #[error("path {0:?} is not valid UTF-8")]
    NonUtf8Path(PathBuf),
    /// A path that must be absolute is relative.
    #[error("path {0:?} must be absolute")]
    RelativePath(PathBuf),
    /// A unix socket path would be longer than `sun_path` allows.
    #[error("unix socket path {0:?} is longer than {MAX_UNIX_SOCKET_PATH} bytes")]
    SocketPathTooLong(PathBuf),
    /// A tap interface name is invalid.
    #[error("invalid tap name {0:?}: use 1-15 characters of [A-Za-z0-9_.-]")]
    InvalidTapName(String),
    /// A negative tap file descriptor.
    #[error("invalid tap file descriptor {0}")]
    InvalidTapFd(RawFd),
    /// QEMU's user-mode network for a hardware TEE guest: its traffic would be made
    /// by the host on the guest's behalf; TEE pods get a tap.
    #[error("user-mode networking is refused for TEE guests")]
    UserNetInTee,
    /// A disk serial is invalid.
    #[error("invalid disk serial {0:?}: use 1-20 characters of [A-Za-z0-9_-]")]
    InvalidDiskSerial(String),
    /// Two disks share a serial.
    #[error("duplicate disk serial {0:?}")]
    DuplicateDiskSerial(String),
    /// A CPU model name is invalid.
    #[error("invalid CPU model {0:?}")]
    InvalidCpuModel(String),
    /// The kernel vsock CID is reserved (0, 1, 2 and u32::MAX are).
    #[error("guest CID {0} is reserved; use 3 or more")]
    ReservedCid(u32),
    /// Confidential guests need the q35 machine.
    #[error("confidential guests need machine q35, not {0}")]
    TeeMachine(Machine),
    /// Confidential guests need KVM.
    #[error("confidential guests need the KVM accelerator, TCG cannot run them")]
    TeeNeedsKvm,
    /// A debug console would give the host a shell in a confidential guest.
    #[error("a debug console is never allowed in a confidential guest")]
    TeeDebugConsole,
    /// A zero boot timeout.
    #[error("boot timeout must be positive")]
    ZeroBootTimeout,
}

/// The QEMU machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Machine {
    /// `q35`: PCI, ACPI; the only machine that can host a TEE guest.
    #[default]
    Q35,
    /// `microvm`: virtio-mmio devices, faster to boot; the guest kernel needs
    /// `virtio_mmio` (a module in Debian's kernel) and, under TCG, `lpj=` (added
    /// automatically).
    Microvm,
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Machine::Q35 => "q35",
            Machine::Microvm => "microvm",
        })
    }
}

/// The accelerator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// Hardware virtualisation; fails if the host cannot run a stock kernel with it.
    Kvm,
    /// QEMU's emulator.
    Tcg,
    /// KVM when it can really run a stock kernel here, TCG otherwise.
    #[default]
    Auto,
}

/// An accelerator after [`Accel::Auto`] was resolved against the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedAccel {
    /// `-accel kvm`
    Kvm,
    /// `-accel tcg`
    Tcg,
}

impl fmt::Display for ResolvedAccel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResolvedAccel::Kvm => "kvm",
            ResolvedAccel::Tcg => "tcg",
        })
    }
}

/// How the host reaches the guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vsock {
    /// Hybrid vsock through a `vhost-device-vsock` daemon: the host dials
    /// `<dir>/vm.vsock` and writes `CONNECT <port>\n`.
    Hybrid {
        /// Directory for `vhost.sock` (QEMU side) and `vm.vsock` (host side).
        dir: PathBuf,
    },
    /// Kernel vhost-vsock (`/dev/vhost-vsock`): the guest gets this CID.
    Kernel {
        /// Guest context id, unique on the host.
        cid: u32,
    },
}

impl Vsock {
    /// The vhost-user socket QEMU connects to (hybrid only).
    pub fn vhost_socket(&self) -> Option<PathBuf> {
        match self {
            Vsock::Hybrid { dir } => Some(dir.join("vhost.sock")),
            Vsock::Kernel { .. } => None,
        }
    }

    /// The socket the host dials to reach the guest (hybrid only).
    pub fn uds_path(&self) -> Option<PathBuf> {
        match self {
            Vsock::Hybrid { dir } => Some(dir.join("vm.vsock")),
            Vsock::Kernel { .. } => None,
        }
    }
}

/// Which tap device backs a NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapRef {
    /// An existing tap interface, opened by QEMU by name (in QEMU's netns).
    Name(String),
    /// An open tap file descriptor that QEMU inherits. The caller keeps it open
    /// until `start` returns.
    Fd(RawFd),
    /// No tap: QEMU's user-mode network stack (slirp). The guest is `10.0.2.15/24`
    /// behind a NAT with gateway `10.0.2.2` ([`USER_NET_GUEST`], [`USER_NET_GATEWAY`]);
    /// its connections are made by QEMU on the host, so it can reach whatever the host
    /// can, including host-local services (`10.0.2.2` is the host's loopback). For pods
    /// without a network namespace (plain `ctr run`) where the configuration asks for it.
    User,
}

/// The guest address on a [`TapRef::User`] network.
pub const USER_NET_GUEST: &str = "10.0.2.15";
/// The gateway (the host, NATed by QEMU) on a [`TapRef::User`] network.
pub const USER_NET_GATEWAY: &str = "10.0.2.2";

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A virtio-net NIC backed by a tap device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    /// The tap behind it.
    pub tap: TapRef,
    /// The guest's MAC address.
    pub mac: MacAddr,
}

/// A read-only raw block device (for example the initdata image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Image file on the host.
    pub path: PathBuf,
    /// virtio serial; the guest finds it as `/dev/disk/by-id/virtio-<serial>` or in
    /// `/sys/block/vd*/serial`. 1-20 characters of `[A-Za-z0-9_-]`.
    pub serial: String,
}

/// AMD SEV-SNP launch parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpConfig {
    /// Position of the C-bit in a page table entry (51 on Milan/Genoa).
    pub cbitpos: u32,
    /// Physical address bits lost to memory encryption (usually 1).
    pub reduced_phys_bits: u32,
    /// Guest policy (`0x30000`: SMT allowed, reserved bit 17 set).
    pub policy: u64,
    /// HOST_DATA: the initdata digest, reported in the attestation report.
    pub host_data: [u8; 32],
    /// AmdSev OVMF build; with `kernel_hashes` it must carry the
    /// SNP_KERNEL_HASHES section or the kernel is not measured.
    pub firmware: PathBuf,
    /// Measure kernel, initrd and cmdline into the launch digest.
    pub kernel_hashes: bool,
}

impl Default for SnpConfig {
    fn default() -> Self {
        Self {
            cbitpos: 51,
            reduced_phys_bits: 1,
            policy: 0x30000,
            host_data: [0; 32],
            firmware: PathBuf::from("/usr/share/ovmf/AMDSEV.fd"),
            kernel_hashes: true,
        }
    }
}

/// Where QEMU forwards TDX quote requests (a QGS daemon).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QgsAddress {
    /// QGS listening on vsock, usually CID 2 (the host), port 4050.
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// QGS listening on a unix socket.
    Unix(PathBuf),
}

/// Intel TDX launch parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxConfig {
    /// MRCONFIGID: the initdata digest, reported in the TD quote.
    pub mrconfigid: [u8; 48],
    /// Quote generation service; without it the guest gets no quote.
    pub quote_generation_socket: Option<QgsAddress>,
    /// TDVF firmware.
    pub firmware: PathBuf,
}

/// The simulated TEE (development and CI only): a normal VM whose guest agent, when it
/// is built with its `sim` feature, produces SEV-SNP-format evidence signed by kata-cc's
/// public simulated chain, with this launch measurement and HOST_DATA. The guest reads
/// them from the QEMU fw_cfg file [`SIM_TEE_FW_CFG`]. Nothing here is confidential: the
/// host computes or chooses both values, and every verifier refuses simulated evidence
/// unless it is configured to trust it. The QEMU backend refuses this option unless
/// `QemuConfig::allow_simulated_tee` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTeeConfig {
    /// The launch MEASUREMENT the simulated reports carry. The QEMU backend's `start`
    /// (and `command_line`) replace it by
    /// [`sim_launch_measurement`](crate::qemu::sim_launch_measurement) of the spec (kernel,
    /// initramfs, kernel command line, vCPUs), so the guest reports what the host really
    /// boots; leave it all zero. Only the pure
    /// [`qemu_args`](crate::qemu::cmdline::qemu_args) writes it as given.
    pub measurement: [u8; 48],
    /// HOST_DATA of the simulated reports: the initdata digest, as for SNP.
    pub host_data: [u8; 32],
}

impl Default for SimTeeConfig {
    /// All-zero measurement and HOST_DATA.
    fn default() -> Self {
        Self {
            measurement: [0; 48],
            host_data: [0; 32],
        }
    }
}

/// fw_cfg file name of the simulated TEE's parameters; the guest reads
/// `/sys/firmware/qemu_fw_cfg/by_name/opt/kata-cc/sim-tee/raw`.
pub const SIM_TEE_FW_CFG: &str = "opt/kata-cc/sim-tee";

impl SimTeeConfig {
    /// The fw_cfg content: `{"measurement":"<96 hex>","host_data":"<64 hex>"}`.
    pub fn fw_cfg_content(&self) -> String {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        format!(
            "{{\"measurement\":\"{}\",\"host_data\":\"{}\"}}",
            hex(&self.measurement),
            hex(&self.host_data)
        )
    }
}

/// Whether and how the guest runs in a TEE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Confidential {
    /// A normal VM.
    #[default]
    None,
    /// AMD SEV-SNP.
    Snp(SnpConfig),
    /// Intel TDX.
    Tdx(TdxConfig),
    /// The simulated TEE: a normal VM, see [`SimTeeConfig`]. Not a TEE.
    Sim(SimTeeConfig),
}

impl Confidential {
    /// Whether this is a hardware TEE guest (SNP or TDX). The simulated TEE is not:
    /// it runs as a normal VM, under TCG too.
    pub fn is_tee(&self) -> bool {
        matches!(self, Confidential::Snp(_) | Confidential::Tdx(_))
    }

    /// Whether this is the simulated TEE.
    pub fn is_simulated(&self) -> bool {
        matches!(self, Confidential::Sim(_))
    }
}

/// Everything needed to start one VM.
///
/// Build it with [`VmSpec::new`] and set the public fields; [`VmSpec::validate`]
/// (called by every backend) rejects inconsistent specs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Name of the VM (usually the sandbox id), `[A-Za-z0-9_.-]{1,64}`.
    pub id: String,
    /// Guest kernel (bzImage).
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initramfs: Option<PathBuf>,
    /// Extra kernel parameters, appended to the backend's own. No leading or
    /// trailing whitespace.
    pub cmdline: String,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Machine type.
    pub machine: Machine,
    /// Accelerator.
    pub accel: Accel,
    /// CPU model (`-cpu`); `None` = `host` under KVM, QEMU's default under TCG.
    /// Fix it (e.g. `EPYC-v4`) for TEE guests: it is part of the launch digest.
    pub cpu_model: Option<String>,
    /// Host-guest channel.
    pub vsock: Vsock,
    /// NICs.
    pub net: Vec<NetDevice>,
    /// Read-only raw disks.
    pub disks: Vec<Disk>,
    /// File that receives the serial console; `None` discards it.
    pub console_log: Option<PathBuf>,
    /// A unix socket with an interactive virtio console, for debugging only.
    /// Refused for TEE guests.
    pub debug_console: Option<PathBuf>,
    /// TEE configuration.
    pub confidential: Confidential,
    /// Directory owned by this VM (QMP socket, pidfile, ...). Created by the
    /// backend and removed when the VM is gone.
    pub state_dir: PathBuf,
    /// How long QEMU (and the vsock daemon) may take to come up.
    pub boot_timeout: Duration,
}

impl VmSpec {
    /// A spec with defaults: 1 vCPU, 512 MiB, q35, accelerator chosen at run time,
    /// hybrid vsock in `state_dir`, no NICs or disks, console discarded.
    pub fn new(
        id: impl Into<String>,
        kernel: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        let state_dir = state_dir.into();
        Self {
            id: id.into(),
            kernel: kernel.into(),
            initramfs: None,
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 512,
            machine: Machine::Q35,
            accel: Accel::Auto,
            cpu_model: None,
            vsock: Vsock::Hybrid {
                dir: state_dir.clone(),
            },
            net: Vec::new(),
            disks: Vec::new(),
            console_log: None,
            debug_console: None,
            confidential: Confidential::None,
            state_dir,
            boot_timeout: Duration::from_secs(30),
        }
    }

    /// QMP socket path inside the state dir.
    pub fn qmp_socket(&self) -> PathBuf {
        self.state_dir.join("qmp.sock")
    }

    /// QEMU pidfile path inside the state dir.
    pub fn pidfile(&self) -> PathBuf {
        self.state_dir.join("qemu.pid")
    }

    /// Checks everything that does not need the host.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !valid_name(&self.id, 64, |c| {
            c.is_ascii_alphanumeric() || "_.-".contains(c)
        }) {
            return Err(SpecError::InvalidId(self.id.clone()));
        }
        const MAX_VCPUS: u32 = 255;
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(SpecError::Vcpus {
                got: self.vcpus,
                max: MAX_VCPUS,
            });
        }
        const MIN_MIB: u64 = 64;
        const MAX_MIB: u64 = 1 << 20;
        if self.memory_mib < MIN_MIB || self.memory_mib > MAX_MIB {
            return Err(SpecError::Memory {
                got: self.memory_mib,
                min: MIN_MIB,
                max: MAX_MIB,
            });
        }
        if self.boot_timeout.is_zero() {
            return Err(SpecError::ZeroBootTimeout);
        }
        validate_extra_cmdline(&self.cmdline)?;

        absolute_utf8(&self.kernel)?;
        if let Some(p) = &self.initramfs {
            absolute_utf8(p)?;
        }
        absolute_utf8(&self.state_dir)?;
        socket_path(&self.state_dir.join("qmp.sock"))?;
        if let Some(p) = &self.console_log {
            absolute_utf8(p)?;
        }
        if let Some(p) = &self.debug_console {
            socket_path(p)?;
        }
        if let Some(model) = &self.cpu_model {
            if !valid_name(model, 64, |c| {
                c.is_ascii_alphanumeric() || "_.-+".contains(c)
            }) {
                return Err(SpecError::InvalidCpuModel(model.clone()));
            }
        }
        match &self.vsock {
            Vsock::Hybrid { dir } => {
                absolute_utf8(dir)?;
                socket_path(&dir.join("vhost.sock"))?;
                socket_path(&dir.join("vm.vsock"))?;
            }
            Vsock::Kernel { cid } => {
                if *cid <= 2 || *cid == u32::MAX {
                    return Err(SpecError::ReservedCid(*cid));
                }
            }
        }
        for nic in &self.net {
            match &nic.tap {
                TapRef::Name(name) => {
                    if !valid_name(name, 15, |c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
                        return Err(SpecError::InvalidTapName(name.clone()));
                    }
                }
                TapRef::Fd(fd) => {
                    if *fd < 0 {
                        return Err(SpecError::InvalidTapFd(*fd));
                    }
                }
                TapRef::User => {
                    if self.confidential.is_tee() {
                        return Err(SpecError::UserNetInTee);
                    }
                }
            }
        }
        let mut serials: Vec<&str> = Vec::new();
        for disk in &self.disks {
            absolute_utf8(&disk.path)?;
            if !valid_name(&disk.serial, 20, |c| {
                c.is_ascii_alphanumeric() || "_-".contains(c)
            }) {
                return Err(SpecError::InvalidDiskSerial(disk.serial.clone()));
            }
            if serials.contains(&disk.serial.as_str()) {
                return Err(SpecError::DuplicateDiskSerial(disk.serial.clone()));
            }
            serials.push(&disk.serial);
        }
        match &self.confidential {
            Confidential::None => {}
            // The guest finds fw_cfg through ACPI, which only q35 is known to provide here.
            Confidential::Sim(_) => {
                if self.machine != Machine::Q35 {
                    return Err(SpecError::TeeMachine(self.machine));
                }
            }
            Confidential::Snp(SnpConfig { firmware, .. })
            | Confidential::Tdx(TdxConfig { firmware, .. }) => {
                absolute_utf8(firmware)?;
                if self.machine != Machine::Q35 {
                    return Err(SpecError::TeeMachine(self.machine));
                }
                if self.accel == Accel::Tcg {
                    return Err(SpecError::TeeNeedsKvm);
                }
                if self.debug_console.is_some() {
                    return Err(SpecError::TeeDebugConsole);
                }
                if let Confidential::Tdx(TdxConfig {
                    quote_generation_socket: Some(QgsAddress::Unix(p)),
                    ..
                }) = &self.confidential
                {
                    socket_path(p)?;
                }
            }
        }
        Ok(())
    }
}

/// Rejects extra kernel parameters the measurement would see differently.
pub fn validate_extra_cmdline(cmdline: &str) -> Result<(), SpecError> {
    if cmdline.trim() != cmdline {
        return Err(SpecError::CmdlineWhitespace(cmdline.to_owned()));
    }
    if cmdline.chars().any(char::is_control) {
        return Err(SpecError::CmdlineControl);
    }
    if cmdline.len() > MAX_CMDLINE_LEN {
        return Err(SpecError::CmdlineTooLong(cmdline.len()));
    }
    Ok(())
}

fn valid_name(s: &str, max: usize, ok: impl Fn(char) -> bool) -> bool {
    !s.is_empty() && s.len() <= max && s.chars().all(ok)
}

fn absolute_utf8(p: &Path) -> Result<&str, SpecError> {
    let s = p
        .to_str()
        .ok_or_else(|| SpecError::NonUtf8Path(p.to_owned()))?;
    if !p.is_absolute() {
        return Err(SpecError::RelativePath(p.to_owned()));
    }
    Ok(s)
}

fn socket_path(p: &Path) -> Result<(), SpecError> {
    let s = absolute_utf8(p)?;
    if s.len() > MAX_UNIX_SOCKET_PATH {
        return Err(SpecError::SocketPathTooLong(p.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec::new("pod-1", "/k/vmlinuz", "/run/kata-cc/pod-1")
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(spec().validate(), Ok(()));
    }

    #[test]
    fn cmdline_whitespace_rejected() {
        for bad in [" a=b", "a=b ", "\ta=b", "a=b\n"] {
            let mut s = spec();
            s.cmdline = bad.into();
            assert!(
                matches!(s.validate(), Err(SpecError::CmdlineWhitespace(_))),
                "{bad:?}"
            );
        }
        let mut s = spec();
        s.cmdline = "a=b\nc=d".into();
        assert_eq!(s.validate(), Err(SpecError::CmdlineControl));
        s.cmdline = "x".repeat(MAX_CMDLINE_LEN + 1);
        assert!(matches!(s.validate(), Err(SpecError::CmdlineTooLong(_))));
        s.cmdline = "agent.log=debug  systemd.unit=x".into();
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn bad_names_rejected() {
        let mut s = spec();
        s.id = "a,b".into();
        assert!(matches!(s.validate(), Err(SpecError::InvalidId(_))));
        let mut s = spec();
        s.net.push(NetDevice {
            tap: TapRef::Name("tap0,script=/x".into()),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
        });
        assert!(matches!(s.validate(), Err(SpecError::InvalidTapName(_))));
        let mut s = spec();
        s.disks.push(Disk {
            path: "/d".into(),
            serial: "init,data".into(),
        });
        assert!(matches!(s.validate(), Err(SpecError::InvalidDiskSerial(_))));
        let mut s = spec();
        s.disks.push(Disk {
            path: "/d".into(),
            serial: "a".into(),
        });
        s.disks.push(Disk {
            path: "/e".into(),
            serial: "a".into(),
        });
        assert!(matches!(
            s.validate(),
            Err(SpecError::DuplicateDiskSerial(_))
        ));
        let mut s = spec();
        s.cpu_model = Some("host,+x".into());
        assert!(matches!(s.validate(), Err(SpecError::InvalidCpuModel(_))));
        let mut s = spec();
        s.kernel = "vmlinuz".into();
        assert!(matches!(s.validate(), Err(SpecError::RelativePath(_))));
    }

    #[test]
    fn sizes_checked() {
        let mut s = spec();
        s.vcpus = 0;
        assert!(matches!(s.validate(), Err(SpecError::Vcpus { .. })));
        let mut s = spec();
        s.memory_mib = 1;
        assert!(matches!(s.validate(), Err(SpecError::Memory { .. })));
        let mut s = spec();
        s.vsock = Vsock::Kernel { cid: 2 };
        assert_eq!(s.validate(), Err(SpecError::ReservedCid(2)));
    }

    #[test]
    fn long_socket_paths_rejected() {
        let mut s = spec();
        s.state_dir = PathBuf::from(format!("/{}", "d".repeat(120)));
        assert!(matches!(s.validate(), Err(SpecError::SocketPathTooLong(_))));
    }

    #[test]
    fn tee_rules() {
        let mut s = spec();
        s.confidential = Confidential::Snp(SnpConfig::default());
        assert_eq!(s.validate(), Ok(()));
        s.accel = Accel::Tcg;
        assert_eq!(s.validate(), Err(SpecError::TeeNeedsKvm));
        s.accel = Accel::Kvm;
        s.machine = Machine::Microvm;
        assert_eq!(s.validate(), Err(SpecError::TeeMachine(Machine::Microvm)));
        s.machine = Machine::Q35;
        s.debug_console = Some("/run/dbg.sock".into());
        assert_eq!(s.validate(), Err(SpecError::TeeDebugConsole));
    }

    #[test]
    fn sim_tee_is_a_normal_vm_on_q35() {
        let mut s = spec();
        s.confidential = Confidential::Sim(SimTeeConfig::default());
        s.accel = Accel::Tcg;
        assert_eq!(s.validate(), Ok(()));
        assert!(!s.confidential.is_tee() && s.confidential.is_simulated());
        s.machine = Machine::Microvm;
        assert_eq!(s.validate(), Err(SpecError::TeeMachine(Machine::Microvm)));
        let c = SimTeeConfig {
            measurement: [0xab; 48],
            host_data: [1; 32],
        };
        let v: serde_json::Value = serde_json::from_str(&c.fw_cfg_content()).unwrap();
        assert_eq!(v["measurement"], "ab".repeat(48));
        assert_eq!(v["host_data"], "01".repeat(32));
    }

    #[test]
    fn mac_display() {
        assert_eq!(
            MacAddr([0x02, 0xab, 0, 1, 2, 0xff]).to_string(),
            "02:ab:00:01:02:ff"
        );
    }
}
