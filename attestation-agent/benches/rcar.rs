//! Full RCAR round trip (auth + attest + one resource, sim TEE, EC key) against the real
//! KBS on loopback, p50/p99, beside a plain HTTP GET to the same server; then the same
//! round trip over HTTPS (rustls, a CA and server certificate made by rcgen).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use attestation_agent::{KbsClient, SimAttester};
use kbs::server::{KbsServer, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// (CA PEM, server certificate PEM, key PEM) for 127.0.0.1.
fn pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (m, h) = ([0x4D; 48], [0x48; 32]);
        let rv = dir.path().join("rv.toml");
        std::fs::write(
            &rv,
            format!(
                "snp_measurements = [\"{}\"]\nhost_data = \"any\"\n",
                hex::encode(m)
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("res/default/key")).unwrap();
        std::fs::write(dir.path().join("res/default/key/k"), [7u8; 32]).unwrap();
        let mut cfg = ServerConfig::new(dir.path().join("res"));
        cfg.reference_values = Some(rv);
        cfg.allow_simulated = true;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(KbsServer::new(cfg.clone()).unwrap().serve(l));
        let (ca, cert, key) = pki();
        std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
        cfg.tls_cert = Some(dir.path().join("cert.pem"));
        cfg.tls_key = Some(dir.path().join("key.pem"));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls_addr = l.local_addr().unwrap();
        tokio::spawn(KbsServer::new(cfg).unwrap().serve(l));
        let tls_client = KbsClient::new(
            &format!("https://{tls_addr}"),
            Arc::new(SimAttester::new(m, h).unwrap()),
        )
        .unwrap()
        .with_ca_cert_pem(&ca)
        .unwrap();
        let client = KbsClient::new(
            &format!("http://{addr}"),
            Arc::new(SimAttester::new(m, h).unwrap()),
        )
        .unwrap();
        let n = 300;
        for _ in 0..20 {
            client.get_resource("kbs:///default/key/k").await.unwrap();
            tls_client
                .get_resource("kbs:///default/key/k")
                .await
                .unwrap();
        }
        let mut base = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            s.write_all(
                b"GET /kbs/v0/resource/a/b/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            base.push(t.elapsed());
        }
        let mut full = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let k = client.get_resource("kbs:///default/key/k").await.unwrap();
            full.push(t.elapsed());
            assert_eq!(k, [7u8; 32]);
        }
        let mut tls = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let k = tls_client
                .get_resource("kbs:///default/key/k")
                .await
                .unwrap();
            tls.push(t.elapsed());
            assert_eq!(k, [7u8; 32]);
        }
        println!("rcar round trip (auth+attest+resource, sim, EC P-256), n={n}");
        println!(
            "  baseline plain GET (401): p50 {:?}  p99 {:?}",
            pct(&mut base, 0.5),
            pct(&mut base, 0.99)
        );
        println!(
            "  full RCAR round trip:     p50 {:?}  p99 {:?}",
            pct(&mut full, 0.5),
            pct(&mut full, 0.99)
        );
        println!(
            "  full RCAR over HTTPS:     p50 {:?}  p99 {:?}  (3 TLS handshakes, rustls/ring)",
            pct(&mut tls, 0.5),
            pct(&mut tls, 0.99)
        );
    });
}
