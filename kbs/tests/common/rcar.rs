//! A raw HTTP/1.1 RCAR client with the simulated TEE, and a KBS on loopback.

use std::net::SocketAddr;

use kbs::server::jwe::{FlattenedJwe, TeeKeyPair};
use kbs::server::{binding, KbsServer, ServerConfig};
use kbs::sim::{produce, SimChain, SimKeys, SimReportInput};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The `/auth` body of the sim TEE.
pub const AUTH_BODY: &str = r#"{"version":"0.4.0","tee":"sample","extra-params":""}"#;
/// The one resource [`kbs_config`] stores, at `default/key/k1`.
pub const SECRET: &[u8] = b"the secret";

/// A configuration trusting the sim TEE with `measurement`, and `host_data` (TOML value:
/// `["<hex>"]` or `"any"`), with [`SECRET`] stored; the directory lives in `dir`.
pub fn kbs_config(dir: &std::path::Path, measurement: [u8; 48], host_data: &str) -> ServerConfig {
    let rv = dir.join("reference.toml");
    std::fs::write(
        &rv,
        format!(
            "snp_measurements = [\"{}\"]\nhost_data = {host_data}\n",
            hex::encode(measurement)
        ),
    )
    .unwrap();
    let res = dir.join("resources");
    std::fs::create_dir_all(res.join("default/key")).unwrap();
    std::fs::write(res.join("default/key/k1"), SECRET).unwrap();
    let mut cfg = ServerConfig::new(res);
    cfg.reference_values = Some(rv);
    cfg.allow_simulated = true;
    cfg
}

/// Serves `cfg` on a loopback port of the current runtime.
pub async fn start(cfg: ServerConfig) -> SocketAddr {
    let server = KbsServer::new(cfg).unwrap();
    let l = kbs::server::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(server.serve(l));
    addr
}

/// One HTTP/1.1 response read from a keep-alive connection: (status, head, body).
pub async fn read_response(
    r: &mut BufReader<TcpStream>,
) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {head:?}")))?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok((status, head, body))
}

/// One request on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: &[u8],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut r = BufReader::new(s);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: kbs\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    req.push_str("\r\n");
    let mut msg = req.into_bytes();
    msg.extend_from_slice(body);
    r.get_mut().write_all(&msg).await?;
    read_response(&mut r).await
}

/// A refusal: (step, HTTP status, body).
pub type Refused = (&'static str, u16, String);

/// The whole RCAR flow of a sim guest with `measurement` and `host_data`, sending
/// `init_data` (a TOML document) when given: auth, attest, `default/key/k1`, decrypted.
pub async fn flow(
    addr: SocketAddr,
    keys: &SimKeys,
    chain: &SimChain,
    measurement: [u8; 48],
    host_data: [u8; 32],
    init_data: Option<&str>,
) -> Result<Vec<u8>, Refused> {
    flow_timed(addr, keys, chain, measurement, host_data, init_data)
        .await
        .map(|(secret, _)| secret)
}

/// [`flow`], also returning the time spent in the client's own work (TEE key, signing
/// the simulated report, decrypting the JWE) rather than waiting for the KBS.
pub async fn flow_timed(
    addr: SocketAddr,
    keys: &SimKeys,
    chain: &SimChain,
    measurement: [u8; 48],
    host_data: [u8; 32],
    init_data: Option<&str>,
) -> Result<(Vec<u8>, std::time::Duration), Refused> {
    let refused = |step, s, b: &[u8]| (step, s, String::from_utf8_lossy(b).into_owned());
    let (s, head, body) = request(addr, "POST", "/kbs/v0/auth", None, AUTH_BODY.as_bytes())
        .await
        .unwrap();
    if s != 200 {
        return Err(refused("auth", s, &body));
    }
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let challenge: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let nonce = challenge["nonce"].as_str().unwrap().to_owned();
    let t = std::time::Instant::now();
    let tee_key = TeeKeyPair::generate_ec();
    let jwk = tee_key.public_jwk().unwrap();
    let rd = binding::report_data(&nonce, &jwk, "").unwrap();
    let evidence = produce(
        &SimReportInput::new(measurement, host_data, rd),
        keys,
        chain,
    );
    let mut client_time = t.elapsed();
    let attest = serde_json::json!({
        "init-data": init_data.map(|body| serde_json::json!({"format": "toml", "body": body})),
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
    });
    let (s, _, body) = request(
        addr,
        "POST",
        "/kbs/v0/attest",
        Some(&cookie),
        attest.to_string().as_bytes(),
    )
    .await
    .unwrap();
    if s != 200 {
        return Err(refused("attest", s, &body));
    }
    let (s, _, body) = request(
        addr,
        "GET",
        "/kbs/v0/resource/default/key/k1",
        Some(&cookie),
        b"",
    )
    .await
    .unwrap();
    if s != 200 {
        return Err(refused("resource", s, &body));
    }
    let jwe: FlattenedJwe = serde_json::from_slice(&body).unwrap();
    let t = std::time::Instant::now();
    let secret = tee_key.decrypt(&jwe).unwrap();
    client_time += t.elapsed();
    Ok((secret, client_time))
}
