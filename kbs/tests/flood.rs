//! One unauthenticated client must not take the KBS down: 100,000 `/auth` calls over
//! keep-alive connections and 25,000 half-open connections (a partial header, never
//! finished), while an honest client runs the whole RCAR flow (auth, attest with the
//! simulated TEE and initdata, resource) again and again. Asserts the honest client's
//! p99 ≤ 1 s, the server still serving at the end, and bounded memory; prints the
//! figures (`FIGURE:` lines).
//!
//! All in one process, whose `RLIMIT_NOFILE` is shared by the server and both sides of
//! every connection: the half-open flood holds at most `HALF_OPEN_HELD` sockets at once
//! (the oldest are dropped for new ones) so that the process stays under the hard limit
//! (20,000 where this was written; the server's own sockets are bounded by
//! `max_connections`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::rcar::{flow_timed, kbs_config, read_response, AUTH_BODY, SECRET};
use kbs::server::KbsServer;
use kbs::sim::{SimChain, SimKeys};
use protocols::initdata;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const AUTH_CALLS: u64 = 100_000;
const AUTH_CONNECTIONS: usize = 128;
const HALF_OPEN_TOTAL: usize = 25_000;
/// Most half-open sockets the attacker holds at once (see the module documentation).
const HALF_OPEN_HELD: usize = 12_000;
const M: [u8; 48] = [0x4D; 48];
const INITDATA: &str = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"aa.toml\" = \"\"\n";

