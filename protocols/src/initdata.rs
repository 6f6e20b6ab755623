//! initdata: the measured configuration of a TEE pod, in its three wire forms.
//!
//! * The document: TOML with `version = "0.1.0"`, `algorithm = "sha256"|"sha384"|"sha512"`
//!   and a `[data]` table of string entries (`"policy.rego"`, `"aa.toml"`, `"cdh.toml"`, ...).
//! * The pod annotation [`ANNOTATION`]: base64(gzip(TOML)).
//! * The block device the guest reads: magic `initdata` (8 bytes), the length of the gzip
//!   blob as a little-endian u64, the blob, zero-padded to a multiple of 512 bytes.
//!
//! The digest is taken over the raw TOML bytes exactly as decoded (never over a
//! re-serialisation) and fitted to the TEE field that carries it: SEV-SNP HOST_DATA
//! (32 bytes) and TDX MRCONFIGID (48 bytes), truncated or zero-padded.
//!
//! Everything here parses input from the other side of the trust boundary; none of it
//! panics, and decompression stops at [`MAX_SIZE`].
//!
//! ```
//! use protocols::initdata::{self, Algorithm, InitData};
//!
//! # fn demo() -> Result<(), initdata::InitDataError> {
//! let toml = InitData::with_policy(Algorithm::Sha256, "package agent_policy\n").to_toml();
//! let image = initdata::device_image(toml.as_bytes())?;
//! let raw = initdata::read_device(image.as_slice())?;
//! let init = InitData::parse_bytes(&raw)?;
//! let host_data = initdata::host_data(&initdata::digest(init.algorithm, &raw));
//! # let _ = host_data;
//! # Ok(())
//! # }
//! # demo().unwrap();
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write as _};

use base64::Engine as _;
use sha2::Digest as _;

/// The only initdata version written and accepted.
pub const VERSION: &str = "0.1.0";

/// The pod annotation carrying the initdata: base64(gzip(TOML)).
pub const ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";

/// The magic that starts the initdata block device.
pub const DEVICE_MAGIC: [u8; 8] = *b"initdata";

/// The virtio serial of the initdata disk: the host attaches the device image with it and
/// the guest finds the disk by it (`/sys/block/vd*/serial`).
pub const INITDATA_DISK_SERIAL: &str = "initdata";

/// The device image is padded to a multiple of this many bytes.
pub const DEVICE_SECTOR: usize = 512;

/// Largest decompressed initdata accepted (1 MiB); larger input is refused, not truncated.
pub const MAX_SIZE: usize = 1024 * 1024;

/// Largest gzip blob accepted on the device: gzip of [`MAX_SIZE`] bytes of incompressible
/// data stays well below this.
const MAX_BLOB: u64 = MAX_SIZE as u64 + 64 * 1024;

/// Device header: magic and length.
const DEVICE_HEADER: usize = 16;

