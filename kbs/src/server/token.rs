//! The attestation token: a compact JWT signed ES256 by the KBS's own P-256 key.
//!
//! Claims: `iss` (`kata-cc-kbs`), `iat`, `exp`, `tee-pubkey` (the session's JWK) and
//! `claims` (the verifier's [`Claims`](crate::Claims) as JSON).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::OsRng;

/// Issuer claim of every token.
pub const ISSUER: &str = "kata-cc-kbs";

const HEADER: &str = r#"{"alg":"ES256","typ":"JWT"}"#;

/// Why a token is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts with a JSON header and payload.
    #[error("malformed token")]
    Malformed,
    /// Not signed by this KBS.
    #[error("token signature invalid")]
    Signature,
    /// Past `exp`.
    #[error("token expired")]
    Expired,
}

/// Signs and checks attestation tokens.
#[derive(Clone)]
pub struct TokenSigner {
    key: SigningKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    /// A fresh signing key (tokens do not survive a restart).
    pub fn generate() -> Self {
        Self {
            key: SigningKey::random(&mut OsRng),
        }
    }

    /// The public key that verifies this KBS's tokens.
    pub fn verifying_key(&self) -> VerifyingKey {
        *self.key.verifying_key()
    }

    /// Signs `payload` (a JSON object) as a compact JWT.
    pub fn sign(&self, payload: &serde_json::Value) -> String {
        let body = format!(
            "{}.{}",
            B64URL.encode(HEADER),
            B64URL.encode(payload.to_string())
        );
        let sig: Signature = self.key.sign(body.as_bytes());
        format!("{body}.{}", B64URL.encode(sig.to_bytes()))
    }

    /// Checks signature and `exp` (seconds since the epoch) and returns the payload.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<serde_json::Value, TokenError> {
        let mut parts = token.rsplitn(2, '.');
        let (Some(sig), Some(body)) = (parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let (header, payload) = body.split_once('.').ok_or(TokenError::Malformed)?;
        let header = B64URL.decode(header).map_err(|_| TokenError::Malformed)?;
        if header != HEADER.as_bytes() {
            return Err(TokenError::Malformed);
        }
        let sig = B64URL.decode(sig).map_err(|_| TokenError::Malformed)?;
        let sig = Signature::from_slice(&sig).map_err(|_| TokenError::Malformed)?;
        self.key
            .verifying_key()
            .verify(body.as_bytes(), &sig)
            .map_err(|_| TokenError::Signature)?;
        let payload = B64URL.decode(payload).map_err(|_| TokenError::Malformed)?;
        let payload: serde_json::Value =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        let exp = payload["exp"].as_u64().ok_or(TokenError::Malformed)?;
        if now_secs >= exp {
            return Err(TokenError::Expired);
        }
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sign_verify_expire_tamper() {
        let s = TokenSigner::generate();
        let t = s.sign(&serde_json::json!({"exp": 100, "a": 1}));
        assert_eq!(s.verify(&t, 99).unwrap()["a"], 1);
        assert_eq!(s.verify(&t, 100), Err(TokenError::Expired));
        let other = TokenSigner::generate();
        assert_eq!(other.verify(&t, 0), Err(TokenError::Signature));
        let (b, sig) = t.rsplit_once('.').unwrap();
        let forged = format!("{}x.{sig}", b);
        assert!(s.verify(&forged, 0).is_err());
    }
}
