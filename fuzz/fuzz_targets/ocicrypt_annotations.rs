//! ocicrypt layer decryption in image-rs: the annotations of an encrypted layer
//! descriptor (public options, JWE recipients, the CoCo key-provider packet) are parsed
//! and the layer key unwrapped with fixed keys (an EC P-256 private key for JWE
//! recipients, a 32-byte KEK at `kbs:///default/key/1` for the key provider), then a
//! ciphertext is decrypted and its HMAC checked at end of stream.
//!
//! Input: first byte picks how the annotations are built:
//! * 0: the rest is a JSON object of annotations, used as is;
//! * 1: `pubopts JSON SEP private-options JSON SEP ciphertext`: the harness wraps the
//!   private options for the key provider (AES-256-GCM under the KEK), so the fuzzer
//!   reaches the unwrapped-options parser and the layer cipher;
//! * 2: the same, but the private options are wrapped as a JWE recipient
//!   (ECDH-ES+A256KW, A256GCM, by the KBS's encrypter) for the EC key.
#![no_main]

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::OnceLock;

use aes_gcm::aead::{Aead, KeyInit};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use image_rs::decrypt::{
    layer_key, LocalKeys, ANNOTATION_KEYS_JWE, ANNOTATION_KEYS_PROVIDER_AA, ANNOTATION_PUBOPTS,
};
use kata_cc_fuzz::{runtime, split_all, SEP};
use kbs::server::jwe::TeeKeyPair;
use libfuzzer_sys::fuzz_target;
use oci_client::manifest::OciDescriptor;
use p256::pkcs8::EncodePrivateKey as _;

const KEK: [u8; 32] = [0x42; 32];
const KID: &str = "kbs:///default/key/1";
const EC_SCALAR: [u8; 32] = [7; 32];

struct Keys {
    local: LocalKeys,
    tee: TeeKeyPair,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        let sk = p256::SecretKey::from_slice(&EC_SCALAR).unwrap_or_else(|e| panic!("{e}"));
        let pem = sk
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .unwrap_or_else(|e| panic!("{e}"));
        Keys {
            local: LocalKeys::new()
                .with_private_key(pem.as_bytes().to_vec())
                .with_resource(KID, KEK.to_vec()),
            tee: TeeKeyPair::Ec(sk),
        }
    })
}

fn provider_packet(private_opts: &[u8]) -> String {
    let iv = [9u8; 12];
    let cipher = aes_gcm::Aes256Gcm::new((&KEK).into());
    let wrapped = cipher
        .encrypt((&iv).into(), private_opts)
        .unwrap_or_else(|e| panic!("{e}"));
    let packet = serde_json::json!({
        "kid": KID, "wrapped_data": B64.encode(wrapped), "iv": B64.encode(iv), "wrap_type": "A256GCM",
    });
    B64.encode(packet.to_string())
}

fn jwe_recipient(private_opts: &[u8]) -> Option<String> {
    let jwk = keys().tee.public_jwk().ok()?;
    let jwe = kbs::server::jwe::encrypt(&jwk, private_opts).ok()?;
    Some(B64.encode(serde_json::to_vec(&jwe).ok()?))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let mut ciphertext: &[u8] = &[];
    let annotations: BTreeMap<String, String> = match sel % 3 {
        0 => match serde_json::from_slice(rest) {
            Ok(a) => a,
            Err(_) => return,
        },
        mode => {
            let parts = split_all(rest, SEP);
            let (pubopts, private) = (parts[0], parts.get(1).copied().unwrap_or_default());
            ciphertext = parts.get(2).copied().unwrap_or_default();
            let mut a = BTreeMap::from([(ANNOTATION_PUBOPTS.to_owned(), B64.encode(pubopts))]);
            if mode == 1 {
                a.insert(ANNOTATION_KEYS_PROVIDER_AA.to_owned(), provider_packet(private));
            } else if let Some(r) = jwe_recipient(private) {
                a.insert(ANNOTATION_KEYS_JWE.to_owned(), r);
            }
            a
        }
    };
    let desc = OciDescriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip+encrypted".into(),
        digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
        size: ciphertext.len() as i64,
        urls: None,
        annotations: Some(annotations),
        artifact_type: None,
    };
    let Ok(key) = runtime().block_on(layer_key(&desc, &keys().local)) else { return };
    let _ = key.decrypted_media_type();
    let mut plain = Vec::new();
    let _ = key.reader(ciphertext).read_to_end(&mut plain);
});
