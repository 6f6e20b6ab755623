//! initdata on the host: from the pod annotation to the VM launch configuration.
//!
//! [`prepare`] is the one call the shim makes for a pod: it decodes the annotation
//! (base64 of gzip of the TOML document, see [`protocols::initdata`]), checks that the
//! document parses, writes the device image the guest reads into the VM's directory,
//! attaches it as a read-only virtio-blk disk with the serial
//! [`INITDATA_DISK_SERIAL`], and puts the digest into the TEE field that the hardware
//! reports: SEV-SNP HOST_DATA, TDX MRCONFIGID, or the simulated TEE's HOST_DATA. The
//! guest compares that field with the digest of the disk it reads and refuses to run
//! on a mismatch; nothing here is trusted by the guest.
//!
//! Two annotation names are accepted: Kata's [`protocols::initdata::ANNOTATION`]
//! (`io.katacontainers.config.hypervisor.cc_init_data`) and [`RUNTIME_ANNOTATION`]
//! (`io.katacontainers.config.runtime.cc_init_data`, as peer-pods tooling writes it).
//! Both present with different values is an error.
//!
//! ```no_run
//! # fn demo(annotations: &std::collections::HashMap<String, String>) -> Result<(), hypervisor::initdata::InitdataHostError> {
//! use hypervisor::{Confidential, SnpConfig, VmSpec};
//! let mut spec = VmSpec::new("pod-1", "/opt/kata-cc/vmlinuz", "/run/kata-cc/vm/pod-1");
//! spec.confidential = Confidential::Snp(SnpConfig::default());
//! if let Some(init) = hypervisor::initdata::prepare(&mut spec, annotations, "/run/kata-cc/vm/pod-1".as_ref())? {
//!     println!("initdata {}:{}", init.algorithm, init.digest_hex());
//! }
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use protocols::initdata::{self, Algorithm, InitData, InitDataError, INITDATA_DISK_SERIAL};

use crate::spec::{Confidential, Disk, VmSpec};

/// The annotation name peer-pods tooling uses (Kata's own is
/// [`protocols::initdata::ANNOTATION`]); both are accepted.
pub const RUNTIME_ANNOTATION: &str = "io.katacontainers.config.runtime.cc_init_data";

/// File name of the device image inside the VM's directory.
pub const IMAGE_FILE: &str = "initdata.img";

/// Why a pod's initdata cannot be launched.
#[derive(Debug, thiserror::Error)]
pub enum InitdataHostError {
    /// Both annotation names are set, to different values.
    #[error(
        "{} and {} are both set, to different values",
        initdata::ANNOTATION,
        RUNTIME_ANNOTATION
    )]
    Conflict,
    /// The annotation does not decode or the document is not valid initdata.
    #[error("annotation {annotation} is not valid initdata")]
    Invalid {
        /// Which annotation.
        annotation: &'static str,
        /// The cause.
        #[source]
        source: InitDataError,
    },
    /// The VM spec already has a disk with the initdata serial.
    #[error("the VM already has a disk with the serial {INITDATA_DISK_SERIAL:?}")]
    DiskTaken,
    /// Writing the device image failed.
    #[error("cannot write the initdata image {path}")]
    Write {
        /// The image file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A pod's initdata as decoded from its annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInitdata {
    /// The annotation it came from.
    pub annotation: &'static str,
    /// The TOML document, byte for byte as decoded (what the digest covers).
    pub raw: Vec<u8>,
    /// Its digest algorithm.
    pub algorithm: Algorithm,
    /// `algorithm(raw)`, full length.
    pub digest: Vec<u8>,
}

impl PodInitdata {
    /// The pod's initdata from its annotations; `Ok(None)` without either annotation.
    pub fn from_annotations<K, V>(
        annotations: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Option<Self>, InitdataHostError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let (mut kata, mut runtime) = (None, None);
        for (k, v) in annotations {
            match k.as_ref() {
                initdata::ANNOTATION => kata = Some(v.as_ref().to_owned()),
                RUNTIME_ANNOTATION => runtime = Some(v.as_ref().to_owned()),
                _ => {}
            }
        }
        let (annotation, value) = match (kata, runtime) {
            (Some(a), Some(b)) if a.trim() != b.trim() => return Err(InitdataHostError::Conflict),
            (Some(a), _) => (initdata::ANNOTATION, a),
            (None, Some(b)) => (RUNTIME_ANNOTATION, b),
            (None, None) => return Ok(None),
        };
        let invalid = |source| InitdataHostError::Invalid { annotation, source };
        let raw = initdata::decode_annotation(&value).map_err(invalid)?;
        let algorithm = InitData::parse_bytes(&raw).map_err(invalid)?.algorithm;
        let digest = initdata::digest(algorithm, &raw);
        Ok(Some(Self {
            annotation,
            raw,
            algorithm,
            digest,
        }))
    }

