//! The RCAR HTTP/1 server on hyper, over TLS (rustls, ring provider) when the
//! configuration names a certificate and key, plain HTTP otherwise (loopback only
//! unless `insecure_http`).

use std::convert::Infallible;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kbs_types::{Attestation, TeePubKey};
use protocols::initdata;
use rand_core::{OsRng, RngCore};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::binding::{self, PROTOCOL_VERSION};
use super::config::ServerConfig;
use super::conn::ConnSlots;
use super::jwe;
use super::policy::{ResourcePolicy, ResourcePolicyError, DEFAULT_RESOURCE_POLICY};
use super::problem::Problem;
use super::sessions::{Lookup, SessionTable};
use super::store::{ResourcePath, ResourceStore, StoreError};
use super::token::{TokenKeyError, TokenSigner, ISSUER};
use super::SESSION_COOKIE;
use crate::{
    Allowed, Claims, ReferenceError, ReferenceValues, SimVerifier, SnpError, SnpVerifier,
    TdxCollateralStore, TdxError, TdxVerifier, TeeKind, Verifier,
};

/// Why the server cannot start or stops.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Reference values cannot be loaded.
    #[error("reference values")]
    Reference(#[source] ReferenceError),
    /// The resource policy cannot be read.
    #[error("cannot read resource policy {path}")]
    PolicyIo {
        /// File.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The resource policy does not compile.
    #[error("resource policy")]
    Policy(#[source] ResourcePolicyError),
    /// A verifier cannot be built.
    #[error("SNP/sim verifier")]
    Snp(#[source] SnpError),
    /// The TDX verifier cannot be built.
    #[error("TDX verifier")]
    Tdx(#[source] TdxError),
    /// Accepting a connection failed.
    #[error("accept")]
    Accept(#[source] std::io::Error),
    /// The token signing key file cannot be used.
    #[error("token signing key")]
    TokenKey(#[source] TokenKeyError),
    /// Only one of `tls_cert` and `tls_key` is set.
    #[error("tls_cert and tls_key must be set together")]
    TlsHalfConfigured,
    /// A TLS certificate or key file cannot be read or parsed.
    #[error("TLS {what} {path}: {reason}")]
    TlsFile {
        /// `certificate` or `key`.
        what: &'static str,
        /// File.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refuses the certificate/key pair.
    #[error("TLS configuration")]
    Tls(#[source] rustls::Error),
    /// Plain HTTP on a non-loopback address without `insecure_http`.
    #[error(
        "refusing plain HTTP on non-loopback address {0}: configure tls_cert and tls_key, or set insecure_http = true"
    )]
    InsecureHttp(std::net::SocketAddr),
}

struct Attested {
    claims: serde_json::Value,
    tee_pubkey: TeePubKey,
}

struct Session {
    tee: TeeKind,
    nonce: String,
    nonce_used: bool,
    attested: Option<Arc<Attested>>,
}

struct State {
    cfg: ServerConfig,
    verifiers: Vec<Box<dyn Verifier>>,
    reference: RwLock<ReferenceValues>,
    sessions: Mutex<SessionTable<Session>>,
    store: ResourceStore,
    policy: ResourcePolicy,
    signer: TokenSigner,
}

/// The KBS: RCAR endpoints, resource store, admin API.
#[derive(Clone)]
pub struct KbsServer {
    state: Arc<State>,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for KbsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KbsServer")
            .field("listen", &self.state.cfg.listen)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

type Resp = Response<Full<Bytes>>;

/// A request that fails with an RFC 7807 body.
struct Fail(Problem);

impl Fail {
    fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Self(Problem::new(status.as_u16(), kind, detail))
    }
    fn unauthorized(kind: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, kind, detail)
    }
    fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "MalformedRequest", detail)
    }
    fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", detail)
    }
}

/// `error: cause: cause…` (the whole source chain, once).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    respond(status, "application/json", v.to_string().into_bytes())
}

fn problem(p: &Problem) -> Resp {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    respond(
        status,
        "application/problem+json",
        serde_json::to_vec(p).unwrap_or_default(),
    )
}

fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    OsRng.fill_bytes(&mut b);
    B64.encode(b)
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
struct AuthRequest {
    version: String,
    tee: String,
    #[serde(default, rename = "extra-params")]
    _extra_params: serde_json::Value,
}

/// The rustls server configuration (ring provider, TLS 1.2 and 1.3, HTTP/1.1 ALPN) for
/// a PEM certificate chain and key.
pub fn tls_server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, ServerError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServerError::TlsFile {
            what: "certificate",
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ServerError::TlsFile {
            what: "certificate",
            path: cert.to_path_buf(),
            reason: "no CERTIFICATE in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| ServerError::TlsFile {
        what: "key",
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ServerError::Tls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(ServerError::Tls)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

impl KbsServer {
    /// Builds the server: loads reference values and policy, creates the verifiers (SNP
    /// with AMD's roots and the VCEK cache, sim, and TDX when collateral is
    /// configured), the token key (from `token_key` or fresh) and the TLS acceptor.
    pub fn new(cfg: ServerConfig) -> Result<Self, ServerError> {
        let reference = match &cfg.reference_values {
            Some(p) => ReferenceValues::load(p).map_err(ServerError::Reference)?,
            None => ReferenceValues::default(),
        };
        let rego = match &cfg.policy {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|source| ServerError::PolicyIo {
                    path: path.clone(),
                    source,
                })?
            }
            None => DEFAULT_RESOURCE_POLICY.to_owned(),
        };
        let policy =
            ResourcePolicy::new(&rego, cfg.allow_simulated).map_err(ServerError::Policy)?;
        let mut snp = SnpVerifier::amd().map_err(ServerError::Snp)?;
        if let Some(dir) = &cfg.vcek_cache_dir {
            snp = snp.with_vcek_cache(dir.clone());
        }
        let mut verifiers: Vec<Box<dyn Verifier>> = vec![
            Box::new(snp),
            Box::new(SimVerifier::new().map_err(ServerError::Snp)?),
        ];
        if let Some(dir) = &cfg.tdx_collateral_dir {
            let mut store = TdxCollateralStore::new();
            store.add_pcs_dir(dir).map_err(ServerError::Tdx)?;
            verifiers.push(Box::new(TdxVerifier::new(store).map_err(ServerError::Tdx)?));
        }
        let signer = match &cfg.token_key {
            Some(p) => TokenSigner::load_or_create(p).map_err(ServerError::TokenKey)?,
            None => TokenSigner::generate(),
        };
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(c), Some(k)) => Some(TlsAcceptor::from(Arc::new(tls_server_config(c, k)?))),
            (None, None) => None,
            _ => return Err(ServerError::TlsHalfConfigured),
        };
        let sessions = SessionTable::new(
            Duration::from_secs(cfg.session_timeout_secs),
            cfg.max_pending_sessions,
            cfg.max_attested_sessions,
        );
        Ok(Self {
            tls,
            state: Arc::new(State {
                store: ResourceStore::new(cfg.resource_dir.clone()),
                cfg,
                verifiers,
                reference: RwLock::new(reference),
                sessions: Mutex::new(sessions),
                policy,
                signer,
            }),
        })
    }

    /// Replaces (or adds) the verifier for its TEE kind; for tests with other roots.
    pub fn with_verifier(mut self, v: Box<dyn Verifier>) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.verifiers.retain(|x| x.tee() != v.tee());
            state.verifiers.push(v);
        }
        self
    }

    /// Whether connections are served over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Refuses plain HTTP on a non-loopback address unless `insecure_http` (what
    /// [`serve`](Self::serve) checks first).
    pub fn check_listener(&self, listener: &TcpListener) -> Result<(), ServerError> {
        if self.tls.is_none() && !self.state.cfg.insecure_http {
            let addr = listener.local_addr().map_err(ServerError::Accept)?;
            if !addr.ip().is_loopback() {
                return Err(ServerError::InsecureHttp(addr));
            }
        }
        Ok(())
    }

    /// Serves HTTP/1 connections (over TLS when configured) from `listener`; returns only
    /// when the listener is refused (plain HTTP on a non-loopback address needs
    /// `insecure_http`). Accept errors (out of file descriptors, aborted connections…)
    /// are logged and retried: they never stop the server.
    ///
    /// At most `max_connections` connections are open (lowered to fit the process's
    /// `RLIMIT_NOFILE`); when full, the connection idle longest gives way (see
    /// `docs/attestation.md`, "KBS limits").
    pub async fn serve(self, listener: TcpListener) -> Result<(), ServerError> {
        self.check_listener(&listener)?;
        let max = fd_budget(self.state.cfg.max_connections);
        let slots = ConnSlots::new(max);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(
                self.state.cfg.header_timeout_secs.max(1),
            ))
            .max_header_size(MAX_HEADER_BYTES);
        let mut accept_errors = AcceptErrors::default();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_errors.backoff(&e).await;
                    continue;
                }
            };
            // Full of connections that are all inside a request: close this one now.
            let Some(slot) = slots.admit() else {
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let slot = Arc::new(slot);
            let state = self.state.clone();
            let tls = self.tls.clone();
            let http = http.clone();
            tokio::spawn(async move {
                let kill = slot.kill.clone();
                let svc_slot = slot.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    let slot = svc_slot.clone();
                    async move {
                        slot.busy();
                        let r = handle(state, req).await;
                        slot.idle();
                        Ok::<_, Infallible>(r)
                    }
                });
                // A failed handshake or broken connection concerns only its client.
                let conn = async {
                    match tls {
                        Some(acceptor) => {
                            let handshake = tokio::time::timeout(
                                TLS_HANDSHAKE_TIMEOUT,
                                acceptor.accept(stream),
                            );
                            if let Ok(Ok(s)) = handshake.await {
                                let _ = http.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                };
                // Evicted for a newer connection: drop it (the socket closes).
                tokio::select! {
                    () = conn => {}
                    () = kill.notified() => {}
                }
                drop(slot);
            });
        }
    }
}

