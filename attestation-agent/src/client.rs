//! The RCAR 0.4.0 client: auth → attest → resource → JWE decrypt, over HTTPS (rustls,
//! ring provider; the KBS CA from the configuration or the system roots) or plain HTTP.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, HOST, SET_COOKIE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use kbs::server::binding::{self, BindingError, PROTOCOL_VERSION};
use kbs::server::jwe::{FlattenedJwe, JweError, TeeKeyPair};
use kbs::server::kbs_types::{Attestation, CompositeEvidence, InitData, RuntimeData};
use kbs::server::problem::Problem;
use kbs::server::SESSION_COOKIE;
use kbs::TeeKind;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::attester::{Attester, AttesterError};

/// The RCAR step that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `POST /kbs/v0/auth`.
    Auth,
    /// `POST /kbs/v0/attest`.
    Attest,
    /// `GET /kbs/v0/resource/…`.
    Resource,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auth => "auth",
            Self::Attest => "attest",
            Self::Resource => "resource",
        })
    }
}

/// Why a resource could not be obtained. Each variant names the step.
#[derive(Debug, thiserror::Error)]
pub enum RcarError {
    /// The KBS URL or the `kbs:///` URI is not usable.
    #[error("invalid URL {0:?}")]
    Url(String),
    /// No TCP connection (retried).
    #[error("{step}: cannot connect to the KBS")]
    Connect {
        /// Step.
        step: Step,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, protocol).
    #[error("{step}: TLS handshake with the KBS failed")]
    Tls {
        /// Step.
        step: Step,
        /// Cause (a rustls error for certificate problems).
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration (CA certificate) is unusable.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// HTTP exchange failed (connection reset, bad response).
    #[error("{step}: HTTP exchange with the KBS failed")]
    Http {
        /// Step.
        step: Step,
        /// Cause.
        #[source]
        source: hyper::Error,
    },
    /// The KBS refused the auth request.
    #[error("auth: KBS answered {status}: {detail}")]
    Auth {
        /// HTTP status.
        status: u16,
        /// RFC 7807 detail (or the body).
        detail: String,
    },
    /// The KBS refused the evidence.
    #[error("attest: KBS answered {status}: {detail}")]
    Attest {
        /// HTTP status.
        status: u16,
        /// RFC 7807 detail (or the body).
        detail: String,
    },
    /// The KBS refused the resource request.
    #[error("resource: KBS answered {status}: {detail}")]
    Resource {
        /// HTTP status.
        status: u16,
        /// RFC 7807 detail (or the body).
        detail: String,
    },
    /// A 2xx answer that does not follow the protocol.
    #[error("{step}: unexpected KBS answer: {what}")]
    Protocol {
        /// Step.
        step: Step,
        /// What is wrong.
        what: String,
    },
    /// The attester could not produce evidence.
    #[error("attest: cannot produce evidence")]
    Evidence(#[source] AttesterError),
    /// The TEE key cannot be generated or exported.
    #[error("attest: TEE key")]
    Key(#[source] JweError),
    /// The runtime data cannot be bound.
    #[error("attest: report data binding")]
    Binding(#[source] BindingError),
    /// The resource JWE does not open with the session key.
    #[error("resource: cannot decrypt the JWE")]
    Decrypt(#[source] JweError),
}

impl RcarError {
    fn retryable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Http { .. } => true,
            // Certificate and protocol errors come as InvalidData: retrying cannot help.
            Self::Tls { source, .. } => source.kind() != std::io::ErrorKind::InvalidData,
            Self::Auth { status, .. }
            | Self::Attest { status, .. }
            | Self::Resource { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Retries on connect errors and 5xx: `attempts` tries in all, delay doubling from
/// `initial` up to `max`.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Total tries (at least 1).
    pub attempts: u32,
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }
}

/// Which TEE key the client generates per session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TeeKeyKind {
    /// EC P-256 (`ECDH-ES+A256KW`), the default.
    #[default]
    Ec,
    /// RSA with this many bits (`RSA-OAEP-256`).
    Rsa(usize),
}

/// Parses `kbs:///repo/type/tag` into `repo/type/tag`.
pub fn parse_kbs_uri(uri: &str) -> Result<String, RcarError> {
    let rest = uri
        .strip_prefix("kbs:///")
        .ok_or_else(|| RcarError::Url(uri.to_owned()))?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(RcarError::Url(uri.to_owned()));
    }
    Ok(rest.to_owned())
}

/// How the client reaches the KBS.
#[derive(Clone)]
enum Transport {
    Http,
    Https {
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    },
}

fn tls_client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, RcarError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RcarError::TlsConfig(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// The system's root certificates (an empty store when there are none, as in the
/// guest initramfs: the handshake then fails naming the unknown issuer).
fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A malformed system certificate is skipped, as every TLS client does.
        let _ = roots.add(cert);
    }
    roots
}

/// An RCAR client for one KBS and one attester.
pub struct KbsClient {
    authority: String,
    transport: Transport,
    attester: Arc<dyn Attester>,
    key_kind: TeeKeyKind,
    retry: RetryPolicy,
    init_data: Option<String>,
    /// The last attested session, reused (with its token) by [`KbsClient::get_resource`]
    /// until the KBS refuses it.
    session: std::sync::Mutex<Option<Arc<Session>>>,
}

impl std::fmt::Debug for KbsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KbsClient")
            .field("authority", &self.authority)
            .field("https", &matches!(self.transport, Transport::Https { .. }))
            .field("tee", &self.attester.tee())
            .field("key_kind", &self.key_kind)
            .finish_non_exhaustive()
    }
}

