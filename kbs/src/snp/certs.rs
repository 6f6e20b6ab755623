//! AMD certificate chain: trust store (ARK + ASK/ASVK), VCEK/VLEK checks, AMD
//! certificate extensions.
//!
//! RSA-PSS (SHA-384, MGF1-SHA-384, salt 48) signatures are checked with
//! `sev::certs::snp::Verifiable` (its `crypto_nossl` backend). What `sev` does not do is
//! done here: issuer/subject linkage, validity periods at a caller-given time, and the
//! AMD extensions (TCB SPLs, hwID, product name) read with `x509-cert`.

use std::time::{Duration, SystemTime};

use sev::certs::snp::{Certificate as SevCert, Verifiable};
use x509_cert::der::asn1::{Ia5StringRef, OctetStringRef};
use x509_cert::der::{Decode, Encode};
use x509_cert::spki::ObjectIdentifier;
use x509_cert::Certificate;

use super::report::{SigningKey, TcbVersion};
use super::{ChainLink, SnpError};

const OID_PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
const OID_BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const OID_TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const OID_SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const OID_UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
const OID_HWID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");

/// AMD's public chains for Milan and Genoa, intermediate first then the ARK (the same
/// files AMD's KDS serves; see `trust/README.md`).
const AMD_MILAN_ASK_ARK: &str = include_str!("../../trust/amd/ask_ark_milan.pem");
const AMD_MILAN_ASVK_ARK: &str = include_str!("../../trust/amd/asvk_ark_milan.pem");
const AMD_GENOA_ASK_ARK: &str = include_str!("../../trust/amd/ask_ark_genoa.pem");

/// The kind of intermediate: an ASK signs VCEKs, an ASVK signs VLEKs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntermediateKind {
    /// AMD SEV Signing Key (signs VCEKs).
    Ask,
    /// AMD SEV VLEK Signing Key (signs VLEKs).
    Asvk,
}

impl IntermediateKind {
    fn signs(self, key: SigningKey) -> bool {
        matches!(
            (self, key),
            (Self::Ask, SigningKey::Vcek) | (Self::Asvk, SigningKey::Vlek)
        )
    }
}

/// A parsed certificate, kept both as `x509-cert` (fields) and `sev` (signatures).
#[derive(Clone, Debug)]
pub(crate) struct Cert {
    x509: Certificate,
    sev: SevCert,
}

impl Cert {
    pub(crate) fn from_der(der: &[u8], which: ChainLink) -> Result<Self, SnpError> {
        let x509 = Certificate::from_der(der).map_err(|e| SnpError::Malformed {
            what: format!("{which} certificate: {e}"),
        })?;
        Ok(Self::from_x509(x509))
    }

    fn from_x509(x509: Certificate) -> Self {
        Self {
            sev: SevCert::from(x509.clone()),
            x509,
        }
    }

    /// Checks that `self` issued `signee`: names link and the RSA-PSS signature verifies.
    fn signed(&self, signee: &Cert, which: ChainLink) -> Result<(), SnpError> {
        if signee.x509.tbs_certificate.issuer != self.x509.tbs_certificate.subject {
            return Err(SnpError::ChainInvalid {
                which,
                reason: format!(
                    "issuer {} is not {}",
                    signee.x509.tbs_certificate.issuer, self.x509.tbs_certificate.subject
                ),
            });
        }
        (&self.sev, &signee.sev)
            .verify()
            .map_err(|e| SnpError::ChainInvalid {
                which,
                reason: e.to_string(),
            })
    }

    fn check_validity(&self, now: SystemTime, which: ChainLink) -> Result<(), SnpError> {
        let v = &self.x509.tbs_certificate.validity;
        let nb = v.not_before.to_unix_duration();
        let na = v.not_after.to_unix_duration();
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        if now < nb || now > na {
            return Err(SnpError::CertNotValidNow {
                which,
                not_before: nb.as_secs(),
                not_after: na.as_secs(),
                now: now.as_secs(),
            });
        }
        Ok(())
    }

