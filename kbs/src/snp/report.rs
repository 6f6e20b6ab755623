//! The SEV-SNP `ATTESTATION_REPORT` (SNP firmware ABI, 1184 bytes, little-endian),
//! parsed from its raw bytes at fixed offsets.
//!
//! We parse the raw bytes ourselves instead of `sev::firmware::guest::AttestationReport`
//! because the signature must be checked over the bytes exactly as received (the `sev`
//! crate re-encodes the parsed struct before verifying), and because its decoder refuses
//! some valid reports (a v2 report with a masked chip id) and needs to guess the CPU
//! generation. Only the fields the verifier and the claims need are kept.

use super::SnpError;

/// Size of a report.
pub const REPORT_LEN: usize = 0x4A0;
/// End of the signed region (bytes `0..SIGNED_LEN`).
pub const SIGNED_LEN: usize = 0x2A0;
/// Offset of the signature's R (72 bytes, little-endian); S follows at `+72`.
pub const SIG_OFFSET: usize = 0x2A0;

/// Guest policy bit: debugging allowed.
pub const POLICY_DEBUG: u64 = 1 << 19;
/// Guest policy bit: SMT allowed.
pub const POLICY_SMT: u64 = 1 << 16;
/// Guest policy bit: migration agent allowed.
pub const POLICY_MIGRATE_MA: u64 = 1 << 18;
/// Guest policy bit: single socket only.
pub const POLICY_SINGLE_SOCKET: u64 = 1 << 20;

/// A TCB_VERSION in the Milan/Genoa layout (byte 0 boot loader, 1 TEE, 6 SNP,
/// 7 microcode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcbVersion {
    /// Boot loader SPL.
    pub bootloader: u8,
    /// TEE (PSP OS) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
}

impl TcbVersion {
    /// Decodes a raw little-endian TCB_VERSION.
    pub fn from_raw(v: u64) -> Self {
        let b = v.to_le_bytes();
        Self {
            bootloader: b[0],
            tee: b[1],
            snp: b[6],
            microcode: b[7],
        }
    }

    /// Encodes as a raw TCB_VERSION (reserved bytes zero).
    pub fn to_raw(self) -> u64 {
        u64::from_le_bytes([
            self.bootloader,
            self.tee,
            0,
            0,
            0,
            0,
            self.snp,
            self.microcode,
        ])
    }
}

/// Which key signed the report (KEY_INFO bits 4:2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningKey {
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key (cloud provider).
    Vlek,
}

/// The fields of a report that verification and claims use.
#[derive(Clone, Debug)]
pub struct Report {
    /// Report format version (2, 3, 5 seen).
    pub version: u32,
    /// Guest SVN.
    pub guest_svn: u32,
    /// Guest policy.
    pub policy: u64,
    /// Family id from the ID block.
    pub family_id: [u8; 16],
    /// Image id from the ID block.
    pub image_id: [u8; 16],
    /// VMPL that requested the report.
    pub vmpl: u32,
    /// Signature algorithm (1 = ECDSA P-384 SHA-384).
    pub sig_algo: u32,
    /// CURRENT_TCB.
    pub current_tcb: TcbVersion,
    /// PLATFORM_INFO.
    pub platform_info: u64,
    /// Signing key from KEY_INFO.
    pub signing_key: Option<SigningKey>,
    /// REPORT_DATA.
    pub report_data: [u8; 64],
    /// Launch MEASUREMENT.
    pub measurement: [u8; 48],
    /// HOST_DATA.
    pub host_data: [u8; 32],
    /// ID_KEY_DIGEST.
    pub id_key_digest: [u8; 48],
    /// AUTHOR_KEY_DIGEST.
    pub author_key_digest: [u8; 48],
    /// REPORT_ID.
    pub report_id: [u8; 32],
    /// REPORTED_TCB (the TCB of the key that signed).
    pub reported_tcb: TcbVersion,
    /// Raw REPORTED_TCB.
    pub reported_tcb_raw: u64,
    /// CPUID family/model/stepping (v3 and later; zero in v2).
    pub cpuid: [u8; 3],
    /// CHIP_ID (zero when masked or for a VLEK).
    pub chip_id: [u8; 64],
    /// COMMITTED_TCB.
    pub committed_tcb: TcbVersion,
    /// Current firmware (major, minor, build).
    pub current_fw: (u8, u8, u8),
    /// LAUNCH_TCB.
    pub launch_tcb: TcbVersion,
    /// Signature R as a big-endian P-384 scalar.
    pub sig_r: [u8; 48],
    /// Signature S as a big-endian P-384 scalar.
    pub sig_s: [u8; 48],
}

