//! A gate in front of the local registry: authentication with caller-supplied credentials
//! (a token realm with a bearer challenge, and HTTP basic), and a registry that lies about
//! manifest content.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::{Request, Response};
use image_rs::{ImageError, ImageStore, PullOptions, RegistryAuth, RegistryConfig};

const TOKEN: &str = "tok-3f1c";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Token,
    Basic,
    /// No auth; manifest bodies get a trailing space (a registry lying about content).
    TamperManifests,
}

struct Gate {
    mode: Mode,
    addr: SocketAddr,
    token_requests: AtomicUsize,
    http: reqwest::Client,
}

fn basic_ok(req: &Request<hyper::body::Incoming>) -> bool {
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:secret")
    );
    req.headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == want.as_bytes())
}

async fn handle(
    gate: Arc<Gate>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: u16, headers: &[(&str, String)], body: Bytes| {
        let mut r = Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        Ok(r.body(Full::new(body)).unwrap())
    };
    if req.uri().path() == "/token" {
        gate.token_requests.fetch_add(1, Ordering::SeqCst);
        let scope_ok = req.uri().query().is_some_and(|q| {
            q.contains("scope=repository%3Abusybox%3Apull")
                || q.contains("scope=repository:busybox:pull")
        });
        if !basic_ok(&req) || !scope_ok {
            return reply(
                401,
                &[],
                Bytes::from_static(b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}"),
            );
        }
        return reply(
            200,
            &[("content-type", "application/json".into())],
            Bytes::from(format!("{{\"token\":\"{TOKEN}\"}}")),
        );
    }
    let authorized = match gate.mode {
        Mode::TamperManifests => true,
        Mode::Token => req
            .headers()
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes()),
        Mode::Basic => basic_ok(&req),
    };
    if !authorized {
        let challenge = match gate.mode {
            Mode::Token => format!(
                "Bearer realm=\"http://{}/token\",service=\"test-registry\"",
                gate.addr
            ),
            Mode::Basic | Mode::TamperManifests => "Basic realm=\"test-registry\"".to_string(),
        };
        return reply(
            401,
            &[("www-authenticate", challenge)],
            Bytes::from_static(b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}"),
        );
    }
    let mut fwd = gate.http.get(format!(
        "http://{REGISTRY}{}",
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    ));
    if let Some(a) = req.headers().get("accept") {
        fwd = fwd.header("accept", a.as_bytes());
    }
    let resp = fwd.send().await.unwrap();
    let status = resp.status().as_u16();
    let mut headers = Vec::new();
    for h in ["content-type", "docker-content-digest"] {
        if let Some(v) = resp.headers().get(h) {
            headers.push((h, v.to_str().unwrap().to_string()));
        }
    }
    let mut body = resp.bytes().await.unwrap();
    if gate.mode == Mode::TamperManifests && req.uri().path().contains("/manifests/") {
        let mut b = body.to_vec();
        b.push(b' ');
        body = Bytes::from(b);
    }
    reply(status, &headers, body)
}

/// A gate on a loopback port; returns it and a store that may use it over plain HTTP.
async fn gate(mode: Mode) -> (Arc<Gate>, tempfile::TempDir, ImageStore) {
    fixtures();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The workspace builds reqwest without a bundled crypto provider (ring, as image-rs).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let gate = Arc::new(Gate {
        mode,
        addr,
        token_requests: AtomicUsize::new(0),
        http: reqwest::Client::new(),
    });
    let g = gate.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(g.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let cfg = RegistryConfig {
        insecure_registries: vec![addr.to_string()],
        ..Default::default()
    };
    let store = ImageStore::new(dir.path().join("store"), cfg).unwrap();
    (gate, dir, store)
}

fn image(gate: &Gate) -> image_rs::Reference {
    format!("{}/busybox:latest", gate.addr).parse().unwrap()
}

fn creds(pass: &str) -> PullOptions {
    PullOptions {
        auth: RegistryAuth::Basic("alice".into(), pass.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_with_caller_credentials() {
    let (gate, _d, store) = gate(Mode::Token).await;
    let pulled = store.pull(&image(&gate), &creds("secret")).await.unwrap();
    assert!(pulled.layer_dirs[0].join("bin/busybox").exists());
    assert!(gate.token_requests.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_refused() {
    let (gate, _d, store) = gate(Mode::Token).await;
    let err = store
        .pull(&image(&gate), &creds("wrong"))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Auth { .. }), "{err}");
    let err = store
        .pull(&image(&gate), &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Auth { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_caller_credentials() {
    let (gate, _d, store) = gate(Mode::Basic).await;
    let pulled = store.pull(&image(&gate), &creds("secret")).await.unwrap();
    assert!(pulled.layer_dirs[0].join("bin/busybox").exists());
    assert_eq!(gate.token_requests.load(Ordering::SeqCst), 0);
    let err = store
        .pull(&image(&gate), &creds("wrong"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::RegistryStatus { status: 401, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_not_matching_the_pinned_digest_is_refused() {
    let (gate, _d, store) = gate(Mode::TamperManifests).await;
    // The real digest, from the registry itself.
    let (_d2, direct) = common::store();
    let real = direct
        .pull(&reference("busybox:latest"), &PullOptions::default())
        .await
        .unwrap();
    let pinned: image_rs::Reference = format!("{}/busybox@{}", gate.addr, real.manifest_digest)
        .parse()
        .unwrap();
    let err = store
        .pull(&pinned, &PullOptions::default())
        .await
        .unwrap_err();
    match &err {
        ImageError::DigestMismatch { what, digest, .. } => {
            assert_eq!(what, "manifest");
            assert_eq!(digest, &real.manifest_digest);
        }
        e => panic!("expected a manifest digest mismatch, got {e}"),
    }
    // Through an index, the platform manifest is fetched by digest and checked too.
    let err = store
        .pull(
            &format!("{}/index:latest", gate.addr).parse().unwrap(),
            &PullOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { what, .. } if what == "manifest"),
        "{err}"
    );
    assert_eq!(store.layers_downloaded(), 0);
}
