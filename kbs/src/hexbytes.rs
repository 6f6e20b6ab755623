//! Fixed-size byte strings that read and write as lowercase hex in JSON and TOML.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `N` bytes, shown and (de)serialised as `2 * N` hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HexBytes<const N: usize>(pub [u8; N]);

impl<const N: usize> HexBytes<N> {
    /// Parses exactly `2 * N` hex characters (either case).
    pub fn from_hex(s: &str) -> Result<Self, String> {
        let v = hex::decode(s).map_err(|e| format!("not hex: {e}"))?;
        let arr: [u8; N] = v
            .try_into()
            .map_err(|v: Vec<u8>| format!("{} bytes, expected {N}", v.len()))?;
        Ok(Self(arr))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; N] {
        &self.0
    }

    /// True when every byte is zero.
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }
}

impl<const N: usize> From<[u8; N]> for HexBytes<N> {
    fn from(v: [u8; N]) -> Self {
        Self(v)
    }
}

impl<const N: usize> fmt::Display for HexBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl<const N: usize> fmt::Debug for HexBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl<const N: usize> Serialize for HexBytes<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de, const N: usize> Deserialize<'de> for HexBytes<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_hex(&s).map_err(serde::de::Error::custom)
    }
}
