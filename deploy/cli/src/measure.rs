//! `kata-cc measure`: the expected SEV-SNP launch digest of a pod VM.
//!
//! The digest is computed by `sev::measurement::snp::snp_calc_launch_digest` (the same
//! algorithm as virtee's `sev-snp-measure`). What this module adds: the inputs are the
//! ones the runtime really uses (the kernel command line comes from
//! [`hypervisor::qemu::cmdline::kernel_cmdline`], the spec is checked by
//! [`VmSpec::validate`]), the firmware is inspected first ([`crate::ovmf`]), and a
//! firmware that does not measure the kernel is refused unless explicitly allowed.
//!
//! TDX (MRTD, RTMRs) is not computed: MRTD is a hash over the TDVF image's measured
//! sections, and Debian ships no TDVF build to compute or check it against.

use std::path::{Path, PathBuf};

use hypervisor::qemu::cmdline::kernel_cmdline;
use hypervisor::{Confidential, ResolvedAccel, SimTeeConfig, SnpConfig, VmSpec};
use sev::measurement::snp::{snp_calc_launch_digest, SnpMeasurementArgs};
use sev::measurement::vcpu_types::CpuType;
use sev::measurement::vmsa::{GuestFeatures, VMMType};
use sev::parser::ByteParser as _;
use sha2::{Digest as _, Sha256};

use crate::ovmf::{OvmfError, OvmfInfo, MAX_IMAGE_LEN};

/// vCPU types `sev` knows, as QEMU's `-cpu` names them.
pub const VCPU_TYPES: &[&str] = &[
    "EPYC",
    "EPYC-v1",
    "EPYC-v2",
    "EPYC-IBPB",
    "EPYC-v3",
    "EPYC-v4",
    "EPYC-Rome",
    "EPYC-Rome-v1",
    "EPYC-Rome-v2",
    "EPYC-Rome-v3",
    "EPYC-Milan",
    "EPYC-Milan-v1",
    "EPYC-Milan-v2",
    "EPYC-Genoa",
    "EPYC-Genoa-v1",
    "EPYC-Turin",
    "EPYC-Turin-v1",
    "EPYC-Turin-v2",
];

/// Why no digest was computed.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// An input file cannot be read.
    #[error("cannot read the {what} {path}")]
    Read {
        /// Which input.
        what: &'static str,
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The firmware is not a usable SNP image.
    #[error("firmware {path}")]
    Ovmf {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: OvmfError,
    },
    /// The firmware does not measure kernel, initrd and cmdline.
    #[error(
        "firmware {0} has no SNP_KERNEL_HASHES section: kernel, initrd and cmdline would NOT \
         be covered by the launch digest (a host could boot any kernel with the same \
         measurement); use an AmdSev OVMF build, or pass --allow-unmeasured-kernel to accept that"
    )]
    KernelNotMeasured(PathBuf),
    /// The pod's limits or the sizing configuration are not usable.
    #[error("pod VM size: {0}")]
    Sizing(String),
    /// Unknown `-cpu` model.
    #[error("unknown vCPU type {0:?}; known: {known}", known = VCPU_TYPES.join(", "))]
    VcpuType(String),
    /// The VM spec (cmdline, vCPUs, paths) is invalid for the runtime too.
    #[error("invalid VM parameters")]
    Spec(#[source] hypervisor::spec::SpecError),
    /// The guest image manifest disagrees with the files beside it.
    #[error("guest image {dir}: {what}")]
    Manifest {
        /// Image directory.
        dir: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The initdata document is invalid.
    #[error("initdata {path}")]
    InitData {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: protocols::initdata::InitDataError,
    },
    /// `sev` refused the inputs.
    #[error("SNP launch digest computation failed: {0}")]
    Sev(String),
    /// An option that does not apply to the chosen TEE.
    #[error("{option} is not used with --tee {tee}")]
    NotForTee {
        /// The option.
        option: &'static str,
        /// The TEE.
        tee: &'static str,
    },
}

/// Parses a QEMU `-cpu` name (case-insensitive) into `sev`'s vCPU type.
pub fn vcpu_type(name: &str) -> Result<CpuType, MeasureError> {
    if !VCPU_TYPES.iter().any(|t| t.eq_ignore_ascii_case(name)) {
        return Err(MeasureError::VcpuType(name.to_owned()));
    }
    CpuType::try_from(name).map_err(|_| MeasureError::VcpuType(name.to_owned()))
}

/// Inputs of one SNP measurement.
#[derive(Clone, Debug)]
pub struct SnpInputs {
    /// Firmware image.
    pub ovmf: PathBuf,
    /// Kernel (bzImage).
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: Option<PathBuf>,
    /// The full kernel command line as QEMU passes it.
    pub cmdline: String,
    /// vCPU count.
    pub vcpus: u32,
    /// QEMU `-cpu` model.
    pub vcpu_type: String,
    /// VMSA SEV_FEATURES (bit 0 = SNP active).
    pub guest_features: u64,
}

/// A computed launch digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnpMeasurement {
    /// The 48-byte launch digest (the report's MEASUREMENT).
    pub digest: [u8; 48],
    /// Whether kernel, initrd and cmdline are covered.
    pub kernel_measured: bool,
}

