//! The workload-facing endpoint: a small HTTP/1 server on `127.0.0.1:8006` inside the
//! VM, on the paths of Confidential Containers' `api-server-rest`, so a container (they
//! share the VM's network) can fetch secrets after attestation:
//!
//! * `GET /cdh/resource/<repo>/<type>/<tag>`: the KBS resource `kbs:///repo/type/tag`,
//!   decrypted (through the pod's RCAR client: attested first). `200` with the bytes.
//! * `GET /aa/evidence?runtime_data=<string>`: TEE evidence (JSON) whose report data is
//!   the string's bytes zero-padded to 64 (longer is refused). `200` with the JSON.
//!
//! Errors are an HTTP status and one line of text: `400` malformed request, `404`
//! unknown path or resource, `405` not GET, `403` the KBS refused (attestation or
//! resource policy), `502` the KBS cannot be reached or fails, `500` a local failure.
//! The server runs only when attestation is configured (a TEE and a KBS); the host
//! cannot reach it (loopback of the guest).

use std::sync::Arc;

use attestation_agent::{Attester, RcarError};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};

use crate::attest_gate::Kbs;

/// Where the endpoint listens (CoCo's api-server-rest port).
pub const LISTEN: &str = "127.0.0.1:8006";

/// The endpoint's state.
pub struct WorkloadApi {
    kbs: Arc<dyn Kbs>,
    attester: Arc<dyn Attester>,
}

impl std::fmt::Debug for WorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadApi").finish_non_exhaustive()
    }
}

/// An answer: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Body (resource bytes, evidence JSON, or a line of text).
    pub body: Vec<u8>,
}

fn text(status: StatusCode, msg: impl std::fmt::Display) -> Answer {
    Answer { status, body: format!("{msg}\n").into_bytes() }
}

/// A path segment of a resource name: `[A-Za-z0-9._-]+`, not `.` or `..`.
fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `application/x-www-form-urlencoded` decoding of one query value (`+` is a space).
fn form_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Some(out)
}

