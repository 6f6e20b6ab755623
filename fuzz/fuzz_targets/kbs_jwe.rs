//! The KBS resource response: a flattened JWE addressed to the guest's TEE key, parsed
//! and opened with fixed keys (`kbs::server::jwe::TeeKeyPair::decrypt`, what the
//! attestation agent runs on `GET /resource` answers), and the KBS's encrypter run on
//! a fuzzed `tee-pubkey` (the key a guest hands the KBS in `/attest`).
//!
//! Input: first byte picks:
//! * 0: the rest is the JWE JSON;
//! * 1: encrypt the rest to the fixed EC key, decrypt, and expect the plaintext back;
//! * 2: a valid JWE of a fixed secret whose protected header is replaced by the rest
//!   (base64url-encoded by the harness), so header parsing meets a valid key;
//! * 3: the rest is a `tee-pubkey` JWK (JSON) to encrypt to.
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use kbs::server::jwe::{encrypt, FlattenedJwe, TeeKeyPair};
use kbs::server::kbs_types::TeePubKey;
use libfuzzer_sys::fuzz_target;

fn ec() -> &'static TeeKeyPair {
    static K: OnceLock<TeeKeyPair> = OnceLock::new();
    K.get_or_init(|| TeeKeyPair::Ec(p256::SecretKey::from_slice(&[7; 32]).unwrap_or_else(|e| panic!("{e}"))))
}

fn rsa() -> &'static TeeKeyPair {
    static K: OnceLock<TeeKeyPair> = OnceLock::new();
    K.get_or_init(|| TeeKeyPair::generate_rsa(2048).unwrap_or_else(|e| panic!("{e}")))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 4 {
        0 => {
            let Ok(jwe) = serde_json::from_slice::<FlattenedJwe>(rest) else { return };
            let _ = ec().decrypt(&jwe);
            let _ = rsa().decrypt(&jwe);
        }
        1 => {
            let pk = ec().public_jwk().unwrap_or_else(|e| panic!("{e}"));
            let jwe = encrypt(&pk, rest).unwrap_or_else(|e| panic!("encrypt: {e}"));
            assert_eq!(ec().decrypt(&jwe).ok().as_deref(), Some(rest), "JWE round trip");
        }
        2 => {
            let pk = ec().public_jwk().unwrap_or_else(|e| panic!("{e}"));
            let mut jwe = encrypt(&pk, b"resource").unwrap_or_else(|e| panic!("encrypt: {e}"));
            jwe.protected = B64URL.encode(rest);
            let _ = ec().decrypt(&jwe);
        }
        _ => {
            let Ok(pk) = serde_json::from_slice::<TeePubKey>(rest) else { return };
            if let Ok(jwe) = encrypt(&pk, b"resource") {
                let _ = serde_json::to_vec(&jwe);
            }
        }
    }
});
