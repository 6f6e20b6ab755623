//! The JWE (RFC 7516 JSON serialization) recipients of `enc.keys.jwe`.
//!
//! ocicrypt (go-jose) writes one JWE per `--encryption-key jwe:` run, with content
//! encryption `A256GCM` and one recipient per public key: `RSA-OAEP` for RSA keys,
//! `ECDH-ES+A256KW` for EC keys (a JWK public key may ask for `RSA-OAEP-256` or
//! `ECDH-ES+A128KW`/`A192KW`). A single recipient is flattened into the top level with
//! its header merged into the protected header.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Digest as _;
use zeroize::Zeroizing;

use super::keys::PrivateKey;
use super::{DecryptError, ANNOTATION_KEYS_JWE, B64};

/// base64url, padding optional (go-jose writes none).
pub(super) const B64URL: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

#[derive(Deserialize)]
struct RawJwe {
    protected: Option<String>,
    unprotected: Option<Map<String, Value>>,
    header: Option<Map<String, Value>>,
    encrypted_key: Option<String>,
    recipients: Option<Vec<RawRecipient>>,
    aad: Option<String>,
    iv: String,
    ciphertext: String,
    tag: String,
}

#[derive(Deserialize)]
struct RawRecipient {
    header: Option<Map<String, Value>>,
    encrypted_key: Option<String>,
}

/// One recipient: merged header (protected, shared unprotected, per recipient) and its
/// encrypted CEK.
struct Recipient {
    header: Map<String, Value>,
    encrypted_key: Vec<u8>,
}

/// One parsed JWE.
pub(super) struct Jwe {
    recipients: Vec<Recipient>,
    /// The additional authenticated data: ASCII of the protected header as serialized
    /// (plus `.` and the `aad` member if present).
    aad: Vec<u8>,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

fn malformed(reason: impl std::fmt::Display) -> DecryptError {
    DecryptError::malformed(ANNOTATION_KEYS_JWE, reason)
}

fn b64url(field: &str, s: &str) -> Result<Vec<u8>, DecryptError> {
    B64URL
        .decode(s.as_bytes())
        .map_err(|e| malformed(format!("JWE {field}: base64url: {e}")))
}

/// Parse the annotation value: comma-separated base64 of JWE JSON serializations.
pub(super) fn parse_annotation(value: &str) -> Result<Vec<Jwe>, DecryptError> {
    value
        .split(',')
        .map(|part| {
            let json = B64
                .decode(part.trim().as_bytes())
                .map_err(|e| malformed(format!("base64: {e}")))?;
            Jwe::parse(&json)
        })
        .collect()
}

impl Jwe {
    fn parse(json: &[u8]) -> Result<Self, DecryptError> {
        let raw: RawJwe =
            serde_json::from_slice(json).map_err(|e| malformed(format!("JWE JSON: {e}")))?;
        let mut shared = Map::new();
        let mut aad = Vec::new();
        if let Some(p) = &raw.protected {
            let bytes = b64url("protected", p)?;
            let h: Map<String, Value> = serde_json::from_slice(&bytes)
                .map_err(|e| malformed(format!("JWE protected header: {e}")))?;
            shared.extend(h);
            aad.extend_from_slice(p.as_bytes());
        }
        if let Some(a) = &raw.aad {
            aad.push(b'.');
            aad.extend_from_slice(a.as_bytes());
        }
        if let Some(u) = raw.unprotected {
            merge(&mut shared, u)?;
        }
        let mut recipients = Vec::new();
        match raw.recipients {
            Some(list) if !list.is_empty() => {
                // go-jose also writes the first recipient's key at the top level; like
                // go-jose's parser, the flattened members are ignored when
                // `recipients` is present.
                for r in list {
                    let mut header = shared.clone();
                    if let Some(h) = r.header {
                        merge(&mut header, h)?;
                    }
                    let encrypted_key = match r.encrypted_key {
                        Some(k) => b64url("encrypted_key", &k)?,
                        None => Vec::new(),
                    };
                    recipients.push(Recipient {
                        header,
                        encrypted_key,
                    });
                }
            }
            _ => {
                let mut header = shared;
                if let Some(h) = raw.header {
                    merge(&mut header, h)?;
                }
                let encrypted_key = match raw.encrypted_key {
                    Some(k) => b64url("encrypted_key", &k)?,
                    None => Vec::new(),
                };
                recipients.push(Recipient {
                    header,
                    encrypted_key,
                });
            }
        }
        for r in &recipients {
            if r.header.contains_key("crit") {
                return Err(DecryptError::UnsupportedAlgorithm {
                    what: "JWE critical header",
                    alg: r
                        .header
                        .get("crit")
                        .map(Value::to_string)
                        .unwrap_or_default(),
                });
            }
            if let Some(zip) = r.header.get("zip") {
                return Err(DecryptError::UnsupportedAlgorithm {
                    what: "JWE compression",
                    alg: zip.to_string(),
                });
            }
        }
        Ok(Jwe {
            recipients,
            aad,
            iv: b64url("iv", &raw.iv)?,
            ciphertext: b64url("ciphertext", &raw.ciphertext)?,
            tag: b64url("tag", &raw.tag)?,
        })
    }

