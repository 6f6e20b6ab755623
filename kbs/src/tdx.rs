//! Intel TDX quote verification (DCAP, via `dcap-qvl`), with collateral from local
//! files.
//!
//! # Evidence format
//!
//! ```json
//! { "quote": "<standard base64 of the raw quote>", "cc_eventlog": "<base64>" | null }
//! ```
//! (the trustee/RCAR shape). `cc_eventlog` is accepted and **not** replayed: RTMRs are
//! reported in the claims as the quote states them.
//!
//! # Collateral
//!
//! A [`TdxCollateralStore`] holds one collateral set per FMSPC, loaded from either
//! dcap-qvl's one-file JSON layout ([`TdxCollateralStore::add_dcap_qvl_json`]) or the
//! files Intel PCS serves ([`TdxCollateralStore::add_pcs_dir`]). The quote's FMSPC (from
//! its PCK certificate) selects the set. Before `dcap-qvl` runs, this module checks the
//! TCB Info and QE Identity `issueDate..nextUpdate` and both CRLs'
//! `thisUpdate..nextUpdate` against `now`, so stale collateral gives a specific
//! [`TdxError::CollateralNotCurrent`].
//!
//! # Checks
//! `dcap-qvl` checks the quote signature, QE report and its binding, the PCK chain to
//! Intel's SGX Root CA (built in from `trust/intel_sgx_root_ca.pem`), CRLs, TCB Info and
//! QE Identity signatures and finds the TCB status (Revoked is always refused). Then the
//! policy: debug TD, service-TD binding, TCB status, MRTD, MRCONFIGID, REPORTDATA.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use base64::Engine;
use dcap_qvl::quote::Quote;
use dcap_qvl::verify::QuoteVerifier;
use dcap_qvl::QuoteCollateralV3;
use serde::Deserialize;
use x509_cert::der::{Decode, DecodePem};

use crate::claims::{Claims, TdxClaims};
use crate::reference::ReferenceValues;
use crate::{PolicyError, TeeKind, Verifier, VerifyError};

const INTEL_SGX_ROOT_CA_PEM: &str = include_str!("../trust/intel_sgx_root_ca.pem");

/// Why TDX evidence or collateral is not usable.
#[derive(Debug, thiserror::Error)]
pub enum TdxError {
    /// Evidence JSON or quote bytes cannot be parsed.
    #[error("malformed TDX evidence: {what}")]
    Malformed {
        /// What is wrong.
        what: String,
    },
    /// Collateral cannot be parsed or loaded.
    #[error("bad TDX collateral: {what}")]
    Collateral {
        /// What is wrong.
        what: String,
    },
    /// No collateral for the quote's FMSPC.
    #[error("no collateral for FMSPC {fmspc}")]
    NoCollateral {
        /// FMSPC (hex).
        fmspc: String,
    },
    /// A collateral item is stale or not yet valid at the verification time.
    #[error(
        "collateral {item} not current at {now} (valid {not_before}..{not_after}, unix seconds)"
    )]
    CollateralNotCurrent {
        /// `tcb_info`, `qe_identity`, `root_ca_crl`, `pck_crl`.
        item: &'static str,
        /// Start of validity.
        not_before: u64,
        /// End of validity.
        not_after: u64,
        /// Verification time.
        now: u64,
    },
    /// The platform TCB is below every level in the TCB Info.
    #[error("no TCB level in the collateral matches the platform: {reason}")]
    NoMatchingTcbLevel {
        /// dcap-qvl's message.
        reason: String,
    },
    /// Signature, certificate chain, CRL or identity check failed in dcap-qvl.
    #[error("quote verification failed: {reason}")]
    QuoteInvalid {
        /// dcap-qvl's message chain.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TdxEvidence {
    quote: String,
    #[serde(default)]
    #[allow(dead_code)]
    cc_eventlog: Option<String>,
}

/// Builds the evidence JSON for a raw quote.
pub fn evidence_json(quote: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "quote": base64::engine::general_purpose::STANDARD.encode(quote),
        "cc_eventlog": null,
    })
}

/// Collateral sets by FMSPC.
#[derive(Clone, Debug, Default)]
pub struct TdxCollateralStore {
    by_fmspc: HashMap<[u8; 6], QuoteCollateralV3>,
}

fn coll_err(what: impl Into<String>) -> TdxError {
    TdxError::Collateral { what: what.into() }
}

fn fmspc_of_tcb_info(tcb_info: &str) -> Result<[u8; 6], TdxError> {
    #[derive(Deserialize)]
    struct Fm {
        fmspc: String,
    }
    let fm: Fm = serde_json::from_str(tcb_info).map_err(|e| coll_err(format!("tcb_info: {e}")))?;
    let v = hex::decode(&fm.fmspc).map_err(|e| coll_err(format!("fmspc: {e}")))?;
    <[u8; 6]>::try_from(v).map_err(|_| coll_err("fmspc is not 6 bytes"))
}

