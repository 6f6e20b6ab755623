//! The guest side of attestation against the real KBS (in process, plain HTTP on
//! loopback) with the real RCAR client and the simulated attester, without a VM: the
//! set-up from initdata (`aa.toml`), the binding, the attest-before-run check and the
//! workload endpoint. The in-VM version is `tests/tests/pod_attest.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;

use attestation_agent::SimAttester;
use guest_agent::attestation::PodAttestation;
use guest_agent::gate::{Check as _, Endpoint};
use guest_agent::initdata::{bind, Binding, LoadedInitData};
use guest_agent::tee::GuestTee;
use hyper::{Method, StatusCode};
use kbs::server::{KbsServer, ServerConfig};
use protocols::initdata::{self, Algorithm, InitData};

const M: [u8; 48] = [0x4d; 48];

fn aa(url: &str) -> String {
    format!("[token_configs.kbs]\nurl = \"{url}\"\n")
}

/// initdata of `tenant` whose aa.toml names the KBS at `url`.
fn initdata_for(url: &str, tenant: &str) -> LoadedInitData {
    let mut init = InitData::with_policy(Algorithm::Sha384, &format!("package agent_policy\n# {tenant}\n"));
    init.data.insert("aa.toml".into(), aa(url));
    let raw = init.to_toml().into_bytes();
    let digest = initdata::digest(init.algorithm, &raw);
    LoadedInitData { device: "/dev/vdb".into(), init, raw, digest }
}

/// A KBS on loopback expecting the initdata of `tenant` (which names this KBS, so the
/// digest is known once the port is); returns its URL.
async fn kbs_for_tenant(dir: &std::path::Path, tenant: &str) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let expected = initdata_for(&url, tenant);
    std::fs::write(
        dir.join("reference.toml"),
        format!(
            "snp_measurements = [\"{}\"]\nhost_data = [\"{}\"]\n",
            hex::encode(M),
            hex::encode(initdata::host_data(&expected.digest))
        ),
    )
    .unwrap();
    let res = dir.join("resources");
    std::fs::create_dir_all(res.join("default/key")).unwrap();
    std::fs::write(res.join("default/key/k1"), b"k1 bytes").unwrap();
    let mut cfg = ServerConfig::new(res);
    cfg.reference_values = Some(dir.join("reference.toml"));
    cfg.allow_simulated = true;
    tokio::spawn(KbsServer::new(cfg).unwrap().serve(l));
    url
}

/// A sim TEE launched (by the "host") for `d`: HOST_DATA is its fitted digest.
fn tee_for(d: &LoadedInitData) -> GuestTee {
    GuestTee::new(Arc::new(SimAttester::new(M, initdata::host_data(&d.digest)).unwrap()))
}

fn create() -> protocols::agent::CreateContainerRequest {
    protocols::agent::CreateContainerRequest::new()
}

#[tokio::test]
async fn expected_initdata_attests_and_the_endpoint_serves_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let url = kbs_for_tenant(dir.path(), "a").await;
    let d = initdata_for(&url, "a");
    let tee = tee_for(&d);
    assert_eq!(bind(Some(&d), Some(&tee)).unwrap(), Binding::Bound { field: "HOST_DATA" });

    let p = PodAttestation::new(Some(tee), Some(&d)).unwrap();
    assert!(p.required());
    let check = p.check().unwrap();
    check.check(Endpoint::CreateContainer, &create()).await.unwrap();
    assert!(check.is_attested());
    let api = p.workload_api().unwrap();
    let ans = api.answer(&Method::GET, "/cdh/resource/default/key/k1").await;
    assert_eq!((ans.status, ans.body.as_slice()), (StatusCode::OK, b"k1 bytes".as_slice()));
    let ans = api.answer(&Method::GET, "/cdh/resource/default/key/nope").await;
    assert_eq!(ans.status, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&ans.body));
    // Real sim evidence: REPORT_DATA is the runtime data, zero-padded.
    let ans = api.answer(&Method::GET, "/aa/evidence?runtime_data=hello").await;
    assert_eq!(ans.status, StatusCode::OK);
    let ev: serde_json::Value = serde_json::from_slice(&ans.body).unwrap();
    use base64::Engine as _;
    let report = base64::engine::general_purpose::STANDARD.decode(ev["attestation_report"].as_str().unwrap()).unwrap();
    let report = kbs::snp::report::Report::parse(&report).unwrap();
    assert_eq!(&report.report_data[..5], b"hello");
    assert!(report.report_data[5..].iter().all(|b| *b == 0));
}

#[tokio::test]
async fn other_initdata_is_refused_with_the_kbs_reason_and_no_resource_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let url = kbs_for_tenant(dir.path(), "a").await;
    let d = initdata_for(&url, "b");
    let p = PodAttestation::new(Some(tee_for(&d)), Some(&d)).unwrap();
    let check = p.check().unwrap();
    let e = check.check(Endpoint::ExecProcess, &protocols::agent::ExecProcessRequest::new()).await.unwrap_err();
    assert_eq!(e.check, "attestation");
    assert!(e.reason.starts_with("attestation required: attest: KBS answered 401"), "{e}");
    assert!(e.reason.contains(&format!("HOST_DATA {} is not one of", hex::encode(initdata::host_data(&d.digest)))), "{e}");
    assert!(!check.is_attested());
    let ans = p.workload_api().unwrap().answer(&Method::GET, "/cdh/resource/default/key/k1").await;
    assert_eq!(ans.status, StatusCode::FORBIDDEN);
    assert!(!ans.body.windows(8).any(|w| w == b"k1 bytes"));
}
