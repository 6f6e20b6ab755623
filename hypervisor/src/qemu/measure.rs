//! The simulated TEE's launch measurement: what the QEMU backend really boots.
//!
//! A hardware TEE measures the guest itself; the simulated one cannot, so the host
//! computes a digest of the boot inputs ([`sim_launch_measurement`]) and the QEMU
//! backend hands exactly that value to the guest (see
//! [`SimTeeConfig`](crate::SimTeeConfig)). A KBS that expects the value of a pristine
//! image then refuses a VM booted with another kernel, initramfs, command line or vCPU
//! count. `kata-cc measure --tee sim` prints the same value for a guest image.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256, Sha384};

use super::cmdline::kernel_cmdline;
use crate::spec::{ResolvedAccel, VmSpec};

/// Domain separator at the start of the hashed data (ASCII, NUL-terminated; 38 bytes).
pub const SIM_MEASUREMENT_DOMAIN: &[u8] = b"kata-cc sim-tee launch measurement v1\0";

/// A boot file could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the {what} {path} for the simulated TEE's launch measurement")]
pub struct SimMeasureError {
    /// `kernel` or `initramfs`.
    pub what: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Cause.
    #[source]
    pub source: io::Error,
}

/// The simulated TEE's 48-byte launch measurement of `spec` booted under `accel`:
///
/// ```text
/// SHA-384( SIM_MEASUREMENT_DOMAIN                  38 bytes: "kata-cc sim-tee launch measurement v1" + 0x00
///       || SHA-256(kernel file)                    32 bytes (spec.kernel, the whole file)
///       || 0x01 || SHA-256(initramfs file)         33 bytes when spec.initramfs is set,
///          0x00 || 32 zero bytes                   33 bytes when it is not
///       || SHA-256(kernel command line)            32 bytes: the UTF-8 string QEMU gets in
///                                                  -append, kernel_cmdline(spec, accel), no NUL
///       || vCPU count as u32 little-endian )       4 bytes (spec.vcpus)
/// ```
///
/// 139 bytes are hashed in all. Nothing else enters it (memory size, CPU model, devices,
/// HOST_DATA are not measured; HOST_DATA is reported beside it). The accelerator matters
/// only through the command line, i.e. only on microvm, which the simulated TEE refuses.
/// The files are read now: the caller must not let them change before QEMU reads them.
pub fn sim_launch_measurement(
    spec: &VmSpec,
    accel: ResolvedAccel,
) -> Result<[u8; 48], SimMeasureError> {
    let kernel = sha256_file("kernel", &spec.kernel)?;
    let initrd = spec
        .initramfs
        .as_deref()
        .map(|p| sha256_file("initramfs", p))
        .transpose()?;
    let cmdline: [u8; 32] = Sha256::digest(kernel_cmdline(spec, accel).as_bytes()).into();
    Ok(combine(&kernel, initrd.as_ref(), &cmdline, spec.vcpus))
}

/// The outer hash of [`sim_launch_measurement`], from the component digests.
fn combine(
    kernel: &[u8; 32],
    initrd: Option<&[u8; 32]>,
    cmdline: &[u8; 32],
    vcpus: u32,
) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(SIM_MEASUREMENT_DOMAIN);
    h.update(kernel);
    match initrd {
        Some(d) => {
            h.update([1u8]);
            h.update(d);
        }
        None => {
            h.update([0u8]);
            h.update([0u8; 32]);
        }
    }
    h.update(cmdline);
    h.update(vcpus.to_le_bytes());
    h.finalize().into()
}