/// The files of one Intel PCS collateral set.
#[derive(Clone, Copy, Debug)]
pub struct PcsFiles<'a> {
    /// `tcb_info_<fmspc>.json` as served: `{"tcbInfo":{…},"signature":"…"}`.
    pub tcb_info_json: &'a str,
    /// `td_qe_identity.json` as served: `{"enclaveIdentity":{…},"signature":"…"}`.
    pub qe_identity_json: &'a str,
    /// TCB Signing certificate then Root CA (PEM).
    pub tcb_signing_chain_pem: &'a str,
    /// Root CA CRL (DER).
    pub root_ca_crl_der: &'a [u8],
    /// PCK CRL (DER).
    pub pck_crl_der: &'a [u8],
}

impl TdxCollateralStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of FMSPCs covered.
    pub fn len(&self) -> usize {
        self.by_fmspc.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.by_fmspc.is_empty()
    }

    /// Adds a set in dcap-qvl's JSON layout (all members strings; signatures and CRLs
    /// hex).
    pub fn add_dcap_qvl_json(&mut self, json: &str) -> Result<(), TdxError> {
        #[derive(Deserialize)]
        struct J {
            pck_crl_issuer_chain: String,
            root_ca_crl: String,
            pck_crl: String,
            tcb_info_issuer_chain: String,
            tcb_info: String,
            tcb_info_signature: String,
            qe_identity_issuer_chain: String,
            qe_identity: String,
            qe_identity_signature: String,
        }
        let j: J = serde_json::from_str(json).map_err(|e| coll_err(format!("JSON: {e}")))?;
        let h = |name: &str, s: &str| hex::decode(s).map_err(|e| coll_err(format!("{name}: {e}")));
        let c = QuoteCollateralV3 {
            pck_crl_issuer_chain: j.pck_crl_issuer_chain,
            root_ca_crl: h("root_ca_crl", &j.root_ca_crl)?,
            pck_crl: h("pck_crl", &j.pck_crl)?,
            tcb_info_issuer_chain: j.tcb_info_issuer_chain,
            tcb_info_signature: h("tcb_info_signature", &j.tcb_info_signature)?,
            tcb_info: j.tcb_info,
            qe_identity_issuer_chain: j.qe_identity_issuer_chain,
            qe_identity_signature: h("qe_identity_signature", &j.qe_identity_signature)?,
            qe_identity: j.qe_identity,
            pck_certificate_chain: None,
        };
        self.insert(c)
    }

    /// Adds a set from Intel PCS responses. The signed text of the TCB Info and QE
    /// Identity is kept byte for byte (no re-serialisation).
    pub fn add_pcs(&mut self, f: PcsFiles<'_>) -> Result<(), TdxError> {
        #[derive(Deserialize)]
        struct Tcb<'a> {
            #[serde(rename = "tcbInfo", borrow)]
            body: &'a serde_json::value::RawValue,
            signature: String,
        }
        #[derive(Deserialize)]
        struct Qe<'a> {
            #[serde(rename = "enclaveIdentity", borrow)]
            body: &'a serde_json::value::RawValue,
            signature: String,
        }
        let t: Tcb<'_> = serde_json::from_str(f.tcb_info_json)
            .map_err(|e| coll_err(format!("TCB Info JSON: {e}")))?;
        let q: Qe<'_> = serde_json::from_str(f.qe_identity_json)
            .map_err(|e| coll_err(format!("QE Identity JSON: {e}")))?;
        let c = QuoteCollateralV3 {
            // Not used for verification by dcap-qvl (the PCK CRL issuer comes from the
            // quote's PCK chain).
            pck_crl_issuer_chain: String::new(),
            root_ca_crl: f.root_ca_crl_der.to_vec(),
            pck_crl: f.pck_crl_der.to_vec(),
            tcb_info_issuer_chain: f.tcb_signing_chain_pem.to_string(),
            tcb_info: t.body.get().to_string(),
            tcb_info_signature: hex::decode(&t.signature)
                .map_err(|e| coll_err(format!("TCB Info signature: {e}")))?,
            qe_identity_issuer_chain: f.tcb_signing_chain_pem.to_string(),
            qe_identity: q.body.get().to_string(),
            qe_identity_signature: hex::decode(&q.signature)
                .map_err(|e| coll_err(format!("QE Identity signature: {e}")))?,
            pck_certificate_chain: None,
        };
        self.insert(c)
    }

    /// Adds every `tcb_info_*.json` of a PCS directory, sharing its
    /// `td_qe_identity.json`, `tcb_signing_chain.pem`, `root_ca_crl.der` and
    /// `pck_crl_platform.der`.
    pub fn add_pcs_dir(&mut self, dir: &Path) -> Result<(), TdxError> {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| coll_err(format!("{}: {e}", dir.join(name).display())))
        };
        let text = |name: &str| {
            String::from_utf8(read(name)?).map_err(|_| coll_err(format!("{name}: not UTF-8")))
        };
        let qe = text("td_qe_identity.json")?;
        let chain = text("tcb_signing_chain.pem")?;
        let root_crl = read("root_ca_crl.der")?;
        let pck_crl = read("pck_crl_platform.der")?;
        let entries =
            std::fs::read_dir(dir).map_err(|e| coll_err(format!("{}: {e}", dir.display())))?;
        let mut n = 0;
        for entry in entries {
            let name = entry
                .map_err(|e| coll_err(format!("{}: {e}", dir.display())))?
                .file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("tcb_info_") && name.ends_with(".json") {
                let tcb = text(name)?;
                self.add_pcs(PcsFiles {
                    tcb_info_json: &tcb,
                    qe_identity_json: &qe,
                    tcb_signing_chain_pem: &chain,
                    root_ca_crl_der: &root_crl,
                    pck_crl_der: &pck_crl,
                })?;
                n += 1;
            }
        }
        if n == 0 {
            return Err(coll_err(format!("no tcb_info_*.json in {}", dir.display())));
        }
        Ok(())
    }

    fn insert(&mut self, c: QuoteCollateralV3) -> Result<(), TdxError> {
        let fmspc = fmspc_of_tcb_info(&c.tcb_info)?;
        self.by_fmspc.insert(fmspc, c);
        Ok(())
    }
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
fn parse_rfc3339_utc(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days * 86400 + h * 3600 + mi * 60 + se).ok()
}

