//! What a verifier learned from evidence; serialised into the attestation token.

use serde::{Deserialize, Serialize};

use crate::snp::report::{SigningKey, TcbVersion};
use crate::{HexBytes, TeeKind};

/// Verified facts about one TEE guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Which verifier produced them.
    pub tee: TeeKind,
    /// True when the evidence came from a simulated TEE (never hardware).
    pub simulated: bool,
    /// REPORT_DATA (equal to the expected binding, zero-padded).
    pub report_data: HexBytes<64>,
    /// SNP (and sim) details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snp: Option<SnpClaims>,
    /// TDX details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdx: Option<TdxClaims>,
}

/// Facts from a verified SNP attestation report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpClaims {
    /// Report format version.
    pub report_version: u32,
    /// Product line of the trusted root that verified the chain (`Milan`, `Genoa`,
    /// `Sim`).
    pub product: String,
    /// Product name extension of the VCEK/VLEK, when present (`Milan-B0`).
    pub product_name: Option<String>,
    /// VCEK or VLEK.
    pub signing_key: SigningKey,
    /// Launch measurement.
    pub measurement: HexBytes<48>,
    /// HOST_DATA (the initdata digest in kata-cc).
    pub host_data: HexBytes<32>,
    /// Raw guest policy.
    pub policy: u64,
    /// Policy bit 19: debugging allowed.
    pub debug: bool,
    /// Policy bit 16: SMT allowed.
    pub smt_allowed: bool,
    /// Policy bit 18: migration agent allowed.
    pub migrate_ma: bool,
    /// Policy bit 20: single socket only.
    pub single_socket: bool,
    /// VMPL that requested the report.
    pub vmpl: u32,
    /// Guest SVN.
    pub guest_svn: u32,
    /// ID block family id.
    pub family_id: HexBytes<16>,
    /// ID block image id.
    pub image_id: HexBytes<16>,
    /// ID key digest.
    pub id_key_digest: HexBytes<48>,
    /// Author key digest.
    pub author_key_digest: HexBytes<48>,
    /// Report id.
    pub report_id: HexBytes<32>,
    /// CHIP_ID, absent when masked (or for VLEK-signed reports).
    pub chip_id: Option<HexBytes<64>>,
    /// PLATFORM_INFO.
    pub platform_info: u64,
    /// REPORTED_TCB (what the VCEK certifies and what `snp_min_tcb` checks).
    pub reported_tcb: TcbVersion,
    /// CURRENT_TCB.
    pub current_tcb: TcbVersion,
    /// COMMITTED_TCB.
    pub committed_tcb: TcbVersion,
    /// LAUNCH_TCB.
    pub launch_tcb: TcbVersion,
    /// Current firmware version `major.minor.build`.
    pub firmware: String,
}

/// Facts from a verified TDX quote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdxClaims {
    /// Quote version (4 or 5).
    pub quote_version: u16,
    /// MRTD.
    pub mrtd: HexBytes<48>,
    /// RTMR0..RTMR3.
    pub rtmrs: [HexBytes<48>; 4],
    /// MRCONFIGID (the initdata digest in kata-cc).
    pub mrconfigid: HexBytes<48>,
    /// MROWNER.
    pub mrowner: HexBytes<48>,
    /// MROWNERCONFIG.
    pub mrownerconfig: HexBytes<48>,
    /// MRSEAM.
    pub mrseam: HexBytes<48>,
    /// TDATTRIBUTES as stored (little-endian).
    pub td_attributes: HexBytes<8>,
    /// TDATTRIBUTES bit 0.
    pub debug: bool,
    /// XFAM.
    pub xfam: HexBytes<8>,
    /// TEE_TCB_SVN.
    pub tee_tcb_svn: HexBytes<16>,
    /// MRSERVICETD of a TD 1.5 report.
    pub mrservicetd: Option<HexBytes<48>>,
    /// TCB status from the collateral (`UpToDate`, `OutOfDate`, ...).
    pub tcb_status: String,
    /// Intel security advisories for the matched TCB level.
    pub advisory_ids: Vec<String>,
    /// FMSPC of the platform (from the PCK certificate).
    pub fmspc: HexBytes<6>,
}
