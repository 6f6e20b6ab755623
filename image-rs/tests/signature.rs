//! containers-policy.json parsing and cosign (sigstoreSigned) verification, with keys
//! and signatures made here (ECDSA P-256, as `cosign generate-key-pair` makes) and an
//! in-memory signature source.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use image_rs::decrypt::LocalKeys;
use image_rs::signature::{
    verify_image, CosignSignature, ImagePolicy, KeySource, MemorySignatures, Requirement,
    SignatureError, SignatureSource, SignedIdentity,
};
use oci_client::Reference;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::EncodePublicKey as _;

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const OTHER_DIGEST: &str =
    "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn signing_key(seed: u8) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_bytes(&[seed; 32].into()).unwrap()
}

fn public_pem(seed: u8) -> String {
    signing_key(seed)
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap()
}

fn payload(digest: &str, identity: &str) -> Vec<u8> {
    // The shape cosign and containers/image write.
    serde_json::json!({
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature"
        },
        "optional": {"creator": "test"}
    })
    .to_string()
    .into_bytes()
}

fn sign(seed: u8, payload: Vec<u8>) -> CosignSignature {
    let sig: p256::ecdsa::Signature = signing_key(seed).sign(&payload);
    CosignSignature {
        payload,
        signature: B64.encode(sig.to_der().as_bytes()),
    }
}

fn image(s: &str) -> Reference {
    s.parse().unwrap()
}

/// A policy requiring a signature by key `seed` for `scope`, rejecting everything else.
fn sigstore_policy(
    scope: &str,
    seed: u8,
    signed_identity: Option<serde_json::Value>,
) -> ImagePolicy {
    let mut req =
        serde_json::json!({"type": "sigstoreSigned", "keyData": B64.encode(public_pem(seed))});
    if let Some(si) = signed_identity {
        req["signedIdentity"] = si;
    }
    let doc = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {scope: [req]}}
    });
    ImagePolicy::parse(doc.to_string().as_bytes()).unwrap()
}

const IMG: &str = "registry.example.com/team/app:v1";

#[test]
fn scope_precedence_follows_containers_image() {
    let doc = br#"{
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {
                "": [{"type": "insecureAcceptAnything"}],
                "*.com": [{"type": "reject"}],
                "*.example.com": [{"type": "reject"}],
                "*.b.example.com": [{"type": "reject"}],
                "a.b.example.com": [{"type": "reject"}],
                "a.b.example.com/ns": [{"type": "reject"}],
                "a.b.example.com/ns/repo": [{"type": "reject"}],
                "a.b.example.com/ns/repo:v1": [{"type": "reject"}],
                "a.b.example.com/ns/repo@sha256:1111111111111111111111111111111111111111111111111111111111111111": [{"type": "reject"}],
                "docker.io/library/busybox": [{"type": "reject"}],
                "localhost:5000/x": [{"type": "reject"}]
            },
            "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}
        }
    }"#;
    let p = ImagePolicy::parse(doc).unwrap();
    let scope = |i: &str| p.requirements_for(&image(i)).0.map(str::to_owned);
    let s = |x: &str| Some(x.to_owned());
    assert_eq!(
        scope("a.b.example.com/ns/repo:v1"),
        s("a.b.example.com/ns/repo:v1")
    );
    assert_eq!(
        scope(&format!("a.b.example.com/ns/repo@{DIGEST}")),
        s(&format!("a.b.example.com/ns/repo@{DIGEST}"))
    );
    assert_eq!(
        scope("a.b.example.com/ns/repo:v2"),
        s("a.b.example.com/ns/repo")
    );
    assert_eq!(
        scope("a.b.example.com/ns/other:v1"),
        s("a.b.example.com/ns")
    );
    assert_eq!(
        scope("a.b.example.com/ns/deeper/repo:v1"),
        s("a.b.example.com/ns")
    );
    assert_eq!(scope("a.b.example.com/top:v1"), s("a.b.example.com"));
    assert_eq!(scope("c.b.example.com/x:v1"), s("*.b.example.com"));
    assert_eq!(scope("c.example.com:8443/x:v1"), s("*.example.com"));
    assert_eq!(scope("quay.com/x"), s("*.com"));
    assert_eq!(scope("busybox"), s("docker.io/library/busybox"));
    assert_eq!(
        scope("docker.io/library/busybox:1.36"),
        s("docker.io/library/busybox")
    );
    assert_eq!(scope("localhost:5000/x:v1"), s("localhost:5000/x"));
    assert_eq!(scope("quay.io/x:v1"), s(""));
    // No "" scope: the default governs.
    let p = ImagePolicy::parse(br#"{"default":[{"type":"reject"}],"transports":{"docker":{"quay.io":[{"type":"reject"}]}}}"#).unwrap();
    let (scope, reqs) = p.requirements_for(&image("ghcr.io/x:v1"));
    assert_eq!(scope, None);
    assert_eq!(reqs, &[Requirement::Reject]);
}

