//! Simulated SEV-SNP: evidence in the real 1184-byte report layout, signed by a
//! simulated ARK → ASK → VCEK chain (RSA-PSS / ECDSA P-384 exactly like AMD's), for
//! development and CI where no TEE exists.
//!
//! [`SimVerifier`] is the SNP verifier with only the trust root swapped for the
//! simulated one (`trust/sim/ask_ark.pem`); its claims say `tee: "sim"` and
//! `simulated: true`. It refuses everything with
//! [`PolicyError::SimulatedNotTrusted`] unless the reference values set
//! `allow_simulated = true`.
//!
//! Simulated evidence is marked in three independent ways: the CHIP_ID is
//! [`SIM_CHIP_ID`] (ASCII `KATA-CC SIMULATED SEV-SNP, NOT A TEE…`), the certificates are
//! named `ARK-Sim` / `SEV-Sim` / `SEV-VCEK-Sim`, and the chain only verifies under the
//! simulated root, which the real [`SnpVerifier`] never holds.
//!
//! With the `sim` feature, `produce` creates such evidence (the attestation agent's
//! sim attester uses it). The key material in `trust/sim/` is public test data created
//! by `cargo run -p kbs --features sim --example gen-sim-chain`.

use std::time::SystemTime;

use crate::claims::Claims;
use crate::reference::ReferenceValues;
use crate::snp::{IntermediateKind, SnpError, SnpTrustStore, SnpVerifier};
use crate::{PolicyError, TeeKind, Verifier, VerifyError};

/// The simulated chain (SEV-Sim ASK then ARK-Sim), as PEM.
pub const SIM_ASK_ARK_PEM: &str = include_str!("../trust/sim/ask_ark.pem");

const fn sim_chip_id() -> [u8; 64] {
    let text = b"KATA-CC SIMULATED SEV-SNP, NOT A TEE, NEVER TRUST IN PRODUCTION!";
    let mut out = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        out[i] = text[i];
        i += 1;
    }
    out
}

/// CHIP_ID of every simulated report (and hwID of the simulated VCEK).
pub const SIM_CHIP_ID: [u8; 64] = sim_chip_id();

/// Product name of the simulated root.
pub const SIM_PRODUCT: &str = "Sim";

/// A trust store holding only the simulated root (marked simulated).
pub fn sim_trust_store() -> Result<SnpTrustStore, SnpError> {
    let mut s = SnpTrustStore::empty();
    s.add_chain_pem(
        SIM_PRODUCT,
        SIM_ASK_ARK_PEM.as_bytes(),
        IntermediateKind::Ask,
        true,
    )?;
    Ok(s)
}

/// Verifies simulated SNP evidence through the SNP verification code.
#[derive(Clone, Debug)]
pub struct SimVerifier {
    inner: SnpVerifier,
}

impl SimVerifier {
    /// A verifier trusting the built-in simulated root.
    pub fn new() -> Result<Self, SnpError> {
        Ok(Self::with_store(sim_trust_store()?))
    }

    /// A verifier trusting another simulated root (e.g. one issued at test time). Every
    /// root of `store` is treated as simulated by the claims only if it was added with
    /// `simulated = true`.
    pub fn with_store(store: SnpTrustStore) -> Self {
        Self {
            inner: SnpVerifier::with_store_as(store, TeeKind::Sim),
        }
    }
}

impl Verifier for SimVerifier {
    fn tee(&self) -> TeeKind {
        TeeKind::Sim
    }

    fn verify(
        &self,
        evidence: &serde_json::Value,
        expected_report_data: &[u8],
        policy: &ReferenceValues,
        now: SystemTime,
    ) -> Result<Claims, VerifyError> {
        if !policy.allow_simulated {
            return Err(PolicyError::SimulatedNotTrusted.into());
        }
        let (claims, v) = self
            .inner
            .verify_inner(evidence, expected_report_data, policy, now)?;
        if v.report.chip_id != SIM_CHIP_ID || !claims.simulated {
            return Err(SnpError::Malformed {
                what: "simulated evidence without the simulated marker".into(),
            }
            .into());
        }
        Ok(claims)
    }
}

#[cfg(feature = "sim")]
pub use producer::*;

#[cfg(feature = "sim")]
mod producer {
    use std::str::FromStr;
    use std::time::Duration;

    use p384::ecdsa::signature::Signer as _;
    use rand_core::OsRng;
    use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
    use rsa::signature::{RandomizedSigner, SignatureEncoding};
    use sha2::{Digest, Sha256, Sha384};
    use x509_cert::der::asn1::{BitString, Ia5StringRef, OctetString, UtcTime};
    use x509_cert::der::{Decode, DecodePem, Encode, EncodePem};
    use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
    use x509_cert::ext::Extension;
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::spki::{
        DynSignatureAlgorithmIdentifier, EncodePublicKey, ObjectIdentifier,
        SubjectPublicKeyInfoOwned,
    };
    use x509_cert::time::{Time, Validity};
    use x509_cert::{Certificate, TbsCertificate, Version};

