//! CRI streaming end to end: the CRI Exec, Attach and PortForward calls of the test
//! containerd, and the URL each returns spoken to as kubectl does
//! (`kata_cc_tests::streaming`: websocket `v4.channel.k8s.io`), for runc and kata-cc in
//! the same run.
//!
//! - `exec -it`: a shell on a tty; input echoed back, a resize seen by `stty size`, `exit
//!   3` reported as exit code 3.
//! - exec without a tty, with stdin: lines read by `head`, stdout and stderr apart.
//! - attach to a running container's tty and stdin.
//! - 100 MiB through exec stdout to a reader that stalls, then reads slowly: every byte
//!   arrives in order (compared with the generator's pattern), nothing hangs, and the
//!   shim's resident memory stays bounded (read from /proc while it flows).
//! - port-forward to busybox httpd in the pod.
//!
//! Exec round-trip latency, runc vs kata-cc, is a benchmark: `cargo bench -p
//! kata-cc-tests --bench exec`.
//!
//! Needs what tests/cri.rs needs (shim built, test guest image, QEMU). Run as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use k8s_cri::v1 as pb;
use kata_cc_tests::cri::{containerd, rpc_timeout, shim_of, within, Cri, Pod, KATA_CC, RUNC};
use kata_cc_tests::streaming::{exec_session, Exit, PortForward, Session};

const T: Duration = Duration::from_secs(120);

/// A running pod with a plain container (`sleep`) and a tty+stdin container (`sh`).
async fn pod_with_containers(cri: &mut Cri, handler: &str) -> (Pod, String, String) {
    let pod = Pod::run(cri, &format!("stream-{handler}"), handler).await;
    let plain = pod
        .create_start(cri, "plain", &["/bin/busybox", "sleep", "3600"])
        .await;
    let mut cfg = Pod::container_config("term", &["/bin/sh"]);
    cfg.tty = true;
    cfg.stdin = true;
    let term = pod.create(cri, cfg).await;
    pod.start(cri, &term).await;
    (pod, plain, term)
}

