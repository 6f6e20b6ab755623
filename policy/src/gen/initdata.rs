//! initdata: the TOML document that carries the policy into a TEE pod, its annotation
//! encoding (base64(gzip(TOML))) and its digest as the TEE fields hold it (SNP HOST_DATA,
//! 32 bytes; TDX MRCONFIGID, 48 bytes: the hash truncated or zero-padded).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The only initdata version we write and accept.
pub const VERSION: &str = "0.1.0";

/// Largest decompressed initdata accepted from an annotation.
const MAX_INITDATA: u64 = 16 * 1024 * 1024;

/// Errors of initdata handling.
#[derive(Debug, thiserror::Error)]
pub enum InitDataError {
    /// The TOML does not parse or lacks a field.
    #[error("initdata is not valid TOML")]
    Toml {
        /// The cause.
        #[source]
        source: toml::de::Error,
    },
    /// The version is not `0.1.0`.
    #[error("initdata version `{0}` is not supported (expected {VERSION})")]
    Version(String),
    /// The algorithm is not sha256/sha384/sha512.
    #[error("initdata algorithm `{0}` is not supported (sha256, sha384 or sha512)")]
    Algorithm(String),
    /// The annotation is not base64.
    #[error("initdata annotation is not base64")]
    Base64 {
        /// The cause.
        #[source]
        source: base64::DecodeError,
    },
    /// Compressing or decompressing failed.
    #[error("initdata annotation is not gzip (or is over {MAX_INITDATA} bytes)")]
    Gzip {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The decompressed annotation is not UTF-8.
    #[error("initdata is not UTF-8")]
    Utf8 {
        /// The cause.
        #[source]
        source: std::string::FromUtf8Error,
    },
}

/// The digest algorithm of an initdata document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `sha256`.
    Sha256,
    /// `sha384`.
    Sha384,
    /// `sha512`.
    Sha512,
}

impl Algorithm {
    /// The TOML name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// Parse the TOML name.
    pub fn parse(name: &str) -> Result<Self, InitDataError> {
        match name {
            "sha256" => Ok(Self::Sha256),
            "sha384" => Ok(Self::Sha384),
            "sha512" => Ok(Self::Sha512),
            other => Err(InitDataError::Algorithm(other.to_owned())),
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Self::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Self::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

/// An initdata document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitData {
    /// The digest algorithm.
    pub algorithm: Algorithm,
    /// The `[data]` entries (`"policy.rego"`, `"aa.toml"`, `"cdh.toml"`, ...).
    pub data: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct Raw {
    version: String,
    algorithm: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// An initdata digest and the TEE field values derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitDataDigest {
    /// The algorithm used.
    pub algorithm: Algorithm,
    /// The full hash of the TOML bytes.
    pub digest: Vec<u8>,
}

impl InitDataDigest {
    /// The hash truncated or zero-padded to `len` bytes.
    pub fn fitted(&self, len: usize) -> Vec<u8> {
        let mut out = self.digest.clone();
        out.resize(len, 0);
        out
    }

    /// SEV-SNP HOST_DATA (32 bytes).
    pub fn snp_host_data(&self) -> Vec<u8> {
        self.fitted(32)
    }

    /// TDX MRCONFIGID (48 bytes).
    pub fn tdx_mrconfigid(&self) -> Vec<u8> {
        self.fitted(48)
    }
}

impl InitData {
    /// An initdata document holding only `policy.rego`.
    pub fn with_policy(algorithm: Algorithm, rego: &str) -> Self {
        Self { algorithm, data: BTreeMap::from([("policy.rego".to_owned(), rego.to_owned())]) }
    }

    /// Parse a TOML document (version must be `0.1.0`).
    pub fn parse(toml_text: &str) -> Result<Self, InitDataError> {
        let raw: Raw = toml::from_str(toml_text).map_err(|source| InitDataError::Toml { source })?;
        if raw.version != VERSION {
            return Err(InitDataError::Version(raw.version));
        }
        Ok(Self { algorithm: Algorithm::parse(&raw.algorithm)?, data: raw.data })
    }

    /// The policy it carries, if any.
    pub fn policy(&self) -> Option<&str> {
        self.data.get("policy.rego").map(String::as_str)
    }

    /// The TOML text: entries as multi-line literal strings (`'''...'''`) where their
    /// content allows it, TOML basic strings otherwise.
    pub fn to_toml(&self) -> String {
        let mut out = format!(
            "version = \"{VERSION}\"\nalgorithm = \"{}\"\n\n[data]\n",
            self.algorithm.name()
        );
        for (key, value) in &self.data {
            let key = toml_basic_string(key);
            if value.contains("'''") || value.contains('\r') {
                out.push_str(&format!("{key} = {}\n", toml_basic_string(value)));
            } else {
                // The newline after the opening ''' is not part of the value.
                out.push_str(&format!("{key} = '''\n{value}'''\n"));
            }
        }
        out
    }

    /// The digest of `toml_text` with the document's own algorithm.
    pub fn digest_of(toml_text: &str) -> Result<InitDataDigest, InitDataError> {
        let parsed = Self::parse(toml_text)?;
        Ok(InitDataDigest {
            algorithm: parsed.algorithm,
            digest: parsed.algorithm.hash(toml_text.as_bytes()),
        })
    }
}

fn toml_basic_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// base64(gzip(`toml_text`)), the value of the initdata annotation.
pub fn encode_annotation(toml_text: &str) -> Result<String, InitDataError> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(toml_text.as_bytes()).map_err(|source| InitDataError::Gzip { source })?;
    let bytes = gz.finish().map_err(|source| InitDataError::Gzip { source })?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The TOML text of an initdata annotation value.
pub fn decode_annotation(value: &str) -> Result<String, InitDataError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|source| InitDataError::Base64 { source })?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .take(MAX_INITDATA + 1)
        .read_to_end(&mut out)
        .map_err(|source| InitDataError::Gzip { source })?;
    if out.len() as u64 > MAX_INITDATA {
        return Err(InitDataError::Gzip { source: std::io::Error::other("too large") });
    }
    String::from_utf8(out).map_err(|source| InitDataError::Utf8 { source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn toml_round_trips_and_digests_fit_the_tee_fields() {
        let init = InitData::with_policy(Algorithm::Sha384, "package agent_policy\n");
        let text = init.to_toml();
        assert!(text.contains("\"policy.rego\" = '''\npackage agent_policy\n'''"));
        assert_eq!(InitData::parse(&text).unwrap(), init);
        let d = InitData::digest_of(&text).unwrap();
        assert_eq!(d.digest.len(), 48);
        assert_eq!(d.snp_host_data(), d.digest[..32].to_vec());
        assert_eq!(d.tdx_mrconfigid(), d.digest);
        let d256 = InitData::digest_of(&text.replace("sha384", "sha256")).unwrap();
        assert_eq!(&d256.tdx_mrconfigid()[32..], &[0u8; 16]);
        assert_eq!(decode_annotation(&encode_annotation(&text).unwrap()).unwrap(), text);
    }

    #[test]
    fn awkward_values_use_basic_strings() {
        let init = InitData::with_policy(Algorithm::Sha256, "a ''' b\r\n\"c\"\\");
        assert_eq!(InitData::parse(&init.to_toml()).unwrap(), init);
        assert!(matches!(
            InitData::parse("version = \"0.2.0\"\nalgorithm = \"sha256\"\n"),
            Err(InitDataError::Version(_))
        ));
        assert!(matches!(
            InitData::parse("version = \"0.1.0\"\nalgorithm = \"md5\"\n"),
            Err(InitDataError::Algorithm(_))
        ));
    }
}