    /// Short names of the recipients, e.g. `RSA-OAEP`, `ECDH-ES+A256KW/P-256`.
    pub(super) fn recipient_kinds(&self) -> Vec<String> {
        self.recipients
            .iter()
            .map(|r| {
                let alg = str_field(&r.header, "alg").unwrap_or("?");
                match r
                    .header
                    .get("epk")
                    .and_then(|e| e.get("crv"))
                    .and_then(Value::as_str)
                {
                    Some(crv) => format!("{alg}/{crv}"),
                    None => alg.to_owned(),
                }
            })
            .collect()
    }

    /// Try `key` on every recipient; on success the plaintext (ocicrypt private options)
    /// and the key algorithm that opened it.
    pub(super) fn decrypt(
        &self,
        key: &PrivateKey,
    ) -> Result<(Zeroizing<Vec<u8>>, String), DecryptError> {
        let mut last = None;
        for r in &self.recipients {
            let alg = str_field(&r.header, "alg").unwrap_or_default().to_owned();
            match self.decrypt_recipient(r, key) {
                Ok(Some(plain)) => return Ok((plain, alg)),
                Ok(None) => {}
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| DecryptError::UnsupportedAlgorithm {
            what: "JWE recipient for this key type",
            alg: format!(
                "{} key vs [{}]",
                key.kind(),
                self.recipient_kinds().join(", ")
            ),
        }))
    }

