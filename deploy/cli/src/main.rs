//! `kata-cc`: the small host tool that ships beside the shim.
//!
//! `kata-cc check` prints what this host can run (KVM and whether it is usable, SEV-SNP,
//! TDX, QEMU, vsock, tun) and exits non-zero when it cannot run a pod at all.
//!
//! `kata-cc measure` prints the expected SEV-SNP launch digest of a pod VM, or with
//! `--tee sim` the simulated TEE's launch measurement (and, with `--format kbs`, the
//! reference values `kata-cc-kbs` reads).

mod measure;
mod ovmf;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hypervisor::probe::HostCapabilities;
use measure::{GuestImage, MeasureError, SnpInputs};

/// kata-cc host tool.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Report what this host can run; exit 1 if it cannot run a pod.
    Check {
        /// QEMU binary to probe.
        #[arg(long, default_value = "qemu-system-x86_64")]
        qemu: PathBuf,
    },
    /// Print the expected SEV-SNP launch digest (MEASUREMENT) of a pod VM.
    ///
    /// Kernel and initrd default to the reproducible guest image
    /// (`--image-dir`, checked against its manifest.txt); the kernel command line is the
    /// one the runtime passes (its fixed parameters plus `--append`).
    ///
    /// The firmware must carry an SNP_KERNEL_HASHES section (AmdSev OVMF build) for
    /// kernel, initrd and cmdline to be covered. Debian's `ovmf` package has none: with
    /// it the digest covers only the firmware and vCPUs, and the command refuses unless
    /// --allow-unmeasured-kernel is given.
    ///
    /// With --tee sim: the simulated TEE's launch measurement instead (development and
    /// CI only), the value the QEMU backend hands to a sim VM: SHA-384 over SHA-256 of
    /// kernel, initrd and kernel command line and the vCPU count (docs/attestation.md).
    ///
    /// TDX MRTD/RTMRs are not computed (MRTD needs the TDVF image, which Debian does
    /// not ship).
    #[command(verbatim_doc_comment)]
    Measure(Box<MeasureArgs>),
}

/// Output of `measure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// The digest as 96 hex digits.
    Hex,
    /// A TOML fragment for kata-cc-kbs `reference_values`.
    Kbs,
}

/// Which launch measurement `measure` computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Tee {
    /// AMD SEV-SNP launch digest.
    Snp,
    /// The simulated TEE (development and CI only; not a TEE).
    Sim,
}

const DEFAULT_OVMF: &str = "/usr/share/ovmf/OVMF.fd";
const DEFAULT_VCPU_TYPE: &str = "EPYC-v4";

#[derive(Debug, clap::Args)]
struct MeasureArgs {
    /// The TEE whose launch measurement is computed.
    #[arg(long, value_enum, default_value_t = Tee::Snp)]
    tee: Tee,
    /// Firmware image (OVMF.fd style, one file with code and variables) [SNP only;
    /// default: /usr/share/ovmf/OVMF.fd].
    #[arg(long)]
    ovmf: Option<PathBuf>,
    /// Guest image directory (vmlinuz, initramfs.cpio.gz, manifest.txt).
    #[arg(long, default_value = "target/guest-image/prod")]
    image_dir: PathBuf,
    /// Kernel; overrides the guest image's vmlinuz.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs; overrides the guest image's initramfs.cpio.gz.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Extra kernel parameters, as configured for the runtime (no leading or trailing
    /// whitespace).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    append: String,
    /// Number of vCPUs, as given (default: the pod VM size from --pod-cpu/--pod-memory
    /// and --config, which is 1 vCPU for a pod without limits and the default
    /// configuration).
    #[arg(long, conflicts_with_all = ["pod_cpu", "pod_memory"])]
    vcpus: Option<u32>,
    /// The pod's CPU limit (sum of its containers' `resources.limits.cpu`: `3`, `1.5`,
    /// `500m`): the vCPU count is computed as the shim sizes the pod VM.
    #[arg(long)]
    pod_cpu: Option<String>,
    /// The pod's memory limit (`3Gi`, `512Mi`); not measured, printed with the size.
    #[arg(long)]
    pod_memory: Option<String>,
    /// The runtime's configuration.toml whose [hypervisor] vcpus, memory_mib,
    /// overhead_vcpus, overhead_memory_mib, max_vcpus, max_memory_mib size the pod VM
    /// (default: the shim's defaults for those keys).
    #[arg(long)]
    config: Option<PathBuf>,
    /// QEMU -cpu model (EPYC, EPYC-v4, EPYC-Rome, EPYC-Milan, EPYC-Genoa, EPYC-Turin, ...)
    /// [SNP only; default: EPYC-v4].
    #[arg(long)]
    vcpu_type: Option<String>,
    /// VMSA SEV_FEATURES in hex (bit 0: SNP active) [SNP only; default: 0x1].
    #[arg(long, value_parser = parse_hex_u64)]
    guest_features: Option<u64>,
    /// initdata TOML whose digest becomes HOST_DATA (in --format kbs).
    #[arg(long)]
    initdata: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Hex)]
    format: Format,
    /// Accept a firmware that does not measure kernel, initrd and cmdline [SNP only].
    #[arg(long)]
    allow_unmeasured_kernel: bool,
}

