//! AMD SEV-SNP evidence verification.
//!
//! # Evidence format (our own, documented here)
//!
//! ```json
//! {
//!   "attestation_report": "<standard base64 of the raw 1184-byte ATTESTATION_REPORT>",
//!   "cert_chain": [ { "cert_type": "VCEK", "data": "<standard base64 of the DER>" } ]
//! }
//! ```
//!
//! * `cert_chain` must hold exactly one `VCEK` or `VLEK` entry, matching the report's
//!   KEY_INFO signing key; `ASK`, `ASVK`, `ARK` entries may be present and are
//!   **ignored**: the intermediates and roots come from the verifier's
//!   [`SnpTrustStore`], never from the evidence. `data` may also be an array of byte
//!   values (the shape trustee's `CertTableEntry` serialises to). `cert_chain: null` (or
//!   a chain without VCEK) is accepted only when the verifier has a [VCEK
//!   cache](SnpVerifier::with_vcek_cache) holding the VCEK for the report's CHIP_ID and
//!   REPORTED_TCB; this verifier never fetches VCEKs from AMD's KDS (no network).
//! * trustee sends `attestation_report` as a JSON object of the `sev` crate's struct
//!   fields; that shape is tied to one `sev` version and loses the exact signed bytes,
//!   so it is **not** accepted. The raw report is what the guest's firmware returns.
//!
//! # Checks, in order
//! 1. report: 1184 bytes, version ≥ 2, signature algorithm 1 (ECDSA P-384 / SHA-384);
//! 2. chain: VCEK (VLEK) issued by a trusted ASK (ASVK) whose ARK is in the store
//!    (RSA-PSS; ARK self-signature and ARK→ASK checked when the store was built), all
//!    three valid at `now`;
//! 3. report signature over bytes `0..0x2A0` with the VCEK/VLEK key;
//! 4. VCEK/VLEK TCB extensions equal the report's REPORTED_TCB, the VCEK hwID equals
//!    CHIP_ID (unless the chip id is masked);
//! 5. policy ([`ReferenceValues`]): simulated root, debug bit, VMPL, measurement,
//!    HOST_DATA, minimum TCB, REPORT_DATA.

mod certs;
pub mod report;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine;
use p384::ecdsa::signature::Verifier as _;
use serde::Deserialize;

use certs::{Cert, VerifiedVek};
pub use certs::{IntermediateKind, SnpTrustStore};
use report::{Report, SigningKey, TcbVersion, SIGNED_LEN};

use crate::claims::{Claims, SnpClaims};
use crate::reference::ReferenceValues;
use crate::{PolicyError, TeeKind, Verifier, VerifyError};

/// A link of the AMD chain, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainLink {
    /// The AMD Root Key.
    Ark,
    /// The ASK or ASVK.
    Ask,
    /// The VCEK or VLEK.
    Vek,
}

impl fmt::Display for ChainLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ark => "ARK",
            Self::Ask => "ASK/ASVK",
            Self::Vek => "VCEK/VLEK",
        })
    }
}

