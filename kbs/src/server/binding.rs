//! The RCAR report_data binding: what the guest puts in REPORT_DATA / the TDX report data
//! so the evidence is bound to the KBS nonce and the guest's TEE key.
//!
//! `sha384(JCS({"additional-evidence": <string>, "nonce": <nonce>, "tee-pubkey": <JWK>}))`
//! zero-padded to 64 bytes, where JCS is the RFC 8785 canonical form (sorted keys,
//! compact). The key `additional-evidence` is always present.

use kbs_types::TeePubKey;
use sha2::{Digest, Sha384};

/// The one protocol version this KBS and its client speak.
pub const PROTOCOL_VERSION: &str = "0.4.0";

/// Why the binding cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// The runtime data does not serialise canonically.
    #[error("cannot canonicalise the runtime data")]
    Canonical(#[source] serde_json::Error),
}

/// The RFC 8785 canonical JSON of the runtime data that REPORT_DATA binds.
pub fn canonical_runtime_data(
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> Result<String, BindingError> {
    let v = serde_json::json!({
        "additional-evidence": additional_evidence,
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
    });
    serde_json_canonicalizer::to_string(&v).map_err(BindingError::Canonical)
}

/// The 64-byte REPORT_DATA value: sha384 of [`canonical_runtime_data`], zero-padded.
pub fn report_data(
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> Result<[u8; 64], BindingError> {
    let json = canonical_runtime_data(nonce, tee_pubkey, additional_evidence)?;
    let digest = Sha384::digest(json.as_bytes());
    let mut out = [0u8; 64];
    out[..digest.len()].copy_from_slice(&digest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn binding_matches_hand_written_canonical_json() {
        let key = TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "xx".into(),
            y: "yy".into(),
        };
        let json = canonical_runtime_data("bm9uY2U=", &key, "").unwrap();
        let hand = r#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"xx","y":"yy"}}"#;
        assert_eq!(json, hand);
        let rd = report_data("bm9uY2U=", &key, "").unwrap();
        let want: [u8; 48] = Sha384::digest(hand.as_bytes()).into();
        assert_eq!(rd[..48], want);
        assert_eq!(rd[48..], [0u8; 16]);
    }

    #[test]
    fn rsa_key_and_escapes() {
        let key = TeePubKey::RSA {
            alg: "RSA-OAEP-256".into(),
            k_mod: "nn".into(),
            k_exp: "AQAB".into(),
        };
        let json = canonical_runtime_data("n", &key, "a\"\n").unwrap();
        assert_eq!(
            json,
            r#"{"additional-evidence":"a\"\n","nonce":"n","tee-pubkey":{"alg":"RSA-OAEP-256","e":"AQAB","kty":"RSA","n":"nn"}}"#
        );
    }
}