fn parse_hex_u64(s: &str) -> Result<u64, String> {
    let t = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(t, 16).map_err(|e| format!("{s:?} is not a hex number: {e}"))
}

/// `error: cause: cause...`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The pod VM's size: `--vcpus` as given, else [`hypervisor::sizing::size_vm`] of the pod
/// limits with the configuration's sizing keys (the rule the shim boots with).
fn pod_size(a: &MeasureArgs) -> Result<hypervisor::sizing::VmSize, MeasureError> {
    use hypervisor::sizing::{from_quantities, size_vm, SizingConfig, VmSize};
    let cfg = match &a.config {
        None => SizingConfig::default(),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| MeasureError::Read {
                what: "configuration",
                path: p.clone(),
                source,
            })?;
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| MeasureError::Sizing(format!("{}: {e}", p.display())))?;
            let cfg: SizingConfig = match table.get("hypervisor") {
                Some(h) => h
                    .clone()
                    .try_into()
                    .map_err(|e| MeasureError::Sizing(format!("{} [hypervisor]: {e}", p.display())))?,
                None => SizingConfig::default(),
            };
            cfg.validate()
                .map_err(|e| MeasureError::Sizing(format!("{}: {e}", p.display())))?;
            cfg
        }
    };
    if let Some(v) = a.vcpus {
        return Ok(VmSize {
            vcpus: v,
            memory_mib: cfg.default_memory_mib,
            capped: false,
        });
    }
    let limits = from_quantities(a.pod_cpu.as_deref(), a.pod_memory.as_deref())
        .map_err(|e| MeasureError::Sizing(e.to_string()))?;
    Ok(size_vm(&cfg, &[limits]))
}

fn measure(a: &MeasureArgs) -> Result<String, MeasureError> {
    let size = pod_size(a)?;
    if size.capped {
        eprintln!(
            "kata-cc measure: the pod's limits exceed the configured maxima: capped to {} vCPUs, {} MiB",
            size.vcpus, size.memory_mib
        );
    }
    let image = if a.kernel.is_some() && a.initrd.is_some() {
        None
    } else {
        Some(GuestImage::open(&a.image_dir)?)
    };
    let kernel = a
        .kernel
        .clone()
        .or_else(|| image.as_ref().map(|i| i.kernel.clone()))
        .unwrap_or_default();
    let initrd = a
        .initrd
        .clone()
        .or_else(|| image.as_ref().map(|i| i.initrd.clone()));
    if a.tee == Tee::Sim {
        return measure_sim(a, size, kernel, initrd, image.as_ref());
    }
    let ovmf = a.ovmf.clone().unwrap_or_else(|| DEFAULT_OVMF.into());
    let vcpu_type = a
        .vcpu_type
        .clone()
        .unwrap_or_else(|| DEFAULT_VCPU_TYPE.into());
    measure::vcpu_type(&vcpu_type)?;
    let cmdline = measure::runtime_cmdline(
        &kernel,
        initrd.as_deref(),
        &ovmf,
        &a.append,
        size.vcpus,
        &vcpu_type,
    )?;
    let host_data = a
        .initdata
        .as_deref()
        .map(measure::initdata_host_data)
        .transpose()?;
    let inputs = SnpInputs {
        ovmf,
        kernel,
        initrd,
        cmdline,
        vcpus: size.vcpus,
        vcpu_type,
        guest_features: a.guest_features.unwrap_or(0x1),
    };
    let m = measure::snp_launch_digest(&inputs, a.allow_unmeasured_kernel)?;
    if !m.kernel_measured {
        eprintln!(
            "kata-cc measure: WARNING: {} has no SNP_KERNEL_HASHES section: kernel, initrd and \
             cmdline are NOT covered by this digest; any kernel booted with this firmware \
             matches it",
            inputs.ovmf.display()
        );
    }
    Ok(match a.format {
        Format::Hex => format!("{}\n", hex::encode(m.digest)),
        Format::Kbs => {
            let mut c = vec![
                "kata-cc measure: SEV-SNP launch digest (reference values for kata-cc-kbs)".into(),
                format!("firmware: {}", inputs.ovmf.display()),
                format!(
                    "kernel: {}{}",
                    inputs.kernel.display(),
                    if m.kernel_measured {
                        ""
                    } else {
                        " (not measured)"
                    }
                ),
            ];
            if let Some(i) = &inputs.initrd {
                c.push(format!("initrd: {}", i.display()));
            }
            c.push(format!("cmdline: {:?}", inputs.cmdline));
            c.push(format!(
                "vcpus: {} (pod VM memory {} MiB, not measured), vcpu type: {}, guest features: {:#x}",
                inputs.vcpus, size.memory_mib, inputs.vcpu_type, inputs.guest_features
            ));
            image_comments(&mut c, image.as_ref(), a);
            measure::kbs_fragment(&m, host_data.as_ref(), &c)
        }
    })
}