fn arr<const N: usize>(b: &[u8], off: usize) -> Result<[u8; N], SnpError> {
    b.get(off..off + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or_else(|| SnpError::Malformed {
            what: format!("report too short for field at {off:#x}"),
        })
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, SnpError> {
    Ok(u32::from_le_bytes(arr(b, off)?))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, SnpError> {
    Ok(u64::from_le_bytes(arr(b, off)?))
}

/// Little-endian 72-byte signature component → big-endian 48-byte scalar.
fn sig_component(b: &[u8], off: usize) -> Result<[u8; 48], SnpError> {
    let le: [u8; 72] = arr(b, off)?;
    if le[48..].iter().any(|x| *x != 0) {
        return Err(SnpError::SignatureInvalid {
            reason: "signature component wider than 48 bytes".into(),
        });
    }
    let mut be = [0u8; 48];
    for (i, v) in le[..48].iter().rev().enumerate() {
        be[i] = *v;
    }
    Ok(be)
}

impl Report {
    /// Parses a raw report. The length must be exactly [`REPORT_LEN`].
    pub fn parse(b: &[u8]) -> Result<Self, SnpError> {
        if b.len() != REPORT_LEN {
            return Err(SnpError::Malformed {
                what: format!("report is {} bytes, expected {REPORT_LEN}", b.len()),
            });
        }
        let version = u32_at(b, 0x00)?;
        if version < 2 {
            return Err(SnpError::Unsupported {
                what: format!("report version {version}"),
            });
        }
        let key_info = u32_at(b, 0x48)?;
        let signing_key = match (key_info >> 2) & 0x7 {
            0 => Some(SigningKey::Vcek),
            1 => Some(SigningKey::Vlek),
            _ => None,
        };
        let cpuid = if version >= 3 { arr(b, 0x188)? } else { [0; 3] };
        Ok(Self {
            version,
            guest_svn: u32_at(b, 0x04)?,
            policy: u64_at(b, 0x08)?,
            family_id: arr(b, 0x10)?,
            image_id: arr(b, 0x20)?,
            vmpl: u32_at(b, 0x30)?,
            sig_algo: u32_at(b, 0x34)?,
            current_tcb: TcbVersion::from_raw(u64_at(b, 0x38)?),
            platform_info: u64_at(b, 0x40)?,
            signing_key,
            report_data: arr(b, 0x50)?,
            measurement: arr(b, 0x90)?,
            host_data: arr(b, 0xC0)?,
            id_key_digest: arr(b, 0xE0)?,
            author_key_digest: arr(b, 0x110)?,
            report_id: arr(b, 0x140)?,
            reported_tcb: TcbVersion::from_raw(u64_at(b, 0x180)?),
            reported_tcb_raw: u64_at(b, 0x180)?,
            cpuid,
            chip_id: arr(b, 0x1A0)?,
            committed_tcb: TcbVersion::from_raw(u64_at(b, 0x1E0)?),
            current_fw: {
                let v: [u8; 3] = arr(b, 0x1E8)?;
                (v[2], v[1], v[0])
            },
            launch_tcb: TcbVersion::from_raw(u64_at(b, 0x1F0)?),
            sig_r: sig_component(b, SIG_OFFSET)?,
            sig_s: sig_component(b, SIG_OFFSET + 72)?,
        })
    }
}

/// Field offsets, for building reports (the sim producer) and for tests.
pub mod offsets {
    /// VERSION (u32).
    pub const VERSION: usize = 0x00;
    /// POLICY (u64).
    pub const POLICY: usize = 0x08;
    /// VMPL (u32).
    pub const VMPL: usize = 0x30;
    /// SIGNATURE_ALGO (u32).
    pub const SIG_ALGO: usize = 0x34;
    /// CURRENT_TCB (u64).
    pub const CURRENT_TCB: usize = 0x38;
    /// PLATFORM_INFO (u64).
    pub const PLATFORM_INFO: usize = 0x40;
    /// KEY_INFO (u32).
    pub const KEY_INFO: usize = 0x48;
    /// REPORT_DATA (64 bytes).
    pub const REPORT_DATA: usize = 0x50;
    /// MEASUREMENT (48 bytes).
    pub const MEASUREMENT: usize = 0x90;
    /// HOST_DATA (32 bytes).
    pub const HOST_DATA: usize = 0xC0;
    /// REPORT_ID (32 bytes).
    pub const REPORT_ID: usize = 0x140;
    /// REPORTED_TCB (u64).
    pub const REPORTED_TCB: usize = 0x180;
    /// CPUID family, model, stepping (3 bytes, v3+).
    pub const CPUID: usize = 0x188;
    /// CHIP_ID (64 bytes).
    pub const CHIP_ID: usize = 0x1A0;
    /// COMMITTED_TCB (u64).
    pub const COMMITTED_TCB: usize = 0x1E0;
    /// CURRENT build, minor, major (3 bytes).
    pub const CURRENT_FW: usize = 0x1E8;
    /// COMMITTED build, minor, major (3 bytes).
    pub const COMMITTED_FW: usize = 0x1EC;
    /// LAUNCH_TCB (u64).
    pub const LAUNCH_TCB: usize = 0x1F0;
}
