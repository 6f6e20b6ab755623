//! The QEMU command line, built from a [`VmSpec`] by a pure function.
//!
//! No I/O happens here: the same spec and accelerator always give the same argv, which
//! the golden tests in `tests/golden/` pin down. Syntax follows QEMU 10
//! (`docs/system/i386/amd-memory-encryption.rst`, `docs/system/i386/tdx.rst`,
//! `qapi/qom.json`); the `tdx-guest` object needs QEMU 10.1 or later.

use base64::Engine as _;
use serde::Serialize;

use crate::spec::{
    Confidential, Machine, QgsAddress, ResolvedAccel, SnpConfig, SpecError, TapRef, TdxConfig,
    VmSpec, Vsock, MAX_CMDLINE_LEN, SIM_TEE_FW_CFG,
};

/// Kernel parameters every guest gets, before the spec's extra ones.
pub const BASE_KERNEL_PARAMS: &str = "console=ttyS0 quiet reboot=t panic=-1";
/// Loops-per-jiffy preset that keeps a microvm guest under TCG out of TSC calibration.
pub const MICROVM_TCG_LPJ: &str = "lpj=5000000";

/// Why no command line could be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// The spec itself is invalid.
    #[error("invalid VM spec")]
    Spec(#[source] SpecError),
    /// A TEE guest was resolved to TCG.
    #[error("confidential guests need KVM but the accelerator resolved to TCG")]
    TeeNeedsKvm,
    /// The final kernel command line is too long.
    #[error("kernel cmdline is {0} bytes, more than {MAX_CMDLINE_LEN}")]
    CmdlineTooLong(usize),
}

/// The full kernel command line: [`BASE_KERNEL_PARAMS`], machine/accelerator
/// specific ones, then the spec's extra parameters. This is the exact string that a
/// measured (`kernel-hashes=on`) launch hashes.
pub fn kernel_cmdline(spec: &VmSpec, accel: ResolvedAccel) -> String {
    let mut line = String::from(BASE_KERNEL_PARAMS);
    if spec.machine == Machine::Microvm && accel == ResolvedAccel::Tcg {
        line.push(' ');
        line.push_str(MICROVM_TCG_LPJ);
    }
    if !spec.cmdline.is_empty() {
        line.push(' ');
        line.push_str(&spec.cmdline);
    }
    line
}

