//! RCAR over HTTPS: the real KBS serving TLS (rustls) with a certificate made here by
//! rcgen, the real client trusting that CA; a wrong CA, a wrong name and plain HTTP
//! against a TLS port are refused with errors naming the TLS step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use attestation_agent::{KbsClient, RcarError, RetryPolicy, SimAttester, Step};
use kbs::server::{KbsServer, ServerConfig, ServerError};

const M: [u8; 48] = [0x4D; 48];
/// HOST_DATA of a guest launched without initdata (all zero): the KBS then needs no
/// `init-data`; a non-zero HOST_DATA pinned by the reference values requires it.
const H: [u8; 32] = [0; 32];

/// A CA and a server certificate it issued for `names`.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki(names: &[&str]) -> Pki {
    pki_ca("kata-cc test KBS CA", names)
}

fn pki_ca(ca_name: &str, names: &[&str]) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

struct Kbs {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn config(dir: &Path) -> ServerConfig {
    let rv = dir.join("reference.toml");
    std::fs::write(
        &rv,
        format!(
            "snp_measurements = [\"{}\"]\nhost_data = [\"{}\"]\n",
            hex::encode(M),
            hex::encode(H)
        ),
    )
    .unwrap();
    let res = dir.join("resources");
    std::fs::create_dir_all(res.join("default/key")).unwrap();
    std::fs::write(res.join("default/key/k1"), b"over tls").unwrap();
    let mut cfg = ServerConfig::new(res);
    cfg.reference_values = Some(rv);
    cfg.allow_simulated = true;
    cfg
}

async fn start(p: Option<&Pki>) -> Kbs {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    if let Some(p) = p {
        std::fs::write(dir.path().join("cert.pem"), &p.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &p.key_pem).unwrap();
        cfg.tls_cert = Some(dir.path().join("cert.pem"));
        cfg.tls_key = Some(dir.path().join("key.pem"));
    }
    let server = KbsServer::new(cfg).unwrap();
    assert_eq!(server.is_tls(), p.is_some());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(server.serve(l));
    Kbs { addr, _dir: dir }
}

fn client(url: &str) -> KbsClient {
    KbsClient::new(url, Arc::new(SimAttester::new(M, H).unwrap()))
        .unwrap()
        .with_retry(RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        })
}

/// The full error chain as printed at the top.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut c = e.source();
    while let Some(x) = c {
        s.push_str(": ");
        s.push_str(&x.to_string());
        c = x.source();
    }
    s
}

#[tokio::test]
async fn rcar_over_https_with_the_configured_ca() {
    let p = pki(&["localhost", "127.0.0.1"]);
    let k = start(Some(&p)).await;
    // By IP address (SAN 127.0.0.1) and by name.
    for url in [
        format!("https://{}", k.addr),
        format!("https://localhost:{}/", k.addr.port()),
    ] {
        let c = client(&url).with_ca_cert_pem(&p.ca_pem).unwrap();
        assert_eq!(
            c.get_resource("kbs:///default/key/k1").await.unwrap(),
            b"over tls"
        );
        // Several resources in one session: cookie, then bearer token.
        let v = c
            .get_resources(&["kbs:///default/key/k1", "kbs:///default/key/k1"])
            .await
            .unwrap();
        assert_eq!(v, vec![b"over tls".to_vec(), b"over tls".to_vec()]);
    }
}

