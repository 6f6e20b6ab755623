//! ocicrypt decryption against layers encrypted by the real tools: an OCI layout built
//! with `umoci` (busybox-static plus a random marker file), encrypted with
//! `skopeo copy --encryption-key jwe:<pub.pem>` for RSA, EC P-256 and EC P-384 keys
//! made by `openssl`. The key-provider (CoCo attestation-agent) annotation is tested on
//! vectors built here following guest-components' format.
//!
//! The tools are install-time dependencies (deploy/install-deps.sh); a missing one fails
//! the test with its name rather than skipping it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use aes::cipher::{KeyIvInit, StreamCipher};
use aes_gcm::aead::{Aead, KeyInit};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::Mac as _;
use image_rs::decrypt::{
    is_encrypted, layer_key, DecryptError, KeyProvider, LayerKey, LocalKeys, ANNOTATION_KEYS_JWE,
    ANNOTATION_KEYS_PROVIDER_AA, ANNOTATION_PUBOPTS,
};
use oci_client::manifest::{OciDescriptor, OciImageManifest};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn run(cmd: &mut Command) {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}): install it (deploy/install-deps.sh: skopeo, umoci, openssl, busybox-static)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Built once per test binary: layouts `plain`, `enc-rsa`, `enc-multi` (EC P-256 + RSA),
/// `enc-ec384`, and the keys.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let r = |p: &str| root.join(p);
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox-static (/bin/busybox) is required for the fixture");
        // Content of our own: a random marker so no layer is shared with another image.
        let mut marker = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut marker)
            .unwrap();
        std::fs::write(r("marker"), marker).unwrap();

        run(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(r("plain")));
        run(Command::new("umoci")
            .args(["new", "--image"])
            .arg(format!("{}:latest", r("plain").display())));
        run(Command::new("umoci")
            .args(["insert", "--rootless", "--image"])
            .arg(format!("{}:latest", r("plain").display()))
            .arg(busybox)
            .arg("/bin/busybox"));
        run(Command::new("umoci")
            .args(["insert", "--rootless", "--image"])
            .arg(format!("{}:latest", r("plain").display()))
            .arg(r("marker"))
            .arg("/marker"));

        run(Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(r("rsa.pem"))
            .arg("2048"));
        run(Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(r("rsa.pem"))
            .arg("-out")
            .arg(r("rsa-pub.pem")));
        run(Command::new("openssl")
            .args(["rsa", "-traditional", "-in"])
            .arg(r("rsa.pem"))
            .arg("-out")
            .arg(r("rsa-pkcs1.pem")));
        run(Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(r("other-rsa.pem"))
            .arg("2048"));
        for (name, curve) in [("ec", "prime256v1"), ("ec384", "secp384r1")] {
            run(Command::new("openssl")
                .args(["ecparam", "-genkey", "-noout", "-name", curve, "-out"])
                .arg(r(&format!("{name}.pem"))));
            run(Command::new("openssl")
                .args(["ec", "-pubout", "-in"])
                .arg(r(&format!("{name}.pem")))
                .arg("-out")
                .arg(r(&format!("{name}-pub.pem"))));
        }

        let plain = format!("oci:{}:latest", r("plain").display());
        for (layout, keys) in [
            ("enc-rsa", vec!["rsa-pub.pem"]),
            ("enc-multi", vec!["ec-pub.pem", "rsa-pub.pem"]),
            ("enc-ec384", vec!["ec384-pub.pem"]),
        ] {
            let mut cmd = Command::new("skopeo");
            cmd.args(["copy", "--quiet"]);
            for k in keys {
                cmd.arg("--encryption-key")
                    .arg(format!("jwe:{}", r(k).display()));
            }
            cmd.arg(&plain)
                .arg(format!("oci:{}:latest", r(layout).display()));
            run(&mut cmd);
        }
        Fixture { _dir: dir, root }
    })
}