/// Manifest and initdata lines of a `--format kbs` fragment.
fn image_comments(c: &mut Vec<String>, image: Option<&GuestImage>, a: &MeasureArgs) {
    if let Some(img) = image {
        for k in [
            "variant",
            "kernel_package",
            "agent_features",
            "agent_sha256",
        ] {
            if let Some(v) = img.get(k) {
                c.push(format!("image {k}: {v}"));
            }
        }
    }
    if let Some(p) = &a.initdata {
        c.push(format!("initdata: {}", p.display()));
    }
}

/// `measure --tee sim`: [`measure::sim_launch_measurement`].
fn measure_sim(
    a: &MeasureArgs,
    size: hypervisor::sizing::VmSize,
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    image: Option<&GuestImage>,
) -> Result<String, MeasureError> {
    for (option, given) in [
        ("--ovmf", a.ovmf.is_some()),
        ("--vcpu-type", a.vcpu_type.is_some()),
        ("--guest-features", a.guest_features.is_some()),
        ("--allow-unmeasured-kernel", a.allow_unmeasured_kernel),
    ] {
        if given {
            return Err(MeasureError::NotForTee { option, tee: "sim" });
        }
    }
    let (m, cmdline) =
        measure::sim_launch_measurement(&kernel, initrd.as_deref(), &a.append, size.vcpus)?;
    let host_data = a
        .initdata
        .as_deref()
        .map(measure::initdata_host_data)
        .transpose()?;
    Ok(match a.format {
        Format::Hex => format!("{}\n", hex::encode(m)),
        Format::Kbs => {
            let mut c = vec![
                "kata-cc measure: SIMULATED TEE launch measurement (development and CI only;"
                    .into(),
                "not a TEE). kata-cc-kbs must run with allow_simulated = true to accept it.".into(),
                format!("kernel: {}", kernel.display()),
            ];
            if let Some(i) = &initrd {
                c.push(format!("initrd: {}", i.display()));
            }
            c.push(format!("cmdline: {cmdline:?}"));
            c.push(format!("vcpus: {} (pod VM memory {} MiB, not measured)", size.vcpus, size.memory_mib));
            image_comments(&mut c, image, a);
            let m = measure::SnpMeasurement {
                digest: m,
                kernel_measured: true,
            };
            measure::kbs_fragment(&m, host_data.as_ref(), &c)
        }
    })
}

/// What is missing for running any pod (TEE or not) on this host.
fn blockers(h: &HostCapabilities) -> Vec<String> {
    let mut b = Vec::new();
    if let Err(e) = &h.qemu {
        b.push(format!("QEMU is not usable: {e}"));
    }
    if h.vhost_device_vsock.is_none() && !h.vhost_vsock_dev {
        b.push(
            "no host<->guest channel: neither /dev/vhost-vsock nor vhost-device-vsock on PATH"
                .into(),
        );
    }
    if !h.tun_dev {
        b.push("/dev/net/tun is missing: pods cannot be networked".into());
    }
    b
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Measure(a) => match measure(&a) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kata-cc measure: {}", chain(&e));
                ExitCode::FAILURE
            }
        },
        Cmd::Check { qemu } => {
            let h = HostCapabilities::probe(&qemu);
            print!("{}", h.report());
            let b = blockers(&h);
            if b.is_empty() {
                println!(
                    "this host can run kata-cc pods{}",
                    if h.snp().is_ok() || h.tdx().is_ok() {
                        ""
                    } else {
                        " (without a TEE: confidential pods need SEV-SNP or TDX)"
                    }
                );
                ExitCode::SUCCESS
            } else {
                for x in &b {
                    println!("cannot run pods: {x}");
                }
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hex_features() {
        assert_eq!(parse_hex_u64("0x21").unwrap(), 0x21);
        assert_eq!(parse_hex_u64("1").unwrap(), 1);
        assert!(parse_hex_u64("0xzz").is_err());
    }

    fn host() -> HostCapabilities {
        HostCapabilities {
            kvm: Err("no /dev/kvm".into()),
            sev_snp_param: false,
            tdx_param: false,
            qemu: Err("not found".into()),
            vhost_device_vsock: None,
            vhost_vsock_dev: false,
            vhost_net_dev: false,
            tun_dev: false,
        }
    }

    #[test]
    fn names_every_blocker_and_none_when_ready() {
        let h = host();
        let b = blockers(&h);
        assert_eq!(b.len(), 3, "{b:?}");
        assert!(b[0].contains("QEMU") && b[1].contains("vsock") && b[2].contains("tun"));
        let mut ok = h;
        ok.qemu = Ok(hypervisor::probe::QemuInfo {
            path: "/usr/bin/qemu-system-x86_64".into(),
            version: (10, 0, 2),
            sev_snp_guest: true,
            tdx_guest: false,
        });
        ok.vhost_device_vsock = Some("/usr/bin/vhost-device-vsock".into());
        ok.tun_dev = true;
        assert!(blockers(&ok).is_empty());
    }
}