fn read_limited(what: &'static str, path: &Path, max: u64) -> Result<Vec<u8>, MeasureError> {
    read_limited_len(what, path, max)?;
    std::fs::read(path).map_err(|source| MeasureError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Checks that `path` is a regular file of at most `max` bytes, without reading it.
fn read_limited_len(what: &'static str, path: &Path, max: u64) -> Result<(), MeasureError> {
    let err = |source| MeasureError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    if meta.len() > max {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} bytes, more than {max}", meta.len()),
        )));
    }
    Ok(())
}

/// Computes the SNP launch digest. With a firmware that does not measure the kernel
/// the result is refused unless `allow_unmeasured_kernel`; then kernel, initrd and
/// cmdline are checked to exist but do not enter the digest.
pub fn snp_launch_digest(
    input: &SnpInputs,
    allow_unmeasured_kernel: bool,
) -> Result<SnpMeasurement, MeasureError> {
    let cpu = vcpu_type(&input.vcpu_type)?;
    if input.cmdline.trim() != input.cmdline {
        // sev trims before hashing; QEMU does not: the two would disagree.
        return Err(MeasureError::Spec(
            hypervisor::spec::SpecError::CmdlineWhitespace(input.cmdline.clone()),
        ));
    }
    let image = read_limited("firmware", &input.ovmf, MAX_IMAGE_LEN as u64)?;
    let info = OvmfInfo::parse(&image).map_err(|source| MeasureError::Ovmf {
        path: input.ovmf.clone(),
        source,
    })?;
    // Kernel and initrd must exist either way (a typo must not go unnoticed).
    const MAX_BOOT_FILE: u64 = 1 << 30;
    read_limited("kernel", &input.kernel, MAX_BOOT_FILE)?;
    if let Some(i) = &input.initrd {
        read_limited("initrd", i, MAX_BOOT_FILE)?;
    }
    let kernel_measured = info.measures_kernel();
    if !kernel_measured && !allow_unmeasured_kernel {
        return Err(MeasureError::KernelNotMeasured(input.ovmf.clone()));
    }
    let features = GuestFeatures::from_bytes(&input.guest_features.to_le_bytes())
        .map_err(|e| MeasureError::Sev(format!("guest features: {e}")))?;
    let args = SnpMeasurementArgs {
        vcpus: input.vcpus,
        vcpu_type: cpu,
        ovmf_file: input.ovmf.clone(),
        guest_features: features,
        kernel_file: kernel_measured.then(|| input.kernel.clone()),
        initrd_file: if kernel_measured {
            input.initrd.clone()
        } else {
            None
        },
        append: kernel_measured.then_some(input.cmdline.as_str()),
        ovmf_hash_str: None,
        vmm_type: Some(VMMType::QEMU),
    };
    let ld = snp_calc_launch_digest(args).map_err(|e| MeasureError::Sev(e.to_string()))?;
    let v: Vec<u8> = ld
        .try_into()
        .map_err(|e: sev::error::MeasurementError| MeasureError::Sev(e.to_string()))?;
    let digest: [u8; 48] = v
        .try_into()
        .map_err(|v: Vec<u8>| MeasureError::Sev(format!("digest of {} bytes", v.len())))?;
    Ok(SnpMeasurement {
        digest,
        kernel_measured,
    })
}