fn host_data() -> [u8; 32] {
    initdata::host_data(&initdata::digest(
        initdata::Algorithm::Sha256,
        INITDATA.as_bytes(),
    ))
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The honest client's whole RCAR flow; panics on any refusal. Returns the flow's
/// time and the part of it spent in the client's own crypto.
async fn good_flow(addr: SocketAddr, keys: &SimKeys, chain: &SimChain) -> (Duration, Duration) {
    let t = Instant::now();
    let (secret, client) = flow_timed(addr, keys, chain, M, host_data(), Some(INITDATA))
        .await
        .unwrap_or_else(|(step, s, body)| panic!("honest client refused at {step}: {s} {body}"));
    assert_eq!(secret, SECRET);
    (t.elapsed(), client)
}

/// 100,000 `/auth` over `AUTH_CONNECTIONS` keep-alive connections (reconnecting when
/// the server closes one). Returns (successful calls, other answers, reconnections).
async fn auth_flood(addr: SocketAddr) -> (u64, u64, u64) {
    let sent = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let req = format!(
        "POST /kbs/v0/auth HTTP/1.1\r\nHost: kbs\r\nContent-Length: {}\r\n\r\n{AUTH_BODY}",
        AUTH_BODY.len()
    );
    let mut tasks = Vec::new();
    for _ in 0..AUTH_CONNECTIONS {
        let (sent, ok, other, reconnects, req) = (
            sent.clone(),
            ok.clone(),
            other.clone(),
            reconnects.clone(),
            req.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<BufReader<TcpStream>> = None;
            while sent.fetch_add(1, Ordering::Relaxed) < AUTH_CALLS {
                loop {
                    let r = match conn.as_mut() {
                        Some(r) => r,
                        None => match TcpStream::connect(addr).await {
                            Ok(s) => conn.insert(BufReader::new(s)),
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                continue;
                            }
                        },
                    };
                    let res = match r.get_mut().write_all(req.as_bytes()).await {
                        Ok(()) => read_response(r).await,
                        Err(e) => Err(e),
                    };
                    match res {
                        Ok((200, _, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(_) => other.fetch_add(1, Ordering::Relaxed),
                        Err(_) => {
                            // Closed by the server (evicted while idle): reconnect, retry.
                            conn = None;
                            reconnects.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        ok.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
        reconnects.load(Ordering::Relaxed),
    )
}

/// `HALF_OPEN_TOTAL` connections that send half a header and never finish it, at most
/// `HALF_OPEN_HELD` held at once, ~2,500 new ones a second. Returns (connected, failed connects, max held) and
/// the sockets still held, which the caller keeps until the `/auth` flood is over.
async fn half_open_flood(addr: SocketAddr) -> ((usize, usize, usize), VecDeque<TcpStream>) {
    let mut held = VecDeque::new();
    let (mut connected, mut failed, mut max_held) = (0, 0, 0);
    for i in 0..HALF_OPEN_TOTAL {
        match TcpStream::connect(addr).await {
            Ok(mut s) => {
                let _ = s
                    .write_all(b"POST /kbs/v0/auth HTTP/1.1\r\nHost: kbs\r\n")
                    .await;
                connected += 1;
                if held.len() >= HALF_OPEN_HELD {
                    held.pop_front();
                }
                held.push_back(s);
                max_held = max_held.max(held.len());
            }
            Err(_) => failed += 1,
        }
        // Paced at ~2,500 connections/s, what the KBS accepts and sets up on two cores
        // in a debug build beside the /auth flood. Faster, connections queue in the
        // kernel's accept queue (the backlog is 4096) ahead of honest ones: a
        // connection-rate flood is for the network layer (SYN cookies, rate limits).
        if i % 25 == 24 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    ((connected, failed, max_held), held)
}

/// The kernel's count of connections dropped because an accept queue was full
/// (`TcpExtListenOverflows`, system-wide); 0 when unreadable.
fn listen_overflows() -> u64 {
    let s = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut tcp_ext = s.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (tcp_ext.next(), tcp_ext.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
fn auth_and_half_open_floods_do_not_starve_an_honest_client() {
    let (soft, hard) = kbs::server::raise_nofile_limit().unwrap();
    eprintln!("FIGURE: RLIMIT_NOFILE soft {soft} hard {hard}");
    assert!(
        soft as usize > HALF_OPEN_HELD + 4096 + 2 * AUTH_CONNECTIONS + 256,
        "RLIMIT_NOFILE {soft} too low for this test"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = kbs_config(
        dir.path(),
        M,
        &format!("[\"{}\"]", hex::encode(host_data())),
    );
    // Everything else at its default (max_connections 4096, 10,000 pending sessions...).
    let server = KbsServer::new(cfg).unwrap();

    // The server on its own runtime (2 workers), as in the binary.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = kbs::server::listen("127.0.0.1:0".parse().unwrap()).unwrap();
            addr_tx.send(l.local_addr().unwrap()).unwrap();
            let serving = tokio::spawn(server.serve(l));
            let _ = stop_rx.await;
            let alive = !serving.is_finished();
            serving.abort();
            alive
        })
    });
    let addr = addr_rx.recv().unwrap();

    let keys = Arc::new(SimKeys::builtin().unwrap());
    let chain = Arc::new(SimChain::builtin().unwrap());
    let rss_before = rss_kib();
    let overflows_before = listen_overflows();

    // The honest client on its own thread and runtime; the floods start once it has
    // measured a few unloaded flows.
    let flooding = Arc::new(AtomicBool::new(true));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let good = {
        let (flooding, keys, chain) = (flooding.clone(), keys.clone(), chain.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut unloaded = Vec::new();
                for _ in 0..3 {
                    unloaded.push(good_flow(addr, &keys, &chain).await);
                }
                ready_tx.send(()).unwrap();
                let mut times = Vec::new();
                let start = Instant::now();
                while flooding.load(Ordering::Relaxed) {
                    let at = start.elapsed();
                    let (t, c) = good_flow(addr, &keys, &chain).await;
                    if t > Duration::from_secs(1) {
                        eprintln!(
                            "slow honest flow at {:.1} s into the flood: {:.0} ms (client crypto {:.0} ms)",
                            at.as_secs_f64(),
                            t.as_secs_f64() * 1e3,
                            c.as_secs_f64() * 1e3
                        );
                    }
                    times.push((t, c));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (unloaded, times)
            })
        })
    };
    ready_rx.recv().unwrap();

    // The attacker's side on one thread: on a real network its CPU is not the KBS's; here
    // it shares the two cores, and two threads of it would mostly measure that.
    let flood_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let (auth, half_open, auth_elapsed) = flood_rt.block_on(async {
        let half_open = tokio::spawn(half_open_flood(addr));
        let auth = auth_flood(addr).await;
        let auth_elapsed = start.elapsed();
        let (half_open, held) = half_open.await.unwrap();
        drop(held);
        (auth, half_open, auth_elapsed)
    });
    let flood_elapsed = start.elapsed();
    flooding.store(false, Ordering::Relaxed);
    let (unloaded, times) = good.join().unwrap();
    drop(flood_rt);

    // After the flood: the server still answers the whole flow.
    let after = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { good_flow(addr, &keys, &chain).await });
    let rss_after = rss_kib();
    let overflows = listen_overflows().saturating_sub(overflows_before);
    let _ = stop_tx.send(());
    let alive = server_thread.join().unwrap();

    let (ok, other, reconnects) = auth;
    let (connected, failed, max_held) = half_open;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (
            percentile(v, 0.5),
            percentile(v, 0.99),
            v.last().copied().unwrap_or_default(),
        )
    };
    let mut total: Vec<Duration> = times.iter().map(|t| t.0).collect();
    let mut waiting: Vec<Duration> = times.iter().map(|t| t.0 - t.1).collect();
    let (p50, p99, max) = stats(&mut total);
    let (w50, w99, wmax) = stats(&mut waiting);
    eprintln!(
        "FIGURE: /auth flood: {ok} answered 200 ({other} other, {reconnects} reconnections) in {:.1} s = {:.0} calls/s over {AUTH_CONNECTIONS} keep-alive connections",
        auth_elapsed.as_secs_f64(),
        ok as f64 / auth_elapsed.as_secs_f64()
    );
    eprintln!(
        "FIGURE: half-open flood: {connected} connected ({failed} connects failed), at most {max_held} held at once; kernel accept-queue overflows during the test: {overflows}"
    );
    eprintln!(
        "FIGURE: honest RCAR flow (auth+attest+resource), unloaded: {}",
        unloaded
            .iter()
            .map(|(t, c)| format!("{:.0} ms (client crypto {:.0} ms)", ms(*t), ms(*c)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!(
        "FIGURE: honest RCAR flow under flood, {} flows: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; minus the client's own crypto: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; after the flood {:.0} ms",
        total.len(),
        ms(p50),
        ms(p99),
        ms(max),
        ms(w50),
        ms(w99),
        ms(wmax),
        ms(after.0)
    );
    eprintln!(
        "FIGURE: load average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    eprintln!(
        "FIGURE: VmRSS {} MiB before, {} MiB after ({:+} MiB); whole flood {:.1} s",
        rss_before / 1024,
        rss_after / 1024,
        (rss_after as i64 - rss_before as i64) / 1024,
        flood_elapsed.as_secs_f64()
    );

    assert!(alive, "the server task ended");
    assert_eq!(ok, AUTH_CALLS, "every /auth answered 200");
    assert_eq!(
        connected, HALF_OPEN_TOTAL,
        "every half-open connect succeeded"
    );
    assert!(total.len() >= 10, "only {} honest flows ran", total.len());
    // The bar is 1 s. A shared machine busy with other work (load average well above
    // the core count) can raise it for a local run: KBS_FLOOD_P99_LIMIT_MS=3000.
    let limit = std::env::var("KBS_FLOOD_P99_LIMIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_millis);
    assert!(
        p99 <= limit,
        "honest p99 {p99:?} above {limit:?} (load average: {})",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 512 * 1024,
        "RSS grew by {} MiB",
        (rss_after - rss_before) / 1024
    );
}
