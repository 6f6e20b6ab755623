//! SNP verification on every real report in `shared/fixtures/tee/snp`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use kbs::snp::ChainLink;
use kbs::{
    Allowed, HexBytes, IntermediateKind, PolicyError, ReferenceValues, SigningKey, SnpError,
    SnpTrustStore, SnpVerifier, TcbVersion, TeeKind, Verifier, VerifyError,
};

/// Reference values accepting exactly this set.
fn policy_for(set: &SnpSet) -> ReferenceValues {
    let r = &set.report;
    ReferenceValues {
        snp_measurements: Allowed::OneOf(vec![HexBytes::from_hex(&set.measurement()).unwrap()]),
        host_data: Allowed::OneOf(vec![HexBytes(r[0xC0..0xE0].try_into().unwrap())]),
        snp_min_tcb: TcbVersion::from_raw(u64::from_le_bytes(r[0x180..0x188].try_into().unwrap())),
        snp_max_vmpl: u32::from_le_bytes(r[0x30..0x34].try_into().unwrap()),
        ..ReferenceValues::default()
    }
}

fn verify(
    set: &SnpSet,
    evidence: &serde_json::Value,
    policy: &ReferenceValues,
) -> Result<kbs::Claims, VerifyError> {
    SnpVerifier::amd()
        .unwrap()
        .verify(evidence, &set.report_data(), policy, set.now)
}

#[test]
fn every_real_report_verifies() {
    let v = SnpVerifier::amd().unwrap();
    for set in snp_sets() {
        let claims = v
            .verify(
                &set.evidence(),
                &set.report_data(),
                &policy_for(&set),
                set.now,
            )
            .unwrap_or_else(|e| panic!("{}: {e:?}", set.name));
        assert_eq!(claims.tee, TeeKind::Snp);
        assert!(!claims.simulated);
        let snp = claims.snp.as_ref().unwrap();
        assert!(!snp.debug, "{}", set.name);
        assert_eq!(snp.measurement.to_string(), set.measurement());
        assert!(snp.host_data.is_zero());
        // The claims serialise to JSON and back.
        let json = serde_json::to_string(&claims).unwrap();
        assert_eq!(serde_json::from_str::<kbs::Claims>(&json).unwrap(), claims);
    }
}

#[test]
fn claims_match_the_readme() {
    let sets = snp_sets();
    let c = |i: usize| {
        verify(&sets[i], &sets[i].evidence(), &policy_for(&sets[i]))
            .unwrap()
            .snp
            .unwrap()
    };
    let virtee = c(0);
    assert_eq!(virtee.report_version, 2);
    assert_eq!(virtee.product, "Milan");
    assert_eq!(virtee.product_name.as_deref(), Some("Milan-B0"));
    assert_eq!(virtee.policy, 0x30000);
    assert_eq!(
        virtee.reported_tcb,
        TcbVersion {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115
        }
    );
    assert_eq!(virtee.firmware, "1.52.4");
    assert!(virtee
        .chip_id
        .unwrap()
        .to_string()
        .starts_with("d49554ec717f4e5b0fe6b143bcf0405b"));
    assert_eq!(
        virtee.report_id.to_string(),
        "92b3b47d59f0a2a10a74c5678868a80238cf593c01a82f3cffb878e904c28d5b"
    );

    let idblock = c(1);
    assert_eq!(idblock.guest_svn, 4);
    assert_eq!(idblock.policy, 0x3001f);
    assert_eq!(
        idblock.family_id.to_string(),
        "01000000000000000000000000000000"
    );
    assert_eq!(idblock.current_tcb.microcode, 206);
    assert_eq!(idblock.reported_tcb.microcode, 115);

    let genoa = c(2);
    assert_eq!(genoa.report_version, 5);
    assert_eq!(genoa.product, "Genoa");
    assert_eq!(genoa.platform_info, 0x25);
    assert_eq!(
        genoa.reported_tcb,
        TcbVersion {
            bootloader: 10,
            tee: 0,
            snp: 27,
            microcode: 27
        }
    );
    assert_eq!(genoa.firmware, "1.55.49");

    let vlek = c(3);
    assert_eq!(vlek.signing_key, SigningKey::Vlek);
    assert_eq!(vlek.vmpl, 1);
    assert_eq!(vlek.chip_id, None);
    assert_eq!(
        vlek.reported_tcb,
        TcbVersion {
            bootloader: 4,
            tee: 0,
            snp: 24,
            microcode: 217
        }
    );
    assert_eq!(vlek.current_tcb.microcode, 220);
}

#[test]
fn tampered_report_byte_breaks_the_signature() {
    for set in snp_sets() {
        for off in [0x00, 0x50, 0x90, 0xC0, 0x29F] {
            let mut bad = set.report.clone();
            bad[off] ^= 0x01;
            let ev = kbs::snp::evidence_json(&bad, set.kind, &set.vek);
            let err = verify(&set, &ev, &policy_for(&set)).unwrap_err();
            assert!(
                matches!(err, VerifyError::Snp(SnpError::SignatureInvalid { .. })),
                "{} @{off:#x}: {err:?}",
                set.name
            );
        }
    }
}