fn check_window(
    item: &'static str,
    not_before: u64,
    not_after: u64,
    now: u64,
) -> Result<(), TdxError> {
    if now < not_before || now > not_after {
        return Err(TdxError::CollateralNotCurrent {
            item,
            not_before,
            not_after,
            now,
        });
    }
    Ok(())
}

fn check_collateral_time(c: &QuoteCollateralV3, now: u64) -> Result<(), TdxError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Dates {
        issue_date: String,
        next_update: String,
    }
    for (item, text) in [("tcb_info", &c.tcb_info), ("qe_identity", &c.qe_identity)] {
        let d: Dates = serde_json::from_str(text).map_err(|e| coll_err(format!("{item}: {e}")))?;
        let nb = parse_rfc3339_utc(&d.issue_date)
            .ok_or_else(|| coll_err(format!("{item}: bad issueDate")))?;
        let na = parse_rfc3339_utc(&d.next_update)
            .ok_or_else(|| coll_err(format!("{item}: bad nextUpdate")))?;
        check_window(item, nb, na, now)?;
    }
    for (item, der) in [("root_ca_crl", &c.root_ca_crl), ("pck_crl", &c.pck_crl)] {
        let crl = x509_cert::crl::CertificateList::from_der(der)
            .map_err(|e| coll_err(format!("{item}: {e}")))?;
        let nb = crl.tbs_cert_list.this_update.to_unix_duration().as_secs();
        let na = crl
            .tbs_cert_list
            .next_update
            .map(|t| t.to_unix_duration().as_secs())
            .unwrap_or(u64::MAX);
        check_window(item, nb, na, now)?;
    }
    Ok(())
}

/// Verifies TDX quotes against Intel's root and locally stored collateral.
#[derive(Clone, Debug)]
pub struct TdxVerifier {
    collateral: TdxCollateralStore,
    root_ca_der: Vec<u8>,
}

impl TdxVerifier {
    /// A verifier trusting Intel's SGX Root CA (built in) with the given collateral.
    pub fn new(collateral: TdxCollateralStore) -> Result<Self, TdxError> {
        let root = x509_cert::Certificate::from_pem(INTEL_SGX_ROOT_CA_PEM)
            .map_err(|e| coll_err(format!("built-in Intel root: {e}")))?;
        let root_ca_der = x509_cert::der::Encode::to_der(&root)
            .map_err(|e| coll_err(format!("built-in Intel root: {e}")))?;
        Ok(Self {
            collateral,
            root_ca_der,
        })
    }