/// The kernel command line the runtime passes for these extra parameters: the
/// hypervisor's own function on a spec validated like the runtime validates it.
pub fn runtime_cmdline(
    kernel: &Path,
    initrd: Option<&Path>,
    ovmf: &Path,
    extra: &str,
    vcpus: u32,
    vcpu_type: &str,
) -> Result<String, MeasureError> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut spec = VmSpec::new("measure", abs(kernel), std::env::temp_dir());
    spec.initramfs = initrd.map(abs);
    spec.cmdline = extra.to_owned();
    spec.vcpus = vcpus;
    spec.cpu_model = Some(vcpu_type.to_owned());
    spec.confidential = Confidential::Snp(SnpConfig {
        firmware: abs(ovmf),
        ..SnpConfig::default()
    });
    spec.validate().map_err(MeasureError::Spec)?;
    Ok(kernel_cmdline(&spec, ResolvedAccel::Kvm))
}

/// The simulated TEE's launch measurement of a pod VM booting `kernel` and `initrd`
/// with the runtime's command line plus `extra` and `vcpus`: the QEMU backend's own
/// [`hypervisor::qemu::sim_launch_measurement`] on a spec validated like the runtime
/// validates it. Returns the measurement and the full kernel command line.
pub fn sim_launch_measurement(
    kernel: &Path,
    initrd: Option<&Path>,
    extra: &str,
    vcpus: u32,
) -> Result<([u8; 48], String), MeasureError> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut spec = VmSpec::new("measure", abs(kernel), std::env::temp_dir());
    spec.initramfs = initrd.map(abs);
    spec.cmdline = extra.to_owned();
    spec.vcpus = vcpus;
    spec.confidential = Confidential::Sim(SimTeeConfig::default());
    spec.validate().map_err(MeasureError::Spec)?;
    // Kernel and initrd are read like the SNP path reads them (regular files, bounded).
    const MAX_BOOT_FILE: u64 = 1 << 30;
    read_limited_len("kernel", &spec.kernel, MAX_BOOT_FILE)?;
    if let Some(i) = &spec.initramfs {
        read_limited_len("initrd", i, MAX_BOOT_FILE)?;
    }
    // The sim runs on q35, where the accelerator does not change the command line.
    let accel = ResolvedAccel::Tcg;
    let m =
        hypervisor::qemu::sim_launch_measurement(&spec, accel).map_err(|e| MeasureError::Read {
            what: e.what,
            path: e.path,
            source: e.source,
        })?;
    Ok((m, kernel_cmdline(&spec, accel)))
}

/// A guest image directory built by `deploy/guest/build-image.sh`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestImage {
    /// `vmlinuz`.
    pub kernel: PathBuf,
    /// `initramfs.cpio.gz`.
    pub initrd: PathBuf,
    /// `manifest.txt` as `key=value` lines.
    pub manifest: Vec<(String, String)>,
}

