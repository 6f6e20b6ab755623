//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and readers that check them while
//! streaming.

use std::fmt;
use std::io::{self, Read};

use sha2::Digest as _;

/// A validated content digest: a known algorithm and lowercase hex of the right length.
/// Safe to use as a path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Digest algorithms accepted in descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

impl Digest {
    /// Parse `algo:hex`; `None` unless the algorithm is sha256/sha512 and the hex is
    /// lowercase and of the right length.
    pub fn parse(s: &str) -> Option<Digest> {
        let (algo, hex) = s.split_once(':')?;
        let algorithm = match algo {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return None,
        };
        let ok = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Digest of `data` with algorithm `algorithm`.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        h.finish()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

/// An incremental hash of one of the [`Algorithm`]s.
#[derive(Clone)]
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }
    pub(crate) fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest {
                algorithm: Algorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
            Hasher::Sha512(h) => Digest {
                algorithm: Algorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

/// Why a streamed blob was refused; carried inside the `io::Error` a
/// [`VerifyingReader`] returns (kind `InvalidData`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BlobCheck {
    #[error("more than the {expected} bytes the descriptor gives")]
    TooLong { expected: u64 },
    #[error("{received} bytes, the descriptor gives {expected}")]
    Truncated { expected: u64, received: u64 },
    #[error("content digest is {actual}")]
    Digest { actual: Digest },
}

impl BlobCheck {
    /// The check failure inside `e`, if `e` carries one.
    pub(crate) fn from_io(e: &io::Error) -> Option<&BlobCheck> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<BlobCheck>())
    }
}

/// Reads a blob and refuses it unless it has exactly `size` bytes and digest `digest`;
/// the check runs when the inner reader reports end of stream, and end of stream is only
/// passed on once it succeeded.
pub(crate) struct VerifyingReader<R> {
    inner: R,
    expected: Digest,
    size: u64,
    received: u64,
    hasher: Option<Hasher>,
    verified: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub(crate) fn new(inner: R, expected: Digest, size: u64) -> Self {
        let hasher = Some(Hasher::new(expected.algorithm()));
        VerifyingReader {
            inner,
            expected,
            size,
            received: 0,
            hasher,
            verified: false,
        }
    }

    /// Whether end of stream was reached and the blob matched.
    pub(crate) fn verified(&self) -> bool {
        self.verified
    }

    fn fail(check: BlobCheck) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, check)
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.verified || buf.is_empty() {
            return Ok(0);
        }
        // Ask for at most one byte more than the remaining size, so an overlong blob is
        // caught without reading far past its end.
        let remaining = self.size.saturating_sub(self.received).saturating_add(1);
        let want = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            let Some(hasher) = self.hasher.take() else {
                return Err(io::Error::other("blob read after a failed check"));
            };
            if self.received != self.size {
                return Err(Self::fail(BlobCheck::Truncated {
                    expected: self.size,
                    received: self.received,
                }));
            }
            let actual = hasher.finish();
            if actual != self.expected {
                return Err(Self::fail(BlobCheck::Digest { actual }));
            }
            self.verified = true;
            return Ok(0);
        }
        self.received += n as u64;
        if self.received > self.size {
            self.hasher = None;
            return Err(Self::fail(BlobCheck::TooLong {
                expected: self.size,
            }));
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Hashes everything read through it (the uncompressed layer, for its diff_id).
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R, algorithm: Algorithm) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(algorithm),
        }
    }
    pub(crate) fn finish(self) -> Digest {
        self.hasher.finish()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_refuses_odd_digests() {
        assert!(Digest::parse(EMPTY).is_some());
        assert!(Digest::parse(&EMPTY.to_uppercase()).is_none());
        assert!(Digest::parse("sha256:../../etc").is_none());
        assert!(Digest::parse("md5:d41d8cd98f00b204e9800998ecf8427e").is_none());
        assert!(Digest::parse(&EMPTY[..70]).is_none());
    }

    fn read_all(data: &[u8], digest: &Digest, size: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        VerifyingReader::new(data, digest.clone(), size).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn verifying_reader_checks_size_and_digest() {
        let d = Digest::of(Algorithm::Sha256, b"hello");
        assert_eq!(read_all(b"hello", &d, 5).unwrap(), b"hello");
        let e = read_all(b"hellO", &d, 5).unwrap_err();
        assert!(matches!(
            BlobCheck::from_io(&e),
            Some(BlobCheck::Digest { .. })
        ));
        let e = read_all(b"hell", &d, 5).unwrap_err();
        assert!(matches!(
            BlobCheck::from_io(&e),
            Some(BlobCheck::Truncated { received: 4, .. })
        ));
        let e = read_all(b"hello!", &d, 5).unwrap_err();
        assert!(matches!(
            BlobCheck::from_io(&e),
            Some(BlobCheck::TooLong { .. })
        ));
    }
}