    fn verify_quote(
        &self,
        evidence: &serde_json::Value,
        now: SystemTime,
    ) -> Result<(dcap_qvl::verify::VerifiedReport, u16, [u8; 6]), TdxError> {
        let ev = TdxEvidence::deserialize(evidence).map_err(|e| TdxError::Malformed {
            what: format!("evidence JSON: {e}"),
        })?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(ev.quote.as_bytes())
            .map_err(|e| TdxError::Malformed {
                what: format!("quote base64: {e}"),
            })?;
        let quote = Quote::parse(&raw).map_err(|e| TdxError::Malformed {
            what: format!("quote: {e:#}"),
        })?;
        let fmspc = dcap_qvl::intel::quote_fmspc(&quote).map_err(|e| TdxError::Malformed {
            what: format!("FMSPC from the PCK certificate: {e:#}"),
        })?;
        let collateral =
            self.collateral
                .by_fmspc
                .get(&fmspc)
                .ok_or_else(|| TdxError::NoCollateral {
                    fmspc: hex::encode(fmspc),
                })?;
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        check_collateral_time(collateral, now)?;
        let verified = QuoteVerifier::new(self.root_ca_der.clone())
            // Both are policy decisions taken below with specific errors.
            .allow_debug(true)
            .allow_service_td(true)
            .verify(&raw, collateral, now)
            .map_err(|e| {
                let reason = format!("{e:#}");
                if reason.contains("No matching TCB level") {
                    TdxError::NoMatchingTcbLevel { reason }
                } else {
                    TdxError::QuoteInvalid { reason }
                }
            })?;
        Ok((verified, quote.header.version, fmspc))
    }
}

impl Verifier for TdxVerifier {
    fn tee(&self) -> TeeKind {
        TeeKind::Tdx
    }

    fn verify(
        &self,
        evidence: &serde_json::Value,
        expected_report_data: &[u8],
        policy: &ReferenceValues,
        now: SystemTime,
    ) -> Result<Claims, VerifyError> {
        let (v, quote_version, fmspc) = self.verify_quote(evidence, now)?;
        let td = v.report.as_td10().ok_or_else(|| TdxError::Malformed {
            what: "not a TD quote".into(),
        })?;
        let mrservicetd = v
            .report
            .as_td15()
            .map(|t| t.mr_service_td)
            .filter(|m| m.iter().any(|b| *b != 0));

        let debug = td.td_attributes[0] & 1 != 0;
        if debug && !policy.allow_debug {
            return Err(PolicyError::DebugNotAllowed.into());
        }
        if let Some(m) = mrservicetd {
            if !policy.tdx_allow_service_td {
                return Err(PolicyError::ServiceTdNotAllowed {
                    mrservicetd: hex::encode(m),
                }
                .into());
            }
        }
        if !policy.tdx_accepted_tcb_status.contains(&v.status) {
            return Err(PolicyError::TcbStatusNotAccepted {
                status: v.status.clone(),
                advisories: v.advisory_ids.clone(),
            }
            .into());
        }
        policy
            .tdx_mrtd
            .check(&td.mr_td.into())
            .map_err(|expected| PolicyError::MrtdMismatch {
                expected,
                got: hex::encode(td.mr_td),
            })?;
        policy
            .mrconfigid
            .check(&td.mr_config_id.into())
            .map_err(|expected| PolicyError::MrConfigIdMismatch {
                expected,
                got: hex::encode(td.mr_config_id),
            })?;
        crate::check_report_data(expected_report_data, &td.report_data)?;

        Ok(Claims {
            tee: TeeKind::Tdx,
            simulated: false,
            report_data: td.report_data.into(),
            snp: None,
            tdx: Some(TdxClaims {
                quote_version,
                mrtd: td.mr_td.into(),
                rtmrs: [
                    td.rt_mr0.into(),
                    td.rt_mr1.into(),
                    td.rt_mr2.into(),
                    td.rt_mr3.into(),
                ],
                mrconfigid: td.mr_config_id.into(),
                mrowner: td.mr_owner.into(),
                mrownerconfig: td.mr_owner_config.into(),
                mrseam: td.mr_seam.into(),
                td_attributes: td.td_attributes.into(),
                debug,
                xfam: td.xfam.into(),
                tee_tcb_svn: td.tee_tcb_svn.into(),
                mrservicetd: mrservicetd.map(Into::into),
                tcb_status: v.status.clone(),
                advisory_ids: v.advisory_ids.clone(),
                fmspc: fmspc.into(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_utc("2025-06-19T10:16:03Z"), Some(1750328163));
        assert_eq!(parse_rfc3339_utc("2000-03-01T00:00:00Z"), Some(951868800));
        assert_eq!(parse_rfc3339_utc("2025-06-19 10:16:03"), None);
        assert_eq!(parse_rfc3339_utc("2025-13-19T10:16:03Z"), None);
        assert_eq!(parse_rfc3339_utc("é"), None);
    }
}
