//! Reference values: what the KBS accepts. Closed by default: an absent or empty list
//! accepts nothing; only the explicit string `"any"` accepts every value.
//!
//! ```toml
//! snp_measurements = ["7a1e…841f"]            # 48-byte hex values
//! host_data = "any"                           # every value accepted
//! snp_min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }
//! snp_max_vmpl = 0
//! tdx_mrtd = ["91eb…18b7"]
//! mrconfigid = ["00…00"]
//! tdx_accepted_tcb_status = ["UpToDate"]
//! tdx_allow_service_td = false
//! allow_debug = false
//! allow_simulated = false
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::snp::report::TcbVersion;
use crate::HexBytes;

/// TDX TCB statuses a policy may name (as Intel's collateral and `dcap-qvl` spell them).
pub const TDX_TCB_STATUSES: &[&str] = &[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "TDRelaunchAdvised",
    "TDRelaunchAdvisedConfigurationNeeded",
];

/// An allow-list that is either explicit or, by an explicit choice, everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowed<T> {
    /// Every value is accepted (written `"any"`).
    Any,
    /// Only these values (an empty list accepts nothing).
    OneOf(Vec<T>),
}

impl<T> Default for Allowed<T> {
    fn default() -> Self {
        Self::OneOf(Vec::new())
    }
}

impl<T: PartialEq + std::fmt::Display> Allowed<T> {
    /// Ok when `v` is accepted; otherwise the accepted values as strings.
    pub fn check(&self, v: &T) -> Result<(), Vec<String>> {
        match self {
            Self::Any => Ok(()),
            Self::OneOf(list) if list.contains(v) => Ok(()),
            Self::OneOf(list) => Err(list.iter().map(|x| x.to_string()).collect()),
        }
    }
}

impl<T: Serialize> Serialize for Allowed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Any => s.serialize_str("any"),
            Self::OneOf(v) => v.serialize(s),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Allowed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<T> {
            Word(String),
            List(Vec<T>),
        }
        match Raw::<T>::deserialize(d)? {
            Raw::Word(w) if w == "any" => Ok(Self::Any),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "expected a list of values or \"any\", got {w:?}"
            ))),
            Raw::List(v) => Ok(Self::OneOf(v)),
        }
    }
}

/// What evidence must show to be accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReferenceValues {
    /// Accepted SNP launch measurements.
    pub snp_measurements: Allowed<HexBytes<48>>,
    /// Accepted SNP HOST_DATA values (initdata digests).
    pub host_data: Allowed<HexBytes<32>>,
    /// Minimum SNP REPORTED_TCB, per component (default all zero).
    pub snp_min_tcb: TcbVersion,
    /// Highest VMPL a report may come from (default 0).
    pub snp_max_vmpl: u32,
    /// Accepted TDX MRTDs.
    pub tdx_mrtd: Allowed<HexBytes<48>>,
    /// Accepted TDX MRCONFIGIDs (initdata digests).
    pub mrconfigid: Allowed<HexBytes<48>>,
    /// TDX TCB statuses accepted (default only `UpToDate`).
    pub tdx_accepted_tcb_status: Vec<String>,
    /// Accept a TD bound to a service TD (non-zero MRSERVICETD).
    pub tdx_allow_service_td: bool,
    /// Accept debug-enabled guests (SNP policy bit 19, TDX TDATTRIBUTES.DEBUG).
    pub allow_debug: bool,
    /// Accept simulated evidence (the sim root). Never in production.
    pub allow_simulated: bool,
}

impl Default for ReferenceValues {
    fn default() -> Self {
        Self {
            snp_measurements: Allowed::default(),
            host_data: Allowed::default(),
            snp_min_tcb: TcbVersion::default(),
            snp_max_vmpl: 0,
            tdx_mrtd: Allowed::default(),
            mrconfigid: Allowed::default(),
            tdx_accepted_tcb_status: vec!["UpToDate".into()],
            tdx_allow_service_td: false,
            allow_debug: false,
            allow_simulated: false,
        }
    }
}

/// Why reference values cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or schema error.
    #[error("invalid TOML reference values")]
    Toml(#[source] toml::de::Error),
    /// JSON syntax or schema error.
    #[error("invalid JSON reference values")]
    Json(#[source] serde_json::Error),
    /// A value that parses but is not meaningful.
    #[error("invalid reference values: {0}")]
    Invalid(String),
}

impl ReferenceValues {
    /// Parses TOML.
    pub fn from_toml_str(s: &str) -> Result<Self, ReferenceError> {
        toml::from_str::<Self>(s)
            .map_err(ReferenceError::Toml)?
            .validated()
    }

    /// Parses JSON.
    pub fn from_json_str(s: &str) -> Result<Self, ReferenceError> {
        serde_json::from_str::<Self>(s)
            .map_err(ReferenceError::Json)?
            .validated()
    }

    /// Loads a `.json` file as JSON and anything else as TOML.
    pub fn load(path: &Path) -> Result<Self, ReferenceError> {
        let s = std::fs::read_to_string(path).map_err(|source| ReferenceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if path.extension().is_some_and(|e| e == "json") {
            Self::from_json_str(&s)
        } else {
            Self::from_toml_str(&s)
        }
    }

    fn validated(self) -> Result<Self, ReferenceError> {
        for s in &self.tdx_accepted_tcb_status {
            if !TDX_TCB_STATUSES.contains(&s.as_str()) {
                return Err(ReferenceError::Invalid(format!(
                    "unknown TDX TCB status {s:?} (known: {TDX_TCB_STATUSES:?}; Revoked is never accepted)"
                )));
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn default_is_closed() {
        let r = ReferenceValues::default();
        assert!(r.snp_measurements.check(&HexBytes([0; 48])).is_err());
        assert!(r.host_data.check(&HexBytes([0; 32])).is_err());
        assert!(!r.allow_debug && !r.allow_simulated);
        assert_eq!(ReferenceValues::from_toml_str("").unwrap(), r);
    }

    #[test]
    fn any_and_lists() {
        let r = ReferenceValues::from_toml_str(&format!(
            "host_data = \"any\"\nsnp_measurements = [\"{}\"]\n",
            "11".repeat(48)
        ))
        .unwrap();
        assert_eq!(r.host_data, Allowed::Any);
        assert!(r.snp_measurements.check(&HexBytes([0x11; 48])).is_ok());
        assert!(r.snp_measurements.check(&HexBytes([0x12; 48])).is_err());
        let back = serde_json::to_string(&r).unwrap();
        assert_eq!(ReferenceValues::from_json_str(&back).unwrap(), r);
    }

    #[test]
    fn rejects_bad_values() {
        assert!(ReferenceValues::from_toml_str("host_data = \"all\"").is_err());
        assert!(ReferenceValues::from_toml_str("host_data = [\"00\"]").is_err());
        assert!(ReferenceValues::from_toml_str("tdx_accepted_tcb_status = [\"Revoked\"]").is_err());
        assert!(ReferenceValues::from_toml_str("alow_debug = true").is_err());
    }
}