    use super::SIM_CHIP_ID;
    use crate::snp::report::{offsets, SigningKey, TcbVersion, REPORT_LEN, SIGNED_LEN, SIG_OFFSET};

    const ARK_KEY_PEM: &str = include_str!("../trust/sim/ark_key.pem");
    const ASK_KEY_PEM: &str = include_str!("../trust/sim/ask_key.pem");
    const VCEK_KEY_PEM: &str = include_str!("../trust/sim/vcek_key.pem");
    const VCEK_PEM: &str = include_str!("../trust/sim/vcek.pem");

    /// TCB of the simulated platform (the built-in VCEK certifies it).
    pub const SIM_TCB: TcbVersion = TcbVersion {
        bootloader: 10,
        tee: 0,
        snp: 23,
        microcode: 213,
    };

    /// Why simulated evidence or keys cannot be produced.
    #[derive(Debug, thiserror::Error)]
    pub enum SimError {
        /// A key cannot be parsed, encoded or generated.
        #[error("simulated key: {what}")]
        Key {
            /// What failed.
            what: String,
        },
        /// A certificate cannot be built, parsed or encoded.
        #[error("simulated certificate: {what}")]
        Cert {
            /// What failed.
            what: String,
        },
    }

    fn key_err(what: impl std::fmt::Display) -> SimError {
        SimError::Key {
            what: what.to_string(),
        }
    }

    fn cert_err(what: impl std::fmt::Display) -> SimError {
        SimError::Cert {
            what: what.to_string(),
        }
    }

    /// Private keys of the simulated chain.
    #[derive(Clone)]
    pub struct SimKeys {
        /// ARK (RSA).
        pub ark: rsa::RsaPrivateKey,
        /// ASK (RSA).
        pub ask: rsa::RsaPrivateKey,
        /// VCEK (P-384).
        pub vcek: p384::SecretKey,
    }

