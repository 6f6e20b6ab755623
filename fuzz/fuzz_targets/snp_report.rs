//! SEV-SNP evidence from a guest (kbs `snp`): the raw report parser, and the whole
//! verifier (evidence JSON, VCEK/VLEK DER, chain to the AMD roots, signature, policy)
//! on evidence built from fuzzed report and certificate bytes or given as raw JSON.
//! The simulated verifier sees the same evidence.
//!
//! Input: first byte picks the layer:
//! * 0: a raw report (`Report::parse`);
//! * 1 / 2: `report (0x4A0 bytes) ++ VCEK DER` / `++ VLEK DER`, as evidence JSON;
//! * 3: the evidence JSON text itself.
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use kbs::snp::report::{Report, REPORT_LEN};
use kbs::snp::evidence_json;
use kbs::{ReferenceValues, SigningKey, SimVerifier, SnpVerifier, Verifier};
use libfuzzer_sys::fuzz_target;

fn verifiers() -> &'static [Box<dyn Verifier>] {
    static V: OnceLock<Vec<Box<dyn Verifier>>> = OnceLock::new();
    V.get_or_init(|| {
        vec![
            Box::new(SnpVerifier::amd().unwrap_or_else(|e| panic!("{e}"))),
            Box::new(SimVerifier::new().unwrap_or_else(|e| panic!("{e}"))),
        ]
    })
}

/// Verifies with open and default reference values; `report_data` is what REPORT_DATA
/// must be (the report's own for a recorded report, so the policy checks are reached).
fn verify(evidence: &serde_json::Value, report_data: &[u8]) {
    for v in verifiers() {
        let _ = v.verify(evidence, report_data, kata_cc_fuzz::open_reference(), SystemTime::now());
        let _ = v.verify(evidence, report_data, &ReferenceValues::default(), SystemTime::now());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 4 {
        0 => {
            let _ = Report::parse(rest);
        }
        k @ (1 | 2) => {
            if rest.len() < REPORT_LEN {
                return;
            }
            let (report, vek) = rest.split_at(REPORT_LEN);
            let _ = Report::parse(report);
            let kind = if k == 1 { SigningKey::Vcek } else { SigningKey::Vlek };
            verify(&evidence_json(report, kind, vek), &report[0x50..0x90]);
        }
        _ => {
            if let Ok(ev) = serde_json::from_slice::<serde_json::Value>(rest) {
                verify(&ev, &[0u8; 64]);
            }
        }
    }
});