/// Listen backlog of [`listen`] (the kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket for [`KbsServer::serve`] with a backlog of [`LISTEN_BACKLOG`]
/// (tokio's `TcpListener::bind` uses 1024): a burst of connections that outruns
/// `accept` for a moment then still fits, instead of the kernel dropping the handshakes
/// of honest clients, who would retry only after a second.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// TLS handshake deadline.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request header (start line and fields); hyper answers 431 beyond it.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// File descriptors kept free for everything but client connections (listener, store,
/// reference values, VCEK cache, runtime).
const RESERVED_FDS: u64 = 64;

/// `max_connections`, lowered so that the connections fit in the soft `RLIMIT_NOFILE`.
fn fd_budget(max_connections: usize) -> usize {
    let Ok(soft) = nofile_limit().map(|(soft, _)| soft) else {
        return max_connections;
    };
    let budget = usize::try_from(soft.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX);
    if budget < max_connections {
        eprintln!(
            "kata-cc-kbs: max_connections {max_connections} lowered to {budget} (RLIMIT_NOFILE {soft})"
        );
        budget
    } else {
        max_connections
    }
}

/// The process's (soft, hard) `RLIMIT_NOFILE`; `u64::MAX` for unlimited.
pub fn nofile_limit() -> std::io::Result<(u64, u64)> {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    Ok((l.current.unwrap_or(u64::MAX), l.maximum.unwrap_or(u64::MAX)))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new (soft, hard).
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let raised = rustix::process::Rlimit {
        current: l.maximum,
        maximum: l.maximum,
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, raised)?;
    nofile_limit()
}

