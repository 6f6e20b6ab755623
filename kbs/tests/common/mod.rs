//! Shared helpers: fixture paths, fixed times, evidence builders.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod rcar;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use kbs::{SigningKey, TdxCollateralStore};

/// `shared/fixtures/tee` beside the repository.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/tee/"
    ))
    .join(rel)
}

pub fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// UTC midnight of a date.
pub fn utc(y: i64, m: i64, d: i64) -> SystemTime {
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    SystemTime::UNIX_EPOCH + Duration::from_secs((days * 86400) as u64)
}

/// An SNP fixture set.
pub struct SnpSet {
    pub name: &'static str,
    pub report: Vec<u8>,
    pub vek: Vec<u8>,
    pub kind: SigningKey,
    /// A time inside every certificate's validity.
    pub now: SystemTime,
}

impl SnpSet {
    pub fn evidence(&self) -> serde_json::Value {
        kbs::snp::evidence_json(&self.report, self.kind, &self.vek)
    }
    pub fn report_data(&self) -> [u8; 64] {
        self.report[0x50..0x90].try_into().unwrap()
    }
    pub fn measurement(&self) -> String {
        hex::encode(&self.report[0x90..0xC0])
    }
}

pub fn snp_sets() -> Vec<SnpSet> {
    let virtee_hex = String::from_utf8(read("snp/milan-v2-virtee/report.hex")).unwrap();
    vec![
        SnpSet {
            name: "milan-v2-virtee",
            report: hex::decode(virtee_hex.trim()).unwrap(),
            vek: read("snp/milan-v2-virtee/vcek.der"),
            kind: SigningKey::Vcek,
            now: utc(2025, 6, 1),
        },
        SnpSet {
            name: "milan-v2-idblock",
            report: read("snp/milan-v2-idblock/report.bin"),
            vek: read("snp/milan-v2-idblock/vcek.der"),
            kind: SigningKey::Vcek,
            now: utc(2025, 6, 1),
        },
        SnpSet {
            name: "genoa-v5",
            report: read("snp/genoa-v5/report.bin"),
            vek: read("snp/genoa-v5/vcek.der"),
            kind: SigningKey::Vcek,
            now: utc(2026, 3, 1),
        },
        SnpSet {
            name: "milan-v3-vlek-aws",
            report: read("snp/milan-v3-vlek-aws/report.bin"),
            vek: read("snp/milan-v3-vlek-aws/vlek.der"),
            kind: SigningKey::Vlek,
            now: utc(2025, 6, 1),
        },
    ]
}

/// Both TDX collateral sources.
pub fn tdx_collateral() -> TdxCollateralStore {
    let mut s = TdxCollateralStore::new();
    let json = String::from_utf8(read("tdx/v4-b0c06f-uptodate/collateral.json")).unwrap();
    s.add_dcap_qvl_json(&json).unwrap();
    s.add_pcs_dir(&fixture("tdx/pcs-2026-03-16")).unwrap();
    s
}

pub fn tdx_quote(set: &str) -> Vec<u8> {
    read(&format!("tdx/{set}/quote.bin"))
}

/// Inside the b0c06f collateral window (2025-06-19T10:32:27Z – 2025-07-19T10:00:35Z).
pub fn tdx_now_b0c06f() -> SystemTime {
    utc(2025, 7, 1)
}

/// Inside the PCS 2026-03-16 window (2026-03-16T22:34:05Z – 2026-04-15T22:06:09Z).
pub fn tdx_now_pcs() -> SystemTime {
    utc(2026, 4, 1)
}