#[test]
fn parses_requirement_types_and_identities() {
    let key = B64.encode(public_pem(1));
    let doc = serde_json::json!({
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {"docker": {
            "a.io/r1": [{"type": "sigstoreSigned", "keyPath": "/etc/keys/cosign.pub"}],
            "a.io/r2": [{"type": "sigstoreSigned", "keyPath": "kbs:///default/cosign-key/1",
                         "signedIdentity": {"type": "matchRepository"}}],
            "a.io/r3": [{"type": "sigstoreSigned", "keyDatas": [key, key],
                         "signedIdentity": {"type": "exactReference", "dockerReference": "busybox:1"}}],
            "a.io/r4": [{"type": "sigstoreSigned", "keyData": key,
                         "signedIdentity": {"type": "exactRepository", "dockerRepository": "quay.io/x/y"}}],
            "a.io/r5": [{"type": "sigstoreSigned", "keyData": key,
                         "signedIdentity": {"type": "remapIdentity", "prefix": "mirror.io/x", "signedPrefix": "quay.io/x"}}],
            "a.io/r6": [{"type": "sigstoreSigned", "keyPaths": ["/k1", "/k2"], "signedIdentity": {"type": "matchExact"}}]
        }}
    });
    let p = ImagePolicy::parse(doc.to_string().as_bytes()).unwrap();
    let req = |i: &str| p.requirements_for(&image(i)).1.to_vec();
    assert_eq!(
        req("a.io/r1:x"),
        vec![Requirement::SigstoreSigned {
            keys: vec![KeySource::Path("/etc/keys/cosign.pub".into())],
            signed_identity: SignedIdentity::MatchRepoDigestOrExact
        }]
    );
    assert_eq!(
        req("a.io/r2:x"),
        vec![Requirement::SigstoreSigned {
            keys: vec![KeySource::Kbs("kbs:///default/cosign-key/1".into())],
            signed_identity: SignedIdentity::MatchRepository
        }]
    );
    let Requirement::SigstoreSigned {
        keys,
        signed_identity,
    } = &req("a.io/r3:x")[0]
    else {
        panic!()
    };
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], KeySource::Data(public_pem(1).into_bytes()));
    assert_eq!(
        signed_identity,
        &SignedIdentity::ExactReference("docker.io/library/busybox:1".into())
    );
    let Requirement::SigstoreSigned {
        signed_identity, ..
    } = &req("a.io/r4:x")[0]
    else {
        panic!()
    };
    assert_eq!(
        signed_identity,
        &SignedIdentity::ExactRepository("quay.io/x/y".into())
    );
    let Requirement::SigstoreSigned {
        keys,
        signed_identity,
    } = &req("a.io/r6:x")[0]
    else {
        panic!()
    };
    assert_eq!(
        keys,
        &[KeySource::Path("/k1".into()), KeySource::Path("/k2".into())]
    );
    assert_eq!(signed_identity, &SignedIdentity::MatchExact);
}