/// Builds the QEMU argv (without the program name) for `spec` under `accel`.
///
/// The spec is validated first. Paths must be UTF-8 (checked by validation).
pub fn qemu_args(spec: &VmSpec, accel: ResolvedAccel) -> Result<Vec<String>, CmdlineError> {
    spec.validate().map_err(CmdlineError::Spec)?;
    if spec.confidential.is_tee() && accel == ResolvedAccel::Tcg {
        return Err(CmdlineError::TeeNeedsKvm);
    }
    let cmdline = kernel_cmdline(spec, accel);
    if cmdline.len() > MAX_CMDLINE_LEN {
        return Err(CmdlineError::CmdlineTooLong(cmdline.len()));
    }

    let mut a = Args::default();
    let tee = spec.confidential.is_tee();
    // virtio devices of a TEE guest must go through the DMA API (bounce buffers in
    // shared memory) and be modern-only.
    let virtio_tee = if tee {
        ",disable-legacy=on,iommu_platform=on"
    } else {
        ""
    };
    let pci = spec.machine == Machine::Q35;
    let dev = |pci_name: &str, mmio_name: &str| {
        if pci {
            pci_name.to_owned()
        } else {
            mmio_name.to_owned()
        }
    };

    a.push2("-name", &spec.id);
    a.push("-nodefaults");
    a.push("-no-user-config");
    a.push("-nographic");
    a.push("-no-reboot");

    let mut machine = format!("{},memory-backend=mem0", spec.machine);
    match &spec.confidential {
        Confidential::None | Confidential::Sim(_) => {}
        Confidential::Snp(_) => machine.push_str(",confidential-guest-support=sev0"),
        Confidential::Tdx(_) => {
            machine.push_str(",confidential-guest-support=tdx0,kernel-irqchip=split")
        }
    }
    a.push2("-machine", &machine);
    a.push2("-accel", &accel.to_string());
    match (&spec.cpu_model, accel) {
        (Some(model), _) => a.push2("-cpu", model),
        (None, ResolvedAccel::Kvm) => a.push2("-cpu", "host"),
        (None, ResolvedAccel::Tcg) => {}
    }
    a.push2("-smp", &spec.vcpus.to_string());
    a.push2("-m", &format!("{}M", spec.memory_mib));
    // Shared memfd RAM: vhost-user devices map guest memory.
    a.push2(
        "-object",
        &format!(
            "memory-backend-memfd,id=mem0,size={}M,share=on",
            spec.memory_mib
        ),
    );

    match &spec.confidential {
        Confidential::None => {}
        Confidential::Snp(snp) => {
            a.push2("-object", &snp_object(snp));
            a.push2("-bios", path(&snp.firmware));
        }
        Confidential::Tdx(tdx) => {
            a.push2("-object", &tdx_object(tdx));
            a.push2("-bios", path(&tdx.firmware));
        }
        // The simulated TEE's parameters, read by the guest from sysfs (qemu_fw_cfg).
        Confidential::Sim(sim) => a.push2(
            "-fw_cfg",
            &format!(
                "name={SIM_TEE_FW_CFG},string={}",
                opt(&sim.fw_cfg_content())
            ),
        ),
    }

    a.push2("-kernel", path(&spec.kernel));
    if let Some(initrd) = &spec.initramfs {
        a.push2("-initrd", path(initrd));
    }
    a.push2("-append", &cmdline);

    match &spec.console_log {
        Some(log) => {
            a.push2(
                "-chardev",
                &format!("file,id=serial0,path={}", opt(path(log))),
            );
            a.push2("-serial", "chardev:serial0");
        }
        None => a.push2("-serial", "null"),
    }

    if let Some(sock) = &spec.debug_console {
        a.push2(
            "-chardev",
            &format!(
                "socket,id=debugcon0,path={},server=on,wait=off",
                opt(path(sock))
            ),
        );
        a.push2(
            "-device",
            &dev(
                "virtio-serial-pci,id=vser0",
                "virtio-serial-device,id=vser0",
            ),
        );
        a.push2("-device", "virtconsole,chardev=debugcon0,bus=vser0.0");
    }

    match &spec.vsock {
        Vsock::Hybrid { dir } => {
            a.push2(
                "-chardev",
                &format!("socket,id=vc0,path={}", opt(path(&dir.join("vhost.sock")))),
            );
            a.push2(
                "-device",
                &format!(
                    "{},chardev=vc0{virtio_tee}",
                    dev("vhost-user-vsock-pci", "vhost-user-vsock-device")
                ),
            );
        }
        Vsock::Kernel { cid } => {
            a.push2(
                "-device",
                &format!(
                    "{},guest-cid={cid}{virtio_tee}",
                    dev("vhost-vsock-pci", "vhost-vsock-device")
                ),
            );
        }
    }

    for (i, nic) in spec.net.iter().enumerate() {
        let netdev = match &nic.tap {
            // ifname= is validated to [A-Za-z0-9_.-]: no escaping needed.
            TapRef::Name(name) => {
                format!("tap,id=net{i},ifname={name},script=no,downscript=no,vhost=off")
            }
            // With fd= QEMU refuses ifname/script/downscript.
            TapRef::Fd(fd) => format!("tap,id=net{i},fd={fd},vhost=off"),
            TapRef::User => format!("user,id=net{i}"),
        };
        a.push2("-netdev", &netdev);
        a.push2(
            "-device",
            &format!(
                "{},netdev=net{i},mac={}{virtio_tee}",
                dev("virtio-net-pci", "virtio-net-device"),
                nic.mac
            ),
        );
    }

    for (i, disk) in spec.disks.iter().enumerate() {
        a.push2(
            "-drive",
            &format!(
                "file={},if=none,id=disk{i},format=raw,readonly=on",
                opt(path(&disk.path))
            ),
        );
        a.push2(
            "-device",
            &format!(
                "{},drive=disk{i},serial={}{virtio_tee}",
                dev("virtio-blk-pci", "virtio-blk-device"),
                disk.serial
            ),
        );
    }

    a.push2(
        "-qmp",
        &format!("unix:{},server=on,wait=off", opt(path(&spec.qmp_socket()))),
    );
    a.push2("-pidfile", path(&spec.pidfile()));
    Ok(a.0)
}

