//! TDX evidence from a guest (kbs `tdx`): the quote parser (dcap-qvl, through the
//! verifier: header, TD report body, QE certification data, PCK chain, FMSPC), then,
//! when collateral for the quote's FMSPC is loaded, collateral checks and signature
//! verification. Collateral (Intel PCS files) comes from the directory named by
//! `FUZZ_TDX_COLLATERAL` and the dcap-qvl JSON file named by `FUZZ_TDX_COLLATERAL_JSON`
//! (fuzz/run.sh points them at the recorded fixtures when present); without them the
//! verifier stops after parsing, at "no collateral". The clock is fixed inside the
//! recorded collateral's validity window.
//!
//! Input: first byte 0: the rest is a raw quote; otherwise the rest is evidence JSON.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use kbs::{ReferenceValues, TdxCollateralStore, TdxVerifier, Verifier};
use libfuzzer_sys::fuzz_target;

/// 2026-04-01 (PCS 2026-03-16 set) and 2025-07-01 (the b0c06f set), UTC.
const NOW: [u64; 2] = [1_775_001_600, 1_751_328_000];

fn verifier() -> &'static TdxVerifier {
    static V: OnceLock<TdxVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let mut store = TdxCollateralStore::new();
        if let Some(dir) = std::env::var_os("FUZZ_TDX_COLLATERAL") {
            store
                .add_pcs_dir(std::path::Path::new(&dir))
                .unwrap_or_else(|e| panic!("FUZZ_TDX_COLLATERAL: {e}"));
        }
        if let Some(file) = std::env::var_os("FUZZ_TDX_COLLATERAL_JSON") {
            let json = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("FUZZ_TDX_COLLATERAL_JSON: {e}"));
            store.add_dcap_qvl_json(&json).unwrap_or_else(|e| panic!("FUZZ_TDX_COLLATERAL_JSON: {e}"));
        }
        TdxVerifier::new(store).unwrap_or_else(|e| panic!("{e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let evidence = if sel == 0 {
        kbs::tdx::evidence_json(rest)
    } else {
        match serde_json::from_slice(rest) {
            Ok(v) => v,
            Err(_) => return,
        }
    };
    // REPORTDATA of a v4 quote body, and of a v5 one (6 more header bytes): the quote's
    // own, so a recorded quote reaches the policy checks.
    let raw = if sel == 0 { rest } else { &[][..] };
    let mut report_data = vec![[0u8; 64]];
    for off in [568, 574] {
        if let Some(rd) = raw.get(off..off + 64) {
            report_data.push(rd.try_into().unwrap_or([0; 64]));
        }
    }
    for now in NOW {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now);
        for rd in &report_data {
            let _ = verifier().verify(&evidence, rd, kata_cc_fuzz::open_reference(), now);
        }
    }
    let _ = verifier().verify(&evidence, &[0; 64], &ReferenceValues::default(), SystemTime::UNIX_EPOCH + Duration::from_secs(NOW[0]));
});
