//! Private keys for JWE recipients: PEM (PKCS#1, SEC1, PKCS#8), DER, or JWK — the forms
//! ocicrypt's `ParsePrivateKey` accepts, minus password-protected ones.

use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::DecodePrivateKey as _;
use serde_json::Value;
use zeroize::Zeroizing;

/// A parsed private key.
pub(super) enum PrivateKey {
    Rsa(Box<rsa::RsaPrivateKey>),
    P256(p256::SecretKey),
    P384(p384::SecretKey),
}

impl PrivateKey {
    /// Parse PEM, DER or JWK bytes; the error says why none fits.
    pub(super) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let trimmed = trim_ascii(bytes);
        if trimmed.starts_with(b"{") {
            return Self::from_jwk(trimmed);
        }
        if let Ok(text) = std::str::from_utf8(trimmed) {
            if text.contains("-----BEGIN ") {
                return Self::from_pem(text);
            }
        }
        Self::from_der(trimmed)
    }

    /// `RSA-2048`, `EC P-256`, ...
    pub(super) fn kind(&self) -> String {
        match self {
            PrivateKey::Rsa(k) => {
                use rsa::traits::PublicKeyParts as _;
                format!("RSA-{}", k.size() * 8)
            }
            PrivateKey::P256(_) => "EC P-256".into(),
            PrivateKey::P384(_) => "EC P-384".into(),
        }
    }

    /// ECDH with the ephemeral public key `epk` (a JWK): the shared secret's x
    /// coordinate, or `None` if `epk` is on another curve than this key (or this key is
    /// not an EC key).
    pub(super) fn ecdh(
        &self,
        epk: &Value,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, super::DecryptError> {
        let crv = epk.get("crv").and_then(Value::as_str);
        let bad_epk = |e: &dyn std::fmt::Display| {
            super::DecryptError::malformed(
                super::ANNOTATION_KEYS_JWE,
                format!("ECDH-ES `epk` is not a valid public key: {e}"),
            )
        };
        match (self, crv) {
            (PrivateKey::P256(sk), Some("P-256")) => {
                // from_jwk checks that the point is on the curve (no invalid-curve attack).
                let pk =
                    p256::PublicKey::from_jwk_str(&epk.to_string()).map_err(|e| bad_epk(&e))?;
                let shared = p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                Ok(Some(Zeroizing::new(shared.raw_secret_bytes().to_vec())))
            }
            (PrivateKey::P384(sk), Some("P-384")) => {
                let pk =
                    p384::PublicKey::from_jwk_str(&epk.to_string()).map_err(|e| bad_epk(&e))?;
                let shared = p384::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                Ok(Some(Zeroizing::new(shared.raw_secret_bytes().to_vec())))
            }
            (_, Some("P-256" | "P-384")) => Ok(None),
            (_, other) => Err(super::DecryptError::UnsupportedAlgorithm {
                what: "ECDH-ES curve",
                alg: other.unwrap_or("(none)").to_owned(),
            }),
        }
    }

    fn from_pem(text: &str) -> Result<Self, String> {
        // A file may hold several blocks (e.g. `EC PARAMETERS` before the key).
        let mut labels = Vec::new();
        for (label, block) in pem_blocks(text) {
            let key = match label {
                "RSA PRIVATE KEY" => rsa::RsaPrivateKey::from_pkcs1_pem(block)
                    .map(|k| PrivateKey::Rsa(Box::new(k)))
                    .map_err(|e| format!("PKCS#1 RSA key: {e}")),
                "EC PRIVATE KEY" => p256::SecretKey::from_sec1_pem(block)
                    .map(PrivateKey::P256)
                    .or_else(|_| p384::SecretKey::from_sec1_pem(block).map(PrivateKey::P384))
                    .map_err(|e| format!("SEC1 EC key (P-256 or P-384 only): {e}")),
                "PRIVATE KEY" => rsa::RsaPrivateKey::from_pkcs8_pem(block)
                    .map(|k| PrivateKey::Rsa(Box::new(k)))
                    .or_else(|_| p256::SecretKey::from_pkcs8_pem(block).map(PrivateKey::P256))
                    .or_else(|_| p384::SecretKey::from_pkcs8_pem(block).map(PrivateKey::P384))
                    .map_err(|e| format!("PKCS#8 key (RSA, P-256 or P-384 only): {e}")),
                "ENCRYPTED PRIVATE KEY" => {
                    Err("password-protected keys are not supported".to_owned())
                }
                other => {
                    labels.push(other.to_owned());
                    continue;
                }
            };
            return key;
        }
        Err(format!("no private key PEM block (found {labels:?})"))
    }

    fn from_der(der: &[u8]) -> Result<Self, String> {
        if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_der(der) {
            return Ok(PrivateKey::Rsa(Box::new(k)));
        }
        if let Ok(k) = rsa::RsaPrivateKey::from_pkcs1_der(der) {
            return Ok(PrivateKey::Rsa(Box::new(k)));
        }
        if let Ok(k) = p256::SecretKey::from_pkcs8_der(der) {
            return Ok(PrivateKey::P256(k));
        }
        if let Ok(k) = p384::SecretKey::from_pkcs8_der(der) {
            return Ok(PrivateKey::P384(k));
        }
        if let Ok(k) = p256::SecretKey::from_sec1_der(der) {
            return Ok(PrivateKey::P256(k));
        }
        if let Ok(k) = p384::SecretKey::from_sec1_der(der) {
            return Ok(PrivateKey::P384(k));
        }
        Err("not a PEM, JWK or DER (PKCS#8, PKCS#1, SEC1) private key".to_owned())
    }

    fn from_jwk(json: &[u8]) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(json).map_err(|e| format!("JWK JSON: {e}"))?;
        match v.get("kty").and_then(Value::as_str) {
            Some("EC") => {
                let text = v.to_string();
                match v.get("crv").and_then(Value::as_str) {
                    Some("P-256") => p256::SecretKey::from_jwk_str(&text)
                        .map(PrivateKey::P256)
                        .map_err(|e| format!("EC P-256 JWK: {e}")),
                    Some("P-384") => p384::SecretKey::from_jwk_str(&text)
                        .map(PrivateKey::P384)
                        .map_err(|e| format!("EC P-384 JWK: {e}")),
                    other => Err(format!(
                        "EC JWK curve {other:?} not supported (P-256, P-384)"
                    )),
                }
            }
            Some("RSA") => {
                let int = |name: &str| -> Result<rsa::BigUint, String> {
                    let s = v
                        .get(name)
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("RSA JWK without `{name}`"))?;
                    let b = base64::Engine::decode(&super::jwe::B64URL, s.as_bytes())
                        .map_err(|e| format!("RSA JWK `{name}`: {e}"))?;
                    Ok(rsa::BigUint::from_bytes_be(&b))
                };
                let primes = match (int("p"), int("q")) {
                    (Ok(p), Ok(q)) => vec![p, q],
                    _ => Vec::new(),
                };
                rsa::RsaPrivateKey::from_components(int("n")?, int("e")?, int("d")?, primes)
                    .map(|k| PrivateKey::Rsa(Box::new(k)))
                    .map_err(|e| format!("RSA JWK: {e}"))
            }
            other => Err(format!(
                "JWK kty {other:?} is not a private key type we use (RSA, EC)"
            )),
        }
    }
}

/// `(label, whole block text)` for each PEM block in `text`.
fn pem_blocks(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let Some(label_end) = after.find("-----") else {
            break;
        };
        let label = &after[..label_end];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = rest[start..].find(&end_marker) else {
            break;
        };
        let block_end = start + end + end_marker.len();
        out.push((label, &rest[start..block_end]));
        rest = &rest[block_end..];
    }
    out
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or_default()
}