/// Why SNP evidence is not authentic or not well formed.
#[derive(Debug, thiserror::Error)]
pub enum SnpError {
    /// The evidence JSON, report or a certificate cannot be parsed.
    #[error("malformed SNP evidence: {what}")]
    Malformed {
        /// What is wrong.
        what: String,
    },
    /// A report version or algorithm this verifier does not handle.
    #[error("unsupported SNP evidence: {what}")]
    Unsupported {
        /// What is unsupported.
        what: String,
    },
    /// A certificate does not chain to a trusted root.
    #[error("certificate chain invalid at the {which}: {reason}")]
    ChainInvalid {
        /// The failing link.
        which: ChainLink,
        /// Why.
        reason: String,
    },
    /// A certificate of the chain is expired or not yet valid.
    #[error(
        "{which} certificate not valid at {now} (valid {not_before}..{not_after}, unix seconds)"
    )]
    CertNotValidNow {
        /// The link.
        which: ChainLink,
        /// notBefore.
        not_before: u64,
        /// notAfter.
        not_after: u64,
        /// Verification time.
        now: u64,
    },
    /// The report signature does not verify with the VCEK/VLEK.
    #[error("report signature invalid: {reason}")]
    SignatureInvalid {
        /// Why.
        reason: String,
    },
    /// The certificate's TCB extension differs from the report's REPORTED_TCB.
    #[error("{component} SPL in the VCEK/VLEK is {cert}, the report's REPORTED_TCB says {report}")]
    TcbMismatch {
        /// Component name.
        component: &'static str,
        /// Value in the certificate.
        cert: u8,
        /// Value in the report.
        report: u8,
    },
    /// The VCEK's hwID is not the report's CHIP_ID.
    #[error("VCEK hwID does not match the report's CHIP_ID")]
    ChipIdMismatch,
    /// The report names a different signing key than the certificate given.
    #[error("report signed by {report:?} but evidence carries a {given:?} certificate")]
    SigningKeyMismatch {
        /// Key named by the report (None: no key / unknown).
        report: Option<SigningKey>,
        /// Certificate type in the evidence.
        given: SigningKey,
    },
}

/// Evidence as received (see the module docs).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnpEvidence {
    attestation_report: String,
    cert_chain: Option<Vec<CertEntry>>,
}

#[derive(Deserialize)]
struct CertEntry {
    cert_type: String,
    data: CertData,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CertData {
    Base64(String),
    Bytes(Vec<u8>),
}

/// Builds the evidence JSON for a raw report and its VCEK/VLEK (DER).
pub fn evidence_json(report: &[u8], vek_type: SigningKey, vek_der: &[u8]) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::json!({
        "attestation_report": b64.encode(report),
        "cert_chain": [{
            "cert_type": match vek_type { SigningKey::Vcek => "VCEK", SigningKey::Vlek => "VLEK" },
            "data": b64.encode(vek_der),
        }],
    })
}

/// A report whose signature and chain were checked (no policy applied yet).
#[derive(Clone, Debug)]
pub(crate) struct VerifiedReport {
    pub report: Report,
    vek: VerifiedVek,
}

/// Where a VCEK cache keeps the VCEK for a chip at a TCB:
/// `<dir>/<CHIP_ID, 128 lowercase hex digits>/bl<B>-tee<T>-snp<S>-ucode<U>.der`.
/// `None` when the chip id is masked (all zero): such a report cannot be keyed.
pub fn vcek_cache_path(dir: &Path, chip_id: &[u8; 64], tcb: TcbVersion) -> Option<PathBuf> {
    if chip_id.iter().all(|b| *b == 0) {
        return None;
    }
    Some(dir.join(hex::encode(chip_id)).join(format!(
        "bl{}-tee{}-snp{}-ucode{}.der",
        tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
    )))
}

/// Largest VCEK file read from the cache (AMD's are ~1.4 KB).
const MAX_CACHED_VCEK: u64 = 16 * 1024;

fn read_cached_vcek(path: &Path) -> Result<Option<Vec<u8>>, SnpError> {
    use std::io::Read as _;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(SnpError::Malformed {
                what: format!("cannot read cached VCEK {}: {e}", path.display()),
            })
        }
    };
    let mut der = Vec::new();
    f.take(MAX_CACHED_VCEK + 1)
        .read_to_end(&mut der)
        .map_err(|e| SnpError::Malformed {
            what: format!("cannot read cached VCEK {}: {e}", path.display()),
        })?;
    if der.len() as u64 > MAX_CACHED_VCEK {
        return Err(SnpError::Malformed {
            what: format!(
                "cached VCEK {} is larger than {MAX_CACHED_VCEK} bytes",
                path.display()
            ),
        });
    }
    Ok(Some(der))
}