impl Fixture {
    fn key(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.root.join(name)).unwrap()
    }

    /// The layer descriptors of `layout:latest`, bottom first.
    fn layers(&self, layout: &str) -> Vec<OciDescriptor> {
        let dir = self.root.join(layout);
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let digest = index["manifests"][0]["digest"].as_str().unwrap();
        let manifest: OciImageManifest =
            serde_json::from_slice(&self.blob(layout, digest)).unwrap();
        manifest.layers
    }

    fn blob(&self, layout: &str, digest: &str) -> Vec<u8> {
        let (alg, hex) = digest.split_once(':').unwrap();
        std::fs::read(self.root.join(layout).join("blobs").join(alg).join(hex)).unwrap()
    }

    /// (encrypted descriptor, encrypted blob, plain descriptor, plain blob) of the
    /// busybox layer.
    fn busybox_layer(&self, layout: &str) -> (OciDescriptor, Vec<u8>, OciDescriptor, Vec<u8>) {
        let enc = self.layers(layout).remove(0);
        let plain = self.layers("plain").remove(0);
        let enc_blob = self.blob(layout, &enc.digest);
        let plain_blob = self.blob("plain", &plain.digest);
        (enc, enc_blob, plain, plain_blob)
    }
}

fn decrypt_all(key: &LayerKey, blob: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    key.reader(blob).read_to_end(&mut out)?;
    Ok(out)
}

async fn check_roundtrip(layout: &str, keys: &LocalKeys, expect_alg: &str) {
    let f = fixture();
    let (enc, enc_blob, plain, plain_blob) = f.busybox_layer(layout);
    assert!(is_encrypted(&enc), "{}", enc.media_type);
    assert!(!is_encrypted(&plain));
    assert_ne!(enc.digest, plain.digest);
    let key = layer_key(&enc, keys).await.unwrap();
    assert_eq!(key.decrypted_media_type(), plain.media_type);
    assert_eq!(
        key.decrypted_media_type(),
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert!(
        key.unwrapped_by().starts_with(expect_alg),
        "{}",
        key.unwrapped_by()
    );
    // skopeo records the source blob's digest: here, the plain layer's.
    assert_eq!(key.plain_digest(), Some(plain.digest.as_str()));
    let got = decrypt_all(&key, &enc_blob).unwrap();
    assert_eq!(got.len(), plain_blob.len());
    assert!(
        got == plain_blob,
        "decrypted layer differs from the plain layer"
    );
    // Every layer of the image round-trips (umoci made two: busybox, marker).
    let encs = f.layers(layout);
    let plains = f.layers("plain");
    assert_eq!(encs.len(), 2);
    for (e, p) in encs.iter().zip(&plains) {
        let key = layer_key(e, keys).await.unwrap();
        assert_eq!(
            decrypt_all(&key, &f.blob(layout, &e.digest)).unwrap(),
            f.blob("plain", &p.digest)
        );
    }
}

#[tokio::test]
async fn skopeo_rsa_layer_with_pkcs8_key() {
    let f = fixture();
    check_roundtrip(
        "enc-rsa",
        &LocalKeys::new().with_private_key(f.key("rsa.pem")),
        "jwe:RSA-OAEP",
    )
    .await;
}

#[tokio::test]
async fn skopeo_rsa_layer_with_pkcs1_key_after_a_foreign_key() {
    let f = fixture();
    let keys = LocalKeys::new()
        .with_private_key(f.key("other-rsa.pem"))
        .with_private_key(f.key("rsa-pkcs1.pem"));
    check_roundtrip("enc-rsa", &keys, "jwe:RSA-OAEP (private key #1)").await;
}

#[tokio::test]
async fn skopeo_multi_recipient_layer_opens_with_either_key() {
    let f = fixture();
    check_roundtrip(
        "enc-multi",
        &LocalKeys::new().with_private_key(f.key("ec.pem")),
        "jwe:ECDH-ES+A256KW",
    )
    .await;
    check_roundtrip(
        "enc-multi",
        &LocalKeys::new().with_private_key(f.key("rsa.pem")),
        "jwe:RSA-OAEP",
    )
    .await;
}

#[tokio::test]
async fn skopeo_ec_p384_layer() {
    let f = fixture();
    check_roundtrip(
        "enc-ec384",
        &LocalKeys::new().with_private_key(f.key("ec384.pem")),
        "jwe:ECDH-ES+A256KW",
    )
    .await;
}

#[tokio::test]
async fn ec_private_key_as_jwk() {
    let f = fixture();
    let pem = String::from_utf8(f.key("ec.pem")).unwrap();
    let jwk = p256::SecretKey::from_sec1_pem(&pem)
        .unwrap()
        .to_jwk_string();
    check_roundtrip(
        "enc-multi",
        &LocalKeys::new().with_private_key(jwk.as_bytes().to_vec()),
        "jwe:ECDH-ES+A256KW",
    )
    .await;
}

#[tokio::test]
async fn wrong_key_is_reported_with_the_recipients() {
    let f = fixture();
    let (enc, ..) = f.busybox_layer("enc-multi");
    let keys = LocalKeys::new()
        .with_private_key(f.key("other-rsa.pem"))
        .with_private_key(f.key("ec384.pem"));
    let err = layer_key(&enc, &keys).await.unwrap_err();
    let DecryptError::NoKeyMatched {
        recipients,
        keys_tried,
        attempts,
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(recipients, &["jwe:ECDH-ES+A256KW/P-256", "jwe:RSA-OAEP"]);
    assert_eq!(*keys_tried, 2);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("no key matched") && msg.contains("RSA-OAEP"),
        "{msg}"
    );
}

#[tokio::test]
async fn no_key_at_all() {
    let f = fixture();
    let (enc, ..) = f.busybox_layer("enc-rsa");
    let err = layer_key(&enc, &LocalKeys::new()).await.unwrap_err();
    assert!(
        matches!(&err, DecryptError::NoKeyMatched { recipients, keys_tried: 0, .. } if recipients == &["jwe:RSA-OAEP"]),
        "{err}"
    );
}

#[tokio::test]
async fn unparsable_private_key_is_named() {
    let f = fixture();
    let (enc, ..) = f.busybox_layer("enc-rsa");
    let keys = LocalKeys::new()
        .with_private_key(f.key("rsa.pem"))
        .with_private_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec());
    let err = layer_key(&enc, &keys).await.unwrap_err();
    assert!(
        matches!(err, DecryptError::InvalidPrivateKey { index: 1, .. }),
        "{err}"
    );
}

