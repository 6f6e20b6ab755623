//! Evidence comes from an untrusted guest: no input may panic a verifier.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use kbs::{ReferenceValues, SimVerifier, SnpVerifier, TdxVerifier, Verifier};
use serde_json::json;

fn verifiers() -> Vec<Box<dyn Verifier>> {
    vec![
        Box::new(SnpVerifier::amd().unwrap()),
        Box::new(SimVerifier::new().unwrap()),
        Box::new(TdxVerifier::new(tdx_collateral()).unwrap()),
    ]
}

fn open() -> ReferenceValues {
    ReferenceValues {
        allow_simulated: true,
        allow_debug: true,
        ..ReferenceValues::default()
    }
}

#[test]
fn garbage_json_is_an_error() {
    let cases = [
        json!(null),
        json!(0),
        json!("attestation_report"),
        json!([]),
        json!({}),
        json!({"attestation_report": null}),
        json!({"attestation_report": 5, "cert_chain": null}),
        json!({"attestation_report": "!!!", "cert_chain": null}),
        json!({"attestation_report": "", "cert_chain": []}),
        json!({"attestation_report": STANDARD.encode([0u8; 1184]), "cert_chain": null}),
        json!({"attestation_report": STANDARD.encode([0u8; 1184]), "cert_chain": [{"cert_type": "VCEK", "data": "AAAA"}]}),
        json!({"attestation_report": STANDARD.encode([0xFFu8; 1184]), "cert_chain": [{"cert_type": "VCEK", "data": [1, 2, 3]}]}),
        json!({"attestation_report": STANDARD.encode([0u8; 1184]), "cert_chain": [{"cert_type": "VCEK", "data": [999]}]}),
        json!({"quote": null}),
        json!({"quote": ""}),
        json!({"quote": "%%%"}),
        json!({"quote": STANDARD.encode([0u8; 10])}),
        json!({"quote": STANDARD.encode([4u8; 5000]), "cc_eventlog": null}),
        json!({"quote": "AAAA", "extra": 1}),
    ];
    for v in verifiers() {
        for ev in &cases {
            assert!(
                v.verify(ev, &[0; 64], &open(), utc(2025, 7, 1)).is_err(),
                "{:?} accepted {ev}",
                v.tee()
            );
        }
    }
}

#[test]
fn truncated_and_mutated_snp_reports_are_errors() {
    let set = &snp_sets()[0];
    let v = SnpVerifier::amd().unwrap();
    let p = open();
    for len in (0..set.report.len()).step_by(37).chain([1183, 1185]) {
        let mut r = set.report.clone();
        r.resize(len, 0);
        let ev = kbs::snp::evidence_json(&r, set.kind, &set.vek);
        assert!(
            v.verify(&ev, &set.report_data(), &p, set.now).is_err(),
            "len {len}"
        );
    }
    // Every 8th byte of the report flipped (the signature covers 0..0x2A0; the rest
    // is the signature itself or reserved).
    for off in (0..0x2A0 + 144).step_by(8) {
        let mut r = set.report.clone();
        r[off] ^= 0xFF;
        let ev = kbs::snp::evidence_json(&r, set.kind, &set.vek);
        assert!(
            v.verify(&ev, &set.report_data(), &p, set.now).is_err(),
            "off {off:#x}"
        );
    }
    // Truncated and mutated VCEK.
    for len in (0..set.vek.len()).step_by(29) {
        let ev = kbs::snp::evidence_json(&set.report, set.kind, &set.vek[..len]);
        assert!(
            v.verify(&ev, &set.report_data(), &p, set.now).is_err(),
            "vcek len {len}"
        );
    }
    for off in (0..set.vek.len()).step_by(13) {
        let mut c = set.vek.clone();
        c[off] ^= 0x55;
        let ev = kbs::snp::evidence_json(&set.report, set.kind, &c);
        assert!(
            v.verify(&ev, &set.report_data(), &p, set.now).is_err(),
            "vcek off {off}"
        );
    }
}

#[test]
fn truncated_and_mutated_quotes_are_errors() {
    let q = tdx_quote("v4-b0c06f-uptodate");
    let v = TdxVerifier::new(tdx_collateral()).unwrap();
    let p = ReferenceValues {
        tdx_mrtd: kbs::Allowed::Any,
        mrconfigid: kbs::Allowed::Any,
        ..open()
    };
    let rd: [u8; 64] = q[48 + 520..48 + 584].try_into().unwrap();
    for len in (0..4936).step_by(41).chain([4935]) {
        let ev = kbs::tdx::evidence_json(&q[..len]);
        assert!(
            v.verify(&ev, &rd, &p, tdx_now_b0c06f()).is_err(),
            "len {len}"
        );
    }
    // Flip bytes across header, body, signature data and the certification data
    // (length fields included).
    for off in (0..4936).step_by(23) {
        let mut b = q.clone();
        b[off] ^= 0xA5;
        let ev = kbs::tdx::evidence_json(&b);
        // Some bytes are not covered by any signature (e.g. PEM whitespace); any
        // outcome but a panic is fine, and an accepted quote must still match.
        if let Ok(c) = v.verify(&ev, &rd, &p, tdx_now_b0c06f()) {
            assert_eq!(c.report_data.0, rd, "off {off}");
        }
    }
}

#[test]
fn garbage_collateral_is_an_error() {
    let mut s = kbs::TdxCollateralStore::new();
    assert!(s.add_dcap_qvl_json("").is_err());
    assert!(s.add_dcap_qvl_json("{}").is_err());
    assert!(s.add_pcs_dir(&fixture("snp")).is_err());
    assert!(s
        .add_pcs(kbs::tdx::PcsFiles {
            tcb_info_json: "{\"tcbInfo\":{\"fmspc\":\"zz\"},\"signature\":\"00\"}",
            qe_identity_json: "{}",
            tcb_signing_chain_pem: "",
            root_ca_crl_der: &[],
            pck_crl_der: &[],
        })
        .is_err());
    assert!(s.is_empty());
    let mut t = kbs::SnpTrustStore::empty();
    assert!(t
        .add_chain_pem("x", b"garbage", kbs::IntermediateKind::Ask, false)
        .is_err());
}