/// The status for a failed resource fetch.
fn rcar_status(e: &RcarError) -> StatusCode {
    match e {
        RcarError::Resource { status: 404, .. } => StatusCode::NOT_FOUND,
        RcarError::Auth { status, .. } | RcarError::Attest { status, .. } | RcarError::Resource { status, .. } => {
            if *status >= 500 {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::FORBIDDEN
            }
        }
        RcarError::Connect { .. } | RcarError::Http { .. } | RcarError::Protocol { .. } => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl WorkloadApi {
    /// Serves resources through `kbs` and evidence from `attester`.
    pub fn new(kbs: Arc<dyn Kbs>, attester: Arc<dyn Attester>) -> Self {
        Self { kbs, attester }
    }

    /// Answers one request (`path_and_query` as in the request line).
    pub async fn answer(&self, method: &Method, path_and_query: &str) -> Answer {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        let known = path.starts_with("/cdh/resource/") || path == "/aa/evidence";
        if !known {
            return text(StatusCode::NOT_FOUND, format!("no such endpoint {path}"));
        }
        if method != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported");
        }
        if let Some(rest) = path.strip_prefix("/cdh/resource/") {
            return self.resource(rest).await;
        }
        self.evidence(query).await
    }

    async fn resource(&self, rest: &str) -> Answer {
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != 3 || !parts.iter().all(|p| valid_segment(p)) {
            return text(StatusCode::BAD_REQUEST, "expected /cdh/resource/<repo>/<type>/<tag> ([A-Za-z0-9._-])");
        }
        let uri = format!("kbs:///{rest}");
        match self.kbs.resource(&uri).await {
            Ok(bytes) => {
                tracing::info!("workload endpoint: {uri} fetched ({} bytes)", bytes.len());
                Answer { status: StatusCode::OK, body: bytes }
            }
            Err(e) => {
                let why = crate::error::chain(&e);
                tracing::warn!("workload endpoint: {uri}: {why}");
                text(rcar_status(&e), why)
            }
        }
    }

    async fn evidence(&self, query: &str) -> Answer {
        let value = query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == "runtime_data")
            .map(|(_, v)| v);
        let Some(value) = value else {
            return text(StatusCode::BAD_REQUEST, "missing query parameter runtime_data");
        };
        let Some(data) = form_decode(value) else {
            return text(StatusCode::BAD_REQUEST, "runtime_data is not URL-encoded correctly");
        };
        if data.len() > 64 {
            return text(StatusCode::BAD_REQUEST, format!("runtime_data is {} bytes, at most 64", data.len()));
        }
        let mut report_data = [0u8; 64];
        report_data[..data.len()].copy_from_slice(&data);
        let attester = Arc::clone(&self.attester);
        match tokio::task::spawn_blocking(move || attester.evidence(&report_data)).await {
            Ok(Ok(ev)) => Answer { status: StatusCode::OK, body: ev.to_string().into_bytes() },
            Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, crate::error::chain(&e)),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("evidence task: {e}")),
        }
    }

    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("workload endpoint: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let api = Arc::clone(&self);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let api = Arc::clone(&api);
                    async move {
                        let pq = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
                        let a = api.answer(req.method(), &pq).await;
                        let mut resp = Response::new(Full::new(Bytes::from(a.body)));
                        *resp.status_mut() = a.status;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                // half_close: a client may shut down its sending side after the request
                // (busybox `nc` does) and still wait for the answer, which can take a
                // full attestation.
                let mut http = hyper::server::conn::http1::Builder::new();
                http.half_close(true);
                if let Err(e) = http.serve_connection(io, service).await {
                    tracing::debug!("workload endpoint connection: {e}");
                }
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use attestation_agent::{AttesterError, TeeKind};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct FakeKbs;
    #[async_trait::async_trait]
    impl Kbs for FakeKbs {
        async fn attest(&self) -> Result<(), RcarError> {
            Ok(())
        }
        async fn resource(&self, uri: &str) -> Result<Vec<u8>, RcarError> {
            match uri {
                "kbs:///default/key/k1" => Ok(b"secret-k1".to_vec()),
                "kbs:///default/key/slow" => {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    Ok(b"slow".to_vec())
                }
                "kbs:///default/key/denied" => Err(RcarError::Attest { status: 401, detail: "HOST_DATA mismatch".into() }),
                "kbs:///default/key/down" => Err(RcarError::Connect { step: attestation_agent::Step::Auth, source: std::io::Error::other("refused") }),
                _ => Err(RcarError::Resource { status: 404, detail: "no such resource".into() }),
            }
        }
    }

    /// Echoes the report data as evidence.
    struct EchoAttester;
    impl Attester for EchoAttester {
        fn tee(&self) -> TeeKind {
            TeeKind::Sim
        }
        fn evidence(&self, rd: &[u8; 64]) -> Result<serde_json::Value, AttesterError> {
            Ok(serde_json::json!({ "report_data": rd.to_vec() }))
        }
    }

    fn api() -> WorkloadApi {
        WorkloadApi::new(Arc::new(FakeKbs), Arc::new(EchoAttester))
    }

    #[tokio::test]
    async fn routes_statuses_and_bodies() {
        let a = api();
        let get = |p: &'static str| {
            let a = &a;
            async move { a.answer(&Method::GET, p).await }
        };
        assert_eq!(get("/cdh/resource/default/key/k1").await, Answer { status: StatusCode::OK, body: b"secret-k1".to_vec() });
        assert_eq!(get("/cdh/resource/default/key/nope").await.status, StatusCode::NOT_FOUND);
        let denied = get("/cdh/resource/default/key/denied").await;
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        assert_eq!(denied.body, b"attest: KBS answered 401: HOST_DATA mismatch\n");
        assert_eq!(get("/cdh/resource/default/key/down").await.status, StatusCode::BAD_GATEWAY);
        for bad in ["/cdh/resource/default/key", "/cdh/resource/a/b/c/d", "/cdh/resource/../key/k1", "/cdh/resource/a//c", "/cdh/resource/a/b/c%2f"] {
            assert_eq!(get(bad).await.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert_eq!(get("/aa/token").await.status, StatusCode::NOT_FOUND);
        assert_eq!(a.answer(&Method::POST, "/cdh/resource/default/key/k1").await.status, StatusCode::METHOD_NOT_ALLOWED);

        let ev = get("/aa/evidence?x=1&runtime_data=a%20b+c").await;
        assert_eq!(ev.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&ev.body).unwrap();
        let mut want = vec![0u8; 64];
        want[..5].copy_from_slice(b"a b c");
        assert_eq!(v["report_data"], serde_json::json!(want));
        assert_eq!(get("/aa/evidence").await.status, StatusCode::BAD_REQUEST);
        assert_eq!(get("/aa/evidence?runtime_data=%zz").await.status, StatusCode::BAD_REQUEST);
        assert_eq!(get("/aa/evidence?runtime_data=%4").await.status, StatusCode::BAD_REQUEST);
        let long = format!("/aa/evidence?runtime_data={}", "x".repeat(65));
        assert_eq!(a.answer(&Method::GET, &long).await.status, StatusCode::BAD_REQUEST);
        let max = format!("/aa/evidence?runtime_data={}", "x".repeat(64));
        assert_eq!(a.answer(&Method::GET, &max).await.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn serves_http_on_a_socket() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(Arc::new(api()).serve(l));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /cdh/resource/default/key/k1 HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nsecret-k1"), "{out}");

        // A client that shuts down its sending side after the request (busybox nc)
        // still gets the answer, even when it takes a while.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /cdh/resource/default/key/slow HTTP/1.0\r\n\r\n").await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n") && out.ends_with("\r\n\r\nslow"), "{out:?}");
        server.abort();
    }
}