#[test]
fn refuses_bad_and_unsupported_policies() {
    let unsupported = [
        r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k.gpg"}]}"#,
        r#"{"default":[{"type":"madeUp"}]}"#,
        r#"{"default":[{"type":"sigstoreSigned","fulcio":{},"rekorPublicKeyPath":"/r"}]}"#,
        r#"{"default":[{"type":"sigstoreSigned","keyPath":"/k","signedIdentity":{"type":"madeUp"}}]}"#,
    ];
    for doc in unsupported {
        let err = ImagePolicy::parse(doc.as_bytes()).unwrap_err();
        assert!(
            matches!(err, SignatureError::Unsupported(_)),
            "{doc}: {err}"
        );
    }
    let err = ImagePolicy::parse(unsupported[0].as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("signedBy") && err.contains("GPG"), "{err}");

    let invalid = [
        "not json",
        "[]",
        r#"{}"#,
        r#"{"default":[]}"#,
        r#"{"default":[{"type":"reject"}],"extra":1}"#,
        r#"{"default":[{"type":"reject","keyPath":"/k"}]}"#,
        r#"{"default":[{"nope":1}]}"#,
        r#"{"default":[{"type":"sigstoreSigned"}]}"#,
        r#"{"default":[{"type":"sigstoreSigned","keyPath":"/k","keyData":"AAAA"}]}"#,
        r#"{"default":[{"type":"sigstoreSigned","keyPath":"relative.pub"}]}"#,
        r#"{"default":[{"type":"sigstoreSigned","keyData":"%%%"}]}"#,
        r#"{"default":[{"type":"sigstoreSigned","keyPaths":[]}]}"#,
        r#"{"default":[{"type":"sigstoreSigned","keyPath":"/k","signedIdentity":{"type":"exactReference"}}]}"#,
        r#"{"default":[{"type":"sigstoreSigned","keyPath":"/k","signedIdentity":{"type":"exactReference","dockerReference":"quay.io/x"}}]}"#,
        r#"{"default":[{"type":"sigstoreSigned","keyPath":"/k","signedIdentity":{"type":"exactRepository","dockerRepository":"quay.io/x:v1"}}]}"#,
        r#"{"default":[{"type":"reject"}],"transports":{"docker":{"busybox":[{"type":"reject"}]}}}"#,
        r#"{"default":[{"type":"reject"}],"transports":{"docker":{"*.":[{"type":"reject"}]}}}"#,
        r#"{"default":[{"type":"reject"}],"transports":{"docker":{"quay.io/*":[{"type":"reject"}]}}}"#,
        r#"{"default":[{"type":"reject"}],"transports":{"docker":{"https://quay.io":[{"type":"reject"}]}}}"#,
        r#"{"default":[{"type":"reject"}],"transports":{"docker":{"quay.io":[]}}}"#,
    ];
    for doc in invalid {
        let err = ImagePolicy::parse(doc.as_bytes()).unwrap_err();
        assert!(
            matches!(err, SignatureError::InvalidPolicy(_)),
            "{doc}: {err}"
        );
    }
}

#[tokio::test]
async fn accept_anything_and_reject() {
    let none = MemorySignatures::new();
    verify_image(&ImagePolicy::accept_anything(), &image(IMG), DIGEST, &none)
        .await
        .unwrap();
    let p = ImagePolicy::parse(br#"{"default":[{"type":"insecureAcceptAnything"}],"transports":{"docker":{"registry.example.com/team":[{"type":"insecureAcceptAnything"},{"type":"reject"}]}}}"#).unwrap();
    let err = verify_image(&p, &image(IMG), DIGEST, &none)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SignatureError::Rejected { scope, .. } if scope == "registry.example.com/team"),
        "{err}"
    );
    assert!(err.to_string().contains(IMG), "{err}");
    verify_image(&p, &image("quay.io/other:v1"), DIGEST, &none)
        .await
        .unwrap();
}

#[tokio::test]
async fn good_signature_is_accepted() {
    let p = sigstore_policy("registry.example.com/team", 1, None);
    let sigs = MemorySignatures::new().with(DIGEST, sign(1, payload(DIGEST, IMG)));
    verify_image(&p, &image(IMG), DIGEST, &sigs).await.unwrap();
    // A bad signature next to the good one does not matter.
    let sigs = MemorySignatures::new()
        .with(DIGEST, sign(2, payload(DIGEST, IMG)))
        .with(DIGEST, sign(1, payload(DIGEST, IMG)));
    verify_image(&p, &image(IMG), DIGEST, &sigs).await.unwrap();
}

async fn refusal(p: &ImagePolicy, img: &str, sigs: &MemorySignatures) -> String {
    let err = verify_image(p, &image(img), DIGEST, sigs)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SignatureError::NoValidSignature { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(img) || msg.contains(&image(img).whole()),
        "{msg}"
    );
    msg
}