    fn extension(&self, oid: ObjectIdentifier) -> Option<&[u8]> {
        self.x509
            .tbs_certificate
            .extensions
            .as_ref()?
            .iter()
            .find(|e| e.extn_id == oid)
            .map(|e| e.extn_value.as_bytes())
    }

    fn subject_cn(&self) -> String {
        self.x509.tbs_certificate.subject.to_string()
    }
}

/// One ARK with the intermediates it signed.
#[derive(Clone, Debug)]
struct TrustRoot {
    product: String,
    simulated: bool,
    ark: Cert,
    intermediates: Vec<(IntermediateKind, Cert)>,
}

/// The roots an SNP verifier accepts: AMD ARKs (or the simulated root) with their
/// ASK/ASVK. Every chain added is checked when it is added (ARK self-signature, ARK
/// signs the intermediate); validity periods are checked at each verification.
#[derive(Clone, Debug, Default)]
pub struct SnpTrustStore {
    roots: Vec<TrustRoot>,
}

/// What the chain check learned about the VCEK/VLEK.
#[derive(Clone, Debug)]
pub(crate) struct VerifiedVek {
    pub product: String,
    pub simulated: bool,
    pub key: p384::ecdsa::VerifyingKey,
    pub tcb: TcbVersion,
    pub hwid: Option<[u8; 64]>,
    pub product_name: Option<String>,
}

impl SnpTrustStore {
    /// An empty store (accepts nothing).
    pub fn empty() -> Self {
        Self::default()
    }

    /// AMD's ARKs for Milan (ASK and ASVK) and Genoa (ASK), built into the crate.
    pub fn amd() -> Result<Self, SnpError> {
        let mut s = Self::empty();
        s.add_chain_pem(
            "Milan",
            AMD_MILAN_ASK_ARK.as_bytes(),
            IntermediateKind::Ask,
            false,
        )?;
        s.add_chain_pem(
            "Milan",
            AMD_MILAN_ASVK_ARK.as_bytes(),
            IntermediateKind::Asvk,
            false,
        )?;
        s.add_chain_pem(
            "Genoa",
            AMD_GENOA_ASK_ARK.as_bytes(),
            IntermediateKind::Ask,
            false,
        )?;
        Ok(s)
    }

    /// Adds a PEM chain holding the intermediate (ASK or ASVK) then the ARK, as AMD's
    /// KDS serves it. `simulated` marks a root whose evidence is not from hardware.
    pub fn add_chain_pem(
        &mut self,
        product: &str,
        pem: &[u8],
        kind: IntermediateKind,
        simulated: bool,
    ) -> Result<(), SnpError> {
        let certs = Certificate::load_pem_chain(pem).map_err(|e| SnpError::Malformed {
            what: format!("trust chain PEM: {e}"),
        })?;
        let [inter, ark] =
            <[Certificate; 2]>::try_from(certs).map_err(|v| SnpError::Malformed {
                what: format!("trust chain holds {} certificates, expected 2", v.len()),
            })?;
        let (inter, ark) = (Cert::from_x509(inter), Cert::from_x509(ark));
        ark.signed(&ark, ChainLink::Ark)?;
        ark.signed(&inter, ChainLink::Ask)?;
        let ark_der = ark.x509.to_der().map_err(|e| SnpError::Malformed {
            what: format!("ARK: {e}"),
        })?;
        for root in &mut self.roots {
            if root.ark.x509.to_der().ok().as_deref() == Some(ark_der.as_slice()) {
                if root.simulated != simulated {
                    return Err(SnpError::Malformed {
                        what: "one ARK added both as simulated and as real".into(),
                    });
                }
                root.intermediates.push((kind, inter));
                return Ok(());
            }
        }
        self.roots.push(TrustRoot {
            product: product.to_string(),
            simulated,
            ark,
            intermediates: vec![(kind, inter)],
        });
        Ok(())
    }