impl GuestImage {
    /// Reads `dir/manifest.txt` and checks the files' SHA-256 against it.
    pub fn open(dir: &Path) -> Result<Self, MeasureError> {
        let bad = |what: String| MeasureError::Manifest {
            dir: dir.to_path_buf(),
            what,
        };
        let mpath = dir.join("manifest.txt");
        let text = std::fs::read_to_string(&mpath).map_err(|source| MeasureError::Read {
            what: "guest image manifest (build it: deploy/guest/build-image.sh)",
            path: mpath.clone(),
            source,
        })?;
        let manifest: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let get = |k: &str| {
            manifest
                .iter()
                .find(|(x, _)| x == k)
                .map(|(_, v)| v.as_str())
        };
        let image = Self {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initramfs.cpio.gz"),
            manifest: manifest.clone(),
        };
        for (name, path) in [
            ("vmlinuz", &image.kernel),
            ("initramfs.cpio.gz", &image.initrd),
        ] {
            let want = get(&format!("{name}_sha256"))
                .ok_or_else(|| bad(format!("manifest.txt has no {name}_sha256")))?;
            let data = read_limited("guest image file", path, 1 << 30)?;
            let got = hex::encode(Sha256::digest(&data));
            if got != want {
                return Err(bad(format!(
                    "{name} has sha256 {got} but manifest.txt says {want} (stale image?)"
                )));
            }
        }
        Ok(image)
    }

    /// A manifest value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.manifest
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// HOST_DATA for an initdata TOML file: its digest with the algorithm it names.
pub fn initdata_host_data(path: &Path) -> Result<[u8; 32], MeasureError> {
    let raw = read_limited("initdata", path, protocols::initdata::MAX_SIZE as u64)?;
    let doc = protocols::initdata::InitData::parse_bytes(&raw).map_err(|source| {
        MeasureError::InitData {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let d = protocols::initdata::digest(doc.algorithm, &raw);
    Ok(protocols::initdata::host_data(&d))
}

/// The reference-values fragment `kata-cc-kbs` reads (`reference_values = FILE`). The
/// simulated TEE's reports are SNP-format: its measurement goes in `snp_measurements`
/// too (with `kernel_measured` true).
pub fn kbs_fragment(
    m: &SnpMeasurement,
    host_data: Option<&[u8; 32]>,
    comments: &[String],
) -> String {
    let mut s = String::new();
    for c in comments {
        for line in c.lines() {
            s.push_str("# ");
            s.push_str(line);
            s.push('\n');
        }
    }
    if !m.kernel_measured {
        s.push_str(
            "# WARNING: this firmware does not measure kernel, initrd and cmdline: this\n\
             # digest accepts ANY kernel booted with it.\n",
        );
    }
    s.push_str(&format!(
        "snp_measurements = [\"{}\"]\n",
        hex::encode(m.digest)
    ));
    match host_data {
        Some(h) => s.push_str(&format!("host_data = [\"{}\"]\n", hex::encode(h))),
        None => s.push_str(&format!(
            "# no --initdata: the runtime launches with HOST_DATA all zero\nhost_data = [\"{}\"]\n",
            hex::encode([0u8; 32])
        )),
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn vcpu_types_parse_case_insensitively_and_reject_unknown() {
        for t in VCPU_TYPES {
            assert_eq!(
                vcpu_type(t).unwrap().to_string().to_lowercase(),
                t.to_lowercase()
            );
        }
        assert!(vcpu_type("epyc-milan").is_ok());
        let e = vcpu_type("host").unwrap_err().to_string();
        assert!(e.contains("\"host\"") && e.contains("EPYC-Genoa"), "{e}");
    }

    #[test]
    fn runtime_cmdline_is_the_hypervisors() {
        let k = Path::new("/k");
        let o = Path::new("/o");
        let base = runtime_cmdline(k, None, o, "", 1, "EPYC-v4").unwrap();
        assert_eq!(base, hypervisor::qemu::cmdline::BASE_KERNEL_PARAMS);
        let with = runtime_cmdline(k, None, o, "agent.log=debug", 2, "EPYC-v4").unwrap();
        assert_eq!(with, format!("{base} agent.log=debug"));
        for bad in [" a", "a ", "a\nb"] {
            assert!(matches!(
                runtime_cmdline(k, None, o, bad, 1, "EPYC-v4"),
                Err(MeasureError::Spec(_))
            ));
        }
        assert!(matches!(
            runtime_cmdline(k, None, o, "", 0, "EPYC-v4"),
            Err(MeasureError::Spec(_))
        ));
    }
}
