//! The attestation agent's RCAR client (`KbsClient`) against a hostile KBS: a fake
//! server on loopback answers each request with the next fuzzed raw HTTP response, so
//! hyper's response parsing, the session cookie, the challenge JSON, the token JSON,
//! KBS problem bodies and the resource JWE (parsed, then opened with the session key)
//! all see attacker bytes. The client is told not to retry.
//!
//! Input: first byte odd: the rest is a `kbs:///` URI for `parse_kbs_uri`; even: the
//! rest is up to four raw HTTP responses separated by `SEP`, answering in order
//! `/auth`, `/attest`, and two resource GETs (cookie, then token).
#![no_main]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use attestation_agent::{parse_kbs_uri, Attester, AttesterError, KbsClient, RetryPolicy, TeeKind};
use kata_cc_fuzz::{runtime, split_all, SEP};
use libfuzzer_sys::fuzz_target;

struct Fake {
    addr: SocketAddr,
    answers: Arc<Mutex<VecDeque<Vec<u8>>>>,
}

/// Reads one request (headers, then Content-Length bytes of body).
fn read_request(s: &mut std::net::TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = s.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return;
            }
        }
    }
}

fn fake() -> &'static Fake {
    static F: OnceLock<Fake> = OnceLock::new();
    F.get_or_init(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let answers: Arc<Mutex<VecDeque<Vec<u8>>>> = Arc::default();
        let a = answers.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                read_request(&mut s);
                let answer = a.lock().ok().and_then(|mut q| q.pop_front());
                let answer = answer.unwrap_or_else(|| b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec());
                let _ = s.write_all(&answer);
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        });
        Fake { addr, answers }
    })
}

struct FixedEvidence;

impl Attester for FixedEvidence {
    fn tee(&self) -> TeeKind {
        TeeKind::Snp
    }
    fn evidence(&self, report_data: &[u8; 64]) -> Result<serde_json::Value, AttesterError> {
        Ok(serde_json::json!({"attestation_report": report_data.to_vec()}))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    if sel & 1 == 1 {
        if let Ok(s) = std::str::from_utf8(rest) {
            let _ = parse_kbs_uri(s);
        }
        return;
    }
    let f = fake();
    if let Ok(mut q) = f.answers.lock() {
        q.clear();
        q.extend(split_all(rest, SEP).into_iter().take(4).map(<[u8]>::to_vec));
    }
    let retry = RetryPolicy { attempts: 1, initial: Duration::ZERO, max: Duration::ZERO };
    let Ok(client) = KbsClient::new(&format!("http://{}", f.addr), Arc::new(FixedEvidence)) else {
        panic!("client for the fake KBS");
    };
    let client = client.with_retry(retry);
    let _ = runtime().block_on(async {
        tokio::time::timeout(
            Duration::from_secs(20),
            client.get_resources(&["kbs:///default/key/1", "kbs:///default/key/2"]),
        )
        .await
    });
});