    /// True when some root in the store is simulated.
    pub fn has_simulated_root(&self) -> bool {
        self.roots.iter().any(|r| r.simulated)
    }

    /// Verifies the VCEK/VLEK up to a trusted ARK at time `now` and reads its
    /// extensions.
    pub(crate) fn verify_vek(
        &self,
        vek: &Cert,
        key_kind: SigningKey,
        now: SystemTime,
    ) -> Result<VerifiedVek, SnpError> {
        let mut last_err = None;
        for root in &self.roots {
            for (kind, inter) in &root.intermediates {
                if !kind.signs(key_kind) {
                    continue;
                }
                if vek.x509.tbs_certificate.issuer != inter.x509.tbs_certificate.subject {
                    continue;
                }
                match inter.signed(vek, ChainLink::Vek) {
                    Ok(()) => {
                        root.ark.check_validity(now, ChainLink::Ark)?;
                        inter.check_validity(now, ChainLink::Ask)?;
                        vek.check_validity(now, ChainLink::Vek)?;
                        return read_vek(vek, root);
                    }
                    Err(e) => last_err = Some(e),
                }
            }
        }
        Err(last_err.unwrap_or_else(|| SnpError::ChainInvalid {
            which: ChainLink::Vek,
            reason: format!(
                "no trusted {} issued {} (issuer {})",
                match key_kind {
                    SigningKey::Vcek => "ASK",
                    SigningKey::Vlek => "ASVK",
                },
                vek.subject_cn(),
                vek.x509.tbs_certificate.issuer
            ),
        }))
    }
}

fn read_vek(vek: &Cert, root: &TrustRoot) -> Result<VerifiedVek, SnpError> {
    let spki = vek
        .x509
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let key =
        p384::ecdsa::VerifyingKey::from_sec1_bytes(spki).map_err(|e| SnpError::ChainInvalid {
            which: ChainLink::Vek,
            reason: format!("not a P-384 key: {e}"),
        })?;
    let spl = |oid, name: &'static str| -> Result<u8, SnpError> {
        let raw = vek.extension(oid).ok_or_else(|| SnpError::ChainInvalid {
            which: ChainLink::Vek,
            reason: format!("missing {name} SPL extension"),
        })?;
        u8::from_der(raw).map_err(|e| SnpError::ChainInvalid {
            which: ChainLink::Vek,
            reason: format!("{name} SPL extension: {e}"),
        })
    };
    let tcb = TcbVersion {
        bootloader: spl(OID_BL_SPL, "boot loader")?,
        tee: spl(OID_TEE_SPL, "TEE")?,
        snp: spl(OID_SNP_SPL, "SNP")?,
        microcode: spl(OID_UCODE_SPL, "microcode")?,
    };
    let hwid = match vek.extension(OID_HWID) {
        None => None,
        Some(raw) => Some(octets64(raw).ok_or_else(|| SnpError::ChainInvalid {
            which: ChainLink::Vek,
            reason: "hwID extension is not 64 bytes".into(),
        })?),
    };
    let product_name = vek
        .extension(OID_PRODUCT_NAME)
        .and_then(|raw| Ia5StringRef::from_der(raw).ok())
        .map(|s| s.to_string());
    Ok(VerifiedVek {
        product: root.product.clone(),
        simulated: root.simulated,
        key,
        tcb,
        hwid,
        product_name,
    })
}

/// The hwID extension is the raw 64 bytes in AMD's certificates; accept a DER OCTET
/// STRING wrapping them too.
fn octets64(raw: &[u8]) -> Option<[u8; 64]> {
    if let Ok(a) = <[u8; 64]>::try_from(raw) {
        return Some(a);
    }
    OctetStringRef::from_der(raw)
        .ok()
        .and_then(|o| <[u8; 64]>::try_from(o.as_bytes()).ok())
}
