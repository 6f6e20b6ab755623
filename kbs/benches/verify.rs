//! Verification time of one real SNP report (Milan, VCEK chain) and one real TDX quote
//! (v4, UpToDate), plus the simulated SNP path.
//!
//! `cargo bench -p kbs` (add `-- --quick` for a short run). Criterion reports its
//! estimates; before that, each case prints p50/p90/max of 200 single calls timed with
//! `Instant`, the figures quoted in the issue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use kbs::sim::{produce, SimChain, SimKeys, SimReportInput};
use kbs::{
    Allowed, ReferenceValues, SigningKey, SimVerifier, SnpVerifier, TdxCollateralStore,
    TdxVerifier, Verifier,
};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/tee/"
    ))
    .join(rel)
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

struct Case {
    name: &'static str,
    verifier: Box<dyn Verifier>,
    evidence: serde_json::Value,
    report_data: Vec<u8>,
    policy: ReferenceValues,
    now: SystemTime,
}

fn cases() -> Vec<Case> {
    let any = ReferenceValues {
        snp_measurements: Allowed::Any,
        host_data: Allowed::Any,
        tdx_mrtd: Allowed::Any,
        mrconfigid: Allowed::Any,
        ..ReferenceValues::default()
    };
    let hex = std::fs::read_to_string(fixture("snp/milan-v2-virtee/report.hex")).unwrap();
    let report = ::hex::decode(hex.trim()).unwrap();
    let vcek = std::fs::read(fixture("snp/milan-v2-virtee/vcek.der")).unwrap();
    let quote = std::fs::read(fixture("tdx/v4-b0c06f-uptodate/quote.bin")).unwrap();
    let mut coll = TdxCollateralStore::new();
    coll.add_dcap_qvl_json(
        &std::fs::read_to_string(fixture("tdx/v4-b0c06f-uptodate/collateral.json")).unwrap(),
    )
    .unwrap();
    let rd = [0x52u8; 64];
    vec![
        Case {
            name: "snp/milan-v2-virtee",
            verifier: Box::new(SnpVerifier::amd().unwrap()),
            evidence: kbs::snp::evidence_json(&report, SigningKey::Vcek, &vcek),
            report_data: report[0x50..0x90].to_vec(),
            policy: any.clone(),
            now: at(1_748_736_000), // 2025-06-01
        },
        Case {
            name: "tdx/v4-b0c06f-uptodate",
            verifier: Box::new(TdxVerifier::new(coll).unwrap()),
            evidence: kbs::tdx::evidence_json(&quote),
            report_data: quote[48 + 520..48 + 584].to_vec(),
            policy: any.clone(),
            now: at(1_751_328_000), // 2025-07-01
        },
        Case {
            name: "sim",
            verifier: Box::new(SimVerifier::new().unwrap()),
            evidence: produce(
                &SimReportInput::new([1; 48], [2; 32], rd),
                &SimKeys::builtin().unwrap(),
                &SimChain::builtin().unwrap(),
            ),
            report_data: rd.to_vec(),
            policy: ReferenceValues {
                allow_simulated: true,
                ..any
            },
            now: at(1_767_225_600), // 2026-01-01
        },
    ]
}

fn percentiles(c: &Case) {
    let mut samples: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            let r = c
                .verifier
                .verify(black_box(&c.evidence), &c.report_data, &c.policy, c.now);
            let d = t.elapsed();
            assert!(r.is_ok(), "{}: {r:?}", c.name);
            d
        })
        .collect();
    samples.sort();
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "verify {:<24} p50 {:>9.3?}  p90 {:>9.3?}  max {:>9.3?}  (n = {})",
        c.name,
        p(0.5),
        p(0.9),
        samples[samples.len() - 1],
        samples.len()
    );
}

fn bench(cr: &mut Criterion) {
    let cases = cases();
    for c in &cases {
        percentiles(c);
    }
    for c in &cases {
        cr.bench_function(&format!("verify {}", c.name), |b| {
            b.iter(|| {
                c.verifier
                    .verify(black_box(&c.evidence), &c.report_data, &c.policy, c.now)
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