#[tokio::test]
async fn wrong_ca_is_refused_naming_the_tls_step() {
    let p = pki(&["127.0.0.1"]);
    let other = pki_ca("another CA", &["127.0.0.1"]);
    let k = start(Some(&p)).await;
    let c = client(&format!("https://{}", k.addr))
        .with_ca_cert_pem(&other.ca_pem)
        .unwrap();
    let e = c.get_resource("kbs:///default/key/k1").await.unwrap_err();
    assert!(
        matches!(
            e,
            RcarError::Tls {
                step: Step::Auth,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = chain(&e);
    assert!(
        msg.starts_with("auth: TLS handshake with the KBS failed") && msg.contains("UnknownIssuer"),
        "{msg}"
    );

    // A rogue CA with the same name as the real one: its signature does not verify.
    let rogue = pki(&["127.0.0.1"]);
    let c = client(&format!("https://{}", k.addr))
        .with_ca_cert_pem(&rogue.ca_pem)
        .unwrap();
    let msg = chain(&c.attest().await.unwrap_err());
    assert!(
        msg.contains("TLS handshake") && msg.contains("BadSignature"),
        "{msg}"
    );

    // The right CA but a certificate for another name.
    let c = client(&format!("https://localhost:{}", k.addr.port()))
        .with_ca_cert_pem(&p.ca_pem)
        .unwrap();
    let msg = chain(&c.attest().await.unwrap_err());
    assert!(
        msg.contains("TLS handshake") && msg.contains("not valid for name \"localhost\""),
        "{msg}"
    );

    // The system roots do not know a private CA.
    let c = client(&format!("https://{}", k.addr));
    let msg = chain(&c.attest().await.unwrap_err());
    assert!(
        msg.contains("TLS handshake") && msg.contains("UnknownIssuer"),
        "{msg}"
    );
}

#[tokio::test]
async fn http_still_works_and_does_not_mix_with_https() {
    let plain = start(None).await;
    let c = client(&format!("http://{}", plain.addr));
    assert_eq!(
        c.get_resource("kbs:///default/key/k1").await.unwrap(),
        b"over tls"
    );

    // An https client against the plain port fails in the TLS step.
    let p = pki(&["127.0.0.1"]);
    let c = client(&format!("https://{}", plain.addr))
        .with_ca_cert_pem(&p.ca_pem)
        .unwrap();
    assert!(matches!(
        c.attest().await,
        Err(RcarError::Tls {
            step: Step::Auth,
            ..
        })
    ));

    // A plain client against the TLS port gets no RCAR answer.
    let tls = start(Some(&p)).await;
    let c = client(&format!("http://{}", tls.addr));
    assert!(matches!(
        c.attest().await,
        Err(RcarError::Http {
            step: Step::Auth,
            ..
        })
    ));
}

#[test]
fn tls_configuration_errors() {
    let dummy = Arc::new(SimAttester::new(M, H).unwrap());
    // A CA for an http:// URL protects nothing: refused.
    let p = pki(&["x"]);
    let e = KbsClient::new("http://127.0.0.1:1", dummy.clone())
        .unwrap()
        .with_ca_cert_pem(&p.ca_pem)
        .unwrap_err();
    assert!(matches!(e, RcarError::TlsConfig(_)), "{e}");
    for bad in [
        "",
        "not pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ] {
        let e = KbsClient::new("https://127.0.0.1:1", dummy.clone())
            .unwrap()
            .with_ca_cert_pem(bad)
            .unwrap_err();
        assert!(matches!(e, RcarError::TlsConfig(_)), "{bad:?}: {e}");
    }
    for bad in [
        "ftp://x",
        "https://",
        "https://a/b",
        "https://[::1",
        "https://u@h:1",
        "https://h:port",
        "https://[::1]:x",
        "http://::1:80",
    ] {
        assert!(KbsClient::new(bad, dummy.clone()).is_err(), "{bad}");
    }
    assert!(KbsClient::new("https://kbs.example:8443", dummy.clone()).is_ok());
    assert!(KbsClient::new("https://[::1]:8443", dummy).is_ok());
}

#[tokio::test]
async fn server_tls_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(&["127.0.0.1"]);
    std::fs::write(dir.path().join("cert.pem"), &p.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &p.key_pem).unwrap();
    std::fs::write(dir.path().join("other-key.pem"), pki(&["x"]).key_pem).unwrap();

    let mut half = config(dir.path());
    half.tls_cert = Some(dir.path().join("cert.pem"));
    assert!(matches!(
        KbsServer::new(half),
        Err(ServerError::TlsHalfConfigured)
    ));

    let mut missing = config(dir.path());
    missing.tls_cert = Some(dir.path().join("nope.pem"));
    missing.tls_key = Some(dir.path().join("key.pem"));
    let e = KbsServer::new(missing).unwrap_err();
    assert!(
        e.to_string().contains("TLS certificate") && e.to_string().contains("nope.pem"),
        "{e}"
    );

    let mut swapped = config(dir.path());
    swapped.tls_cert = Some(dir.path().join("key.pem"));
    swapped.tls_key = Some(dir.path().join("cert.pem"));
    assert!(KbsServer::new(swapped).is_err());

    let mut mismatch = config(dir.path());
    mismatch.tls_cert = Some(dir.path().join("cert.pem"));
    mismatch.tls_key = Some(dir.path().join("other-key.pem"));
    assert!(KbsServer::new(mismatch).is_err());

    // Plain HTTP off loopback is refused unless insecure_http.
    let l = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let e = KbsServer::new(config(dir.path()))
        .unwrap()
        .serve(l)
        .await
        .unwrap_err();
    assert!(matches!(e, ServerError::InsecureHttp(_)), "{e}");
    assert!(e.to_string().contains("tls_cert"));
}

/// `GET` a resource with a bearer token over plain HTTP; returns the status.
async fn get_with_token(addr: SocketAddr, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /kbs/v0/resource/default/key/k1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out)[9..12].parse().unwrap()
}

#[tokio::test]
async fn token_key_file_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("token-key.pem");
    let serve = |with_key: bool| {
        let mut cfg = config(dir.path());
        if with_key {
            cfg.token_key = Some(key.clone());
        }
        async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(KbsServer::new(cfg).unwrap().serve(l));
            addr
        }
    };
    let first = serve(true).await;
    let token = client(&format!("http://{first}")).attest().await.unwrap();
    assert_eq!(get_with_token(first, &token).await, 200);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // "Restart": a new server on the same key file accepts the old token.
    let second = serve(true).await;
    assert_eq!(get_with_token(second, &token).await, 200);
    // Without the key file (fresh key per start) it does not.
    let third = serve(false).await;
    assert_eq!(get_with_token(third, &token).await, 401);
}