#[tokio::test]
async fn signature_by_another_key_is_refused() {
    let p = sigstore_policy("registry.example.com/team", 1, None);
    let sigs = MemorySignatures::new().with(DIGEST, sign(2, payload(DIGEST, IMG)));
    let msg = refusal(&p, IMG, &sigs).await;
    assert!(
        msg.contains("not signed by any of the policy's keys"),
        "{msg}"
    );
}

#[tokio::test]
async fn signature_for_another_digest_is_refused() {
    let p = sigstore_policy("registry.example.com/team", 1, None);
    // Stored under DIGEST (a registry replaying another image's signature).
    let sigs = MemorySignatures::new().with(DIGEST, sign(1, payload(OTHER_DIGEST, IMG)));
    let msg = refusal(&p, IMG, &sigs).await;
    assert!(
        msg.contains(&format!("signature is for manifest {OTHER_DIGEST}")),
        "{msg}"
    );
}

#[tokio::test]
async fn wrong_identity_is_refused() {
    let p = sigstore_policy("registry.example.com/team", 1, None);
    let sigs = MemorySignatures::new().with(
        DIGEST,
        sign(1, payload(DIGEST, "registry.example.com/team/other:v1")),
    );
    let msg = refusal(&p, IMG, &sigs).await;
    assert!(
        msg.contains("does not match") && msg.contains("matchRepoDigestOrExact"),
        "{msg}"
    );
    // Same repository, other tag: refused by the default rule as well.
    let sigs = MemorySignatures::new().with(
        DIGEST,
        sign(1, payload(DIGEST, "registry.example.com/team/app:v2")),
    );
    refusal(&p, IMG, &sigs).await;
}

#[tokio::test]
async fn unsigned_image_is_refused() {
    let p = sigstore_policy("registry.example.com/team", 1, None);
    let other = MemorySignatures::new().with(OTHER_DIGEST, sign(1, payload(OTHER_DIGEST, IMG)));
    let err = verify_image(&p, &image(IMG), DIGEST, &other)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SignatureError::Unsigned { image, digest, .. } if image == IMG && digest == DIGEST),
        "{err}"
    );
    // The default of this policy is reject.
    let err = verify_image(&p, &image("quay.io/x:v1"), DIGEST, &other)
        .await
        .unwrap_err();
    assert!(matches!(err, SignatureError::Rejected { .. }), "{err}");
}