async fn exec_tty(cri: &mut Cri, id: &str, handler: &str) {
    let mut s = exec_session(cri, id, &["/bin/sh"], true, true).await;
    assert_eq!(s.protocol, "v4.channel.k8s.io", "{handler}");
    s.resize(80, 24).await;
    s.stdin(b"echo tty-$((40+2))\n").await;
    s.read_stdout_until(|o| String::from_utf8_lossy(o).contains("tty-42"), T).await;
    // The tty echoes what was typed: the raw input shows up before the answer.
    let out = String::from_utf8_lossy(&s.stdout).into_owned();
    // (ash's line editing may redraw the line, so only the typed expression is looked for.)
    assert!(out.contains("tty-$((40+2))"), "{handler}: no tty echo in {out:?}");
    s.resize(123, 45).await;
    // The resize travels CRI streaming server -> shim ResizePty -> agent TtyWinResize
    // while the next line is typed; ask until the shell sees it (a resize and stdin are
    // separate channels, so their order is not guaranteed).
    let deadline = Instant::now() + T;
    loop {
        let mark = s.stdout.len();
        s.stdin(b"echo size=$(stty size)\n").await;
        s.read_stdout_until(
            |o| {
                let t = String::from_utf8_lossy(&o[mark..]).into_owned();
                t.lines().any(|l| l.trim_end().starts_with("size=") && !l.contains('$'))
            },
            T,
        )
        .await;
        let t = String::from_utf8_lossy(&s.stdout[mark..]).into_owned();
        if t.contains("size=45 123") {
            break;
        }
        assert!(Instant::now() < deadline, "{handler}: stty size never showed 45 123: {t:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stdin(b"exit 3\n").await;
    assert_eq!(s.finish(T).await, Exit::Code(3), "{handler}: exit code of the tty shell");
    assert!(s.stderr.is_empty(), "{handler}: a tty has no separate stderr");
}

async fn exec_stdin_no_tty(cri: &mut Cri, id: &str, handler: &str) {
    let mut s = exec_session(
        cri,
        id,
        &["/bin/sh", "-c", "/bin/busybox head -n 2; echo to-stderr >&2; exit 0"],
        false,
        true,
    )
    .await;
    s.stdin(b"line-one\nline-two\n").await;
    assert_eq!(s.finish(T).await, Exit::Success, "{handler}");
    assert_eq!(String::from_utf8_lossy(&s.stdout), "line-one\nline-two\n", "{handler}: stdout");
    assert_eq!(String::from_utf8_lossy(&s.stderr), "to-stderr\n", "{handler}: stderr");

    // stdout and stderr interleaved by the process stay on their own channels.
    let mut s = exec_session(
        cri,
        id,
        &["/bin/sh", "-c", "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 9"],
        false,
        false,
    )
    .await;
    assert_eq!(s.finish(T).await, Exit::Code(9), "{handler}");
    assert_eq!(String::from_utf8_lossy(&s.stdout), "out1\nout2\nout3\n", "{handler}");
    assert_eq!(String::from_utf8_lossy(&s.stderr), "err1\nerr2\nerr3\n", "{handler}");
}

/// A streaming session attached to `id`'s tty and stdin (CRI Attach, then its URL).
async fn attach_session(cri: &mut Cri, id: &str) -> Session {
    let req = pb::AttachRequest {
        container_id: id.into(),
        stdin: true,
        tty: true,
        stdout: true,
        stderr: false,
    };
    let url = within(Duration::from_secs(60), "Attach", cri.rt.attach(req))
        .await
        .unwrap_or_else(|e| panic!("CRI Attach {id}: {e}"))
        .into_inner()
        .url;
    Session::connect(&url).await
}

async fn attach(cri: &mut Cri, id: &str, handler: &str) {
    let mut s = attach_session(cri, id).await;
    s.stdin(b"echo attached-$((6*7))\n").await;
    s.read_stdout_until(|o| String::from_utf8_lossy(o).contains("attached-42"), T)
        .await;
    s.close().await;
    // Detaching leaves the container running; a second attach still reaches its shell.
    let st = cri.container_status(id).await;
    assert_eq!(st.state, pb::ContainerState::ContainerRunning as i32, "{handler}: {st:?}");
    let mut s = attach_session(cri, id).await;
    s.stdin(b"echo again-$((1+1))\n").await;
    s.read_stdout_until(|o| String::from_utf8_lossy(o).contains("again-2"), T).await;
    s.close().await;
}

/// The generator's pattern: `yes` repeats this line.
const LINE: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz\n";
const BIG: usize = 100 * 1024 * 1024;

/// 100 MiB through exec stdout with a slow reader. Returns (seconds, shim peak RSS KiB,
/// shim RSS before KiB).
async fn big_slow_stdout(cri: &mut Cri, pod: &Pod, id: &str, handler: &str) -> (f64, u64, u64) {
    let shim = shim_of(&pod.id).unwrap_or_else(|| panic!("{handler}: no shim process for pod {}", pod.id));
    let rss_before = shim.rss_kib().unwrap();
    let cmd = format!("/bin/busybox yes {} | /bin/busybox head -c {BIG}", std::str::from_utf8(&LINE[..LINE.len() - 1]).unwrap());
    let t0 = Instant::now();
    let mut s = exec_session(cri, id, &["/bin/sh", "-c", &cmd], false, false).await;
    // Stall for a while so that every buffer on the way fills up, then read slowly.
    let mut peak = rss_before;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(shim.rss_kib().unwrap_or(0));
    }
    let mut got = 0usize;
    let mut frames = 0u64;
    let mut status = None;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(120), s.next_frame(Duration::from_secs(3600))).await;
        let Ok(next) = next else {
            panic!(
                "{handler}: stdout stalled: nothing for 120 s after {got} of {BIG} bytes ({frames} frames, {:.0} s in); shim RSS {} KiB",
                t0.elapsed().as_secs_f64(),
                shim.rss_kib().unwrap_or(0)
            );
        };
        let Some((ch, d)) = next else { break };
        match ch {
            1 => {
                for (i, b) in d.iter().enumerate() {
                    let want = LINE[(got + i) % LINE.len()];
                    assert_eq!(*b, want, "{handler}: byte {} differs (lost or reordered data)", got + i);
                }
                got += d.len();
                frames += 1;
                if frames.is_multiple_of(64) {
                    peak = peak.max(shim.rss_kib().unwrap_or(0));
                    // A slow reader: 2 ms every 64 frames.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            2 => panic!("{handler}: stderr: {:?}", String::from_utf8_lossy(&d)),
            3 if !d.is_empty() => status = Some(kata_cc_tests::streaming::parse_status(&d)),
            _ => {}
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(got, BIG, "{handler}: bytes received");
    assert_eq!(status, Some(Exit::Success), "{handler}: status");
    (secs, peak, rss_before)
}

struct Figures {
    handler: &'static str,
    big: Option<(f64, u64, u64)>,
}

async fn streaming_on(cri: &mut Cri, handler: &'static str) -> Figures {
    let (pod, plain, term) = pod_with_containers(cri, handler).await;
    exec_tty(cri, &plain, handler).await;
    exec_stdin_no_tty(cri, &plain, handler).await;
    attach(cri, &term, handler).await;
    // kata-cc's 100 MiB run is its own test (kata_cc_100mib_exec_stdout): a second pod VM
    // keeps this one's figures apart from a long transfer.
    let big = if handler == RUNC { Some(big_slow_stdout(cri, &pod, &plain, handler).await) } else { None };
    pod.stop_remove(cri).await;
    Figures { handler, big }
}

/// Every streaming session on runc, then on kata-cc, and the figures side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_attach_streams_runc_and_kata_cc() {
    let ctrd = containerd();
    ctrd.require_shim();
    let mut cri = Cri::connect(&ctrd.sock).await;
    cri.pull(&ctrd.busybox_image).await;
    let mut figs = Vec::new();
    for h in [RUNC, KATA_CC] {
        figs.push(streaming_on(&mut cri, h).await);
    }
    println!("streaming figures (same run, same machine):");
    println!(
        "{:<8} {:>10} {:>8} {:>22}",
        "runtime", "100MiB s", "MiB/s", "shim RSS KiB"
    );
    for f in &figs {
        let big = match f.big {
            Some((secs, peak, before)) => format!("{secs:>10.1} {:>8.1} {before:>9} -> {peak:>9}", 100.0 / secs),
            None => format!("{:>10} {:>8} {:>22}", "-", "-", "-"),
        };
        println!("{:<8} {big}", f.handler);
    }
    for f in &figs {
        if let Some((_, peak, before)) = f.big {
            assert_shim_rss_bounded(f.handler, before, peak);
        }
    }
}

/// The shim holds at most io::MAX_BUFFERED (16 MiB) per output stream; allow that twice
/// plus the allocator's slack, far below the 100 MiB that went through.
fn assert_shim_rss_bounded(handler: &str, before: u64, peak: u64) {
    assert!(
        peak.saturating_sub(before) < 48 * 1024,
        "{handler}: shim RSS grew from {before} KiB to {peak} KiB while 100 MiB streamed"
    );
}

/// 100 MiB through a kata-cc exec's stdout with a slow reader.
#[tokio::test]
async fn kata_cc_100mib_exec_stdout() {
    let ctrd = containerd();
    ctrd.require_shim();
    let mut cri = Cri::connect(&ctrd.sock).await;
    cri.pull(&ctrd.busybox_image).await;
    let (pod, plain, _term) = pod_with_containers(&mut cri, KATA_CC).await;
    let (secs, peak, before) = big_slow_stdout(&mut cri, &pod, &plain, KATA_CC).await;
    println!("kata-cc: 100 MiB in {secs:.1} s, shim RSS {before} -> {peak} KiB");
    assert_shim_rss_bounded(KATA_CC, before, peak);
    pod.stop_remove(&mut cri).await;
}

async fn port_forward(handler: &str) {
    let ctrd = containerd();
    ctrd.require_shim();
    let mut cri = Cri::connect(&ctrd.sock).await;
    cri.pull(&ctrd.busybox_image).await;
    let pod = Pod::run(&mut cri, &format!("pf-{handler}"), handler).await;
    let _web = pod
        .create_start(
            &mut cri,
            "web",
            &[
                "/bin/sh",
                "-c",
                "mkdir -p /www && echo port-forward-ok > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www",
            ],
        )
        .await;
    // httpd may still be starting: retry, each time with a new URL (a streaming URL's
    // token is good for one connection).
    let deadline = Instant::now() + T;
    loop {
        let req = pb::PortForwardRequest {
            pod_sandbox_id: pod.id.clone(),
            port: vec![8080],
        };
        let url = within(rpc_timeout(handler), "PortForward", cri.rt.port_forward(req))
            .await
            .unwrap_or_else(|e| panic!("CRI PortForward ({handler}): {e}"))
            .into_inner()
            .url;
        let mut pf = PortForward::connect(&url, 8080).await;
        pf.send(b"GET /index.html HTTP/1.0\r\n\r\n").await;
        let got = pf
            .read_until(|b| String::from_utf8_lossy(b).contains("port-forward-ok"), T)
            .await;
        let text = String::from_utf8_lossy(&got).into_owned();
        if text.contains("port-forward-ok") {
            assert!(text.starts_with("HTTP/1."), "{handler}: {text:?}");
            pf.close().await;
            break;
        }
        let err = String::from_utf8_lossy(&pf.error).into_owned();
        assert!(
            Instant::now() < deadline,
            "{handler}: port-forward to 8080 got {text:?}, error channel {err:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pod.stop_remove(&mut cri).await;
}

#[tokio::test]
async fn runc_port_forward_reaches_pod_server() {
    port_forward(RUNC).await;
}

#[tokio::test]
async fn kata_cc_port_forward_reaches_pod_server() {
    port_forward(KATA_CC).await;
}