/// Stores a verified VCEK (best effort: a read-only cache only loses the speed-up).
/// Written to a temporary name and renamed, so readers never see a partial file.
fn store_cached_vcek(path: &Path, der: &[u8]) {
    if path.exists() {
        return;
    }
    let Some(parent) = path.parent() else { return };
    if std::fs::create_dir_all(parent).is_err() {
        return;
    }
    let tmp = parent.join(format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    if std::fs::write(&tmp, der).is_ok() && std::fs::rename(&tmp, path).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&tmp);
}

/// Checks authenticity (steps 1–4 of the module docs). The VCEK comes from the
/// evidence or, when the evidence has none, from `vcek_cache`; a VCEK from the
/// evidence that verifies is added to the cache.
pub(crate) fn verify_authentic(
    store: &SnpTrustStore,
    evidence: &serde_json::Value,
    now: SystemTime,
    vcek_cache: Option<&Path>,
) -> Result<VerifiedReport, SnpError> {
    let ev = SnpEvidence::deserialize(evidence).map_err(|e| SnpError::Malformed {
        what: format!("evidence JSON: {e}"),
    })?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let raw = b64
        .decode(ev.attestation_report.as_bytes())
        .map_err(|e| SnpError::Malformed {
            what: format!("attestation_report base64: {e}"),
        })?;
    let report = Report::parse(&raw)?;
    if report.sig_algo != 1 {
        return Err(SnpError::Unsupported {
            what: format!("signature algorithm {}", report.sig_algo),
        });
    }

    let mut vek = None;
    for entry in ev.cert_chain.unwrap_or_default() {
        let kind = match entry.cert_type.to_ascii_uppercase().as_str() {
            "VCEK" => SigningKey::Vcek,
            "VLEK" => SigningKey::Vlek,
            _ => continue,
        };
        if vek.is_some() {
            return Err(SnpError::Malformed {
                what: "cert_chain holds more than one VCEK/VLEK".into(),
            });
        }
        let der = match entry.data {
            CertData::Base64(s) => b64.decode(s.as_bytes()).map_err(|e| SnpError::Malformed {
                what: format!("certificate base64: {e}"),
            })?,
            CertData::Bytes(b) => b,
        };
        vek = Some((kind, der));
    }
    let cache_path =
        vcek_cache.and_then(|d| vcek_cache_path(d, &report.chip_id, report.reported_tcb));
    let from_evidence = vek.is_some();
    let (kind, der) = match vek {
        Some(v) => v,
        None => {
            let t = report.reported_tcb;
            let tcb = format!("{}/{}/{}/{}", t.bootloader, t.tee, t.snp, t.microcode);
            let cached = match (&cache_path, report.signing_key) {
                (Some(p), Some(SigningKey::Vcek)) => read_cached_vcek(p)?,
                _ => None,
            };
            let der = cached.ok_or_else(|| SnpError::Malformed {
                what: match (vcek_cache, report.signing_key) {
                    (_, Some(SigningKey::Vlek)) => {
                        "cert_chain holds no VLEK (VLEKs are not cached)".into()
                    }
                    (Some(dir), _) => format!(
                        "cert_chain holds no VCEK and {} has none for chip {}… at TCB {tcb} \
                         (VCEKs are not fetched from AMD KDS)",
                        dir.display(),
                        hex::encode(&report.chip_id[..8])
                    ),
                    (None, _) => "cert_chain holds no VCEK or VLEK, no VCEK cache is \
                                  configured and VCEKs are not fetched from AMD KDS"
                        .into(),
                },
            })?;
            (SigningKey::Vcek, der)
        }
    };
    if report.signing_key != Some(kind) {
        return Err(SnpError::SigningKeyMismatch {
            report: report.signing_key,
            given: kind,
        });
    }
    let cert = Cert::from_der(&der, ChainLink::Vek)?;
    let vek = store.verify_vek(&cert, kind, now)?;

    let sig = p384::ecdsa::Signature::from_scalars(report.sig_r, report.sig_s).map_err(|e| {
        SnpError::SignatureInvalid {
            reason: format!("bad scalars: {e}"),
        }
    })?;
    let signed = raw.get(..SIGNED_LEN).ok_or_else(|| SnpError::Malformed {
        what: "report too short".into(),
    })?;
    vek.key
        .verify(signed, &sig)
        .map_err(|_| SnpError::SignatureInvalid {
            reason: "ECDSA P-384 signature does not verify with the VCEK/VLEK key".into(),
        })?;

    let (c, r) = (vek.tcb, report.reported_tcb);
    for (component, cert, rep) in [
        ("boot loader", c.bootloader, r.bootloader),
        ("TEE", c.tee, r.tee),
        ("SNP", c.snp, r.snp),
        ("microcode", c.microcode, r.microcode),
    ] {
        if cert != rep {
            return Err(SnpError::TcbMismatch {
                component,
                cert,
                report: rep,
            });
        }
    }
    if kind == SigningKey::Vcek && report.chip_id.iter().any(|b| *b != 0) {
        match vek.hwid {
            Some(h) if h == report.chip_id => {}
            _ => return Err(SnpError::ChipIdMismatch),
        }
    }
    if let Some(p) = cache_path {
        if from_evidence && kind == SigningKey::Vcek && !vek.simulated {
            store_cached_vcek(&p, &der);
        }
    }
    Ok(VerifiedReport { report, vek })
}

