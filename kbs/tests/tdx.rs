//! TDX verification on every real quote in `shared/fixtures/tee/tdx`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use kbs::{
    Allowed, HexBytes, PolicyError, ReferenceValues, TdxCollateralStore, TdxError, TdxVerifier,
    TeeKind, Verifier, VerifyError,
};

fn verifier() -> TdxVerifier {
    TdxVerifier::new(tdx_collateral()).unwrap()
}

fn report_data(quote: &[u8]) -> [u8; 64] {
    // v4: body at 48, REPORTDATA at body + 520. v5: body at 54.
    let body = if quote[0] == 5 { 54 } else { 48 };
    quote[body + 520..body + 584].try_into().unwrap()
}

fn open() -> ReferenceValues {
    ReferenceValues {
        tdx_mrtd: Allowed::Any,
        mrconfigid: Allowed::Any,
        ..ReferenceValues::default()
    }
}

const MRTD_B0C06F: &str = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7";

#[test]
fn uptodate_quote_verifies_with_dcap_qvl_collateral() {
    let q = tdx_quote("v4-b0c06f-uptodate");
    assert_eq!(q.len(), 5006, "fixture keeps its 70 trailing zero bytes");
    let p = ReferenceValues {
        tdx_mrtd: Allowed::OneOf(vec![HexBytes::from_hex(MRTD_B0C06F).unwrap()]),
        mrconfigid: Allowed::OneOf(vec![HexBytes([0; 48])]),
        ..ReferenceValues::default()
    };
    let c = verifier()
        .verify(
            &kbs::tdx::evidence_json(&q),
            &report_data(&q),
            &p,
            tdx_now_b0c06f(),
        )
        .unwrap();
    assert_eq!(c.tee, TeeKind::Tdx);
    assert!(!c.simulated);
    let t = c.tdx.unwrap();
    assert_eq!(t.quote_version, 4);
    assert_eq!(t.mrtd.to_string(), MRTD_B0C06F);
    assert_eq!(
        t.rtmrs[0].to_string(),
        "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0"
    );
    assert_eq!(
        t.rtmrs[2].to_string(),
        "d833feef2cd945148aa38ead2c53e9b7f138190aaaebfc551dccd829fc207aa3ba80b70870d7330733642e01d48c3132"
    );
    assert!(t.rtmrs[3].is_zero());
    assert!(t.mrconfigid.is_zero());
    assert_eq!(t.tcb_status, "UpToDate");
    assert!(t.advisory_ids.is_empty());
    assert_eq!(t.fmspc.to_string(), "b0c06f000000");
    assert_eq!(t.td_attributes.to_string(), "0000001000000000");
    assert!(!t.debug);
    assert_eq!(
        t.tee_tcb_svn.to_string(),
        "06010300000000000000000000000000"
    );
    assert_eq!(
        c.report_data.to_string(),
        "9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20"
    );
}

#[test]
fn debug_td_is_refused_unless_allowed() {
    let q = tdx_quote("v4-50806f-debug-td");
    let ev = kbs::tdx::evidence_json(&q);
    let rd = report_data(&q);
    let v = verifier();

    let err = v.verify(&ev, &rd, &open(), tdx_now_pcs()).unwrap_err();
    assert!(
        matches!(err, VerifyError::Policy(PolicyError::DebugNotAllowed)),
        "{err:?}"
    );

    // Debug allowed, but its TCB is OutOfDate and only UpToDate is accepted by default.
    let mut p = open();
    p.allow_debug = true;
    match v.verify(&ev, &rd, &p, tdx_now_pcs()).unwrap_err() {
        VerifyError::Policy(PolicyError::TcbStatusNotAccepted { status, advisories }) => {
            assert_eq!(status, "OutOfDate");
            assert!(
                advisories.iter().any(|a| a == "INTEL-SA-00837"),
                "{advisories:?}"
            );
        }
        e => panic!("{e:?}"),
    }

    p.tdx_accepted_tcb_status.push("OutOfDate".into());
    let c = v.verify(&ev, &rd, &p, tdx_now_pcs()).unwrap();
    let t = c.tdx.unwrap();
    assert!(t.debug);
    assert_eq!(t.tcb_status, "OutOfDate");
    assert_eq!(t.fmspc.to_string(), "50806f000000");
    assert_eq!(
        t.mrtd.to_string(),
        "705ee9381b8633a9fbe532b52345e8433343d2868959f57889d84ca377c395b689cac1599ccea1b7d420483a9ce5f031"
    );
    assert_eq!(t.advisory_ids.len(), 11, "{:?}", t.advisory_ids);
}

#[test]
fn v5_service_td_quote_matches_no_tcb_level() {
    let q = tdx_quote("v5-90c06f-servicetd-no-tcb-level");
    let mut p = open();
    p.tdx_allow_service_td = true;
    p.tdx_accepted_tcb_status = kbs_all_statuses();
    let err = verifier()
        .verify(
            &kbs::tdx::evidence_json(&q),
            &report_data(&q),
            &p,
            tdx_now_pcs(),
        )
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::Tdx(TdxError::NoMatchingTcbLevel { .. })),
        "{err:?}"
    );
}

