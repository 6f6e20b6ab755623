//! `kbs.toml`: the server configuration.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! resource_dir = "/var/lib/kata-cc/kbs/resources"    # <dir>/<repo>/<type>/<tag>
//! reference_values = "/etc/kata-cc/kbs/reference.toml" # optional (closed default)
//! policy = "/etc/kata-cc/kbs/resource-policy.rego"     # optional (built-in default)
//! allow_simulated = false       # master switch for sim evidence (verifier and policy)
//! admin_key = "long-random-secret" # optional; without it the admin API is disabled
//! tdx_collateral_dir = "/etc/kata-cc/kbs/tdx"          # optional PCS files for TDX
//! tls_cert = "/etc/kata-cc/kbs/tls/cert.pem"  # with tls_key: HTTPS (PEM chain, leaf first)
//! tls_key = "/etc/kata-cc/kbs/tls/key.pem"    # PKCS#8, SEC1 or PKCS#1 PEM
//! insecure_http = false         # plain HTTP on a non-loopback address needs this
//! token_key = "/var/lib/kata-cc/kbs/token-key.pem" # ES256 key, created (0600) if missing
//! vcek_cache_dir = "/var/lib/kata-cc/kbs/vcek"      # optional local VCEK cache (SNP)
//! session_timeout_secs = 300
//! token_lifetime_secs = 300
//! max_body_bytes = 1048576
//! # Limits against floods (see docs/attestation.md, "KBS limits"):
//! max_pending_sessions = 10000  # challenge-only sessions; the oldest is evicted when full
//! max_attested_sessions = 10000 # attested sessions; the oldest is evicted when full
//! max_connections = 4096        # open connections; idle ones are evicted when full
//! header_timeout_secs = 10      # to receive a request's header (also the keep-alive idle time)
//! body_timeout_secs = 10        # to receive a request's body
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Server configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Root of the resource store.
    pub resource_dir: PathBuf,
    /// Reference values file (TOML, or JSON by extension); absent = accept nothing.
    #[serde(default)]
    pub reference_values: Option<PathBuf>,
    /// Resource policy (Rego, package `policy`, rule `allow`); absent = the default.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Accept simulated evidence. Overrides `allow_simulated` of the reference values.
    #[serde(default)]
    pub allow_simulated: bool,
    /// Bearer key of the admin API; absent disables it.
    #[serde(default)]
    pub admin_key: Option<String>,
    /// Directory of Intel PCS collateral for TDX; absent disables TDX.
    #[serde(default)]
    pub tdx_collateral_dir: Option<PathBuf>,
    /// Session lifetime (auth to last use), seconds.
    #[serde(default = "default_timeout")]
    pub session_timeout_secs: u64,
    /// Attestation token lifetime, seconds.
    #[serde(default = "default_timeout")]
    pub token_lifetime_secs: u64,
    /// Largest request body accepted.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Most challenge-only sessions (issued by `/auth`, not yet attested). When full, the
    /// oldest is evicted: new clients are never refused.
    #[serde(default = "default_max_sessions")]
    pub max_pending_sessions: usize,
    /// Most attested sessions. When full, the oldest is evicted (its client can attest
    /// again, or use its token).
    #[serde(default = "default_max_sessions")]
    pub max_attested_sessions: usize,
    /// Most connections open at once (lowered to fit `RLIMIT_NOFILE`). When full, the
    /// connection idle longest (no request in progress) is closed for the new one; with
    /// none idle, the new connection is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a complete request header, seconds, from the connection
    /// (or the previous response on a keep-alive connection).
    #[serde(default = "default_io_timeout")]
    pub header_timeout_secs: u64,
    /// Time a client has to send a complete request body, seconds.
    #[serde(default = "default_io_timeout")]
    pub body_timeout_secs: u64,
    /// TLS certificate chain (PEM, leaf first); with `tls_key` the server speaks HTTPS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address (secrets then cross the network
    /// encrypted only by the JWE; tokens and cookies in clear). Off by default.
    #[serde(default)]
    pub insecure_http: bool,
    /// File of the ES256 token signing key (PKCS#8 PEM). Created with mode 0600 when
    /// missing and reused afterwards, so tokens survive a restart; absent = a fresh key
    /// per start.
    #[serde(default)]
    pub token_key: Option<PathBuf>,
    /// Local VCEK cache directory for SNP evidence without a VCEK
    /// (`<dir>/<chip id hex>/bl<B>-tee<T>-snp<S>-ucode<U>.der`). Verified VCEKs from
    /// evidence are added to it. Nothing is fetched from AMD's KDS.
    #[serde(default)]
    pub vcek_cache_dir: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_timeout() -> u64 {
    300
}
fn default_max_body() -> usize {
    1 << 20
}
fn default_max_sessions() -> usize {
    10_000
}
fn default_max_connections() -> usize {
    4096
}
fn default_io_timeout() -> u64 {
    10
}

/// Why the configuration cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
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
    #[error("invalid kbs config")]
    Toml(#[source] toml::de::Error),
}

impl ServerConfig {
    /// A configuration with defaults for everything but the resource directory.
    pub fn new(resource_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: default_listen(),
            resource_dir: resource_dir.into(),
            reference_values: None,
            policy: None,
            allow_simulated: false,
            admin_key: None,
            tdx_collateral_dir: None,
            session_timeout_secs: default_timeout(),
            token_lifetime_secs: default_timeout(),
            max_body_bytes: default_max_body(),
            max_pending_sessions: default_max_sessions(),
            max_attested_sessions: default_max_sessions(),
            max_connections: default_max_connections(),
            header_timeout_secs: default_io_timeout(),
            body_timeout_secs: default_io_timeout(),
            tls_cert: None,
            tls_key: None,
            insecure_http: false,
            token_key: None,
            vcek_cache_dir: None,
        }
    }

    /// Parses TOML.
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        toml::from_str(s).map_err(ConfigError::Toml)
    }

    /// Loads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let s = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&s)
    }
}