/// Applies the reference values (step 5) and builds the claims.
pub(crate) fn apply_policy(
    v: &VerifiedReport,
    tee: TeeKind,
    expected_report_data: &[u8],
    policy: &ReferenceValues,
) -> Result<Claims, PolicyError> {
    let r = &v.report;
    if v.vek.simulated && !policy.allow_simulated {
        return Err(PolicyError::SimulatedNotTrusted);
    }
    if r.policy & report::POLICY_DEBUG != 0 && !policy.allow_debug {
        return Err(PolicyError::DebugNotAllowed);
    }
    if r.vmpl > policy.snp_max_vmpl {
        return Err(PolicyError::VmplNotAllowed {
            max: policy.snp_max_vmpl,
            got: r.vmpl,
        });
    }
    policy
        .snp_measurements
        .check(&r.measurement.into())
        .map_err(|expected| PolicyError::MeasurementMismatch {
            expected,
            got: hex::encode(r.measurement),
        })?;
    policy
        .host_data
        .check(&r.host_data.into())
        .map_err(|expected| PolicyError::HostDataMismatch {
            expected,
            got: hex::encode(r.host_data),
        })?;
    let (min, got) = (policy.snp_min_tcb, r.reported_tcb);
    for (component, min, got) in [
        ("boot loader", min.bootloader, got.bootloader),
        ("TEE", min.tee, got.tee),
        ("SNP", min.snp, got.snp),
        ("microcode", min.microcode, got.microcode),
    ] {
        if got < min {
            return Err(PolicyError::TcbTooOld {
                component,
                min,
                got,
            });
        }
    }
    crate::check_report_data(expected_report_data, &r.report_data)?;

    let chip_id = r
        .chip_id
        .iter()
        .any(|b| *b != 0)
        .then_some(r.chip_id.into());
    Ok(Claims {
        tee,
        simulated: v.vek.simulated,
        report_data: r.report_data.into(),
        snp: Some(SnpClaims {
            report_version: r.version,
            product: v.vek.product.clone(),
            product_name: v.vek.product_name.clone(),
            signing_key: r.signing_key.unwrap_or(SigningKey::Vcek),
            measurement: r.measurement.into(),
            host_data: r.host_data.into(),
            policy: r.policy,
            debug: r.policy & report::POLICY_DEBUG != 0,
            smt_allowed: r.policy & report::POLICY_SMT != 0,
            migrate_ma: r.policy & report::POLICY_MIGRATE_MA != 0,
            single_socket: r.policy & report::POLICY_SINGLE_SOCKET != 0,
            vmpl: r.vmpl,
            guest_svn: r.guest_svn,
            family_id: r.family_id.into(),
            image_id: r.image_id.into(),
            id_key_digest: r.id_key_digest.into(),
            author_key_digest: r.author_key_digest.into(),
            report_id: r.report_id.into(),
            chip_id,
            platform_info: r.platform_info,
            reported_tcb: r.reported_tcb,
            current_tcb: r.current_tcb,
            committed_tcb: r.committed_tcb,
            launch_tcb: r.launch_tcb,
            firmware: format!("{}.{}.{}", r.current_fw.0, r.current_fw.1, r.current_fw.2),
        }),
        tdx: None,
    })
}