    /// The digest as lower-case hex.
    pub fn digest_hex(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The block device image the guest reads.
    pub fn device_image(&self) -> Result<Vec<u8>, InitdataHostError> {
        initdata::device_image(&self.raw).map_err(|source| InitdataHostError::Invalid {
            annotation: self.annotation,
            source,
        })
    }

    /// Attaches `image` (the file [`Self::device_image`] was written to) as the
    /// initdata disk and sets the TEE field to the fitted digest: SNP and simulated
    /// HOST_DATA, TDX MRCONFIGID. Without a TEE the disk is still attached (its policy
    /// applies), but nothing binds it: the guest says so in its log. Pure: writes
    /// nothing.
    pub fn apply(&self, spec: &mut VmSpec, image: PathBuf) -> Result<(), InitdataHostError> {
        if spec.disks.iter().any(|d| d.serial == INITDATA_DISK_SERIAL) {
            return Err(InitdataHostError::DiskTaken);
        }
        spec.disks.push(Disk {
            path: image,
            serial: INITDATA_DISK_SERIAL.to_owned(),
        });
        match &mut spec.confidential {
            Confidential::Snp(snp) => snp.host_data = initdata::host_data(&self.digest),
            Confidential::Sim(sim) => sim.host_data = initdata::host_data(&self.digest),
            Confidential::Tdx(tdx) => tdx.mrconfigid = initdata::mrconfigid(&self.digest),
            Confidential::None => tracing::warn!(
                id = %spec.id,
                "initdata attached to a VM without a TEE: its content is not measured"
            ),
        }
        Ok(())
    }
}

/// Decodes the pod's initdata annotation (if any), writes the device image to
/// `<dir>/`[`IMAGE_FILE`] and applies it to `spec` ([`PodInitdata::apply`]). Returns
/// what was applied; `Ok(None)` (spec untouched) without an annotation.
pub fn prepare<K, V>(
    spec: &mut VmSpec,
    annotations: impl IntoIterator<Item = (K, V)>,
    dir: &Path,
) -> Result<Option<PodInitdata>, InitdataHostError>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let Some(init) = PodInitdata::from_annotations(annotations)? else {
        return Ok(None);
    };
    let image = init.device_image()?;
    let path = dir.join(IMAGE_FILE);
    let write = |source| InitdataHostError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(write)?;
    std::fs::write(&path, image).map_err(write)?;
    init.apply(spec, path.clone())?;
    tracing::info!(id = %spec.id, "initdata {}:{} from {} at {}", init.algorithm, init.digest_hex(), init.annotation, path.display());
    Ok(Some(init))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
mod tests {
    use super::*;
    use crate::spec::{SimTeeConfig, SnpConfig, TdxConfig};
    use std::collections::HashMap;

    const TOML: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"http://10.0.2.2:8080\"\n'''\n";

    fn annotations(name: &str, toml: &str) -> HashMap<String, String> {
        HashMap::from([
            ("io.kubernetes.cri.sandbox-id".to_owned(), "x".to_owned()),
            (
                name.to_owned(),
                initdata::encode_annotation(toml.as_bytes()).unwrap(),
            ),
        ])
    }

    #[test]
    fn no_annotation_leaves_the_spec_alone() {
        let mut spec = VmSpec::new("p", "/k", "/run/p");
        let before = spec.clone();
        let none: HashMap<String, String> = HashMap::new();
        assert!(prepare(&mut spec, &none, Path::new("/nonexistent"))
            .unwrap()
            .is_none());
        assert_eq!(spec, before);
    }