fn sha256_file(what: &'static str, path: &Path) -> Result<[u8; 32], SimMeasureError> {
    let err = |source| SimMeasureError {
        what,
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    let mut h = Sha256::new();
    io::copy(&mut file, &mut h).map_err(err)?;
    Ok(h.finalize().into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
mod tests {
    use super::*;
    use crate::spec::{Confidential, SimTeeConfig};

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("k"), b"kernel-bytes").unwrap();
            std::fs::write(dir.path().join("i"), b"initrd-bytes").unwrap();
            Self { dir }
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        fn spec(&self) -> VmSpec {
            let mut s = VmSpec::new("m", self.path("k"), "/run/kata-cc/vm/m");
            s.initramfs = Some(self.path("i"));
            s.confidential = Confidential::Sim(SimTeeConfig::default());
            s
        }
    }

    fn m(s: &VmSpec) -> [u8; 48] {
        sim_launch_measurement(s, ResolvedAccel::Tcg).unwrap()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn known_answer() {
        // Independently: python3 -c 'import hashlib as h, struct; s=lambda b: h.sha256(b).digest();
        //   print(h.sha384(b"kata-cc sim-tee launch measurement v1\0" + s(b"kernel-bytes")
        //   + b"\1" + s(b"initrd-bytes") + s(b"console=ttyS0 quiet reboot=t panic=-1")
        //   + struct.pack("<I", 1)).hexdigest())'
        let f = Files::new();
        assert_eq!(SIM_MEASUREMENT_DOMAIN.len(), 38);
        assert_eq!(
            hex(&m(&f.spec())),
            "a7d9d14c266c812cbfd23d850c08d74125358372475cc98860f7c4ab2563c42a10ad5e57ab7aa72f7847d2cedddb990a"
        );
        // Without initramfs: 0x00 and 32 zero bytes in its place.
        let mut s = f.spec();
        s.initramfs = None;
        assert_eq!(
            hex(&m(&s)),
            "01ddb6c43a93cf235dd2f4e2fe01babb50fce63f934cf53ec7e1b671f8cb7c51b8ed0a66509c4151bcf4348a45e3d24d"
        );
    }

    #[test]
    fn covers_kernel_initrd_cmdline_and_vcpus_only() {
        let f = Files::new();
        let base = m(&f.spec());
        // Stable: same inputs, and what is not measured.
        assert_eq!(m(&f.spec()), base);
        let mut s = f.spec();
        s.memory_mib = 2048;
        s.cpu_model = Some("EPYC-v4".into());
        s.id = "other".into();
        s.confidential = Confidential::Sim(SimTeeConfig {
            measurement: [9; 48],
            host_data: [7; 32],
        });
        assert_eq!(m(&s), base);
        assert_eq!(
            sim_launch_measurement(&s, ResolvedAccel::Kvm).unwrap(),
            base,
            "q35: accel does not change the cmdline"
        );

        std::fs::write(f.path("k2"), b"kernel-bytes!").unwrap();
        std::fs::write(f.path("i2"), b"initrd-bytes!").unwrap();
        std::fs::write(f.path("empty"), b"").unwrap();
        let mut changed = Vec::new();
        let mut s = f.spec();
        s.kernel = f.path("k2");
        changed.push(("kernel", m(&s)));
        let mut s = f.spec();
        s.initramfs = Some(f.path("i2"));
        changed.push(("initrd", m(&s)));
        let mut s = f.spec();
        s.initramfs = None;
        changed.push(("no initrd", m(&s)));
        let mut s = f.spec();
        s.initramfs = Some(f.path("empty"));
        changed.push(("empty initrd", m(&s)));
        let mut s = f.spec();
        s.cmdline = "agent.log=debug".into();
        changed.push(("cmdline", m(&s)));
        let mut s = f.spec();
        s.vcpus = 2;
        changed.push(("vcpus", m(&s)));
        // The same bytes as kernel and as initrd are not interchangeable.
        let mut s = f.spec();
        s.kernel = f.path("i");
        s.initramfs = Some(f.path("k"));
        changed.push(("swapped", m(&s)));
        for (i, (what, v)) in changed.iter().enumerate() {
            assert_ne!(*v, base, "{what} not measured");
            for (other, w) in &changed[i + 1..] {
                assert_ne!(v, w, "{what} vs {other}");
            }
        }
        // A file changed in place changes it too.
        std::fs::write(f.path("i"), b"initrd-bytes, modified").unwrap();
        assert_ne!(m(&f.spec()), base);
    }

    #[test]
    fn microvm_tcg_cmdline_is_the_one_measured() {
        // kernel_cmdline adds lpj= on microvm under TCG: the measurement follows it.
        let f = Files::new();
        let mut s = f.spec();
        s.confidential = Confidential::None;
        s.machine = crate::spec::Machine::Microvm;
        assert_ne!(
            sim_launch_measurement(&s, ResolvedAccel::Tcg).unwrap(),
            sim_launch_measurement(&s, ResolvedAccel::Kvm).unwrap()
        );
    }

    #[test]
    fn missing_files_are_named() {
        let f = Files::new();
        let mut s = f.spec();
        s.kernel = f.path("nope");
        let e = sim_launch_measurement(&s, ResolvedAccel::Tcg).unwrap_err();
        assert_eq!((e.what, e.path.clone()), ("kernel", f.path("nope")));
        assert_eq!(e.source.kind(), io::ErrorKind::NotFound);
        let mut s = f.spec();
        s.initramfs = Some(f.path("nope"));
        let e = sim_launch_measurement(&s, ResolvedAccel::Tcg).unwrap_err();
        assert_eq!(e.what, "initramfs");
        assert!(
            e.to_string().contains("initramfs") && e.to_string().contains("nope"),
            "{e}"
        );
    }
}