#[tokio::test]
async fn malformed_signatures_and_payloads_are_refused() {
    let p = sigstore_policy("registry.example.com/team", 1, None);
    let mut wrong_type =
        serde_json::from_slice::<serde_json::Value>(&payload(DIGEST, IMG)).unwrap();
    wrong_type["critical"]["type"] = "atomic container signature".into();
    let mut extra = serde_json::from_slice::<serde_json::Value>(&payload(DIGEST, IMG)).unwrap();
    extra["critical"]["image"]["other"] = "x".into();
    let good = sign(1, payload(DIGEST, IMG));
    let cases = [
        (
            sign(1, wrong_type.to_string().into_bytes()),
            "critical.type",
        ),
        (
            sign(1, extra.to_string().into_bytes()),
            "not a cosign simple-signing payload",
        ),
        (
            sign(1, b"not json".to_vec()),
            "not a cosign simple-signing payload",
        ),
        (
            sign(1, payload(DIGEST, "UPPER/Case")),
            "not a docker reference",
        ),
        (
            CosignSignature {
                payload: good.payload.clone(),
                signature: "***".into(),
            },
            "not base64",
        ),
        (
            CosignSignature {
                payload: good.payload.clone(),
                signature: B64.encode([0u8; 64]),
            },
            "not an ASN.1 DER",
        ),
        (
            CosignSignature {
                payload: payload(DIGEST, "registry.example.com/team/app:v9"),
                signature: good.signature.clone(),
            },
            "not signed by",
        ),
    ];
    for (sig, needle) in cases {
        let msg = refusal(&p, IMG, &MemorySignatures::new().with(DIGEST, sig)).await;
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
}

#[tokio::test]
async fn signed_identity_rules() {
    use serde_json::json;
    let by_digest = format!("registry.example.com/team/app@{DIGEST}");
    // (signedIdentity, image pulled, identity in the signature, accepted?)
    let cases = [
        (
            None,
            by_digest.as_str(),
            "registry.example.com/team/app:v7",
            true,
        ),
        (
            None,
            by_digest.as_str(),
            "registry.example.com/team/other:v7",
            false,
        ),
        (None, IMG, "registry.example.com/team/app", false),
        (
            Some(json!({"type": "matchRepository"})),
            IMG,
            "registry.example.com/team/app:v2",
            true,
        ),
        (
            Some(json!({"type": "matchRepository"})),
            IMG,
            "registry.example.com/team/app",
            true,
        ),
        (
            Some(json!({"type": "matchRepository"})),
            IMG,
            "registry.example.com/team/app2:v1",
            false,
        ),
        (Some(json!({"type": "matchExact"})), IMG, IMG, true),
        (
            Some(json!({"type": "matchExact"})),
            by_digest.as_str(),
            "registry.example.com/team/app:v1",
            false,
        ),
        (
            Some(json!({"type": "matchExact"})),
            by_digest.as_str(),
            by_digest.as_str(),
            true,
        ),
        (
            Some(json!({"type": "exactReference", "dockerReference": "quay.io/x/app:1.0"})),
            IMG,
            "quay.io/x/app:1.0",
            true,
        ),
        (
            Some(json!({"type": "exactReference", "dockerReference": "quay.io/x/app:1.0"})),
            IMG,
            IMG,
            false,
        ),
        (
            Some(json!({"type": "exactRepository", "dockerRepository": "quay.io/x/app"})),
            IMG,
            "quay.io/x/app:any",
            true,
        ),
        (
            Some(json!({"type": "exactRepository", "dockerRepository": "quay.io/x/app"})),
            IMG,
            "quay.io/x/app2:any",
            false,
        ),
        (
            Some(
                json!({"type": "remapIdentity", "prefix": "registry.example.com/team", "signedPrefix": "quay.io/upstream"}),
            ),
            IMG,
            "quay.io/upstream/app:v1",
            true,
        ),
        (
            Some(
                json!({"type": "remapIdentity", "prefix": "registry.example.com/team", "signedPrefix": "quay.io/upstream"}),
            ),
            IMG,
            IMG,
            false,
        ),
        (
            Some(
                json!({"type": "remapIdentity", "prefix": "registry.example.com/te", "signedPrefix": "quay.io/upstream"}),
            ),
            IMG,
            IMG,
            true,
        ),
        (None, "busybox:1.36", "docker.io/library/busybox:1.36", true),
        (None, "docker.io/library/busybox:1.36", "busybox:1.36", true),
    ];
    for (si, img, signed, want) in cases {
        let scope = if img.starts_with("registry.example.com") {
            "registry.example.com"
        } else {
            "docker.io"
        };
        let p = sigstore_policy(scope, 1, si.clone());
        let sigs = MemorySignatures::new().with(DIGEST, sign(1, payload(DIGEST, signed)));
        let got = verify_image(&p, &image(img), DIGEST, &sigs).await;
        assert_eq!(
            got.is_ok(),
            want,
            "{si:?} image {img} signed {signed}: {got:?}"
        );
    }
}

#[tokio::test]
async fn every_requirement_must_hold() {
    let key1 = B64.encode(public_pem(1));
    let key2 = B64.encode(public_pem(2));
    let doc = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {"registry.example.com": [
            {"type": "sigstoreSigned", "keyData": key1},
            {"type": "sigstoreSigned", "keyData": key2}
        ]}}
    });
    let p = ImagePolicy::parse(doc.to_string().as_bytes()).unwrap();
    let one = MemorySignatures::new().with(DIGEST, sign(1, payload(DIGEST, IMG)));
    refusal(&p, IMG, &one).await;
    let both = one.with(DIGEST, sign(2, payload(DIGEST, IMG)));
    verify_image(&p, &image(IMG), DIGEST, &both).await.unwrap();
}