fn hmac_failure(res: std::io::Result<Vec<u8>>) -> bool {
    match res {
        Ok(_) => false,
        Err(e) => {
            e.kind() == std::io::ErrorKind::InvalidData
                && matches!(
                    e.get_ref().and_then(|i| i.downcast_ref::<DecryptError>()),
                    Some(DecryptError::Hmac)
                )
        }
    }
}

#[tokio::test]
async fn tampered_ciphertext_fails_hmac_at_end_of_stream() {
    let f = fixture();
    let (enc, mut blob, ..) = f.busybox_layer("enc-rsa");
    let key = layer_key(&enc, &LocalKeys::new().with_private_key(f.key("rsa.pem")))
        .await
        .unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0x01;
    let mut reader = key.reader(blob.as_slice());
    let mut buf = vec![0u8; 4096];
    let mut seen = 0;
    let err = loop {
        match reader.read(&mut buf) {
            Ok(0) => panic!("tampered layer read to a clean end of stream"),
            Ok(n) => seen += n,
            Err(e) => break e,
        }
    };
    // The whole ciphertext was consumed before the verdict: the check is at EOF.
    assert_eq!(seen, blob.len());
    assert!(hmac_failure(Err(err)));
    // And the reader stays failed.
    assert!(reader.read(&mut buf).is_err());
}

#[tokio::test]
async fn truncated_and_extended_blobs_fail_hmac() {
    let f = fixture();
    let (enc, blob, ..) = f.busybox_layer("enc-rsa");
    let key = layer_key(&enc, &LocalKeys::new().with_private_key(f.key("rsa.pem")))
        .await
        .unwrap();
    assert!(hmac_failure(decrypt_all(&key, &blob[..blob.len() - 1])));
    assert!(hmac_failure(decrypt_all(&key, &[])));
    let mut longer = blob.clone();
    longer.push(0);
    assert!(hmac_failure(decrypt_all(&key, &longer)));
    assert!(decrypt_all(&key, &blob).is_ok());
}

