//! The Confidential Containers key-provider annotation
//! (`org.opencontainers.image.enc.keys.provider.attestation-agent`), as written by
//! guest-components' `coco_keyprovider` and read by its confidential-data-hub:
//! base64 of JSON `{"kid":"kbs:///repo/type/tag","wrapped_data":"<b64>","iv":"<b64>",
//! "wrap_type":"A256GCM"}`. The v2 form adds `version` (`0.1.0`), `provider` (`kbs`),
//! `provider_settings` and `annotations`; only the `kbs` provider is supported here.
//! The KEK is the raw 32-byte resource at `kid`; `wrapped_data` is the ocicrypt private
//! options encrypted under it: AES-256-GCM (12-byte iv, 16-byte tag appended) or, for
//! `A256CTR`, AES-256-CTR with a 16-byte iv (no authentication; the layer HMAC under the
//! unwrapped key still protects the blob).

use aes::cipher::{KeyIvInit, StreamCipher};
use aes_gcm::aead::{Aead, KeyInit};
use base64::Engine as _;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{DecryptError, KeyProvider, ANNOTATION_KEYS_PROVIDER_AA, B64};

#[derive(Deserialize)]
struct RawPacket {
    #[serde(default)]
    version: Option<String>,
    kid: String,
    wrapped_data: String,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    iv: Option<String>,
    #[serde(default)]
    wrap_type: Option<String>,
}

pub(super) struct AnnotationPacket {
    pub(super) kid: String,
    wrapped_data: Vec<u8>,
    iv: Vec<u8>,
    wrap_type: WrapType,
}

enum WrapType {
    A256Gcm,
    A256Ctr,
}

fn malformed(reason: impl std::fmt::Display) -> DecryptError {
    DecryptError::malformed(ANNOTATION_KEYS_PROVIDER_AA, reason)
}

impl AnnotationPacket {
    pub(super) fn parse(value: &str) -> Result<Self, DecryptError> {
        let json = B64
            .decode(value.trim().as_bytes())
            .map_err(|e| malformed(format!("base64: {e}")))?;
        let raw: RawPacket =
            serde_json::from_slice(&json).map_err(|e| malformed(format!("JSON: {e}")))?;
        if let Some(v) = raw.version.as_deref() {
            if v != "0.1.0" {
                return Err(DecryptError::UnsupportedAlgorithm {
                    what: "key-provider annotation version",
                    alg: v.to_owned(),
                });
            }
        }
        if let Some(p) = raw.provider.as_deref() {
            if p != "kbs" {
                return Err(DecryptError::UnsupportedAlgorithm {
                    what: "key-provider KMS (only `kbs`)",
                    alg: p.to_owned(),
                });
            }
        }
        if !raw.kid.starts_with("kbs:///") || raw.kid.len() <= "kbs:///".len() {
            return Err(malformed(format!(
                "kid {:?} is not a kbs:///repo/type/tag resource URI",
                raw.kid
            )));
        }
        let wrap_type = match raw.wrap_type.as_deref() {
            Some("A256GCM") => WrapType::A256Gcm,
            Some("A256CTR") => WrapType::A256Ctr,
            Some(other) => {
                return Err(DecryptError::UnsupportedAlgorithm {
                    what: "key-provider wrap_type",
                    alg: other.to_owned(),
                })
            }
            None => return Err(malformed("no wrap_type")),
        };
        let iv = raw.iv.ok_or_else(|| malformed("no iv"))?;
        let iv = B64
            .decode(iv.as_bytes())
            .map_err(|e| malformed(format!("iv: base64: {e}")))?;
        let wrapped_data = B64
            .decode(raw.wrapped_data.as_bytes())
            .map_err(|e| malformed(format!("wrapped_data: base64: {e}")))?;
        let iv_len = match wrap_type {
            WrapType::A256Gcm => 12,
            WrapType::A256Ctr => 16,
        };
        if iv.len() != iv_len {
            return Err(malformed(format!(
                "iv is {} bytes, {} needs {iv_len}",
                iv.len(),
                raw.wrap_type.as_deref().unwrap_or_default()
            )));
        }
        Ok(AnnotationPacket {
            kid: raw.kid,
            wrapped_data,
            iv,
            wrap_type,
        })
    }

    /// Fetch the KEK and unwrap the private options.
    pub(super) async fn unwrap(
        &self,
        keys: &dyn KeyProvider,
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let kek = Zeroizing::new(keys.get_resource(&self.kid).await?);
        let wrong_kek = || DecryptError::WrongKek {
            uri: self.kid.clone(),
        };
        if kek.len() != 32 {
            return Err(DecryptError::InvalidKeyOptions(format!(
                "KEK {} is {} bytes, AES-256 needs 32",
                self.kid,
                kek.len()
            )));
        }
        match self.wrap_type {
            WrapType::A256Gcm => {
                let cipher = aes_gcm::Aes256Gcm::new_from_slice(&kek).map_err(|_| wrong_kek())?;
                let iv: [u8; 12] = self.iv.as_slice().try_into().map_err(|_| wrong_kek())?;
                cipher
                    .decrypt(&iv.into(), self.wrapped_data.as_slice())
                    .map(Zeroizing::new)
                    .map_err(|_| wrong_kek())
            }
            WrapType::A256Ctr => {
                let mut buf = Zeroizing::new(self.wrapped_data.clone());
                let mut c = ctr::Ctr128BE::<aes::Aes256>::new_from_slices(&kek, &self.iv)
                    .map_err(|_| wrong_kek())?;
                c.apply_keystream(&mut buf);
                Ok(buf)
            }
        }
    }
}