#[tokio::test]
async fn keys_from_a_file_and_from_the_kbs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cosign.pub");
    std::fs::write(&path, public_pem(1)).unwrap();
    let sigs = MemorySignatures::new().with(DIGEST, sign(1, payload(DIGEST, IMG)));
    let doc = |key_path: &str| {
        serde_json::json!({"default": [{"type": "sigstoreSigned", "keyPath": key_path}]})
            .to_string()
    };

    let p = ImagePolicy::parse(doc(path.to_str().unwrap()).as_bytes()).unwrap();
    verify_image(&p, &image(IMG), DIGEST, &sigs).await.unwrap();

    let missing = ImagePolicy::parse(doc("/nonexistent/cosign.pub").as_bytes()).unwrap();
    let err = verify_image(&missing, &image(IMG), DIGEST, &sigs)
        .await
        .unwrap_err();
    assert!(matches!(err, SignatureError::Key { .. }), "{err}");

    let uri = "kbs:///default/cosign-public-key/test";
    let p = ImagePolicy::parse(doc(uri).as_bytes()).unwrap();
    let err = verify_image(&p, &image(IMG), DIGEST, &sigs)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SignatureError::Key { key, .. } if key == uri),
        "{err}"
    );
    let err = p
        .clone()
        .resolve_kbs_keys(&LocalKeys::new())
        .await
        .unwrap_err();
    assert!(matches!(err, SignatureError::Source { .. }), "{err}");
    let resolved = p
        .resolve_kbs_keys(&LocalKeys::new().with_resource(uri, public_pem(1)))
        .await
        .unwrap();
    verify_image(&resolved, &image(IMG), DIGEST, &sigs)
        .await
        .unwrap();

    // An RSA (or any non-P-256) key is refused with the reason.
    let rsa_pem = "-----BEGIN PUBLIC KEY-----\nMFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf\n9Cnzj4p4WGeKLs1Pt8QuKUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n-----END PUBLIC KEY-----\n";
    let p = ImagePolicy::parse(serde_json::json!({"default": [{"type": "sigstoreSigned", "keyData": B64.encode(rsa_pem)}]}).to_string().as_bytes()).unwrap();
    let err = verify_image(&p, &image(IMG), DIGEST, &sigs)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("P-256"), "{err}");
}

struct BrokenRegistry;

#[async_trait::async_trait]
impl SignatureSource for BrokenRegistry {
    async fn cosign_signatures(
        &self,
        image: &Reference,
        _: &str,
    ) -> Result<Vec<CosignSignature>, SignatureError> {
        Err(SignatureError::source(image.whole(), "registry said 500"))
    }
}

#[tokio::test]
async fn source_errors_refuse_the_image_and_are_not_asked_when_not_needed() {
    let p = sigstore_policy("registry.example.com/team", 1, None);
    let err = verify_image(&p, &image(IMG), DIGEST, &BrokenRegistry)
        .await
        .unwrap_err();
    assert!(matches!(err, SignatureError::Source { .. }), "{err}");
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "registry said 500"
    );
    // insecureAcceptAnything and reject never fetch signatures.
    verify_image(
        &ImagePolicy::accept_anything(),
        &image(IMG),
        DIGEST,
        &BrokenRegistry,
    )
    .await
    .unwrap();
    let err = verify_image(&p, &image("quay.io/x:v1"), DIGEST, &BrokenRegistry)
        .await
        .unwrap_err();
    assert!(matches!(err, SignatureError::Rejected { .. }), "{err}");
}

#[tokio::test]
async fn openssl_made_cosign_signature_verifies() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/crypto");
    let sig = CosignSignature {
        payload: std::fs::read(data.join("openssl-payload.json")).unwrap(),
        signature: std::fs::read_to_string(data.join("openssl-signature.b64")).unwrap(),
    };
    let digest = "sha256:e25dcc5b3745c00341c64e21022f2aefb8ba5f4d214e696d5b417807451c2760";
    let doc = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {"127.0.0.1:5055/test": [{
            "type": "sigstoreSigned",
            "keyPath": data.join("openssl-cosign.pub").to_str().unwrap()
        }]}}
    });
    let p = ImagePolicy::parse(doc.to_string().as_bytes()).unwrap();
    let img = image("127.0.0.1:5055/test/busybox:v1");
    let sigs = MemorySignatures::new()
        .with(digest, sig.clone())
        .with(DIGEST, sig);
    verify_image(&p, &img, digest, &sigs).await.unwrap();
    let err = verify_image(&p, &img, DIGEST, &sigs).await.unwrap_err();
    assert!(
        err.to_string().contains("signature is for manifest"),
        "{err}"
    );
    let err = verify_image(&p, &image("127.0.0.1:5055/test/busybox:v2"), digest, &sigs)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}