/// `-object sev-snp-guest,...` (QemuOpts syntax).
fn snp_object(snp: &SnpConfig) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(snp.host_data);
    format!(
        "sev-snp-guest,id=sev0,cbitpos={},reduced-phys-bits={},policy={:#x},kernel-hashes={},host-data={b64}",
        snp.cbitpos,
        snp.reduced_phys_bits,
        snp.policy,
        if snp.kernel_hashes { "on" } else { "off" },
    )
}

/// QAPI `SocketAddress` as JSON; vsock cid/port are strings in QAPI.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum SocketAddressJson<'a> {
    Vsock { cid: String, port: String },
    Unix { path: &'a str },
}

#[derive(Serialize)]
struct TdxGuestJson<'a> {
    #[serde(rename = "qom-type")]
    qom_type: &'static str,
    id: &'static str,
    mrconfigid: String,
    #[serde(
        rename = "quote-generation-socket",
        skip_serializing_if = "Option::is_none"
    )]
    quote_generation_socket: Option<SocketAddressJson<'a>>,
}

/// `-object {"qom-type":"tdx-guest",...}` (JSON syntax: the QGS address is a
/// nested `SocketAddress`, which QemuOpts cannot express).
fn tdx_object(tdx: &TdxConfig) -> String {
    let obj = TdxGuestJson {
        qom_type: "tdx-guest",
        id: "tdx0",
        mrconfigid: base64::engine::general_purpose::STANDARD.encode(tdx.mrconfigid),
        quote_generation_socket: tdx.quote_generation_socket.as_ref().map(|q| match q {
            QgsAddress::Vsock { cid, port } => SocketAddressJson::Vsock {
                cid: cid.to_string(),
                port: port.to_string(),
            },
            QgsAddress::Unix(p) => SocketAddressJson::Unix { path: path(p) },
        }),
    };
    // Serializing plain strings into a String cannot fail; keep a total function.
    serde_json::to_string(&obj).unwrap_or_default()
}

/// A validated path as text (validation rejects non-UTF-8 paths).
fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Escapes a value inside a QemuOpts string: a comma is written as two.
fn opt(value: &str) -> String {
    value.replace(',', ",,")
}

#[derive(Default)]
struct Args(Vec<String>);

