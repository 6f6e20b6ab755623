//! The KBS's RCAR server (`kbs::server::KbsServer`, plain HTTP on loopback) fed by a
//! hostile client: raw HTTP requests, `/auth` bodies, `/attest` bodies in a live
//! session, and complete attestations with simulated evidence that the harness makes
//! valid for the fuzzed runtime data, so the init-data check, the token, the resource
//! policy and the JWE encryption to the client's `tee-pubkey` are reached too.
//!
//! Input: first byte picks the exchange:
//! * 0: the rest is one raw HTTP request;
//! * 1: the rest is the `/kbs/v0/auth` body;
//! * 2: auth (tee chosen by the second byte), then the rest is the `/kbs/v0/attest`
//!   body, with every `NONCE` in it replaced by the session's nonce;
//! * 3: auth as `sample`, then the rest is an `Attestation` JSON whose nonce and
//!   evidence the harness fills in (simulated SNP, HOST_DATA = its init-data digest);
//!   then `GET /kbs/v0/resource/default/key/1` with the cookie and with the token.
#![no_main]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use kata_cc_fuzz::background_runtime;
use kbs::server::binding::{report_data, PROTOCOL_VERSION};
use kbs::server::kbs_types::Attestation;
use kbs::server::{KbsServer, ServerConfig, SESSION_COOKIE};
use kbs::sim::{SimChain, SimKeys, SimReportInput};
use libfuzzer_sys::fuzz_target;
use protocols::initdata;

struct Kbs {
    addr: SocketAddr,
    keys: SimKeys,
    chain: SimChain,
    _dir: tempfile::TempDir,
}

fn kbs() -> &'static Kbs {
    static K: OnceLock<Kbs> = OnceLock::new();
    K.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let res = dir.path().join("default/key");
        std::fs::create_dir_all(&res).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(res.join("1"), b"0123456789abcdef0123456789abcdef").unwrap_or_else(|e| panic!("{e}"));
        let reference = dir.path().join("reference.toml");
        std::fs::write(&reference, kata_cc_fuzz::OPEN_REFERENCE_TOML).unwrap_or_else(|e| panic!("{e}"));
        let mut cfg = ServerConfig::new(dir.path());
        cfg.allow_simulated = true;
        cfg.reference_values = Some(reference);
        cfg.tdx_collateral_dir = std::env::var_os("FUZZ_TDX_COLLATERAL").map(Into::into);
        let server = KbsServer::new(cfg).unwrap_or_else(|e| panic!("{e}"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        listener.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
        let rt = background_runtime();
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| panic!("{e}"));
            if let Err(e) = server.serve(l).await {
                panic!("KBS stopped: {e}");
            }
        });
        Kbs {
            addr,
            keys: SimKeys::builtin().unwrap_or_else(|e| panic!("{e}")),
            chain: SimChain::builtin().unwrap_or_else(|e| panic!("{e}")),
            _dir: dir,
        }
    })
}

struct Answer {
    status: u16,
    cookie: Option<String>,
    body: Vec<u8>,
}

/// Sends `request`; `half_close` ends the write side after it (for raw requests, which
/// may be incomplete). hyper closes a connection whose client half-closed before the
/// answer is ready, so well-formed requests keep it open (`Connection: close`).
fn raw(request: &[u8], half_close: bool) -> Option<Answer> {
    let mut s = TcpStream::connect(kbs().addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(request).ok()?;
    if half_close {
        s.shutdown(std::net::Shutdown::Write).ok()?;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let (head, body) = kata_cc_fuzz::split_once(&out, b"\r\n\r\n");
    let head = String::from_utf8_lossy(head);
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let cookie = head
        .lines()
        .filter_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .filter_map(|v| v.split(';').next()?.split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_owned());
    Some(Answer { status, cookie, body: body.to_vec() })
}

fn request(method: &str, path: &str, headers: &str, body: &[u8]) -> Option<Answer> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: kbs\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    raw(&r, false)
}

/// A session: (cookie, nonce).
fn auth(tee: &str) -> Option<(String, String)> {
    let body = serde_json::json!({"version": PROTOCOL_VERSION, "tee": tee, "extra-params": ""});
    let a = request("POST", "/kbs/v0/auth", "", body.to_string().as_bytes())?;
    if a.status != 200 {
        // Only when the session table is full (503) in a very long run.
        return None;
    }
    let challenge: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
    Some((a.cookie?, challenge["nonce"].as_str()?.to_owned()))
}

fn cookie_header(c: &str) -> String {
    format!("Cookie: {SESSION_COOKIE}={c}\r\n")
}

fn complete_attestation(rest: &[u8]) {
    let Ok(mut att) = serde_json::from_slice::<Attestation>(rest) else { return };
    let Some((cookie, nonce)) = auth("sample") else { return };
    att.runtime_data.nonce = nonce.clone();
    let Ok(rd) = report_data(&nonce, &att.runtime_data.tee_pubkey, &att.tee_evidence.additional_evidence) else {
        return;
    };
    let host_data = att
        .init_data
        .as_ref()
        .and_then(|i| initdata::InitData::parse(&i.body).ok().map(|d| initdata::digest(d.algorithm, i.body.as_bytes())))
        .map(|d| initdata::host_data(&d))
        .unwrap_or([0; 32]);
    let k = kbs();
    att.tee_evidence.primary_evidence =
        kbs::sim::produce(&SimReportInput::new([1; 48], host_data, rd), &k.keys, &k.chain);
    let Ok(body) = serde_json::to_vec(&att) else { return };
    let Some(a) = request("POST", "/kbs/v0/attest", &cookie_header(&cookie), &body) else { return };
    if a.status != 200 {
        return;
    }
    let token: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
    let _ = request("GET", "/kbs/v0/resource/default/key/1", &cookie_header(&cookie), &[]);
    if let Some(t) = token["token"].as_str() {
        let _ = request("GET", "/kbs/v0/resource/default/key/1", &format!("Authorization: Bearer {t}\r\n"), &[]);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 4 {
        0 => {
            let _ = raw(rest, true);
        }
        1 => {
            let _ = request("POST", "/kbs/v0/auth", "", rest);
        }
        2 => {
            let Some((&t, rest)) = rest.split_first() else { return };
            let tee = ["snp", "tdx", "sample"][usize::from(t) % 3];
            let Some((cookie, nonce)) = auth(tee) else { return };
            let body = String::from_utf8_lossy(rest).replace("NONCE", &nonce);
            let _ = request("POST", "/kbs/v0/attest", &cookie_header(&cookie), body.as_bytes());
        }
        _ => complete_attestation(rest),
    }
});