/// Errors of initdata handling.
#[derive(Debug, thiserror::Error)]
pub enum InitDataError {
    /// The document is not TOML.
    #[error("initdata is not valid TOML")]
    Toml {
        /// The cause.
        #[source]
        source: toml::de::Error,
    },
    /// A required top-level field is missing or is not a string.
    #[error("initdata field `{0}` is missing or not a string")]
    Field(&'static str),
    /// The version is not [`VERSION`].
    #[error("initdata version `{0}` is not supported (expected {VERSION})")]
    Version(String),
    /// The algorithm is not sha256/sha384/sha512.
    #[error("initdata algorithm `{0}` is not supported (sha256, sha384 or sha512)")]
    Algorithm(String),
    /// `data` is not a table.
    #[error("initdata `data` is not a table")]
    DataNotTable,
    /// A `[data]` entry is not a string.
    #[error("initdata entry `data.{0}` is not a string")]
    DataNotString(String),
    /// The document is not UTF-8.
    #[error("initdata is not UTF-8")]
    Utf8 {
        /// The cause.
        #[source]
        source: std::str::Utf8Error,
    },
    /// The annotation is not base64.
    #[error("initdata annotation is not base64")]
    Base64 {
        /// The cause.
        #[source]
        source: base64::DecodeError,
    },
    /// Compressing or decompressing failed, or the blob is not gzip.
    #[error("initdata is not valid gzip")]
    Gzip {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The decompressed document (or the device's blob) is over the limit.
    #[error("initdata is larger than {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: u64,
    },
    /// The device does not start with [`DEVICE_MAGIC`].
    #[error("initdata device has bad magic {found:02x?} (expected \"initdata\")")]
    BadMagic {
        /// The first 8 bytes found.
        found: [u8; 8],
    },
    /// The device is shorter than its 16-byte header.
    #[error("initdata device is shorter than its {DEVICE_HEADER}-byte header")]
    ShortHeader,
    /// The header's length runs past the end of the device.
    #[error("initdata device declares a {declared}-byte blob but only {available} bytes follow")]
    LengthPastEnd {
        /// The length in the header.
        declared: u64,
        /// The bytes actually present after the header.
        available: u64,
    },
    /// Reading the device failed.
    #[error("cannot read the initdata device")]
    Read {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The digest algorithm of an initdata document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `sha256` (32-byte digest).
    Sha256,
    /// `sha384` (48-byte digest).
    Sha384,
    /// `sha512` (64-byte digest).
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
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An initdata document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitData {
    /// The version (always [`VERSION`] once parsed).
    pub version: String,
    /// The digest algorithm.
    pub algorithm: Algorithm,
    /// The `[data]` entries (`"policy.rego"`, `"aa.toml"`, `"cdh.toml"`, ...).
    pub data: BTreeMap<String, String>,
}

impl InitData {
    /// An initdata document holding only `policy.rego`.
    pub fn with_policy(algorithm: Algorithm, rego: &str) -> Self {
        Self {
            version: VERSION.to_owned(),
            algorithm,
            data: BTreeMap::from([("policy.rego".to_owned(), rego.to_owned())]),
        }
    }

    /// Parse a TOML document: `version` must be [`VERSION`], `algorithm` one of the three,
    /// `[data]` (optional) string entries only. Other top-level keys are ignored (they
    /// are still covered by the digest, which is taken over the raw bytes).
    pub fn parse(toml_text: &str) -> Result<Self, InitDataError> {
        let table: toml::Table =
            toml::from_str(toml_text).map_err(|source| InitDataError::Toml { source })?;
        let string = |field: &'static str| {
            table
                .get(field)
                .and_then(toml::Value::as_str)
                .ok_or(InitDataError::Field(field))
        };
        let version = string("version")?;
        if version != VERSION {
            return Err(InitDataError::Version(version.to_owned()));
        }
        let algorithm = Algorithm::parse(string("algorithm")?)?;
        let mut data = BTreeMap::new();
        match table.get("data") {
            None => {}
            Some(toml::Value::Table(entries)) => {
                for (key, value) in entries {
                    let value = value
                        .as_str()
                        .ok_or_else(|| InitDataError::DataNotString(key.clone()))?;
                    data.insert(key.clone(), value.to_owned());
                }
            }
            Some(_) => return Err(InitDataError::DataNotTable),
        }
        Ok(Self {
            version: version.to_owned(),
            algorithm,
            data,
        })
    }

    /// [`InitData::parse`] of raw bytes (as decoded from an annotation or a device).
    pub fn parse_bytes(raw_toml: &[u8]) -> Result<Self, InitDataError> {
        Self::parse(std::str::from_utf8(raw_toml).map_err(|source| InitDataError::Utf8 { source })?)
    }

    /// The policy it carries (`data["policy.rego"]`), if any.
    pub fn policy(&self) -> Option<&str> {
        self.data.get("policy.rego").map(String::as_str)
    }

    /// The TOML text: entries as multi-line literal strings (`'''...'''`) where their
    /// content allows it, TOML basic strings otherwise. The same document always gives
    /// the same bytes (entries in key order).
    pub fn to_toml(&self) -> String {
        let mut out = format!(
            "version = {}\nalgorithm = \"{}\"\n\n[data]\n",
            toml_basic_string(&self.version),
            self.algorithm.name()
        );
        for (key, value) in &self.data {
            let key = toml_basic_string(key);
            // A multi-line literal string holds no `'''` and none of TOML's control
            // characters but tab and newline (U+0000-U+0008, U+000B-U+001F, U+007F).
            let literal_ok = !value.contains("'''")
                && !value.chars().any(|c| matches!(c, '\0'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'));
            if !literal_ok {
                out.push_str(&format!("{key} = {}\n", toml_basic_string(value)));
            } else {
                // The newline after the opening ''' is not part of the value.
                out.push_str(&format!("{key} = '''\n{value}'''\n"));
            }
        }
        out
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

/// The digest of the raw TOML bytes as decoded (NOT of a re-serialisation).
pub fn digest(algorithm: Algorithm, raw_toml: &[u8]) -> Vec<u8> {
    match algorithm {
        Algorithm::Sha256 => sha2::Sha256::digest(raw_toml).to_vec(),
        Algorithm::Sha384 => sha2::Sha384::digest(raw_toml).to_vec(),
        Algorithm::Sha512 => sha2::Sha512::digest(raw_toml).to_vec(),
    }
}

fn fit<const N: usize>(digest: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = digest.len().min(N);
    out[..n].copy_from_slice(&digest[..n]);
    out
}

/// SEV-SNP HOST_DATA: the digest truncated or zero-padded to 32 bytes.
pub fn host_data(digest: &[u8]) -> [u8; 32] {
    fit(digest)
}

/// TDX MRCONFIGID: the digest truncated or zero-padded to 48 bytes.
pub fn mrconfigid(digest: &[u8]) -> [u8; 48] {
    fit(digest)
}

/// gzip with a fixed header (mtime 0, no name, OS "unknown"): the same input always
/// gives the same bytes.
fn gzip(raw: &[u8]) -> Result<Vec<u8>, InitDataError> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(raw)
        .map_err(|source| InitDataError::Gzip { source })?;
    gz.finish().map_err(|source| InitDataError::Gzip { source })
}

/// Decompress one gzip member, refusing more than [`MAX_SIZE`] bytes of output.
fn gunzip(blob: &[u8]) -> Result<Vec<u8>, InitDataError> {
    let mut decoder = flate2::read::GzDecoder::new(blob);
    let mut out = Vec::new();
    (&mut decoder)
        .take(MAX_SIZE as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| InitDataError::Gzip { source })?;
    if decoder.header().is_none() {
        // Empty input decodes to nothing without an error; it is not gzip either.
        return Err(InitDataError::Gzip {
            source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no gzip header"),
        });
    }
    if out.len() > MAX_SIZE {
        return Err(InitDataError::TooLarge {
            limit: MAX_SIZE as u64,
        });
    }
    Ok(out)
}

/// base64(gzip(`raw_toml`)), the value of the [`ANNOTATION`].
pub fn encode_annotation(raw_toml: &[u8]) -> Result<String, InitDataError> {
    Ok(base64::engine::general_purpose::STANDARD.encode(gzip(raw_toml)?))
}

/// The raw TOML bytes of an annotation value (surrounding whitespace ignored); more
/// than [`MAX_SIZE`] bytes decompressed is refused.
pub fn decode_annotation(value: &str) -> Result<Vec<u8>, InitDataError> {
    let blob = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|source| InitDataError::Base64 { source })?;
    gunzip(&blob)
}

/// The block device image: [`DEVICE_MAGIC`], the u64 LE length of the gzip blob, the
/// blob, zero-padded to a multiple of [`DEVICE_SECTOR`] bytes.
pub fn device_image(raw_toml: &[u8]) -> Result<Vec<u8>, InitDataError> {
    let blob = gzip(raw_toml)?;
    let mut image =
        Vec::with_capacity((DEVICE_HEADER + blob.len()).next_multiple_of(DEVICE_SECTOR));
    image.extend_from_slice(&DEVICE_MAGIC);
    image.extend_from_slice(&(blob.len() as u64).to_le_bytes());
    image.extend_from_slice(&blob);
    image.resize(image.len().next_multiple_of(DEVICE_SECTOR), 0);
    Ok(image)
}

/// The raw TOML bytes of an initdata device (a byte slice, a file or a block device).
/// Bad magic, a short header, a length past the end, bad gzip and oversized content are
/// each their own error.
pub fn read_device(mut device: impl Read) -> Result<Vec<u8>, InitDataError> {
    let mut header = [0u8; DEVICE_HEADER];
    let mut filled = 0;
    while filled < DEVICE_HEADER {
        match device.read(&mut header[filled..]) {
            Ok(0) => return Err(InitDataError::ShortHeader),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => return Err(InitDataError::Read { source }),
        }
    }
    let (magic, len) = header.split_at(8);
    if magic != DEVICE_MAGIC {
        return Err(InitDataError::BadMagic { found: fit(magic) });
    }
    let declared = u64::from_le_bytes(fit(len));
    if declared > MAX_BLOB {
        return Err(InitDataError::TooLarge { limit: MAX_BLOB });
    }
    let mut blob = Vec::new();
    device
        .take(declared)
        .read_to_end(&mut blob)
        .map_err(|source| InitDataError::Read { source })?;
    if (blob.len() as u64) < declared {
        return Err(InitDataError::LengthPastEnd {
            declared,
            available: blob.len() as u64,
        });
    }
    gunzip(&blob)
}
