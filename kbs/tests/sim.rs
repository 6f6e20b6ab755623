//! Simulated SNP: produced by `kbs::sim`, verified by the SNP code with the sim root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::utc;
use kbs::sim::{produce, SimChain, SimKeys, SimReportInput, SIM_CHIP_ID, SIM_TCB};
use kbs::{
    Allowed, HexBytes, IntermediateKind, PolicyError, ReferenceValues, SimVerifier, SnpError,
    SnpTrustStore, SnpVerifier, TeeKind, Verifier, VerifyError,
};

const M: [u8; 48] = [0x4D; 48];
const H: [u8; 32] = [0x48; 32];
const RD: [u8; 64] = [0x52; 64];

fn allowed() -> ReferenceValues {
    ReferenceValues {
        snp_measurements: Allowed::OneOf(vec![HexBytes(M)]),
        host_data: Allowed::OneOf(vec![HexBytes(H)]),
        allow_simulated: true,
        ..ReferenceValues::default()
    }
}

fn evidence(input: &SimReportInput) -> serde_json::Value {
    produce(
        input,
        &SimKeys::builtin().unwrap(),
        &SimChain::builtin().unwrap(),
    )
}

fn now() -> std::time::SystemTime {
    utc(2026, 1, 1)
}

#[test]
fn round_trip_claims_say_simulated() {
    let ev = evidence(&SimReportInput::new(M, H, RD));
    let c = SimVerifier::new()
        .unwrap()
        .verify(&ev, &RD, &allowed(), now())
        .unwrap();
    assert_eq!(c.tee, TeeKind::Sim);
    assert!(c.simulated);
    let s = c.snp.clone().unwrap();
    assert_eq!(s.measurement, HexBytes(M));
    assert_eq!(s.host_data, HexBytes(H));
    assert_eq!(s.product, "Sim");
    assert_eq!(s.product_name.as_deref(), Some("Sim"));
    assert_eq!(s.chip_id, Some(HexBytes(SIM_CHIP_ID)));
    assert_eq!(s.reported_tcb, SIM_TCB);
    assert!(!s.debug);
    let json = serde_json::to_value(&c).unwrap_or_default();
    assert_eq!(json["simulated"], true);
    assert_eq!(json["tee"], "sim");
}

#[test]
fn refused_by_default() {
    let ev = evidence(&SimReportInput::new(M, H, RD));
    let mut p = allowed();
    p.allow_simulated = false;
    let err = SimVerifier::new()
        .unwrap()
        .verify(&ev, &RD, &p, now())
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::Policy(PolicyError::SimulatedNotTrusted)),
        "{err:?}"
    );
    let err = SimVerifier::new()
        .unwrap()
        .verify(&ev, &RD, &ReferenceValues::default(), now())
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::Policy(PolicyError::SimulatedNotTrusted)),
        "{err:?}"
    );
}

#[test]
fn real_snp_verifier_never_accepts_sim_evidence() {
    let ev = evidence(&SimReportInput::new(M, H, RD));
    let err = SnpVerifier::amd()
        .unwrap()
        .verify(&ev, &RD, &allowed(), now())
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::Policy(PolicyError::SimulatedNotTrusted)),
        "{err:?}"
    );
    // A store mixing AMD and sim roots: sim evidence still needs allow_simulated, and the
    // claims say simulated.
    let mut mixed = SnpTrustStore::amd().unwrap();
    mixed
        .add_chain_pem(
            "Sim",
            kbs::sim::SIM_ASK_ARK_PEM.as_bytes(),
            IntermediateKind::Ask,
            true,
        )
        .unwrap();
    let v = SnpVerifier::with_store(mixed);
    let mut p = allowed();
    p.allow_simulated = false;
    let err = v.verify(&ev, &RD, &p, now()).unwrap_err();
    assert!(
        matches!(err, VerifyError::Policy(PolicyError::SimulatedNotTrusted)),
        "{err:?}"
    );
    let c = v.verify(&ev, &RD, &allowed(), now()).unwrap();
    assert!(c.simulated);
}