#[test]
fn tampered_signature_is_refused() {
    let set = &snp_sets()[0];
    let mut bad = set.report.clone();
    bad[0x2A0] ^= 0x80;
    let ev = kbs::snp::evidence_json(&bad, set.kind, &set.vek);
    assert!(matches!(
        verify(set, &ev, &policy_for(set)).unwrap_err(),
        VerifyError::Snp(SnpError::SignatureInvalid { .. })
    ));
    // Non-zero bytes above the 48-byte scalar.
    let mut bad = set.report.clone();
    bad[0x2A0 + 60] = 1;
    let ev = kbs::snp::evidence_json(&bad, set.kind, &set.vek);
    assert!(matches!(
        verify(set, &ev, &policy_for(set)).unwrap_err(),
        VerifyError::Snp(SnpError::SignatureInvalid { .. })
    ));
}

#[test]
fn wrong_vcek_is_refused() {
    let sets = snp_sets();
    // Milan report with the other Milan VCEK (chain valid, same TCB): signature fails.
    let ev = kbs::snp::evidence_json(&sets[0].report, SigningKey::Vcek, &sets[1].vek);
    assert!(matches!(
        verify(&sets[0], &ev, &policy_for(&sets[0])).unwrap_err(),
        VerifyError::Snp(SnpError::SignatureInvalid { .. })
    ));
    // Milan report with the Genoa VCEK.
    let ev = kbs::snp::evidence_json(&sets[0].report, SigningKey::Vcek, &sets[2].vek);
    let mut set = snp_sets().remove(0);
    set.now = utc(2026, 3, 1);
    assert!(matches!(
        verify(&set, &ev, &policy_for(&set)).unwrap_err(),
        VerifyError::Snp(SnpError::SignatureInvalid { .. })
    ));
    // A VLEK presented as a VCEK: the report names a VLEK.
    let ev = kbs::snp::evidence_json(&sets[3].report, SigningKey::Vcek, &sets[3].vek);
    assert!(matches!(
        verify(&sets[3], &ev, &policy_for(&sets[3])).unwrap_err(),
        VerifyError::Snp(SnpError::SigningKeyMismatch { .. })
    ));
    // Garbage certificate.
    let ev = kbs::snp::evidence_json(&sets[0].report, SigningKey::Vcek, b"not a certificate");
    assert!(matches!(
        verify(&sets[0], &ev, &policy_for(&sets[0])).unwrap_err(),
        VerifyError::Snp(SnpError::Malformed { .. })
    ));
}

#[test]
fn wrong_chain_is_refused() {
    let sets = snp_sets();
    // Only Genoa's ASK/ARK trusted: a Milan VCEK does not chain.
    let mut genoa_only = SnpTrustStore::empty();
    genoa_only
        .add_chain_pem(
            "Genoa",
            &read("snp/amd/ask_ark_genoa.pem"),
            IntermediateKind::Ask,
            false,
        )
        .unwrap();
    let v = SnpVerifier::with_store(genoa_only);
    for set in &sets[..2] {
        let err = v
            .verify(
                &set.evidence(),
                &set.report_data(),
                &policy_for(set),
                set.now,
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::Snp(SnpError::ChainInvalid {
                    which: ChainLink::Vek,
                    ..
                })
            ),
            "{err:?}"
        );
    }
    // The VLEK needs the ASVK: the Milan ASK alone does not do.
    let mut milan_ask_only = SnpTrustStore::empty();
    milan_ask_only
        .add_chain_pem(
            "Milan",
            &read("snp/amd/ask_ark_milan.pem"),
            IntermediateKind::Ask,
            false,
        )
        .unwrap();
    let err = SnpVerifier::with_store(milan_ask_only)
        .verify(
            &sets[3].evidence(),
            &sets[3].report_data(),
            &policy_for(&sets[3]),
            sets[3].now,
        )
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::Snp(SnpError::ChainInvalid { .. })),
        "{err:?}"
    );
    // A chain whose ARK is Genoa's but intermediate is Milan's is refused at load.
    let milan = String::from_utf8(read("snp/amd/ask_ark_milan.pem")).unwrap();
    let genoa = String::from_utf8(read("snp/amd/ask_ark_genoa.pem")).unwrap();
    let ask_milan = &milan[..milan.find("-----END CERTIFICATE-----").unwrap() + 26];
    let ark_genoa = &genoa[genoa.rfind("-----BEGIN CERTIFICATE-----").unwrap()..];
    let mixed = format!("{ask_milan}{ark_genoa}");
    let err = SnpTrustStore::empty()
        .add_chain_pem("mixed", mixed.as_bytes(), IntermediateKind::Ask, false)
        .unwrap_err();
    assert!(
        matches!(
            err,
            SnpError::ChainInvalid {
                which: ChainLink::Ask,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn certificate_validity_is_checked_at_the_given_time() {
    let sets = snp_sets();
    // The AWS VLEK expired on 2025-12-10.
    let vlek = &sets[3];
    let err = SnpVerifier::amd()
        .unwrap()
        .verify(
            &vlek.evidence(),
            &vlek.report_data(),
            &policy_for(vlek),
            utc(2026, 1, 1),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Snp(SnpError::CertNotValidNow {
                which: ChainLink::Vek,
                ..
            })
        ),
        "{err:?}"
    );
    // Genoa's VCEK is not valid before 2026-02-17.
    let genoa = &sets[2];
    let err = SnpVerifier::amd()
        .unwrap()
        .verify(
            &genoa.evidence(),
            &genoa.report_data(),
            &policy_for(genoa),
            utc(2025, 1, 1),
        )
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::Snp(SnpError::CertNotValidNow { .. })),
        "{err:?}"
    );
}