fn with_annotation(desc: &OciDescriptor, key: &str, value: Option<&str>) -> OciDescriptor {
    let mut d = desc.clone();
    let a = d.annotations.get_or_insert_with(BTreeMap::new);
    match value {
        Some(v) => a.insert(key.to_owned(), v.to_owned()),
        None => a.remove(key),
    };
    d
}

#[tokio::test]
async fn malformed_annotations_are_refused_with_the_step() {
    let f = fixture();
    let (enc, ..) = f.busybox_layer("enc-rsa");
    let keys = LocalKeys::new().with_private_key(f.key("rsa.pem"));
    let b64 = |s: &str| B64.encode(s);

    let err = layer_key(&with_annotation(&enc, ANNOTATION_PUBOPTS, None), &keys)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DecryptError::MissingAnnotation { annotation } if annotation == ANNOTATION_PUBOPTS),
        "{err}"
    );

    for bad in [
        "!!!",
        &b64("not json"),
        &b64(r#"{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"AAAA"}"#),
    ] {
        let err = layer_key(&with_annotation(&enc, ANNOTATION_PUBOPTS, Some(bad)), &keys)
            .await
            .unwrap_err();
        assert!(
            matches!(err, DecryptError::MalformedAnnotation { annotation, .. } if annotation == ANNOTATION_PUBOPTS),
            "{err}"
        );
    }

    let hmac = B64.encode([0u8; 32]);
    let cbc = b64(&format!(
        r#"{{"cipher":"AES_128_CBC","hmac":"{hmac}","cipheroptions":{{}}}}"#
    ));
    let err = layer_key(
        &with_annotation(&enc, ANNOTATION_PUBOPTS, Some(&cbc)),
        &keys,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, DecryptError::UnsupportedCipher(c) if c == "AES_128_CBC"),
        "{err}"
    );

    for bad in ["%%%", &b64("{"), &b64(r#"{"iv":"AA"}"#)] {
        let err = layer_key(
            &with_annotation(&enc, ANNOTATION_KEYS_JWE, Some(bad)),
            &keys,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, DecryptError::MalformedAnnotation { annotation, .. } if annotation == ANNOTATION_KEYS_JWE),
            "{err}"
        );
    }

    // A JWE whose ciphertext was modified: the key opens the CEK but GCM refuses.
    let jwe_json = B64
        .decode(enc.annotations.as_ref().unwrap()[ANNOTATION_KEYS_JWE].as_bytes())
        .unwrap();
    let mut jwe: serde_json::Value = serde_json::from_slice(&jwe_json).unwrap();
    let ct = jwe["ciphertext"].as_str().unwrap().to_owned();
    let flipped = match ct.strip_prefix('A') {
        Some(rest) => format!("B{rest}"),
        None => format!("A{}", &ct[1..]),
    };
    jwe["ciphertext"] = flipped.into();
    let tampered = B64.encode(jwe.to_string());
    let err = layer_key(
        &with_annotation(&enc, ANNOTATION_KEYS_JWE, Some(&tampered)),
        &keys,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("content authentication failed"),
        "{err}"
    );

    // Only a scheme we do not implement.
    let pgp_only = with_annotation(
        &with_annotation(&enc, ANNOTATION_KEYS_JWE, None),
        "org.opencontainers.image.enc.keys.pgp",
        Some("AAAA"),
    );
    let err = layer_key(&pgp_only, &keys).await.unwrap_err();
    assert!(
        matches!(&err, DecryptError::NoKeyAnnotation { present } if present == &["pgp"]),
        "{err}"
    );

    // Not an encrypted media type.
    let mut plain = enc.clone();
    plain.media_type = "application/vnd.oci.image.layer.v1.tar+gzip".into();
    assert!(matches!(
        layer_key(&plain, &keys).await.unwrap_err(),
        DecryptError::NotEncrypted { .. }
    ));
}

