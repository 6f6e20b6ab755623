//! The RCAR 0.4.0 relying party: the KBS HTTP server and the pieces its client shares.
//!
//! Always built (the attestation agent uses them too):
//! * [`binding`]: the report_data binding of nonce, TEE key and additional evidence;
//! * [`jwe`]: flattened JWE to the TEE key (`ECDH-ES+A256KW`/`RSA-OAEP-256`, `A256GCM`);
//! * [`token`]: the ES256 attestation token;
//! * [`problem`]: RFC 7807 error bodies.
//!
//! With feature `server`: [`KbsServer`] (HTTP/1 on hyper, HTTPS with rustls when a
//! certificate is configured), its [`ServerConfig`], the file-backed resource store and
//! the Rego resource policy.
//!
//! ```no_run
//! # #[cfg(feature = "server")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use kbs::server::{KbsServer, ServerConfig};
//! let config = ServerConfig::load(std::path::Path::new("kbs.toml"))?;
//! let listener = kbs::server::listen(config.listen)?;
//! KbsServer::new(config)?.serve(listener).await?;
//! # Ok(()) }
//! ```

pub mod binding;
pub mod jwe;
pub mod problem;
pub mod token;

#[cfg(feature = "server")]
mod config;
#[cfg(feature = "server")]
mod conn;
#[cfg(feature = "server")]
mod http;
#[cfg(feature = "server")]
mod policy;
#[cfg(feature = "server")]
mod sessions;
#[cfg(feature = "server")]
mod store;

pub use kbs_types;

#[cfg(feature = "server")]
pub use config::{ConfigError, ServerConfig};
#[cfg(feature = "server")]
pub use http::{
    listen, nofile_limit, raise_nofile_limit, tls_server_config, KbsServer, ServerError,
    LISTEN_BACKLOG,
};
#[cfg(feature = "server")]
pub use policy::{ResourcePolicy, ResourcePolicyError, DEFAULT_RESOURCE_POLICY};
#[cfg(feature = "server")]
pub use store::{ResourcePath, ResourceStore, StoreError};

/// Session cookie name.
pub const SESSION_COOKIE: &str = "kbs-session-id";