    #[test]
    fn each_tee_gets_the_fitted_digest() {
        let init = PodInitdata::from_annotations(&annotations(RUNTIME_ANNOTATION, TOML))
            .unwrap()
            .unwrap();
        assert_eq!(init.annotation, RUNTIME_ANNOTATION);
        assert_eq!(init.raw, TOML.as_bytes());
        assert_eq!(init.algorithm, Algorithm::Sha384);
        let d = initdata::digest(Algorithm::Sha384, TOML.as_bytes());
        assert_eq!(init.digest, d);

        let mut snp = VmSpec::new("p", "/k", "/run/p");
        snp.confidential = Confidential::Snp(SnpConfig::default());
        init.apply(&mut snp, "/run/p/initdata.img".into()).unwrap();
        assert!(matches!(&snp.confidential, Confidential::Snp(s) if s.host_data[..] == d[..32]));
        assert_eq!(
            snp.disks,
            [Disk {
                path: "/run/p/initdata.img".into(),
                serial: "initdata".into()
            }]
        );
        // A second initdata disk is refused.
        assert!(matches!(
            init.apply(&mut snp, "/x".into()),
            Err(InitdataHostError::DiskTaken)
        ));

        let mut tdx = VmSpec::new("p", "/k", "/run/p");
        tdx.confidential = Confidential::Tdx(TdxConfig {
            mrconfigid: [0; 48],
            quote_generation_socket: None,
            firmware: "/f".into(),
        });
        init.apply(&mut tdx, "/i".into()).unwrap();
        assert!(matches!(&tdx.confidential, Confidential::Tdx(t) if t.mrconfigid[..] == d[..]));

        let mut sim = VmSpec::new("p", "/k", "/run/p");
        sim.confidential = Confidential::Sim(SimTeeConfig {
            measurement: [7; 48],
            host_data: [0; 32],
        });
        init.apply(&mut sim, "/i".into()).unwrap();
        assert!(
            matches!(&sim.confidential, Confidential::Sim(s) if s.host_data[..] == d[..32] && s.measurement == [7; 48])
        );

        let mut plain = VmSpec::new("p", "/k", "/run/p");
        init.apply(&mut plain, "/i".into()).unwrap();
        assert_eq!(plain.confidential, Confidential::None);
        assert_eq!(plain.disks.len(), 1);
    }

    #[test]
    fn prepare_writes_an_image_the_guest_reader_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = VmSpec::new("p", "/k", "/run/p");
        spec.confidential = Confidential::Sim(SimTeeConfig::default());
        let vm_dir = dir.path().join("vm");
        let init = prepare(&mut spec, &annotations(initdata::ANNOTATION, TOML), &vm_dir)
            .unwrap()
            .unwrap();
        let image = std::fs::read(vm_dir.join(IMAGE_FILE)).unwrap();
        assert_eq!(initdata::read_device(image.as_slice()).unwrap(), init.raw);
        assert_eq!(spec.disks[0].path, vm_dir.join(IMAGE_FILE));
    }

    #[test]
    fn bad_or_conflicting_annotations_are_refused() {
        let mut both = annotations(initdata::ANNOTATION, TOML);
        both.extend(annotations(RUNTIME_ANNOTATION, TOML));
        // The same value twice is fine.
        assert!(PodInitdata::from_annotations(&both).unwrap().is_some());
        both.insert(
            RUNTIME_ANNOTATION.into(),
            initdata::encode_annotation(TOML.replace("sha384", "sha256").as_bytes()).unwrap(),
        );
        assert!(matches!(
            PodInitdata::from_annotations(&both),
            Err(InitdataHostError::Conflict)
        ));

        for bad in ["not base64!", "aGVsbG8="] {
            let a = HashMap::from([(initdata::ANNOTATION, bad)]);
            assert!(matches!(
                PodInitdata::from_annotations(a),
                Err(InitdataHostError::Invalid {
                    annotation: initdata::ANNOTATION,
                    ..
                })
            ));
        }
        // Valid gzip of a document that is not initdata.
        let a = annotations(
            initdata::ANNOTATION,
            "version = \"2\"\nalgorithm = \"sha256\"\n",
        );
        let mut spec = VmSpec::new("p", "/k", "/run/p");
        let dir = tempfile::tempdir().unwrap();
        assert!(prepare(&mut spec, &a, dir.path()).is_err());
        assert!(spec.disks.is_empty());
        assert!(!dir.path().join(IMAGE_FILE).exists());
    }
}