#[test]
fn tampered_sim_report_is_refused() {
    let ev = evidence(&SimReportInput::new(M, H, RD));
    let b64 = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        ev["attestation_report"].as_str().unwrap(),
    )
    .unwrap();
    let mut bad = b64.clone();
    bad[0x90] ^= 1;
    let mut ev2 = ev.clone();
    ev2["attestation_report"] =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bad).into();
    let err = SimVerifier::new()
        .unwrap()
        .verify(&ev2, &RD, &allowed(), now())
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::Snp(SnpError::SignatureInvalid { .. })),
        "{err:?}"
    );
}

#[test]
fn sim_policy_checks_run_through_the_snp_code() {
    let v = SimVerifier::new().unwrap();
    // Debug bit set.
    let mut input = SimReportInput::new(M, H, RD);
    input.policy |= 1 << 19;
    let ev = evidence(&input);
    let err = v.verify(&ev, &RD, &allowed(), now()).unwrap_err();
    assert!(
        matches!(err, VerifyError::Policy(PolicyError::DebugNotAllowed)),
        "{err:?}"
    );
    let mut p = allowed();
    p.allow_debug = true;
    assert!(v.verify(&ev, &RD, &p, now()).unwrap().snp.unwrap().debug);
    // Measurement.
    let ev = evidence(&SimReportInput::new([0; 48], H, RD));
    let err = v.verify(&ev, &RD, &allowed(), now()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Policy(PolicyError::MeasurementMismatch { .. })
        ),
        "{err:?}"
    );
    // HOST_DATA.
    let ev = evidence(&SimReportInput::new(M, [0; 32], RD));
    let err = v.verify(&ev, &RD, &allowed(), now()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Policy(PolicyError::HostDataMismatch { .. })
        ),
        "{err:?}"
    );
    // REPORT_DATA.
    let ev = evidence(&SimReportInput::new(M, H, RD));
    let err = v.verify(&ev, &[0; 64], &allowed(), now()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Policy(PolicyError::ReportDataMismatch { .. })
        ),
        "{err:?}"
    );
    // A report claiming a TCB its VCEK does not certify.
    let mut input = SimReportInput::new(M, H, RD);
    input.tcb.microcode += 1;
    let err = v
        .verify(&evidence(&input), &RD, &allowed(), now())
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::Snp(SnpError::TcbMismatch { .. })),
        "{err:?}"
    );
    // Minimum TCB.
    let mut p = allowed();
    p.snp_min_tcb.microcode = SIM_TCB.microcode + 1;
    let err = v
        .verify(&evidence(&SimReportInput::new(M, H, RD)), &RD, &p, now())
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::Policy(PolicyError::TcbTooOld { .. })),
        "{err:?}"
    );
}

#[test]
fn chain_issued_at_test_time_verifies_and_foreign_chain_does_not() {
    // Re-issue the certificates from the committed keys (RSA-PSS signing by our code).
    let keys = SimKeys::builtin().unwrap();
    let chain = SimChain::issue(&keys, SIM_TCB).unwrap();
    let mut store = SnpTrustStore::empty();
    store
        .add_chain_pem(
            "Sim",
            chain.ask_ark_pem().unwrap().as_bytes(),
            IntermediateKind::Ask,
            true,
        )
        .unwrap();
    let ev = produce(&SimReportInput::new(M, H, RD), &keys, &chain);
    SimVerifier::with_store(store)
        .verify(&ev, &RD, &allowed(), now())
        .unwrap();
    // The same keys, so the built-in verifier accepts the re-issued VCEK too.
    SimVerifier::new()
        .unwrap()
        .verify(&ev, &RD, &allowed(), now())
        .unwrap();

    // A VCEK key that the chain does not certify.
    let mut other = keys.clone();
    other.vcek = p384::SecretKey::from_slice(&[7u8; 48]).unwrap();
    let ev = produce(
        &SimReportInput::new(M, H, RD),
        &other,
        &SimChain::builtin().unwrap(),
    );
    let err = SimVerifier::new()
        .unwrap()
        .verify(&ev, &RD, &allowed(), now())
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::Snp(SnpError::SignatureInvalid { .. })),
        "{err:?}"
    );
}
