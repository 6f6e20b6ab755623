//! The initdata disk: the pod's measured configuration, read by PID 1 before it serves.
//!
//! The host attaches the initdata device image (see [`protocols::initdata`]) as a read-only
//! virtio-blk disk with the serial [`INITDATA_DISK_SERIAL`]. As PID 1 the agent finds it
//! through `/sys/block/vd*/serial`, reads `/dev/vdX` (devtmpfs), parses it and logs its
//! digest. Its `policy.rego`, if any, becomes the agent API policy.
//!
//! * No disk: `Ok(None)`; the agent keeps its default policy (allow-all without a TEE,
//!   `default-tee` in a TEE).
//! * A disk that cannot be read or parsed, or more than one disk with that serial: an
//!   error, which the agent treats as fatal (the VM powers off with the reason).
//!
//! [`bind`] then ties the disk to the TEE: the digest fitted to SEV-SNP HOST_DATA / TDX
//! MRCONFIGID (the simulated TEE reports HOST_DATA like SNP) must equal the field in a
//! fresh report, or the agent refuses to run. Without a TEE the initdata is unbound,
//! and the log says so.

use std::path::{Path, PathBuf};

use protocols::initdata::{self, InitData, InitDataError, INITDATA_DISK_SERIAL};

/// Where sysfs is mounted in the guest.
pub const SYS_ROOT: &str = "/sys";
/// Where devtmpfs is mounted in the guest.
pub const DEV_ROOT: &str = "/dev";