// ---- the CoCo key-provider annotation: vectors made here, as coco_keyprovider does ----

const KID: &str = "kbs:///default/image-kek/test";
const KEK: [u8; 32] = [7u8; 32];
const SYMKEY: [u8; 32] = [0x42; 32];
const NONCE: [u8; 16] = [0x10; 16];

/// Encrypt `plain` the way ocicrypt does; returns (ciphertext, pubopts annotation,
/// private options JSON).
fn ocicrypt_encrypt(plain: &[u8], digest: &str) -> (Vec<u8>, String, Vec<u8>) {
    let mut ct = plain.to_vec();
    ctr::Ctr128BE::<aes::Aes256>::new(&SYMKEY.into(), &NONCE.into()).apply_keystream(&mut ct);
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&SYMKEY).unwrap();
    mac.update(&ct);
    let pubopts = serde_json::json!({
        "cipher": "AES_256_CTR_HMAC_SHA256",
        "hmac": B64.encode(mac.finalize().into_bytes()),
        "cipheroptions": {},
    });
    let privopts = serde_json::json!({
        "symkey": B64.encode(SYMKEY),
        "digest": digest,
        "cipheroptions": {"nonce": B64.encode(NONCE)},
    });
    (
        ct,
        B64.encode(pubopts.to_string()),
        privopts.to_string().into_bytes(),
    )
}

fn packet(privopts: &[u8], kek: &[u8; 32], extra: serde_json::Value) -> String {
    let iv = [9u8; 12];
    let wrapped = aes_gcm::Aes256Gcm::new_from_slice(kek)
        .unwrap()
        .encrypt(&iv.into(), privopts)
        .unwrap();
    let mut p = serde_json::json!({
        "kid": KID,
        "wrapped_data": B64.encode(wrapped),
        "iv": B64.encode(iv),
        "wrap_type": "A256GCM",
    });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    B64.encode(p.to_string())
}

fn provider_layer(
    media_type: &str,
    kek: &[u8; 32],
    extra: serde_json::Value,
) -> (OciDescriptor, Vec<u8>, Vec<u8>) {
    let f = fixture();
    let (_, _, plain_desc, plain) = f.busybox_layer("enc-rsa");
    let (ct, pubopts, privopts) = ocicrypt_encrypt(&plain, &plain_desc.digest);
    let desc = OciDescriptor {
        media_type: media_type.into(),
        digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
        size: ct.len() as i64,
        annotations: Some(BTreeMap::from([
            (ANNOTATION_PUBOPTS.to_owned(), pubopts),
            (
                ANNOTATION_KEYS_PROVIDER_AA.to_owned(),
                packet(&privopts, kek, extra),
            ),
        ])),
        ..Default::default()
    };
    (desc, ct, plain)
}

