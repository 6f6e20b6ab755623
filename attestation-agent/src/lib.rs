//! The kata-cc attestation agent (in the guest): [`Attester`]s that produce TEE evidence
//! bound to 64 bytes of report data, and [`KbsClient`], which speaks RCAR 0.4.0 to the
//! KBS (auth → attest → resource → JWE decrypt).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use attestation_agent::{KbsClient, SnpAttester};
//! let client = KbsClient::new("http://10.0.2.2:8080", Arc::new(SnpAttester::new()))?;
//! let key = client.get_resource("kbs:///default/key/image-key").await?;
//! # Ok(()) }
//! ```
//!
//! # Features
//! * `sim`: [`SimAttester`], simulated SNP evidence (refused by a KBS unless it trusts
//!   simulated TEEs).

mod attester;
mod client;
pub mod config;

#[cfg(feature = "sim")]
pub use attester::SimAttester;
pub use attester::{Attester, AttesterError, SnpAttester, TdxAttester, TsmReport};
pub use config::AaConfig;
pub use client::{parse_kbs_uri, KbsClient, RcarError, RetryPolicy, Step, TeeKeyKind};
pub use kbs::TeeKind;