    impl std::fmt::Debug for SimKeys {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("SimKeys(..)")
        }
    }

    impl SimKeys {
        /// The committed keys matching `trust/sim/`.
        pub fn builtin() -> Result<Self, SimError> {
            Ok(Self {
                ark: rsa::RsaPrivateKey::from_pkcs8_pem(ARK_KEY_PEM).map_err(key_err)?,
                ask: rsa::RsaPrivateKey::from_pkcs8_pem(ASK_KEY_PEM).map_err(key_err)?,
                vcek: p384::SecretKey::from_pkcs8_pem(VCEK_KEY_PEM).map_err(key_err)?,
            })
        }

        /// Fresh keys (`rsa_bits` for ARK and ASK; AMD uses 4096). Slow in debug builds.
        pub fn generate(rsa_bits: usize) -> Result<Self, SimError> {
            Ok(Self {
                ark: rsa::RsaPrivateKey::new(&mut OsRng, rsa_bits).map_err(key_err)?,
                ask: rsa::RsaPrivateKey::new(&mut OsRng, rsa_bits).map_err(key_err)?,
                vcek: p384::SecretKey::random(&mut OsRng),
            })
        }

        /// PKCS#8 PEM of (ARK, ASK, VCEK).
        pub fn to_pkcs8_pem(&self) -> Result<[String; 3], SimError> {
            let lf = rsa::pkcs8::LineEnding::LF;
            Ok([
                self.ark.to_pkcs8_pem(lf).map_err(key_err)?.to_string(),
                self.ask.to_pkcs8_pem(lf).map_err(key_err)?.to_string(),
                self.vcek.to_pkcs8_pem(lf).map_err(key_err)?.to_string(),
            ])
        }
    }

    /// Certificates of the simulated chain (DER).
    #[derive(Clone, Debug)]
    pub struct SimChain {
        /// ARK-Sim (self-signed).
        pub ark: Vec<u8>,
        /// SEV-Sim ASK.
        pub ask: Vec<u8>,
        /// SEV-VCEK-Sim, hwID = [`SIM_CHIP_ID`].
        pub vcek: Vec<u8>,
    }

    const OID_PRODUCT_NAME: &str = "1.3.6.1.4.1.3704.1.2";
    const OID_SPL: [(&str, usize); 4] = [
        ("1.3.6.1.4.1.3704.1.3.1", 0),
        ("1.3.6.1.4.1.3704.1.3.2", 1),
        ("1.3.6.1.4.1.3704.1.3.3", 2),
        ("1.3.6.1.4.1.3704.1.3.8", 3),
    ];
    const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";

    fn ext(oid: &str, value: Vec<u8>) -> Result<Extension, SimError> {
        Ok(Extension {
            extn_id: ObjectIdentifier::new(oid).map_err(cert_err)?,
            critical: false,
            extn_value: OctetString::new(value).map_err(cert_err)?,
        })
    }

    fn sign_cert(
        serial: u8,
        issuer: &str,
        subject: &str,
        spki: SubjectPublicKeyInfoOwned,
        extensions: Option<Vec<Extension>>,
        signer: &rsa::RsaPrivateKey,
    ) -> Result<Vec<u8>, SimError> {
        let sk = rsa::pss::SigningKey::<Sha384>::new(signer.clone());
        let alg = sk.signature_algorithm_identifier().map_err(cert_err)?;
        // 2024-01-01T00:00:00Z .. 2049-12-31T23:59:59Z (UTCTime range).
        let t = |s| {
            UtcTime::from_unix_duration(Duration::from_secs(s))
                .map(Time::UtcTime)
                .map_err(cert_err)
        };
        let tbs = TbsCertificate {
            version: Version::V3,
            serial_number: SerialNumber::new(&[serial]).map_err(cert_err)?,
            signature: alg.clone(),
            issuer: Name::from_str(issuer).map_err(cert_err)?,
            validity: Validity {
                not_before: t(1_704_067_200)?,
                not_after: t(2_524_607_999)?,
            },
            subject: Name::from_str(subject).map_err(cert_err)?,
            subject_public_key_info: spki,
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions,
        };
        let msg = tbs.to_der().map_err(cert_err)?;
        let sig = sk.sign_with_rng(&mut OsRng, &msg);
        Certificate {
            tbs_certificate: tbs,
            signature_algorithm: alg,
            signature: BitString::from_bytes(&sig.to_vec()).map_err(cert_err)?,
        }
        .to_der()
        .map_err(cert_err)
    }

    const ARK_NAME: &str = "CN=ARK-Sim,OU=kata-cc simulated TEE (not AMD),O=kata-cc";
    const ASK_NAME: &str = "CN=SEV-Sim,OU=kata-cc simulated TEE (not AMD),O=kata-cc";
    const VCEK_NAME: &str = "CN=SEV-VCEK-Sim,OU=kata-cc simulated TEE (not AMD),O=kata-cc";

    impl SimChain {
        /// The committed chain in `trust/sim/` (matches [`SimKeys::builtin`]).
        pub fn builtin() -> Result<Self, SimError> {
            let certs =
                Certificate::load_pem_chain(super::SIM_ASK_ARK_PEM.as_bytes()).map_err(cert_err)?;
            let [ask, ark] = <[Certificate; 2]>::try_from(certs)
                .map_err(|_| cert_err("ask_ark.pem must hold two certificates"))?;
            let vcek = Certificate::from_pem(VCEK_PEM).map_err(cert_err)?;
            Ok(Self {
                ark: ark.to_der().map_err(cert_err)?,
                ask: ask.to_der().map_err(cert_err)?,
                vcek: vcek.to_der().map_err(cert_err)?,
            })
        }

        /// Issues a fresh chain for `keys`; the VCEK certifies `tcb` and [`SIM_CHIP_ID`].
        pub fn issue(keys: &SimKeys, tcb: TcbVersion) -> Result<Self, SimError> {
            let rsa_spki = |k: &rsa::RsaPrivateKey| {
                SubjectPublicKeyInfoOwned::from_key(k.to_public_key()).map_err(cert_err)
            };
            let ca = |path_len: Option<u8>| -> Result<Vec<Extension>, SimError> {
                let bc = BasicConstraints {
                    ca: true,
                    path_len_constraint: path_len,
                };
                let ku = KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign);
                let mut bc = ext("2.5.29.19", bc.to_der().map_err(cert_err)?)?;
                let mut ku = ext("2.5.29.15", ku.to_der().map_err(cert_err)?)?;
                bc.critical = true;
                ku.critical = true;
                Ok(vec![bc, ku])
            };
            let ark_exts = Some(ca(Some(1))?);
            let ask_exts = Some(ca(Some(0))?);
            let ark = sign_cert(
                1,
                ARK_NAME,
                ARK_NAME,
                rsa_spki(&keys.ark)?,
                ark_exts,
                &keys.ark,
            )?;
            let ask = sign_cert(
                2,
                ARK_NAME,
                ASK_NAME,
                rsa_spki(&keys.ask)?,
                ask_exts,
                &keys.ark,
            )?;
            let spl = [tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode];
            let mut exts = vec![ext(
                OID_PRODUCT_NAME,
                Ia5StringRef::new("Sim")
                    .and_then(|s| s.to_der())
                    .map_err(cert_err)?,
            )?];
            for (oid, i) in OID_SPL {
                exts.push(ext(oid, spl[i].to_der().map_err(cert_err)?)?);
            }
            exts.push(ext(OID_HWID, SIM_CHIP_ID.to_vec())?);
            let vcek_spki = keys
                .vcek
                .public_key()
                .to_public_key_der()
                .map_err(cert_err)
                .and_then(|d| {
                    SubjectPublicKeyInfoOwned::from_der(d.as_bytes()).map_err(cert_err)
                })?;
            let vcek = sign_cert(0, ASK_NAME, VCEK_NAME, vcek_spki, Some(exts), &keys.ask)?;
            Ok(Self { ark, ask, vcek })
        }

        /// The ASK then the ARK as PEM (the trust-store layout).
        pub fn ask_ark_pem(&self) -> Result<String, SimError> {
            Ok(format!("{}{}", pem(&self.ask)?, pem(&self.ark)?))
        }

        /// The VCEK as PEM.
        pub fn vcek_pem(&self) -> Result<String, SimError> {
            pem(&self.vcek)
        }
    }

    fn pem(der: &[u8]) -> Result<String, SimError> {
        Certificate::from_der(der)
            .map_err(cert_err)?
            .to_pem(x509_cert::der::pem::LineEnding::LF)
            .map_err(cert_err)
    }

    /// What the simulated guest reports.
    #[derive(Clone, Copy, Debug)]
    pub struct SimReportInput {
        /// Launch measurement.
        pub measurement: [u8; 48],
        /// HOST_DATA (initdata digest).
        pub host_data: [u8; 32],
        /// REPORT_DATA (RCAR binding).
        pub report_data: [u8; 64],
        /// Guest policy (default `0x30000`: SMT, reserved bit 17, no debug).
        pub policy: u64,
        /// VMPL (default 0).
        pub vmpl: u32,
        /// REPORTED/CURRENT/COMMITTED/LAUNCH TCB (default [`SIM_TCB`]).
        pub tcb: TcbVersion,
    }

    impl SimReportInput {
        /// Defaults for everything but the three guest-chosen values.
        pub fn new(measurement: [u8; 48], host_data: [u8; 32], report_data: [u8; 64]) -> Self {
            Self {
                measurement,
                host_data,
                report_data,
                policy: 0x30000,
                vmpl: 0,
                tcb: SIM_TCB,
            }
        }
    }

    /// A signed 1184-byte report (version 3 layout, CHIP_ID = [`SIM_CHIP_ID`]).
    pub fn produce_report(input: &SimReportInput, vcek: &p384::SecretKey) -> Vec<u8> {
        let mut r = vec![0u8; REPORT_LEN];
        let mut put = |off: usize, b: &[u8]| r[off..off + b.len()].copy_from_slice(b);
        let tcb = input.tcb.to_raw().to_le_bytes();
        put(offsets::VERSION, &3u32.to_le_bytes());
        put(offsets::POLICY, &input.policy.to_le_bytes());
        put(offsets::VMPL, &input.vmpl.to_le_bytes());
        put(offsets::SIG_ALGO, &1u32.to_le_bytes());
        put(offsets::CURRENT_TCB, &tcb);
        put(offsets::PLATFORM_INFO, &1u64.to_le_bytes());
        put(offsets::KEY_INFO, &0u32.to_le_bytes());
        put(offsets::REPORT_DATA, &input.report_data);
        put(offsets::MEASUREMENT, &input.measurement);
        put(offsets::HOST_DATA, &input.host_data);
        let report_id = Sha256::new()
            .chain_update(input.measurement)
            .chain_update(input.report_data)
            .finalize();
        put(offsets::REPORT_ID, &report_id);
        put(offsets::REPORTED_TCB, &tcb);
        put(offsets::CPUID, &[0x19, 0x01, 0x01]);
        put(offsets::CHIP_ID, &SIM_CHIP_ID);
        put(offsets::COMMITTED_TCB, &tcb);
        put(offsets::CURRENT_FW, &[0, 55, 1]);
        put(offsets::COMMITTED_FW, &[0, 55, 1]);
        put(offsets::LAUNCH_TCB, &tcb);

        let key = p384::ecdsa::SigningKey::from(vcek);
        let sig: p384::ecdsa::Signature = key.sign(&r[..SIGNED_LEN]);
        let (sr, ss) = sig.split_bytes();
        for (i, b) in sr.iter().rev().enumerate() {
            r[SIG_OFFSET + i] = *b;
        }
        for (i, b) in ss.iter().rev().enumerate() {
            r[SIG_OFFSET + 72 + i] = *b;
        }
        r
    }

    /// Simulated evidence JSON (the SNP evidence format) signed with `keys.vcek`,
    /// carrying `chain.vcek`.
    pub fn produce(input: &SimReportInput, keys: &SimKeys, chain: &SimChain) -> serde_json::Value {
        let report = produce_report(input, &keys.vcek);
        crate::snp::evidence_json(&report, SigningKey::Vcek, &chain.vcek)
    }
}