/// Errors finding or reading the initdata disk. Each is fatal for the agent.
#[derive(Debug, thiserror::Error)]
pub enum InitdataError {
    /// Listing `<sys>/block` or reading a disk's serial failed.
    #[error("cannot scan {path} for the initdata disk")]
    Scan {
        /// The path that could not be read.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// More than one virtio-blk disk carries the initdata serial.
    #[error("several disks have the serial {INITDATA_DISK_SERIAL:?}: {0:?}")]
    Ambiguous(Vec<String>),
    /// The device node cannot be opened.
    #[error("cannot open the initdata disk {path}")]
    Open {
        /// The device node.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The device's content is not a valid initdata image or document.
    #[error("initdata disk {path} is invalid")]
    Invalid {
        /// The device node.
        path: PathBuf,
        /// The cause.
        #[source]
        source: InitDataError,
    },
}

/// The initdata read from the disk.
#[derive(Debug, Clone)]
pub struct LoadedInitData {
    /// The device node it was read from (`/dev/vdX`).
    pub device: PathBuf,
    /// The parsed document.
    pub init: InitData,
    /// The raw TOML bytes as read (what the digest covers).
    pub raw: Vec<u8>,
    /// `algorithm(raw)`, full length (not yet fitted to a TEE field).
    pub digest: Vec<u8>,
}

impl LoadedInitData {
    /// The digest as lower-case hex.
    pub fn digest_hex(&self) -> String {
        hex(&self.digest)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name (`vdX`) of the virtio-blk disk below `<sys_root>/block` whose `serial` is
/// [`INITDATA_DISK_SERIAL`]; `None` without one. Disks without a readable `serial`
/// attribute are skipped; two matching disks are an error.
pub fn find_disk(sys_root: &Path) -> Result<Option<String>, InitdataError> {
    let block = sys_root.join("block");
    let entries = match std::fs::read_dir(&block) {
        Ok(e) => e,
        // No block devices at all (no block driver loaded): no disk.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(InitdataError::Scan { path: block, source }),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| InitdataError::Scan { path: block.clone(), source })?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if !name.starts_with("vd") {
            continue;
        }
        let serial_path = entry.path().join("serial");
        let serial = match std::fs::read(&serial_path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(InitdataError::Scan { path: serial_path, source }),
        };
        // The kernel prints the (up to 20-byte, NUL-padded) serial followed by a newline.
        let serial = String::from_utf8_lossy(&serial);
        if serial.trim_end_matches(['\n', '\0']) == INITDATA_DISK_SERIAL {
            found.push(name);
        }
    }
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(InitdataError::Ambiguous(found)),
    }
}

/// [`load_from`] on the guest's `/sys` and `/dev`.
pub fn load() -> Result<Option<LoadedInitData>, InitdataError> {
    load_from(Path::new(SYS_ROOT), Path::new(DEV_ROOT))
}

/// Finds the initdata disk in `sys_root` ([`find_disk`]), reads `<dev_root>/<name>` with
/// [`initdata::read_device`], parses it and computes its digest. `Ok(None)` without a
/// disk; a disk that does not read or parse is an error.
pub fn load_from(sys_root: &Path, dev_root: &Path) -> Result<Option<LoadedInitData>, InitdataError> {
    let Some(name) = find_disk(sys_root)? else { return Ok(None) };
    let device = dev_root.join(&name);
    let file = std::fs::File::open(&device)
        .map_err(|source| InitdataError::Open { path: device.clone(), source })?;
    let invalid = |source| InitdataError::Invalid { path: device.clone(), source };
    let raw = initdata::read_device(std::io::BufReader::new(file)).map_err(invalid)?;
    let init = InitData::parse_bytes(&raw).map_err(invalid)?;
    let digest = initdata::digest(init.algorithm, &raw);
    // Binding to the TEE is a separate step (`bind`), run by the caller with the
    // attester it chose.
    Ok(Some(LoadedInitData { device, init, raw, digest }))
}

/// What [`bind`] established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// The TEE's field (`HOST_DATA` / `MRCONFIGID`) equals the fitted initdata digest.
    Bound {
        /// The field's name.
        field: &'static str,
    },
    /// initdata without a TEE: nothing measures it.
    Unbound,
    /// A TEE without an initdata disk.
    NoInitdata,
    /// Neither.
    Nothing,
}

/// Why initdata and the TEE disagree. Fatal for PID 1: the VM powers off.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// The TEE was launched with the field all zero, yet a disk is attached.
    #[error("initdata disk present but {tee} {field} is all zero: the host launched the TEE without binding the initdata")]
    FieldZero {
        /// The TEE's label.
        tee: &'static str,
        /// `HOST_DATA` or `MRCONFIGID`.
        field: &'static str,
    },
    /// The field holds something else.
    #[error("initdata digest does not match {tee} {field}: the disk gives {expected}, the TEE reports {got}")]
    Mismatch {
        /// The TEE's label.
        tee: &'static str,
        /// `HOST_DATA` or `MRCONFIGID`.
        field: &'static str,
        /// The fitted digest of the disk (hex).
        expected: String,
        /// The field (hex).
        got: String,
    },
    /// The field could not be read.
    #[error("cannot read the TEE's launch data")]
    Tee(#[from] crate::tee::TeeError),
}

/// Binds the initdata to the TEE: the digest of the disk, fitted to the TEE's field
/// (`protocols::initdata::host_data` / `mrconfigid`), must equal what the TEE reports
/// (SEV-SNP and simulated HOST_DATA, TDX MRCONFIGID). A mismatch, or a zero field with
/// a disk attached, is an error. Without a TEE the initdata is unbound: logged as such.
pub fn bind(initdata: Option<&LoadedInitData>, tee: Option<&crate::tee::GuestTee>) -> Result<Binding, BindingError> {
    match (initdata, tee) {
        (None, None) => Ok(Binding::Nothing),
        (Some(d), None) => {
            tracing::warn!(
                "initdata {}:{} is NOT bound: no TEE in this VM, so nothing measures it (the host chose it)",
                d.init.algorithm,
                d.digest_hex()
            );
            Ok(Binding::Unbound)
        }
        (None, Some(t)) => {
            let field = t.launch_field()?;
            if !field.is_zero() {
                tracing::warn!(
                    "{}: {} is {} but no initdata disk is attached: running with the built-in default TEE policy",
                    t.label(),
                    field.name(),
                    hex(field.bytes())
                );
            }
            Ok(Binding::NoInitdata)
        }
        (Some(d), Some(t)) => {
            let field = t.launch_field()?;
            let (tee, name) = (t.label(), field.name());
            if field.is_zero() {
                return Err(BindingError::FieldZero { tee, field: name });
            }
            let expected = field.fit(&d.digest);
            if expected != field.bytes() {
                return Err(BindingError::Mismatch {
                    tee,
                    field: name,
                    expected: hex(&expected),
                    got: hex(field.bytes()),
                });
            }
            tracing::info!("initdata bound: {tee} {name} = {} matches the disk's digest", hex(field.bytes()));
            Ok(Binding::Bound { field: name })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use protocols::initdata::Algorithm;

    /// A fake `/sys/block` entry `name` with `serial` (none if `None`).
    fn disk(root: &Path, name: &str, serial: Option<&[u8]>) {
        let dir = root.join("sys/block").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(s) = serial {
            std::fs::write(dir.join("serial"), s).unwrap();
        }
    }

    #[test]
    fn finds_the_disk_by_serial_and_loads_it() {
        let t = tempfile::tempdir().unwrap();
        let (sys, dev) = (t.path().join("sys"), t.path().join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        disk(t.path(), "sda", Some(b"initdata\n")); // not virtio-blk
        disk(t.path(), "vda", Some(b"rootfs\n"));
        disk(t.path(), "vdb", None);
        disk(t.path(), "loop0", None);
        assert_eq!(find_disk(&sys).unwrap(), None);
        assert!(load_from(&sys, &dev).unwrap().is_none());

        disk(t.path(), "vdc", Some(b"initdata\n"));
        assert_eq!(find_disk(&sys).unwrap().as_deref(), Some("vdc"));
        let toml = InitData::with_policy(Algorithm::Sha384, "package agent_policy\n").to_toml();
        std::fs::write(dev.join("vdc"), initdata::device_image(toml.as_bytes()).unwrap()).unwrap();
        let loaded = load_from(&sys, &dev).unwrap().unwrap();
        assert_eq!(loaded.device, dev.join("vdc"));
        assert_eq!(loaded.raw, toml.as_bytes());
        assert_eq!(loaded.init.policy(), Some("package agent_policy\n"));
        assert_eq!(loaded.digest, initdata::digest(Algorithm::Sha384, toml.as_bytes()));
        assert_eq!(loaded.digest_hex().len(), 96);

        // A second disk with the serial: refused, not guessed.
        disk(t.path(), "vdd", Some(b"initdata\0\0\n"));
        let e = find_disk(&sys).unwrap_err();
        assert!(matches!(&e, InitdataError::Ambiguous(d) if d == &["vdc", "vdd"]), "{e}");
    }

    /// SNP-format evidence whose report carries `host_data`.
    struct FakeSnp([u8; 32]);
    impl attestation_agent::Attester for FakeSnp {
        fn tee(&self) -> attestation_agent::TeeKind {
            attestation_agent::TeeKind::Snp
        }
        fn evidence(&self, _: &[u8; 64]) -> Result<serde_json::Value, attestation_agent::AttesterError> {
            use base64::Engine as _;
            let mut r = vec![0u8; kbs::snp::report::REPORT_LEN];
            r[0] = 2;
            r[0xC0..0xE0].copy_from_slice(&self.0);
            Ok(serde_json::json!({"attestation_report": base64::engine::general_purpose::STANDARD.encode(r), "cert_chain": null}))
        }
    }

    fn loaded(toml: &str) -> LoadedInitData {
        let init = InitData::parse(toml).unwrap();
        let digest = initdata::digest(init.algorithm, toml.as_bytes());
        LoadedInitData { device: "/dev/vdb".into(), init, raw: toml.as_bytes().to_vec(), digest }
    }

    #[test]
    fn binding_matches_refuses_mismatch_and_zero() {
        use crate::tee::GuestTee;
        use std::sync::Arc;
        let d = loaded("version = \"0.1.0\"\nalgorithm = \"sha384\"\n");
        let good = GuestTee::new(Arc::new(FakeSnp(initdata::host_data(&d.digest))));
        assert_eq!(bind(Some(&d), Some(&good)).unwrap(), Binding::Bound { field: "HOST_DATA" });

        let other = GuestTee::new(Arc::new(FakeSnp([0x11; 32])));
        let e = bind(Some(&d), Some(&other)).unwrap_err();
        assert!(matches!(&e, BindingError::Mismatch { field: "HOST_DATA", got, .. } if got == &"11".repeat(32)), "{e}");
        assert!(e.to_string().contains("SEV-SNP HOST_DATA"), "{e}");

        let zero = GuestTee::new(Arc::new(FakeSnp([0; 32])));
        assert!(matches!(bind(Some(&d), Some(&zero)), Err(BindingError::FieldZero { field: "HOST_DATA", .. })));

        // No TEE: unbound; no disk: nothing to compare (zero or not).
        assert_eq!(bind(Some(&d), None).unwrap(), Binding::Unbound);
        assert_eq!(bind(None, Some(&zero)).unwrap(), Binding::NoInitdata);
        assert_eq!(bind(None, Some(&other)).unwrap(), Binding::NoInitdata);
        assert_eq!(bind(None, None).unwrap(), Binding::Nothing);
    }

    #[test]
    fn no_block_directory_means_no_disk() {
        let t = tempfile::tempdir().unwrap();
        assert!(load_from(&t.path().join("sys"), &t.path().join("dev")).unwrap().is_none());
    }

    #[test]
    fn disk_present_but_garbage_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let (sys, dev) = (t.path().join("sys"), t.path().join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        disk(t.path(), "vdb", Some(b"initdata\n"));

        // Not an initdata image at all.
        std::fs::write(dev.join("vdb"), vec![0xa5u8; 4096]).unwrap();
        let e = load_from(&sys, &dev).unwrap_err();
        assert!(matches!(e, InitdataError::Invalid { source: InitDataError::BadMagic { .. }, .. }), "{e:?}");

        // A valid image of a document that is not initdata.
        let image = initdata::device_image(b"version = \"9.9\"\nalgorithm = \"sha256\"\n").unwrap();
        std::fs::write(dev.join("vdb"), image).unwrap();
        let e = load_from(&sys, &dev).unwrap_err();
        assert!(matches!(e, InitdataError::Invalid { source: InitDataError::Version(_), .. }), "{e:?}");

        // Listed in sysfs but no device node.
        std::fs::remove_file(dev.join("vdb")).unwrap();
        assert!(matches!(load_from(&sys, &dev).unwrap_err(), InitdataError::Open { .. }));
    }
}