/// An attested session: cookie, token and the private TEE key.
struct Session {
    cookie: String,
    token: String,
    key: TeeKeyPair,
}

struct Answer {
    status: StatusCode,
    cookie: Option<String>,
    body: Bytes,
}

impl KbsClient {
    /// A client for `https://host[:port]` (verified against the system roots until
    /// [`with_ca_cert_pem`](Self::with_ca_cert_pem) names the KBS CA) or
    /// `http://host[:port]`.
    pub fn new(kbs_url: &str, attester: Arc<dyn Attester>) -> Result<Self, RcarError> {
        let bad = || RcarError::Url(kbs_url.to_owned());
        let (https, rest) = if let Some(r) = kbs_url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = kbs_url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(bad());
        }
        // host, [v6], host:port, [v6]:port
        let (host, has_port) = match authority.strip_prefix('[') {
            Some(r) => {
                let (h, after) = r.split_once(']').ok_or_else(bad)?;
                if !(after.is_empty() || after.starts_with(':')) {
                    return Err(bad());
                }
                if let Some(port) = after.strip_prefix(':') {
                    port.parse::<u16>().map_err(|_| bad())?;
                }
                (h, !after.is_empty())
            }
            None => match authority.rsplit_once(':') {
                Some((h, port)) if !h.contains(':') && port.parse::<u16>().is_ok() => (h, true),
                Some(_) => return Err(bad()),
                None => (authority, false),
            },
        };
        if host.is_empty() {
            return Err(bad());
        }
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if https { 443 } else { 80 })
        };
        let transport = if https {
            let name = ServerName::try_from(host.to_owned()).map_err(|_| bad())?;
            Transport::Https {
                config: Arc::new(tls_client_config(system_roots())?),
                name,
            }
        } else {
            Transport::Http
        };
        Ok(Self {
            authority,
            transport,
            attester,
            key_kind: TeeKeyKind::Ec,
            retry: RetryPolicy::default(),
            init_data: None,
            session: std::sync::Mutex::new(None),
        })
    }

    /// Chooses the TEE key type.
    pub fn with_key_kind(mut self, k: TeeKeyKind) -> Self {
        self.key_kind = k;
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, r: RetryPolicy) -> Self {
        self.retry = r;
        self
    }

    /// Trusts only the CA certificate(s) in `pem` for an `https://` KBS (the `cert` of
    /// CoCo's `aa.toml`). Refused for an `http://` URL, where it would protect nothing.
    pub fn with_ca_cert_pem(mut self, pem: &str) -> Result<Self, RcarError> {
        let Transport::Https { name, .. } = &self.transport else {
            return Err(RcarError::TlsConfig(
                "a CA certificate is configured but the KBS URL is http://".into(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert =
                cert.map_err(|e| RcarError::TlsConfig(format!("KBS CA certificate PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| RcarError::TlsConfig(format!("KBS CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(RcarError::TlsConfig(
                "KBS CA certificate PEM holds no CERTIFICATE".into(),
            ));
        }
        self.transport = Transport::Https {
            config: Arc::new(tls_client_config(roots)?),
            name: name.clone(),
        };
        Ok(self)
    }

    /// Sends this initdata TOML (as measured) with the evidence.
    pub fn with_init_data(mut self, toml: impl Into<String>) -> Self {
        self.init_data = Some(toml.into());
        self
    }

    async fn exchange(
        &self,
        step: Step,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        bearer: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, RcarError> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|source| RcarError::Connect { step, source })?;
        let _ = stream.set_nodelay(true);
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority);
        if let Some(c) = cookie {
            b = b.header(COOKIE, format!("{SESSION_COOKIE}={c}"));
        }
        if let Some(t) = bearer {
            b = b.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            b = b.header(CONTENT_TYPE, "application/json");
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| RcarError::Url(e.to_string()))?;
        match &self.transport {
            Transport::Http => Self::send(step, stream, req).await,
            Transport::Https { config, name } => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|source| RcarError::Tls { step, source })?;
                Self::send(step, tls, req).await
            }
        }
    }

    /// One HTTP/1 request on a fresh connection.
    async fn send<IO>(step: Step, io: IO, req: Request<Full<Bytes>>) -> Result<Answer, RcarError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http = |source| RcarError::Http { step, source };
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http)?;
        let conn = tokio::spawn(conn);
        let resp = send.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let cookie = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == SESSION_COOKIE)
            .map(|(_, v)| v.to_owned());
        let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
        conn.abort();
        Ok(Answer {
            status,
            cookie,
            body,
        })
    }

    fn refused(step: Step, a: &Answer) -> RcarError {
        let status = a.status.as_u16();
        let detail = serde_json::from_slice::<Problem>(&a.body)
            .map(|p| p.detail)
            .unwrap_or_else(|_| String::from_utf8_lossy(&a.body).into_owned());
        match step {
            Step::Auth => RcarError::Auth { status, detail },
            Step::Attest => RcarError::Attest { status, detail },
            Step::Resource => RcarError::Resource { status, detail },
        }
    }

    async fn attest_once(&self) -> Result<Session, RcarError> {
        let tee = match self.attester.tee() {
            TeeKind::Snp => "snp",
            TeeKind::Tdx => "tdx",
            TeeKind::Sim => "sample",
        };
        let auth = serde_json::json!({"version": PROTOCOL_VERSION, "tee": tee, "extra-params": ""});
        let a = self
            .exchange(
                Step::Auth,
                Method::POST,
                "/kbs/v0/auth",
                None,
                None,
                Some(auth.to_string().into_bytes()),
            )
            .await?;
        if !a.status.is_success() {
            return Err(Self::refused(Step::Auth, &a));
        }
        let cookie = a.cookie.clone().ok_or_else(|| RcarError::Protocol {
            step: Step::Auth,
            what: format!("no {SESSION_COOKIE} cookie"),
        })?;
        let challenge: serde_json::Value =
            serde_json::from_slice(&a.body).map_err(|e| RcarError::Protocol {
                step: Step::Auth,
                what: format!("challenge JSON: {e}"),
            })?;
        let nonce = challenge["nonce"]
            .as_str()
            .ok_or_else(|| RcarError::Protocol {
                step: Step::Auth,
                what: "challenge without nonce".into(),
            })?
            .to_owned();

        let key = match self.key_kind {
            TeeKeyKind::Ec => TeeKeyPair::generate_ec(),
            TeeKeyKind::Rsa(bits) => TeeKeyPair::generate_rsa(bits).map_err(RcarError::Key)?,
        };
        let jwk = key.public_jwk().map_err(RcarError::Key)?;
        let rd = binding::report_data(&nonce, &jwk, "").map_err(RcarError::Binding)?;
        let evidence = self.attester.evidence(&rd).map_err(RcarError::Evidence)?;
        let att = Attestation {
            init_data: self.init_data.as_ref().map(|b| InitData {
                format: "toml".into(),
                body: b.clone(),
            }),
            runtime_data: RuntimeData {
                nonce,
                tee_pubkey: jwk,
            },
            tee_evidence: CompositeEvidence {
                primary_evidence: evidence,
                additional_evidence: String::new(),
            },
        };
        let body = serde_json::to_vec(&att).map_err(|e| RcarError::Protocol {
            step: Step::Attest,
            what: e.to_string(),
        })?;
        let a = self
            .exchange(
                Step::Attest,
                Method::POST,
                "/kbs/v0/attest",
                Some(&cookie),
                None,
                Some(body),
            )
            .await?;
        if !a.status.is_success() {
            return Err(Self::refused(Step::Attest, &a));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&a.body).map_err(|e| RcarError::Protocol {
                step: Step::Attest,
                what: format!("attestation response JSON: {e}"),
            })?;
        let token = v["token"]
            .as_str()
            .ok_or_else(|| RcarError::Protocol {
                step: Step::Attest,
                what: "response without token".into(),
            })?
            .to_owned();
        Ok(Session { cookie, token, key })
    }

    async fn fetch(&self, s: &Session, path: &str, use_token: bool) -> Result<Vec<u8>, RcarError> {
        let url = format!("/kbs/v0/resource/{path}");
        let a = if use_token {
            self.exchange(
                Step::Resource,
                Method::GET,
                &url,
                None,
                Some(&s.token),
                None,
            )
            .await?
        } else {
            self.exchange(
                Step::Resource,
                Method::GET,
                &url,
                Some(&s.cookie),
                None,
                None,
            )
            .await?
        };
        if !a.status.is_success() {
            return Err(Self::refused(Step::Resource, &a));
        }
        let jwe: FlattenedJwe =
            serde_json::from_slice(&a.body).map_err(|e| RcarError::Protocol {
                step: Step::Resource,
                what: format!("JWE JSON: {e}"),
            })?;
        s.key.decrypt(&jwe).map_err(RcarError::Decrypt)
    }

    async fn retrying<T, F, Fut>(&self, mut f: F) -> Result<T, RcarError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RcarError>>,
    {
        let mut delay = self.retry.initial;
        let mut left = self.retry.attempts.max(1);
        loop {
            left -= 1;
            match f().await {
                Err(e) if left > 0 && e.retryable() => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.retry.max);
                }
                r => return r,
            }
        }
    }

    /// Fetches `kbs:///repo/type/tag`, decrypted. The first call attests (auth +
    /// attest); later ones reuse that session's token and attest again only when the
    /// KBS refuses it (expired token, policy change) or the request fails.
    pub async fn get_resource(&self, uri: &str) -> Result<Vec<u8>, RcarError> {
        let path = parse_kbs_uri(uri)?;
        let cached = self.session.lock().map(|g| g.clone()).unwrap_or(None);
        if let Some(s) = cached {
            // Expired or refused: attest again below.
            if let Ok(v) = self.fetch(&s, &path, true).await {
                return Ok(v);
            }
        }
        self.retrying(|| async {
            let s = Arc::new(self.attest_once().await?);
            let v = self.fetch(&s, &path, false).await?;
            if let Ok(mut g) = self.session.lock() {
                *g = Some(s);
            }
            Ok(v)
        })
        .await
    }

    /// Attests and fetches several resources in one session; the later ones with the
    /// attestation token as bearer (exercising both credentials).
    pub async fn get_resources(&self, uris: &[&str]) -> Result<Vec<Vec<u8>>, RcarError> {
        let paths = uris
            .iter()
            .map(|u| parse_kbs_uri(u))
            .collect::<Result<Vec<_>, _>>()?;
        self.retrying(|| async {
            let s = self.attest_once().await?;
            let mut out = Vec::with_capacity(paths.len());
            for (i, p) in paths.iter().enumerate() {
                out.push(self.fetch(&s, p, i > 0).await?);
            }
            Ok(out)
        })
        .await
    }

    /// Only auth + attest; returns the attestation token (e.g. for diagnostics).
    pub async fn attest(&self) -> Result<String, RcarError> {
        self.retrying(|| async { self.attest_once().await.map(|s| s.token) })
            .await
    }
}