    /// `Ok(None)`: this recipient is not for this kind of key.
    fn decrypt_recipient(
        &self,
        r: &Recipient,
        key: &PrivateKey,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, DecryptError> {
        let alg =
            str_field(&r.header, "alg").ok_or_else(|| malformed("JWE recipient without `alg`"))?;
        let enc = str_field(&r.header, "enc").ok_or_else(|| malformed("JWE without `enc`"))?;
        let cek_len = match enc {
            "A128GCM" => 16,
            "A192GCM" => 24,
            "A256GCM" => 32,
            other => {
                return Err(DecryptError::UnsupportedAlgorithm {
                    what: "JWE content encryption",
                    alg: other.to_owned(),
                })
            }
        };
        let cek = match (alg, key) {
            ("RSA-OAEP", PrivateKey::Rsa(k)) => Zeroizing::new(
                k.decrypt_blinded(
                    &mut rand_core::OsRng,
                    rsa::Oaep::new::<sha1::Sha1>(),
                    &r.encrypted_key,
                )
                .map_err(|_| wrong_key(alg))?,
            ),
            ("RSA-OAEP-256", PrivateKey::Rsa(k)) => Zeroizing::new(
                k.decrypt_blinded(
                    &mut rand_core::OsRng,
                    rsa::Oaep::new::<sha2::Sha256>(),
                    &r.encrypted_key,
                )
                .map_err(|_| wrong_key(alg))?,
            ),
            ("RSA-OAEP" | "RSA-OAEP-256", _) => return Ok(None),
            ("ECDH-ES+A128KW" | "ECDH-ES+A192KW" | "ECDH-ES+A256KW", _) => {
                let epk = r
                    .header
                    .get("epk")
                    .ok_or_else(|| malformed("ECDH-ES recipient without `epk`"))?;
                let Some(z) = key.ecdh(epk)? else {
                    return Ok(None);
                };
                let kw_len = match alg {
                    "ECDH-ES+A128KW" => 16,
                    "ECDH-ES+A192KW" => 24,
                    _ => 32,
                };
                let apu = match str_field(&r.header, "apu") {
                    Some(s) => b64url("apu", s)?,
                    None => Vec::new(),
                };
                let apv = match str_field(&r.header, "apv") {
                    Some(s) => b64url("apv", s)?,
                    None => Vec::new(),
                };
                let kek = concat_kdf(&z, alg, &apu, &apv, kw_len);
                aes_kw_unwrap(&kek, &r.encrypted_key).ok_or_else(|| wrong_key(alg))?
            }
            (other, _) => {
                return Err(DecryptError::UnsupportedAlgorithm {
                    what: "JWE key algorithm",
                    alg: other.to_owned(),
                })
            }
        };
        if cek.len() != cek_len {
            return Err(wrong_key(alg));
        }
        if self.iv.len() != 12 || self.tag.len() != 16 {
            return Err(malformed("JWE AES-GCM iv must be 12 bytes and tag 16"));
        }
        let mut msg = Vec::with_capacity(self.ciphertext.len() + self.tag.len());
        msg.extend_from_slice(&self.ciphertext);
        msg.extend_from_slice(&self.tag);
        let payload = Payload {
            msg: &msg,
            aad: &self.aad,
        };
        let iv: [u8; 12] = self
            .iv
            .as_slice()
            .try_into()
            .map_err(|_| malformed("JWE AES-GCM iv must be 12 bytes"))?;
        let nonce = &iv.into();
        let plain = match cek_len {
            16 => aes_gcm::Aes128Gcm::new_from_slice(&cek)
                .map_err(|_| wrong_key(alg))?
                .decrypt(nonce, payload),
            24 => aes_gcm::AesGcm::<aes::Aes192, aes_gcm::aead::consts::U12>::new_from_slice(&cek)
                .map_err(|_| wrong_key(alg))?
                .decrypt(nonce, payload),
            _ => aes_gcm::Aes256Gcm::new_from_slice(&cek)
                .map_err(|_| wrong_key(alg))?
                .decrypt(nonce, payload),
        }
        .map_err(|_| {
            malformed("JWE content authentication failed (ciphertext, tag or header modified)")
        })?;
        Ok(Some(Zeroizing::new(plain)))
    }
}

fn wrong_key(alg: &str) -> DecryptError {
    DecryptError::RecipientMismatch {
        alg: alg.to_owned(),
    }
}

fn str_field<'a>(h: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    h.get(k).and_then(Value::as_str)
}

/// RFC 7516 §7.2.1: header members must be disjoint across the three places.
fn merge(into: &mut Map<String, Value>, from: Map<String, Value>) -> Result<(), DecryptError> {
    for (k, v) in from {
        if into.contains_key(&k) {
            return Err(malformed(format!("JWE header member {k:?} given twice")));
        }
        into.insert(k, v);
    }
    Ok(())
}

/// NIST SP 800-56A Concat KDF with SHA-256 as profiled by RFC 7518 §4.6.2.
fn concat_kdf(z: &[u8], alg: &str, apu: &[u8], apv: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + 32));
    let mut counter: u32 = 1;
    while out.len() < len {
        let mut h = sha2::Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        for part in [alg.as_bytes(), apu, apv] {
            // Lengths here are tiny (header fields); saturate rather than wrap.
            h.update(u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            h.update(part);
        }
        h.update(u32::try_from(len * 8).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

/// RFC 3394 AES key unwrap with a 128/192/256-bit KEK.
fn aes_kw_unwrap(kek: &[u8], wrapped: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if wrapped.len() < 24 || !wrapped.len().is_multiple_of(8) {
        return None;
    }
    let mut out = Zeroizing::new(vec![0u8; wrapped.len() - 8]);
    let ok = match kek.len() {
        16 => aes_kw::KekAes128::try_from(kek)
            .ok()?
            .unwrap(wrapped, &mut out)
            .is_ok(),
        24 => aes_kw::KekAes192::try_from(kek)
            .ok()?
            .unwrap(wrapped, &mut out)
            .is_ok(),
        32 => aes_kw::KekAes256::try_from(kek)
            .ok()?
            .unwrap(wrapped, &mut out)
            .is_ok(),
        _ => false,
    };
    ok.then_some(out)
}