#[test]
fn policy_refusals_are_specific() {
    let set = &snp_sets()[0];
    let ev = set.evidence();

    let mut p = policy_for(set);
    p.snp_measurements = Allowed::OneOf(vec![HexBytes([0xAB; 48])]);
    match verify(set, &ev, &p).unwrap_err() {
        VerifyError::Policy(PolicyError::MeasurementMismatch { expected, got }) => {
            assert_eq!(expected, vec!["ab".repeat(48)]);
            assert_eq!(got, set.measurement());
        }
        e => panic!("{e:?}"),
    }

    let mut p = policy_for(set);
    p.host_data = Allowed::OneOf(vec![HexBytes([1; 32])]);
    assert!(matches!(
        verify(set, &ev, &p).unwrap_err(),
        VerifyError::Policy(PolicyError::HostDataMismatch { .. })
    ));

    let mut p = policy_for(set);
    p.snp_min_tcb.microcode = 116;
    assert_eq!(
        match verify(set, &ev, &p).unwrap_err() {
            VerifyError::Policy(e) => e,
            e => panic!("{e:?}"),
        },
        PolicyError::TcbTooOld {
            component: "microcode",
            min: 116,
            got: 115
        }
    );

    let mut p = policy_for(set);
    p.snp_min_tcb.snp = 9;
    assert!(matches!(
        verify(set, &ev, &p).unwrap_err(),
        VerifyError::Policy(PolicyError::TcbTooOld {
            component: "SNP",
            ..
        })
    ));

    // REPORT_DATA must equal the expected binding.
    let err = SnpVerifier::amd()
        .unwrap()
        .verify(&ev, &[0u8; 64], &policy_for(set), set.now)
        .unwrap_err();
    assert!(matches!(
        err,
        VerifyError::Policy(PolicyError::ReportDataMismatch { .. })
    ));
    let err = SnpVerifier::amd()
        .unwrap()
        .verify(&ev, &[0u8; 65], &policy_for(set), set.now)
        .unwrap_err();
    assert!(matches!(
        err,
        VerifyError::Policy(PolicyError::ReportDataTooLong(65))
    ));

    // Default reference values are closed.
    assert!(matches!(
        verify(set, &ev, &ReferenceValues::default()).unwrap_err(),
        VerifyError::Policy(PolicyError::MeasurementMismatch { .. })
    ));
    // "any" opens a list explicitly.
    let p = ReferenceValues {
        snp_measurements: Allowed::Any,
        host_data: Allowed::Any,
        ..ReferenceValues::default()
    };
    verify(set, &ev, &p).unwrap();
}

#[test]
fn idblock_report_data_prefix_binding() {
    // The expected value is zero-padded to 64 bytes: a 32-byte binding matches.
    let set = &snp_sets()[1];
    let rd = set.report_data();
    assert!(rd[32..].iter().all(|b| *b == 0));
    SnpVerifier::amd()
        .unwrap()
        .verify(&set.evidence(), &rd[..32], &policy_for(set), set.now)
        .unwrap();
}

#[test]
fn vmpl_above_the_maximum_is_refused() {
    let set = &snp_sets()[3];
    let mut p = policy_for(set);
    p.snp_max_vmpl = 0;
    assert_eq!(
        match verify(set, &set.evidence(), &p).unwrap_err() {
            VerifyError::Policy(e) => e,
            e => panic!("{e:?}"),
        },
        PolicyError::VmplNotAllowed { max: 0, got: 1 }
    );
}

#[test]
fn reference_values_from_toml_accept_a_real_report() {
    let set = &snp_sets()[0];
    let p = ReferenceValues::from_toml_str(&format!(
        r#"
        snp_measurements = ["{}"]
        host_data = ["{}"]
        snp_min_tcb = {{ bootloader = 3, snp = 8, microcode = 100 }}
        "#,
        set.measurement(),
        "00".repeat(32)
    ))
    .unwrap();
    verify(set, &set.evidence(), &p).unwrap();
}