#[tokio::test]
async fn provider_annotation_with_the_right_kek() {
    for (media_type, plain_type) in [
        (
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+zstd+encrypted",
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+encrypted",
            "application/vnd.oci.image.layer.v1.tar",
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
    ] {
        let (desc, ct, plain) = provider_layer(media_type, &KEK, serde_json::json!({}));
        let keys = LocalKeys::new().with_resource(KID, KEK.to_vec());
        let key = layer_key(&desc, &keys).await.unwrap();
        assert_eq!(key.decrypted_media_type(), plain_type);
        assert_eq!(
            key.unwrapped_by(),
            format!("provider.attestation-agent:{KID}")
        );
        assert!(decrypt_all(&key, &ct).unwrap() == plain);
    }
    // The v2 packet (guest-components confidential-data-hub) with provider `kbs`.
    let (desc, ct, plain) = provider_layer(
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        &KEK,
        serde_json::json!({"version": "0.1.0", "provider": "kbs", "provider_settings": {}, "annotations": {}}),
    );
    let key = layer_key(&desc, &LocalKeys::new().with_resource(KID, KEK.to_vec()))
        .await
        .unwrap();
    assert!(decrypt_all(&key, &ct).unwrap() == plain);
}

#[tokio::test]
async fn provider_annotation_with_a_wrong_or_missing_kek() {
    let (desc, ..) = provider_layer(
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        &KEK,
        serde_json::json!({}),
    );
    let err = layer_key(&desc, &LocalKeys::new().with_resource(KID, vec![8u8; 32]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DecryptError::WrongKek { uri } if uri == KID),
        "{err}"
    );
    let err = layer_key(&desc, &LocalKeys::new()).await.unwrap_err();
    assert!(
        matches!(&err, DecryptError::ResourceNotFound { uri } if uri == KID),
        "{err}"
    );
    let err = layer_key(&desc, &LocalKeys::new().with_resource(KID, vec![7u8; 16]))
        .await
        .unwrap_err();
    assert!(matches!(err, DecryptError::InvalidKeyOptions(_)), "{err}");
}

struct FailingKbs;

#[async_trait::async_trait]
impl KeyProvider for FailingKbs {
    fn private_keys(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
    async fn get_resource(&self, uri: &str) -> Result<Vec<u8>, DecryptError> {
        Err(DecryptError::resource(
            uri,
            "attestation refused by the KBS",
        ))
    }
}

#[tokio::test]
async fn provider_kbs_error_is_kept_as_the_source() {
    let (desc, ..) = provider_layer(
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        &KEK,
        serde_json::json!({}),
    );
    let err = layer_key(&desc, &FailingKbs).await.unwrap_err();
    assert!(
        matches!(&err, DecryptError::Resource { uri, .. } if uri == KID),
        "{err}"
    );
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert_eq!(source, "attestation refused by the KBS");
}

#[tokio::test]
async fn provider_annotation_malformed() {
    let media = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted";
    let keys = LocalKeys::new().with_resource(KID, KEK.to_vec());
    let cases = [
        (serde_json::json!({"kid": "https://evil/key"}), "kbs:///"),
        (serde_json::json!({"wrap_type": "A128KW"}), "wrap_type"),
        (
            serde_json::json!({"iv": B64.encode([1u8; 16])}),
            "iv is 16 bytes",
        ),
        (serde_json::json!({"wrapped_data": "***"}), "wrapped_data"),
        (serde_json::json!({"provider": "aliyun"}), "aliyun"),
        (serde_json::json!({"version": "9"}), "version"),
    ];
    for (extra, needle) in cases {
        let (desc, ..) = provider_layer(media, &KEK, extra.clone());
        let err = layer_key(&desc, &keys).await.unwrap_err();
        assert!(err.to_string().contains(needle), "{extra}: {err}");
    }
    let (desc, ..) = provider_layer(media, &KEK, serde_json::json!({}));
    let err = layer_key(
        &with_annotation(&desc, ANNOTATION_KEYS_PROVIDER_AA, Some(&B64.encode("[]"))),
        &keys,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, DecryptError::MalformedAnnotation { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn jwe_without_private_keys_falls_back_to_the_provider() {
    // Both schemes on one layer (ocicrypt writes every configured wrapper): a guest
    // with no private key unwraps through the KBS; a wrong KEK is still reported.
    let f = fixture();
    let (enc, ..) = f.busybox_layer("enc-rsa");
    let (desc, ct, plain) = provider_layer(
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        &KEK,
        serde_json::json!({}),
    );
    let both = with_annotation(
        &desc,
        ANNOTATION_KEYS_JWE,
        Some(&enc.annotations.as_ref().unwrap()[ANNOTATION_KEYS_JWE]),
    );
    let key = layer_key(&both, &LocalKeys::new().with_resource(KID, KEK.to_vec()))
        .await
        .unwrap();
    assert!(decrypt_all(&key, &ct).unwrap() == plain);
    // A private key that does not match the JWE also falls through to the provider.
    let keys = LocalKeys::new()
        .with_private_key(f.key("other-rsa.pem"))
        .with_resource(KID, KEK.to_vec());
    assert!(layer_key(&both, &keys).await.is_ok());
}