/// Backoff and rate-limited logging for `accept` errors.
#[derive(Default)]
struct AcceptErrors {
    last_log: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    /// Out of descriptors or memory: wait 50 ms for connections to close. A connection
    /// that failed before it was accepted (ECONNABORTED, …): go on at once. Anything
    /// else: wait 10 ms (no busy loop).
    async fn backoff(&mut self, e: &std::io::Error) {
        use rustix::io::Errno;
        let errno = Errno::from_io_error(e);
        let one_of = |set: &[Errno]| errno.is_some_and(|n| set.contains(&n));
        let pause = if one_of(&[Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]) {
            Some(Duration::from_millis(50))
        } else if one_of(&[
            Errno::CONNABORTED,
            Errno::CONNRESET,
            Errno::PROTO,
            Errno::PERM,
        ]) {
            None
        } else {
            Some(Duration::from_millis(10))
        };
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            eprintln!(
                "kata-cc-kbs: accept failed: {e} ({} more since the last message); retrying",
                self.unlogged
            );
            self.last_log = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        match pause {
            Some(d) => tokio::time::sleep(d).await,
            None => tokio::task::yield_now().await,
        }
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let r = match (&method, path.as_str()) {
        (&Method::POST, "/kbs/v0/auth") => auth(&state, req).await,
        (&Method::POST, "/kbs/v0/attest") => attest(&state, req).await,
        (&Method::PUT, "/kbs/v0/reference-values") => set_reference(&state, req).await,
        (m, p) if p.starts_with("/kbs/v0/resource/") => {
            let rest = &p["/kbs/v0/resource/".len()..];
            match *m {
                Method::GET => get_resource(&state, &req, rest),
                Method::POST => set_resource(&state, req, rest.to_owned()).await,
                _ => Err(Fail::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    format!("{m} not allowed on {p}"),
                )),
            }
        }
        (m, p) => Err(Fail::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no endpoint {m} {p}"),
        )),
    };
    r.unwrap_or_else(|Fail(p)| problem(&p))
}

