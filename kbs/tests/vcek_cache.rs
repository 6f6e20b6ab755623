//! The local VCEK cache on the real reports of `shared/fixtures/tee/snp`: evidence
//! without a VCEK verifies with the cached one (keyed by CHIP_ID + REPORTED_TCB), VCEKs
//! from evidence fill the cache, and a wrong cached VCEK is refused like any other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use kbs::snp::vcek_cache_path;
use kbs::{
    Allowed, HexBytes, ReferenceValues, SigningKey, SnpError, SnpVerifier, TcbVersion, Verifier,
    VerifyError,
};

fn policy() -> ReferenceValues {
    ReferenceValues {
        snp_measurements: Allowed::Any,
        host_data: Allowed::Any,
        snp_max_vmpl: 3,
        ..ReferenceValues::default()
    }
}

/// Evidence with the report only, as an attester sends when the host gave it no
/// certificates.
fn bare(set: &SnpSet) -> serde_json::Value {
    serde_json::json!({"attestation_report": STANDARD.encode(&set.report), "cert_chain": null})
}

fn chip_id(set: &SnpSet) -> [u8; 64] {
    set.report[0x1A0..0x1E0].try_into().unwrap()
}

fn reported_tcb(set: &SnpSet) -> TcbVersion {
    TcbVersion::from_raw(u64::from_le_bytes(
        set.report[0x180..0x188].try_into().unwrap(),
    ))
}

fn malformed(r: Result<kbs::Claims, VerifyError>) -> String {
    match r {
        Err(VerifyError::Snp(SnpError::Malformed { what })) => what,
        other => panic!("expected a malformed-evidence error, got {other:?}"),
    }
}

#[test]
fn cache_path_is_chip_id_and_tcb() {
    let sets = snp_sets();
    let p = vcek_cache_path(
        std::path::Path::new("/c"),
        &chip_id(&sets[0]),
        reported_tcb(&sets[0]),
    )
    .unwrap();
    let s = p.to_str().unwrap();
    assert!(s.starts_with("/c/d49554ec717f4e5b0fe6b143bcf0405b"), "{s}");
    assert!(s.ends_with("/bl3-tee0-snp8-ucode115.der"), "{s}");
    // A masked chip id cannot be keyed.
    assert!(vcek_cache_path(std::path::Path::new("/c"), &[0; 64], TcbVersion::default()).is_none());
}

#[test]
fn without_a_cache_bare_evidence_is_refused() {
    let set = &snp_sets()[0];
    let v = SnpVerifier::amd().unwrap();
    let what = malformed(v.verify(&bare(set), &set.report_data(), &policy(), set.now));
    assert!(
        what.contains("no VCEK cache") && what.contains("KDS"),
        "{what}"
    );
}

#[test]
fn evidence_fills_the_cache_and_bare_evidence_then_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let v = SnpVerifier::amd().unwrap().with_vcek_cache(dir.path());
    for set in snp_sets().iter().filter(|s| s.kind == SigningKey::Vcek) {
        // Empty cache: refused, naming the directory and the TCB.
        let what = malformed(v.verify(&bare(set), &set.report_data(), &policy(), set.now));
        assert!(
            what.contains(dir.path().to_str().unwrap()),
            "{}: {what}",
            set.name
        );
        let t = reported_tcb(set);
        let tcb = format!("{}/{}/{}/{}", t.bootloader, t.tee, t.snp, t.microcode);
        assert!(what.contains(&tcb), "{}: {what}", set.name);

        // Full evidence verifies and leaves its VCEK in the cache.
        let full = v
            .verify(&set.evidence(), &set.report_data(), &policy(), set.now)
            .unwrap_or_else(|e| panic!("{}: {e:?}", set.name));
        let path = vcek_cache_path(dir.path(), &chip_id(set), t).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), set.vek, "{}", set.name);

        // Now the bare report verifies, with the same claims.
        let cached = v
            .verify(&bare(set), &set.report_data(), &policy(), set.now)
            .unwrap_or_else(|e| panic!("{}: {e:?}", set.name));
        assert_eq!(cached, full, "{}", set.name);
        // And a bad report_data is still refused.
        assert!(v
            .verify(&bare(set), &[1u8; 64], &policy(), set.now)
            .is_err());
    }
    // A cache filled by an operator (copied files) works the same for a new verifier.
    let v2 = SnpVerifier::amd().unwrap().with_vcek_cache(dir.path());
    let set = &snp_sets()[2];
    assert!(v2
        .verify(&bare(set), &set.report_data(), &policy(), set.now)
        .is_ok());
}

#[test]
fn vlek_reports_are_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let v = SnpVerifier::amd().unwrap().with_vcek_cache(dir.path());
    let set = &snp_sets()[3];
    assert_eq!(set.kind, SigningKey::Vlek);
    // The fixture's VLEK expired 2025-12-10; `set.now` is inside its validity.
    v.verify(&set.evidence(), &set.report_data(), &policy(), set.now)
        .unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let what = malformed(v.verify(&bare(set), &set.report_data(), &policy(), set.now));
    assert!(what.contains("VLEK"), "{what}");
}

#[test]
fn a_wrong_or_corrupt_cached_vcek_is_refused() {
    let sets = snp_sets();
    let (virtee, idblock) = (&sets[0], &sets[1]);
    let dir = tempfile::tempdir().unwrap();
    let v = SnpVerifier::amd().unwrap().with_vcek_cache(dir.path());
    let path = vcek_cache_path(dir.path(), &chip_id(virtee), reported_tcb(virtee)).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();

    // A genuine AMD VCEK of another chip (same TCB 3/0/8/115): the chain is fine, the
    // report signature or the chip id is not.
    std::fs::write(&path, &idblock.vek).unwrap();
    let e = v
        .verify(&bare(virtee), &virtee.report_data(), &policy(), virtee.now)
        .unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::Snp(SnpError::SignatureInvalid { .. } | SnpError::ChipIdMismatch)
        ),
        "{e:?}"
    );
    // Full evidence with the right VCEK does not overwrite an existing cache entry...
    v.verify(
        &virtee.evidence(),
        &virtee.report_data(),
        &policy(),
        virtee.now,
    )
    .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), idblock.vek);

    // Garbage and oversized files are malformed evidence, not a panic.
    std::fs::write(&path, b"not DER").unwrap();
    assert!(matches!(
        v.verify(&bare(virtee), &virtee.report_data(), &policy(), virtee.now),
        Err(VerifyError::Snp(SnpError::Malformed { .. }))
    ));
    std::fs::write(&path, vec![0x30u8; 64 * 1024]).unwrap();
    let what = malformed(v.verify(&bare(virtee), &virtee.report_data(), &policy(), virtee.now));
    assert!(what.contains("larger than"), "{what}");

    // The verifier's policy still applies to a cached VCEK.
    std::fs::write(&path, &virtee.vek).unwrap();
    let strict = ReferenceValues {
        snp_measurements: Allowed::OneOf(vec![HexBytes([0; 48])]),
        ..policy()
    };
    assert!(matches!(
        v.verify(&bare(virtee), &virtee.report_data(), &strict, virtee.now),
        Err(VerifyError::Policy(_))
    ));
}