fn kbs_all_statuses() -> Vec<String> {
    [
        "UpToDate",
        "OutOfDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn tampered_quote_is_refused() {
    let q = tdx_quote("v4-b0c06f-uptodate");
    let rd = report_data(&q);
    // MRTD byte, REPORTDATA byte, quote signature byte, QE report byte.
    for off in [48 + 136, 48 + 520, 636 + 3, 636 + 128 + 6 + 10] {
        let mut bad = q.clone();
        bad[off] ^= 0x01;
        let err = verifier()
            .verify(
                &kbs::tdx::evidence_json(&bad),
                &rd,
                &open(),
                tdx_now_b0c06f(),
            )
            .unwrap_err();
        match err {
            VerifyError::Tdx(TdxError::QuoteInvalid { reason }) => {
                assert!(
                    reason.to_lowercase().contains("signature"),
                    "@{off}: {reason}"
                );
                eprintln!("@{off}: {reason}");
            }
            e => panic!("@{off}: {e:?}"),
        }
    }
}

#[test]
fn collateral_outside_its_window_is_refused() {
    let q = tdx_quote("v4-b0c06f-uptodate");
    let ev = kbs::tdx::evidence_json(&q);
    let rd = report_data(&q);
    // After TCB Info nextUpdate 2025-07-19T10:16:03Z (PCK CRL ends 10:00:35 the same day).
    let err = verifier()
        .verify(&ev, &rd, &open(), utc(2025, 8, 1))
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::Tdx(TdxError::CollateralNotCurrent { .. })),
        "{err:?}"
    );
    // Before the QE Identity was issued.
    let err = verifier()
        .verify(&ev, &rd, &open(), utc(2025, 6, 1))
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Tdx(TdxError::CollateralNotCurrent {
                item: "tcb_info",
                ..
            })
        ),
        "{err:?}"
    );
    // PCS set: fine on 2026-04-01, stale on 2026-05-01.
    let q = tdx_quote("v4-50806f-debug-td");
    let mut p = open();
    p.allow_debug = true;
    p.tdx_accepted_tcb_status.push("OutOfDate".into());
    let ev = kbs::tdx::evidence_json(&q);
    let err = verifier()
        .verify(&ev, &report_data(&q), &p, utc(2026, 5, 1))
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::Tdx(TdxError::CollateralNotCurrent { .. })),
        "{err:?}"
    );
}

#[test]
fn missing_collateral_is_specific() {
    let q = tdx_quote("v4-b0c06f-uptodate");
    let mut only_pcs = TdxCollateralStore::new();
    only_pcs
        .add_pcs_dir(&fixture("tdx/pcs-2026-03-16"))
        .unwrap();
    assert_eq!(only_pcs.len(), 2);
    let err = TdxVerifier::new(only_pcs)
        .unwrap()
        .verify(
            &kbs::tdx::evidence_json(&q),
            &report_data(&q),
            &open(),
            tdx_now_b0c06f(),
        )
        .unwrap_err();
    match err {
        VerifyError::Tdx(TdxError::NoCollateral { fmspc }) => assert_eq!(fmspc, "b0c06f000000"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn tdx_policy_refusals_are_specific() {
    let q = tdx_quote("v4-b0c06f-uptodate");
    let ev = kbs::tdx::evidence_json(&q);
    let rd = report_data(&q);
    let v = verifier();
    let err = v
        .verify(&ev, &rd, &ReferenceValues::default(), tdx_now_b0c06f())
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::Policy(PolicyError::MrtdMismatch { .. })),
        "{err:?}"
    );
    let mut p = open();
    p.mrconfigid = Allowed::OneOf(vec![HexBytes([7; 48])]);
    let err = v.verify(&ev, &rd, &p, tdx_now_b0c06f()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Policy(PolicyError::MrConfigIdMismatch { .. })
        ),
        "{err:?}"
    );
    let err = v
        .verify(&ev, &[1u8; 64], &open(), tdx_now_b0c06f())
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Policy(PolicyError::ReportDataMismatch { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn pcs_files_reject_tampered_signed_text() {
    // One changed byte in the signed TCB Info body must fail the collateral signature.
    let dir = fixture("tdx/pcs-2026-03-16");
    let r = |n: &str| std::fs::read(dir.join(n)).unwrap();
    let tcb = String::from_utf8(r("tcb_info_50806f000000.json")).unwrap();
    let tcb = tcb.replacen(
        "\"tcbEvaluationDataNumber\":18",
        "\"tcbEvaluationDataNumber\":19",
        1,
    );
    let qe = String::from_utf8(r("td_qe_identity.json")).unwrap();
    let chain = String::from_utf8(r("tcb_signing_chain.pem")).unwrap();
    let mut s = TdxCollateralStore::new();
    s.add_pcs(kbs::tdx::PcsFiles {
        tcb_info_json: &tcb,
        qe_identity_json: &qe,
        tcb_signing_chain_pem: &chain,
        root_ca_crl_der: &r("root_ca_crl.der"),
        pck_crl_der: &r("pck_crl_platform.der"),
    })
    .unwrap();
    let q = tdx_quote("v4-50806f-debug-td");
    let mut p = open();
    p.allow_debug = true;
    p.tdx_accepted_tcb_status.push("OutOfDate".into());
    let err = TdxVerifier::new(s)
        .unwrap()
        .verify(
            &kbs::tdx::evidence_json(&q),
            &report_data(&q),
            &p,
            tdx_now_pcs(),
        )
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::Tdx(TdxError::QuoteInvalid { .. })),
        "{err:?}"
    );
}