/// Verifies SNP evidence against a trust store (AMD's roots by default).
#[derive(Clone, Debug)]
pub struct SnpVerifier {
    store: SnpTrustStore,
    tee: TeeKind,
    vcek_cache: Option<PathBuf>,
}

impl SnpVerifier {
    /// A verifier trusting AMD's Milan and Genoa roots.
    pub fn amd() -> Result<Self, SnpError> {
        Ok(Self::with_store(SnpTrustStore::amd()?))
    }

    /// A verifier trusting the given store. Roots marked simulated still need
    /// `allow_simulated` in the reference values.
    pub fn with_store(store: SnpTrustStore) -> Self {
        Self {
            store,
            tee: TeeKind::Snp,
            vcek_cache: None,
        }
    }

    /// Uses `dir` as the local VCEK cache (see [`vcek_cache_path`]): evidence without a
    /// VCEK is checked with the cached one for its CHIP_ID and REPORTED_TCB, and VCEKs
    /// that arrive in evidence and verify are stored there. The cache is not trusted:
    /// a cached VCEK goes through the same chain check as one from the evidence.
    pub fn with_vcek_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.vcek_cache = Some(dir.into());
        self
    }

    pub(crate) fn with_store_as(store: SnpTrustStore, tee: TeeKind) -> Self {
        Self {
            store,
            tee,
            vcek_cache: None,
        }
    }

    pub(crate) fn verify_inner(
        &self,
        evidence: &serde_json::Value,
        expected_report_data: &[u8],
        policy: &ReferenceValues,
        now: SystemTime,
    ) -> Result<(Claims, VerifiedReport), VerifyError> {
        let v = verify_authentic(&self.store, evidence, now, self.vcek_cache.as_deref())?;
        let claims = apply_policy(&v, self.tee, expected_report_data, policy)?;
        Ok((claims, v))
    }
}

impl Verifier for SnpVerifier {
    fn tee(&self) -> TeeKind {
        self.tee
    }

    fn verify(
        &self,
        evidence: &serde_json::Value,
        expected_report_data: &[u8],
        policy: &ReferenceValues,
        now: SystemTime,
    ) -> Result<Claims, VerifyError> {
        if self.tee == TeeKind::Snp && !self.store.has_simulated_root() {
            // Cheap refusal of sim evidence sent to the real verifier; the chain check
            // would reject it anyway.
            if let Ok(ev) = SnpEvidence::deserialize(evidence) {
                if let Ok(raw) = base64::engine::general_purpose::STANDARD
                    .decode(ev.attestation_report.as_bytes())
                {
                    if raw.get(report::offsets::CHIP_ID..report::offsets::CHIP_ID + 64)
                        == Some(&crate::sim::SIM_CHIP_ID[..])
                    {
                        return Err(PolicyError::SimulatedNotTrusted.into());
                    }
                }
            }
        }
        self.verify_inner(evidence, expected_report_data, policy, now)
            .map(|(c, _)| c)
    }
}