async fn body(state: &State, req: Request<Incoming>) -> Result<Bytes, Fail> {
    let max = state.cfg.max_body_bytes;
    let too_large = || {
        Fail::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("request body larger than {max} bytes"),
        )
    };
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
        let len: usize = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Fail::bad_request("invalid Content-Length"))?;
        if len > max {
            return Err(too_large());
        }
    }
    let timeout = Duration::from_secs(state.cfg.body_timeout_secs.max(1));
    let read = tokio::time::timeout(timeout, Limited::new(req.into_body(), max).collect());
    match read.await {
        Err(_) => Err(Fail::new(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeout",
            format!("request body not received within {} s", timeout.as_secs()),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(Fail::bad_request(format!("cannot read body: {e}"))),
    }
}

fn parse_json<'a, T: Deserialize<'a>>(what: &str, b: &'a [u8]) -> Result<T, Fail> {
    serde_json::from_slice(b).map_err(|e| Fail::bad_request(format!("malformed {what}: {e}")))
}

fn cookie(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_owned())
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

async fn auth(state: &State, req: Request<Incoming>) -> Result<Resp, Fail> {
    let b = body(state, req).await?;
    let r: AuthRequest = parse_json("auth request", &b)?;
    if r.version != PROTOCOL_VERSION {
        return Err(Fail::bad_request(format!(
            "unsupported protocol version {:?}: this KBS speaks exactly {PROTOCOL_VERSION:?}",
            r.version
        )));
    }
    let tee = match r.tee.as_str() {
        "snp" => TeeKind::Snp,
        "tdx" => TeeKind::Tdx,
        "sample" | "sim" => TeeKind::Sim,
        other => {
            return Err(Fail::bad_request(format!(
                "unsupported tee {other:?} (snp, tdx, sample/sim)"
            )))
        }
    };
    let nonce = random_b64(32);
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    let id = hex::encode(id);
    // A full table evicts its oldest challenge: a flood of /auth cannot refuse clients.
    state
        .sessions
        .lock()
        .map_err(|_| Fail::internal("session table poisoned"))?
        .insert_pending(
            id.clone(),
            Session {
                tee,
                nonce: nonce.clone(),
                nonce_used: false,
                attested: None,
            },
            Instant::now(),
        );
    let mut resp = json(
        StatusCode::OK,
        &serde_json::json!({"nonce": nonce, "extra-params": ""}),
    );
    let c = format!(
        "{SESSION_COOKIE}={id}; Path=/kbs; HttpOnly; Max-Age={}",
        state.cfg.session_timeout_secs
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().insert(SET_COOKIE, v);
    }
    Ok(resp)
}

/// Finds a live session; `f` runs with the table locked.
fn with_session<T>(
    state: &State,
    id: Option<&str>,
    f: impl FnOnce(&mut Session) -> Result<T, Fail>,
) -> Result<T, Fail> {
    let id = id.ok_or_else(|| {
        Fail::unauthorized("MissingCookie", format!("no {SESSION_COOKIE} cookie"))
    })?;
    let mut s = state
        .sessions
        .lock()
        .map_err(|_| Fail::internal("session table poisoned"))?;
    match s.get_mut(id, Instant::now()) {
        Ok(sess) => f(sess),
        Err(Lookup::Unknown) => Err(Fail::unauthorized(
            "InvalidCookie",
            "unknown session (never issued, expired or evicted): start again with /auth",
        )),
        Err(Lookup::Expired) => Err(Fail::unauthorized("ExpiredCookie", "session expired")),
    }
}

async fn attest(state: &Arc<State>, req: Request<Incoming>) -> Result<Resp, Fail> {
    let id = cookie(&req);
    let b = body(state, req).await?;
    let a: Attestation = parse_json("attestation request", &b)?;
    // The nonce is consumed by the first attempt, successful or not.
    let (tee, nonce) = with_session(state, id.as_deref(), |s| {
        if s.nonce_used {
            return Err(Fail::unauthorized(
                "NonceReplay",
                "nonce already used: start a new session with /auth",
            ));
        }
        s.nonce_used = true;
        Ok((s.tee, s.nonce.clone()))
    })?;
    if a.runtime_data.nonce != nonce {
        return Err(Fail::unauthorized(
            "NonceMismatch",
            "runtime-data nonce is not this session's nonce",
        ));
    }
    let rd = binding::report_data(
        &nonce,
        &a.runtime_data.tee_pubkey,
        &a.tee_evidence.additional_evidence,
    )
    .map_err(|e| Fail::bad_request(chain(&e)))?;
    let reference = {
        let r = state
            .reference
            .read()
            .map_err(|_| Fail::internal("reference values poisoned"))?;
        let mut r = r.clone();
        r.allow_simulated = state.cfg.allow_simulated;
        r
    };
    // Reference values that name the initdata digests (a list, not "any") expect it.
    let expects_init_data = ExpectsInitData {
        host_data: matches!(reference.host_data, Allowed::OneOf(_)),
        mrconfigid: matches!(reference.mrconfigid, Allowed::OneOf(_)),
    };
    let st = state.clone();
    let evidence = a.tee_evidence.primary_evidence;
    let verified = tokio::task::spawn_blocking(move || {
        let v = st
            .verifiers
            .iter()
            .find(|v| v.tee() == tee)
            .ok_or_else(|| format!("no verifier for {tee:?} configured"))?;
        v.verify(&evidence, &rd, &reference, SystemTime::now())
            .map_err(|e| chain(&e))
    })
    .await
    .map_err(|e| Fail::internal(format!("verifier task: {e}")))?;
    let claims: Claims = verified
        .map_err(|e| Fail::unauthorized("AttestationFailed", format!("attestation failed: {e}")))?;
    let init_data = check_init_data(a.init_data.as_ref(), &claims, expects_init_data)?;
    let mut claims = serde_json::to_value(&claims).map_err(|e| Fail::internal(e.to_string()))?;
    // For the resource policy (`input.claims.init_data`) and the token.
    if let Some(obj) = claims.as_object_mut() {
        obj.insert("init_data".into(), init_data);
    }
    let now = now_secs();
    let token = state.signer.sign(&serde_json::json!({
        "iss": ISSUER,
        "iat": now,
        "exp": now + state.cfg.token_lifetime_secs,
        "tee-pubkey": a.runtime_data.tee_pubkey,
        "claims": claims,
    }));
    let attested = Arc::new(Attested {
        claims,
        tee_pubkey: a.runtime_data.tee_pubkey,
    });
    // Moved to the attested class (kept apart from the challenges a flood of /auth
    // evicts); stored even if its challenge was evicted during verification.
    if let Some(id) = id {
        state
            .sessions
            .lock()
            .map_err(|_| Fail::internal("session table poisoned"))?
            .insert_attested(
                id,
                Session {
                    tee,
                    nonce,
                    nonce_used: true,
                    attested: Some(attested),
                },
                Instant::now(),
            );
    }
    Ok(json(StatusCode::OK, &serde_json::json!({ "token": token })))
}

/// Which initdata fields the reference values pin.
#[derive(Clone, Copy)]
struct ExpectsInitData {
    host_data: bool,
    mrconfigid: bool,
}

/// The initdata check of `/attest`, after the verifier accepted the evidence (so the
/// TEE's HOST_DATA / MRCONFIGID already matched the reference values).
///
/// * `init-data` sent: its digest (over the body as sent, with the algorithm it names)
///   must equal the TEE's field.
/// * not sent: refused when the reference values pin the field (a list, not `"any"`)
///   and the TEE reports a non-zero value, i.e. the guest was launched with an initdata
///   document the client did not show. An all-zero field means "launched without
///   initdata" (what the runtime does without one), and needs nothing.
///
/// Returns `{"format", "digest"}` (hex) of the checked document, or `null`.
fn check_init_data(
    init: Option<&kbs_types::InitData>,
    claims: &Claims,
    expects: ExpectsInitData,
) -> Result<serde_json::Value, Fail> {
    let (field, key, got, pinned) = match (&claims.snp, &claims.tdx) {
        (Some(s), _) => (
            "HOST_DATA",
            "host_data",
            s.host_data.0.to_vec(),
            expects.host_data,
        ),
        (_, Some(t)) => (
            "MRCONFIGID",
            "mrconfigid",
            t.mrconfigid.0.to_vec(),
            expects.mrconfigid,
        ),
        _ => return Err(Fail::internal("claims without TEE details")),
    };
    let Some(init) = init else {
        if pinned && got.iter().any(|b| *b != 0) {
            return Err(Fail::unauthorized(
                "InitDataMissing",
                format!(
                    "attestation failed: the request has no `init-data`, but the reference values \
                     pin {field} ({key}) and the TEE reports {}: send the initdata document \
                     the guest was launched with",
                    hex::encode(&got)
                ),
            ));
        }
        return Ok(serde_json::Value::Null);
    };
    if init.format != "toml" {
        return Err(Fail::bad_request(format!(
            "init-data format {:?} unsupported (toml)",
            init.format
        )));
    }
    let parsed = initdata::InitData::parse(&init.body)
        .map_err(|e| Fail::bad_request(format!("init-data: {}", chain(&e))))?;
    let d = initdata::digest(parsed.algorithm, init.body.as_bytes());
    let want = if claims.snp.is_some() {
        initdata::host_data(&d).to_vec()
    } else {
        initdata::mrconfigid(&d).to_vec()
    };
    if want != got {
        return Err(Fail::unauthorized(
            "AttestationFailed",
            format!(
                "attestation failed: init-data digest {} does not match {field} {}",
                hex::encode(want),
                hex::encode(got)
            ),
        ));
    }
    Ok(serde_json::json!({"format": init.format, "digest": hex::encode(&d)}))
}

fn get_resource(state: &State, req: &Request<Incoming>, rest: &str) -> Result<Resp, Fail> {
    let attested = if let Some(t) = bearer(req) {
        let p = state.signer.verify(t, now_secs()).map_err(|e| {
            Fail::unauthorized("TokenInvalid", format!("attestation token refused: {e}"))
        })?;
        let tee_pubkey: TeePubKey = serde_json::from_value(p["tee-pubkey"].clone())
            .map_err(|_| Fail::unauthorized("TokenInvalid", "token without tee-pubkey"))?;
        Arc::new(Attested {
            claims: p["claims"].clone(),
            tee_pubkey,
        })
    } else {
        with_session(state, cookie(req).as_deref(), |s| {
            s.attested.clone().ok_or_else(|| {
                Fail::unauthorized(
                    "NotAttested",
                    "session has not attested (POST /attest first)",
                )
            })
        })?
    };
    let path = ResourcePath::parse(rest).map_err(|e| Fail::bad_request(chain(&e)))?;
    let input = serde_json::json!({
        "claims": attested.claims,
        "tee-pubkey": attested.tee_pubkey,
        "resource": {"repo": path.repo, "type": path.kind, "tag": path.tag, "path": path.to_string()},
    });
    let allowed = state
        .policy
        .allows(&input)
        .map_err(|e| Fail::internal(chain(&e)))?;
    if !allowed {
        return Err(Fail::unauthorized(
            "PolicyDeny",
            format!("resource policy denied access to {path}"),
        ));
    }
    let data = state.store.get(&path).map_err(|e| match e {
        StoreError::NotFound(_) => Fail::new(StatusCode::NOT_FOUND, "ResourceNotFound", chain(&e)),
        e => Fail::internal(chain(&e)),
    })?;
    let jwe = jwe::encrypt(&attested.tee_pubkey, &data)
        .map_err(|e| Fail::bad_request(format!("cannot encrypt to the TEE key: {}", chain(&e))))?;
    let v = serde_json::to_value(jwe).map_err(|e| Fail::internal(e.to_string()))?;
    Ok(json(StatusCode::OK, &v))
}

fn admin(state: &State, req: &Request<Incoming>) -> Result<(), Fail> {
    let Some(key) = &state.cfg.admin_key else {
        return Err(Fail::unauthorized(
            "AdminDisabled",
            "admin API disabled (no admin_key)",
        ));
    };
    match bearer(req) {
        Some(t) if ct_eq(t.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(Fail::unauthorized("AdminAuth", "wrong admin key")),
        None => Err(Fail::unauthorized(
            "AdminAuth",
            "admin API needs Authorization: Bearer <admin key>",
        )),
    }
}

async fn set_resource(state: &State, req: Request<Incoming>, rest: String) -> Result<Resp, Fail> {
    admin(state, &req)?;
    let path = ResourcePath::parse(&rest).map_err(|e| Fail::bad_request(chain(&e)))?;
    let b = body(state, req).await?;
    state
        .store
        .set(&path, &b)
        .map_err(|e| Fail::internal(chain(&e)))?;
    Ok(respond(StatusCode::OK, "text/plain", Vec::new()))
}

async fn set_reference(state: &State, req: Request<Incoming>) -> Result<Resp, Fail> {
    admin(state, &req)?;
    let b = body(state, req).await?;
    let s =
        std::str::from_utf8(&b).map_err(|_| Fail::bad_request("reference values are not UTF-8"))?;
    let r = if s.trim_start().starts_with('{') {
        ReferenceValues::from_json_str(s)
    } else {
        ReferenceValues::from_toml_str(s)
    }
    .map_err(|e| Fail::bad_request(chain(&e)))?;
    *state
        .reference
        .write()
        .map_err(|_| Fail::internal("reference values poisoned"))? = r;
    Ok(respond(StatusCode::OK, "text/plain", Vec::new()))
}
