//! The attestation token: a compact JWT signed ES256 by the KBS's own P-256 key.
//!
//! Claims: `iss` (`kata-cc-kbs`), `iat`, `exp`, `tee-pubkey` (the session's JWK) and
//! `claims` (the verifier's [`Claims`](crate::Claims) as JSON).
//!
//! The key is either fresh per start ([`TokenSigner::generate`]) or kept in a PKCS#8
//! PEM file ([`TokenSigner::load_or_create`]) so tokens stay valid across restarts.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
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

/// Why the token key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    /// Reading, creating or writing the file failed.
    #[error("token key file {path}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may read the key.
    #[error("token key file {path} has mode {mode:o}: it must not be accessible to group or others (chmod 600)")]
    Permissions {
        /// File.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Not a P-256 PKCS#8 PEM key.
    #[error("token key file {path} is not a P-256 PKCS#8 PEM private key: {reason}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
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

    /// Loads the key from `path`, or creates it there (mode 0600, written to a
    /// temporary file and linked into place, so a concurrent start or a crash never
    /// leaves a partial key) when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, TokenKeyError> {
        let io = |source| TokenKeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        if !path.exists() {
            let key = SigningKey::random(&mut OsRng);
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| TokenKeyError::Invalid {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
            let tmp = dir
                .unwrap_or(Path::new("."))
                .join(format!(".token-key.tmp-{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            let written = (|| {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(pem.as_bytes())?;
                f.sync_all()?;
                // Fails if another process created `path` meanwhile: then use theirs.
                match std::fs::hard_link(&tmp, path) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
                    _ => Ok(()),
                }
            })();
            let _ = std::fs::remove_file(&tmp);
            written.map_err(io)?;
        }
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenKeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let pem = std::fs::read_to_string(path).map_err(io)?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| TokenKeyError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Self { key })
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

    #[test]
    fn key_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub-missing").join("token.pem");
        // A missing parent directory is an error naming the file, not a panic.
        let e = TokenSigner::load_or_create(&path).unwrap_err();
        assert!(matches!(e, TokenKeyError::Io { .. }), "{e}");

        let path = dir.path().join("token.pem");
        let a = TokenSigner::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        // A second start reuses the key: its tokens verify across the "restart".
        let t = a.sign(&serde_json::json!({"exp": 100}));
        let b = TokenSigner::load_or_create(&path).unwrap();
        assert_eq!(a.verifying_key(), b.verifying_key());
        assert!(b.verify(&t, 1).is_ok());
        // A fresh key does not.
        assert_eq!(
            TokenSigner::generate().verify(&t, 1),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn key_file_refused_when_readable_by_others_or_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.pem");
        TokenSigner::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = TokenSigner::load_or_create(&path).unwrap_err();
        assert!(
            matches!(e, TokenKeyError::Permissions { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"));

        let bad = dir.path().join("bad.pem");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&bad)
            .unwrap()
            .write_all(b"not a key")
            .unwrap();
        let e = TokenSigner::load_or_create(&bad).unwrap_err();
        assert!(matches!(e, TokenKeyError::Invalid { .. }), "{e}");
        // The bad file is left as it was, never overwritten.
        assert_eq!(std::fs::read(&bad).unwrap(), b"not a key");
    }
}
