//! The relying party of kata-cc: verifiers that turn TEE evidence into [`Claims`].
//!
//! One [`Verifier`] per TEE: [`SnpVerifier`] (AMD SEV-SNP, AMD's roots built in),
//! [`TdxVerifier`] (Intel TDX DCAP quotes, collateral from local files) and
//! [`SimVerifier`] (SNP-format evidence signed by a simulated AMD chain, refused unless
//! the reference values say `allow_simulated = true`). Verification is CPU-only and
//! synchronous; the time is a parameter so results are reproducible.
//!
//! Each verifier first checks that the evidence is authentic (signatures, chains,
//! collateral), then applies the [`ReferenceValues`] (measurements, HOST_DATA /
//! MRCONFIGID, minimum TCB, debug, simulated) and finally that REPORT_DATA equals the
//! value the caller expected (the RCAR binding of nonce and TEE public key). The
//! [`Claims`] are what the relying party learned; they serialise to JSON for the
//! attestation token.
//!
//! The evidence JSON formats are documented in [`snp`] and [`tdx`].
//!
//! # Example
//!
//! ```no_run
//! use std::time::SystemTime;
//! use kbs::{ReferenceValues, SnpVerifier, Verifier};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = SnpVerifier::amd()?;
//! let policy = ReferenceValues::from_toml_str(r#"
//!     snp_measurements = ["7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"]
//!     host_data = "any"
//!     snp_min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }
//! "#)?;
//! let evidence: serde_json::Value = serde_json::from_str(&std::fs::read_to_string("evidence.json")?)?;
//! let expected_report_data = [0u8; 64]; // hash of the RCAR runtime data
//! let claims = verifier.verify(&evidence, &expected_report_data, &policy, SystemTime::now())?;
//! println!("{}", serde_json::to_string_pretty(&claims)?);
//! # Ok(()) }
//! ```
//!
//! # Features
//! * `sim`: `sim::produce` and friends, which *create* simulated evidence (for the
//!   attestation agent's sim attester and tests). Enabling it together with
//!   `release-tee` is a compile error.

#[cfg(all(feature = "sim", feature = "release-tee"))]
compile_error!(
    "feature `sim` (simulated TEE evidence) must not be enabled in a `release-tee` build"
);

mod claims;
mod hexbytes;
mod reference;
pub mod server;
pub mod sim;
pub mod snp;
pub mod tdx;

use std::time::SystemTime;

pub use claims::{Claims, SnpClaims, TdxClaims};
pub use hexbytes::HexBytes;
pub use reference::{Allowed, ReferenceError, ReferenceValues};
pub use sim::SimVerifier;
pub use snp::report::{SigningKey, TcbVersion};
pub use snp::{IntermediateKind, SnpError, SnpTrustStore, SnpVerifier};
pub use tdx::{TdxCollateralStore, TdxError, TdxVerifier};

/// The kind of TEE a verifier handles and claims name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeKind {
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
    /// Simulated SNP (no hardware; for development and CI).
    Sim,
}

/// Turns evidence into claims. One implementation per TEE.
pub trait Verifier: Send + Sync {
    /// The TEE this verifier handles.
    fn tee(&self) -> TeeKind;

    /// Verifies `evidence` at time `now` against `policy`, requiring REPORT_DATA to equal
    /// `expected_report_data` zero-padded to 64 bytes.
    fn verify(
        &self,
        evidence: &serde_json::Value,
        expected_report_data: &[u8],
        policy: &ReferenceValues,
        now: SystemTime,
    ) -> Result<Claims, VerifyError>;
}

/// Why evidence was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// SNP (or sim) evidence is malformed or not authentic.
    #[error("SNP evidence rejected")]
    Snp(#[from] SnpError),
    /// TDX evidence is malformed or not authentic.
    #[error("TDX evidence rejected")]
    Tdx(#[from] TdxError),
    /// Authentic evidence that the reference values refuse.
    #[error("evidence refused by the reference values")]
    Policy(#[from] PolicyError),
}

/// Authentic evidence whose content the reference values refuse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// Simulated evidence and `allow_simulated` is false.
    #[error("simulated TEE evidence is not trusted (allow_simulated = false)")]
    SimulatedNotTrusted,
    /// A debug-enabled guest and `allow_debug` is false.
    #[error("guest allows debugging and allow_debug = false")]
    DebugNotAllowed,
    /// SNP VMPL above the maximum.
    #[error("report requested at VMPL {got}, at most {max} allowed")]
    VmplNotAllowed {
        /// Allowed maximum.
        max: u32,
        /// VMPL in the report.
        got: u32,
    },
    /// SNP launch measurement not among the reference values.
    #[error("measurement {got} is not one of {expected:?}")]
    MeasurementMismatch {
        /// Accepted values (hex).
        expected: Vec<String>,
        /// Value in the evidence (hex).
        got: String,
    },
    /// SNP HOST_DATA not among the reference values.
    #[error("HOST_DATA {got} is not one of {expected:?}")]
    HostDataMismatch {
        /// Accepted values (hex).
        expected: Vec<String>,
        /// Value in the evidence (hex).
        got: String,
    },
    /// TDX MRTD not among the reference values.
    #[error("MRTD {got} is not one of {expected:?}")]
    MrtdMismatch {
        /// Accepted values (hex).
        expected: Vec<String>,
        /// Value in the evidence (hex).
        got: String,
    },
    /// TDX MRCONFIGID not among the reference values.
    #[error("MRCONFIGID {got} is not one of {expected:?}")]
    MrConfigIdMismatch {
        /// Accepted values (hex).
        expected: Vec<String>,
        /// Value in the evidence (hex).
        got: String,
    },
    /// An SNP TCB component below the minimum.
    #[error("{component} SPL {got} is below the minimum {min}")]
    TcbTooOld {
        /// Component.
        component: &'static str,
        /// Minimum.
        min: u8,
        /// Reported.
        got: u8,
    },
    /// TDX TCB status not accepted.
    #[error("TDX TCB status {status} is not accepted (advisories {advisories:?})")]
    TcbStatusNotAccepted {
        /// Status from the collateral.
        status: String,
        /// Intel advisories.
        advisories: Vec<String>,
    },
    /// A TD bound to a service TD (MRSERVICETD non-zero) and that is not allowed.
    #[error("TD is bound to a service TD ({mrservicetd}) and tdx_allow_service_td = false")]
    ServiceTdNotAllowed {
        /// MRSERVICETD (hex).
        mrservicetd: String,
    },
    /// REPORT_DATA differs from the expected binding.
    #[error("REPORT_DATA {got} differs from the expected {expected}")]
    ReportDataMismatch {
        /// Expected (hex, padded to 64 bytes).
        expected: String,
        /// In the evidence (hex).
        got: String,
    },
    /// The expected report data is longer than the 64-byte field.
    #[error("expected report data is {0} bytes, more than 64")]
    ReportDataTooLong(usize),
}

/// Compares REPORT_DATA with `expected` zero-padded to 64 bytes.
pub(crate) fn check_report_data(expected: &[u8], got: &[u8; 64]) -> Result<(), PolicyError> {
    if expected.len() > 64 {
        return Err(PolicyError::ReportDataTooLong(expected.len()));
    }
    let mut padded = [0u8; 64];
    padded[..expected.len()].copy_from_slice(expected);
    if &padded != got {
        return Err(PolicyError::ReportDataMismatch {
            expected: hex::encode(padded),
            got: hex::encode(got),
        });
    }
    Ok(())
}