impl Args {
    fn push(&mut self, a: &str) {
        self.0.push(a.to_owned());
    }
    fn push2(&mut self, a: &str, b: &str) {
        self.0.push(a.to_owned());
        self.0.push(b.to_owned());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::spec::{Disk, MacAddr, NetDevice, SnpConfig};

    fn base() -> VmSpec {
        let mut s = VmSpec::new("pod1", "/opt/kata-cc/vmlinuz", "/run/kata-cc/vm/pod1");
        s.initramfs = Some("/opt/kata-cc/initramfs.img".into());
        s.console_log = Some("/var/log/kata-cc/pod1/console.log".into());
        s
    }

    /// Compares with `tests/golden/<name>.args` (one argument per line). With
    /// `UPDATE_GOLDEN=1` the file is rewritten instead.
    fn golden(name: &str, args: &[String]) {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(format!("{name}.args"));
        let text = args.join("\n") + "\n";
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&file, &text).unwrap();
            return;
        }
        let want =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(
            text, want,
            "golden {name} differs; UPDATE_GOLDEN=1 rewrites it"
        );
    }

    #[test]
    fn golden_q35_tcg_hybrid_vsock() {
        let args = qemu_args(&base(), ResolvedAccel::Tcg).unwrap();
        golden("q35-tcg-hybrid-vsock", &args);
    }

    #[test]
    fn golden_kernel_vsock_kvm() {
        let mut s = base();
        s.vsock = Vsock::Kernel { cid: 42 };
        s.vcpus = 2;
        s.memory_mib = 2048;
        golden(
            "q35-kvm-kernel-vsock",
            &qemu_args(&s, ResolvedAccel::Kvm).unwrap(),
        );
    }

    #[test]
    fn golden_tap_and_initdata() {
        let mut s = base();
        s.net.push(NetDevice {
            tap: TapRef::Name("tap0_kata".into()),
            mac: MacAddr([0x02, 0x42, 0xac, 0x11, 0, 2]),
        });
        s.net.push(NetDevice {
            tap: TapRef::Fd(7),
            mac: MacAddr([0x02, 0x42, 0xac, 0x11, 0, 3]),
        });
        s.disks.push(Disk {
            path: "/run/kata-cc/vm/pod1/initdata.img".into(),
            serial: "initdata".into(),
        });
        golden(
            "q35-tcg-tap-initdata",
            &qemu_args(&s, ResolvedAccel::Tcg).unwrap(),
        );
    }

    #[test]
    fn user_mode_nic() {
        let mut s = base();
        s.net.push(NetDevice {
            tap: TapRef::User,
            mac: MacAddr([0x02, 0, 0, 0, 0, 1]),
        });
        let args = qemu_args(&s, ResolvedAccel::Tcg).unwrap();
        let i = args.iter().position(|a| a == "-netdev").unwrap();
        assert_eq!(args[i + 1], "user,id=net0");
        assert!(args[i + 3].starts_with("virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01"));
        s.confidential = Confidential::Snp(SnpConfig::default());
        assert!(matches!(s.validate(), Err(crate::spec::SpecError::UserNetInTee)));
    }

    #[test]
    fn golden_microvm_tcg() {
        let mut s = base();
        s.machine = Machine::Microvm;
        s.cmdline = "agent.log=debug".into();
        golden("microvm-tcg", &qemu_args(&s, ResolvedAccel::Tcg).unwrap());
    }

    #[test]
    fn golden_snp() {
        let mut s = base();
        s.cpu_model = Some("EPYC-v4".into());
        s.disks.push(Disk {
            path: "/run/kata-cc/vm/pod1/initdata.img".into(),
            serial: "initdata".into(),
        });
        let mut host_data = [0u8; 32];
        for (i, b) in host_data.iter_mut().enumerate() {
            *b = i as u8;
        }
        s.confidential = Confidential::Snp(SnpConfig {
            host_data,
            firmware: "/opt/kata-cc/OVMF-AmdSev.fd".into(),
            ..SnpConfig::default()
        });
        golden("q35-snp", &qemu_args(&s, ResolvedAccel::Kvm).unwrap());
    }

    #[test]
    fn golden_tdx() {
        let mut s = base();
        s.confidential = Confidential::Tdx(TdxConfig {
            mrconfigid: [0xab; 48],
            quote_generation_socket: Some(QgsAddress::Vsock { cid: 2, port: 4050 }),
            firmware: "/opt/kata-cc/TDVF.fd".into(),
        });
        golden("q35-tdx", &qemu_args(&s, ResolvedAccel::Kvm).unwrap());
    }

    #[test]
    fn golden_sim_tee_tcg() {
        let mut s = base();
        s.confidential = Confidential::Sim(crate::spec::SimTeeConfig {
            measurement: [0x4d; 48],
            host_data: [0x48; 32],
        });
        let args = qemu_args(&s, ResolvedAccel::Tcg).unwrap();
        // A normal VM: no confidential-guest-support, no DMA-API virtio flags.
        assert!(!args
            .iter()
            .any(|a| a.contains("confidential-guest-support")));
        assert!(!args.iter().any(|a| a.contains("iommu_platform")));
        golden("q35-tcg-sim-tee", &args);
    }

    /// The pod annotation, through `initdata::PodInitdata`, into the launch config:
    /// the disk and HOST_DATA / MRCONFIGID as QEMU sees them.
    #[test]
    fn golden_tee_from_initdata_annotation() {
        use crate::initdata::PodInitdata;
        use protocols::initdata as pi;
        let toml = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"policy.rego\" = '''\npackage agent_policy\n'''\n";
        let annotations = [(
            pi::ANNOTATION,
            pi::encode_annotation(toml.as_bytes()).unwrap(),
        )];
        let init = PodInitdata::from_annotations(annotations).unwrap().unwrap();
        let digest = pi::digest(pi::Algorithm::Sha256, toml.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD;
        let image: PathBuf = "/run/kata-cc/vm/pod1/initdata.img".into();

        let mut s = base();
        s.cpu_model = Some("EPYC-v4".into());
        s.confidential = Confidential::Snp(SnpConfig {
            firmware: "/opt/kata-cc/OVMF-AmdSev.fd".into(),
            ..SnpConfig::default()
        });
        init.apply(&mut s, image.clone()).unwrap();
        let args = qemu_args(&s, ResolvedAccel::Kvm).unwrap();
        let host_data = format!("host-data={}", b64.encode(pi::host_data(&digest)));
        assert!(args.iter().any(|a| a.ends_with(&host_data)), "{args:?}");
        golden("q35-snp-initdata-annotation", &args);

        let mut s = base();
        s.confidential = Confidential::Tdx(TdxConfig {
            mrconfigid: [0; 48],
            quote_generation_socket: None,
            firmware: "/opt/kata-cc/TDVF.fd".into(),
        });
        init.apply(&mut s, image).unwrap();
        let args = qemu_args(&s, ResolvedAccel::Kvm).unwrap();
        let mrconfigid = format!("\"mrconfigid\":\"{}\"", b64.encode(pi::mrconfigid(&digest)));
        assert!(args.iter().any(|a| a.contains(&mrconfigid)), "{args:?}");
        golden("q35-tdx-initdata-annotation", &args);
    }

    #[test]
    fn tdx_unix_qgs_json() {
        let t = TdxConfig {
            mrconfigid: [0; 48],
            quote_generation_socket: Some(QgsAddress::Unix("/run/qgs.sock".into())),
            firmware: PathBuf::from("/f"),
        };
        let v: serde_json::Value = serde_json::from_str(&tdx_object(&t)).unwrap();
        assert_eq!(
            v["quote-generation-socket"],
            serde_json::json!({"type": "unix", "path": "/run/qgs.sock"})
        );
        let t = TdxConfig {
            quote_generation_socket: None,
            ..t
        };
        let v: serde_json::Value = serde_json::from_str(&tdx_object(&t)).unwrap();
        assert!(v.get("quote-generation-socket").is_none());
        assert_eq!(v["mrconfigid"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        let mut s = base();
        s.console_log = Some("/var/log/a,b/console.log".into());
        s.disks.push(Disk {
            path: "/x,y.img".into(),
            serial: "d".into(),
        });
        let args = qemu_args(&s, ResolvedAccel::Tcg).unwrap();
        assert!(args.contains(&"file,id=serial0,path=/var/log/a,,b/console.log".to_owned()));
        assert!(args.iter().any(|a| a.starts_with("file=/x,,y.img,")));
    }

    #[test]
    fn tee_on_tcg_refused() {
        let mut s = base();
        s.confidential = Confidential::Snp(SnpConfig::default());
        assert_eq!(
            qemu_args(&s, ResolvedAccel::Tcg),
            Err(CmdlineError::TeeNeedsKvm)
        );
    }

    #[test]
    fn invalid_spec_refused() {
        let mut s = base();
        s.cmdline = "debug ".into();
        assert!(matches!(
            qemu_args(&s, ResolvedAccel::Tcg),
            Err(CmdlineError::Spec(SpecError::CmdlineWhitespace(_)))
        ));
    }

    #[test]
    fn overlong_final_cmdline_refused() {
        let mut s = base();
        s.cmdline = "x".repeat(MAX_CMDLINE_LEN - 5);
        assert!(matches!(
            qemu_args(&s, ResolvedAccel::Tcg),
            Err(CmdlineError::CmdlineTooLong(_))
        ));
    }

    #[test]
    fn kernel_cmdline_parts() {
        let mut s = base();
        assert_eq!(kernel_cmdline(&s, ResolvedAccel::Tcg), BASE_KERNEL_PARAMS);
        s.machine = Machine::Microvm;
        s.cmdline = "a=b".into();
        assert_eq!(
            kernel_cmdline(&s, ResolvedAccel::Tcg),
            format!("{BASE_KERNEL_PARAMS} lpj=5000000 a=b")
        );
        assert_eq!(
            kernel_cmdline(&s, ResolvedAccel::Kvm),
            format!("{BASE_KERNEL_PARAMS} a=b")
        );
    }
}
