//! `/attest` and init-data: HOST_DATA is checked against the reference values whether or
//! not the client sends `init-data`; a pinned non-zero HOST_DATA requires the document,
//! and a document sent must match HOST_DATA.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::rcar::{flow, kbs_config, start, SECRET};
use kbs::sim::{SimChain, SimKeys};
use protocols::initdata;

const M: [u8; 48] = [0x4D; 48];
const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n";
const OTHER: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n";

fn host_data_of(doc: &str) -> [u8; 32] {
    let parsed = initdata::InitData::parse(doc).unwrap();
    initdata::host_data(&initdata::digest(parsed.algorithm, doc.as_bytes()))
}

fn sim() -> (SimKeys, SimChain) {
    (SimKeys::builtin().unwrap(), SimChain::builtin().unwrap())
}

#[tokio::test]
async fn pinned_host_data_requires_init_data() {
    let dir = tempfile::tempdir().unwrap();
    let hd = host_data_of(DOC);
    let addr = start(kbs_config(
        dir.path(),
        M,
        &format!("[\"{}\", \"{}\"]", hex::encode(hd), hex::encode([0u8; 32])),
    ))
    .await;
    let (keys, chain) = sim();

    // The document the guest was launched with: accepted.
    let ok = flow(addr, &keys, &chain, M, hd, Some(DOC)).await.unwrap();
    assert_eq!(ok, SECRET);

    // The same guest without the document: refused, naming the missing field.
    let (step, status, body) = flow(addr, &keys, &chain, M, hd, None).await.unwrap_err();
    assert_eq!((step, status), ("attest", 401), "{body}");
    let p: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        p["type"].as_str().unwrap().ends_with("/InitDataMissing"),
        "{body}"
    );
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("`init-data`")
            && detail.contains("HOST_DATA")
            && detail.contains(&hex::encode(hd)),
        "{detail}"
    );

    // Another document than the one HOST_DATA measures: refused.
    let (step, status, body) = flow(addr, &keys, &chain, M, hd, Some(OTHER))
        .await
        .unwrap_err();
    assert_eq!((step, status), ("attest", 401), "{body}");
    assert!(
        body.contains("init-data digest") && body.contains("does not match HOST_DATA"),
        "{body}"
    );

    // A guest launched without initdata (HOST_DATA all zero) has nothing to show.
    let ok = flow(addr, &keys, &chain, M, [0; 32], None).await.unwrap();
    assert_eq!(ok, SECRET);

    // HOST_DATA the reference values do not list: refused by the verifier, with or
    // without a document.
    let other = host_data_of(OTHER);
    for doc in [None, Some(OTHER)] {
        let (step, status, body) = flow(addr, &keys, &chain, M, other, doc).await.unwrap_err();
        assert_eq!((step, status), ("attest", 401), "{body}");
        assert!(
            body.contains("HOST_DATA") && body.contains("is not one of"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn any_host_data_needs_no_document_but_checks_one_that_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let addr = start(kbs_config(dir.path(), M, "\"any\"")).await;
    let (keys, chain) = sim();
    let hd = host_data_of(DOC);
    assert_eq!(
        flow(addr, &keys, &chain, M, hd, None).await.unwrap(),
        SECRET
    );
    assert_eq!(
        flow(addr, &keys, &chain, M, hd, Some(DOC)).await.unwrap(),
        SECRET
    );
    let (_, status, body) = flow(addr, &keys, &chain, M, hd, Some(OTHER))
        .await
        .unwrap_err();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("does not match HOST_DATA"), "{body}");
}

#[tokio::test]
async fn the_policy_sees_the_checked_document() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = kbs_config(dir.path(), M, "\"any\"");
    let policy = dir.path().join("policy.rego");
    std::fs::write(
        &policy,
        "package policy\nimport rego.v1\ndefault allow := false\nallow if {\n    input.claims.init_data.format == \"toml\"\n}\n",
    )
    .unwrap();
    cfg.policy = Some(policy);
    let addr = start(cfg).await;
    let (keys, chain) = sim();
    let hd = host_data_of(DOC);
    assert_eq!(
        flow(addr, &keys, &chain, M, hd, Some(DOC)).await.unwrap(),
        SECRET
    );
    let (step, status, body) = flow(addr, &keys, &chain, M, hd, None).await.unwrap_err();
    assert_eq!((step, status), ("resource", 401), "{body}");
    assert!(body.contains("PolicyDeny"), "{body}");
}
