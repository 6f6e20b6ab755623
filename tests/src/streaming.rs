//! A client of the kubelet streaming protocol, as `kubectl exec`, `kubectl attach` and
//! `kubectl port-forward` speak it to the URL that the CRI's Exec, Attach and PortForward
//! calls return (containerd's CRI streaming server).
//!
//! The protocol, as `k8s.io/apimachinery`'s `wsstream` and the CRI streaming server's
//! `remotecommand`/`portforward` packages implement it:
//!
//! - A websocket whose subprotocol is `v4.channel.k8s.io` (binary frames). Every frame
//!   starts with one byte naming its channel; the rest is the payload.
//! - Exec/attach channels: 0 stdin (client → server), 1 stdout, 2 stderr, 3 the status
//!   (server → client, one JSON `metav1.Status` when the process ended: `"status":
//!   "Success"`, or `"Failure"` with reason `NonZeroExitCode` and a cause of type
//!   `ExitCode` whose message is the code), 4 terminal resize (client → server, JSON
//!   `{"Width":W,"Height":H}`). Right after the upgrade the server sends one empty frame on
//!   stdout (or stderr, or the status channel) to say it is ready. The server closes the
//!   websocket when the session ends. `v5.channel.k8s.io` (a frame `[255, channel]`
//!   half-closes stdin) is offered too; containerd's server (1.6 up to 2.x) does not
//!   accept it, so stdin ends only with the websocket.
//! - Port-forward: the ports are the query parameter `port`; channel `2*i` carries the
//!   data of port `i` both ways and `2*i+1` its errors (server → client). The server's
//!   first frame on each of the two starts with the port as a little-endian u16.
//!
//! ```no_run
//! # async fn demo(url: &str) {
//! use kata_cc_tests::streaming::Session;
//! let mut s = Session::connect(url).await;
//! s.stdin(b"echo hi\n").await;
//! s.read_stdout_until(|out| out.ends_with(b"hi\r\n"), std::time::Duration::from_secs(30)).await;
//! # }
//! ```

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Channel numbers of exec/attach sessions.
pub const STDIN: u8 = 0;
/// Standard output.
pub const STDOUT: u8 = 1;
/// Standard error.
pub const STDERR: u8 = 2;
/// The session's status (JSON `metav1.Status`).
pub const STATUS: u8 = 3;
/// Terminal resize (JSON `{"Width":..,"Height":..}`).
pub const RESIZE: u8 = 4;

/// The subprotocols a remotecommand client offers, most preferred first.
pub const EXEC_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// The subprotocol of port-forward over websocket.
pub const PORT_FORWARD_PROTOCOLS: &[&str] = &["v4.channel.k8s.io"];

/// How a finished exec/attach session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// `"status":"Success"`.
    Success,
    /// `NonZeroExitCode` with this code.
    Code(i32),
    /// Any other status (an error of the server or the runtime), as sent.
    Other(String),
    /// The websocket closed without a status.
    NoStatus,
}

impl Exit {
    /// The exit code (0 for success), if the status carries one.
    pub fn code(&self) -> Option<i32> {
        match self {
            Exit::Success => Some(0),
            Exit::Code(c) => Some(*c),
            _ => None,
        }
    }
}

/// Decodes the status channel's JSON.
pub fn parse_status(json: &[u8]) -> Exit {
    let Ok(v) = serde_json::from_slice::<Value>(json) else {
        return Exit::Other(String::from_utf8_lossy(json).into_owned());
    };
    if v["status"] == "Success" {
        return Exit::Success;
    }
    if v["reason"] == "NonZeroExitCode" {
        let code = v["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode" || c["type"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok());
        if let Some(code) = code {
            return Exit::Code(code);
        }
    }
    Exit::Other(v.to_string())
}

/// One streaming session (exec, attach or port-forward) over a websocket.
pub struct Session {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The subprotocol the server chose.
    pub protocol: String,
    /// Everything received on stdout so far (what `read_*` consumed).
    pub stdout: Vec<u8>,
    /// Everything received on stderr so far.
    pub stderr: Vec<u8>,
    /// The status, once received.
    pub status: Option<Exit>,
    closed: bool,
}

/// A frame received: its channel and payload.
pub type Frame = (u8, Vec<u8>);

impl Session {
    /// Connects to an exec/attach URL (`http://...` as the CRI returns it).
    pub async fn connect(url: &str) -> Session {
        Self::connect_with(url, EXEC_PROTOCOLS).await
    }

    /// Connects to `url` offering `protocols`.
    pub async fn connect_with(url: &str, protocols: &[&str]) -> Session {
        let ws_url = if let Some(rest) = url.strip_prefix("http://") {
            format!("ws://{rest}")
        } else if let Some(rest) = url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            url.to_string()
        };
        let mut req = ws_url
            .as_str()
            .into_client_request()
            .unwrap_or_else(|e| panic!("streaming URL {url:?}: {e}"));
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&protocols.join(", ")).unwrap(),
        );
        let (ws, resp) = tokio::time::timeout(Duration::from_secs(60), tokio_tungstenite::connect_async(req))
            .await
            .unwrap_or_else(|_| panic!("websocket upgrade at {url}: no answer within 60 s"))
            .unwrap_or_else(|e| panic!("websocket upgrade at {url}: {e}"));
        let protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            protocols.contains(&protocol.as_str()),
            "server at {url} chose subprotocol {protocol:?}, not one of {protocols:?}"
        );
        Session {
            ws,
            protocol,
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: None,
            closed: false,
        }
    }

    /// Sends `data` on channel `ch`.
    pub async fn send(&mut self, ch: u8, data: &[u8]) {
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(ch);
        frame.extend_from_slice(data);
        self.ws
            .send(Message::Binary(frame.into()))
            .await
            .unwrap_or_else(|e| panic!("websocket send on channel {ch}: {e}"));
    }

    /// Writes to the process's stdin.
    pub async fn stdin(&mut self, data: &[u8]) {
        self.send(STDIN, data).await;
    }

    /// Resizes the terminal.
    pub async fn resize(&mut self, width: u16, height: u16) {
        let json = serde_json::json!({ "Width": width, "Height": height }).to_string();
        self.send(RESIZE, json.as_bytes()).await;
    }

    /// The next data frame (channel, payload) without recording it, or `None` once the
    /// websocket is closed. Panics after `limit`.
    pub async fn next_frame(&mut self, limit: Duration) -> Option<Frame> {
        if self.closed {
            return None;
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("streaming session: nothing received within {limit:?}"));
            match msg {
                None | Some(Ok(Message::Close(_))) => {
                    self.closed = true;
                    return None;
                }
                Some(Err(e)) => {
                    // The server may drop the TCP connection right after its last frame.
                    eprintln!("streaming session: websocket error taken as the end: {e}");
                    self.closed = true;
                    return None;
                }
                Some(Ok(Message::Binary(b))) => {
                    let Some((&ch, rest)) = b.split_first() else { continue };
                    return Some((ch, rest.to_vec()));
                }
                Some(Ok(Message::Text(t))) => panic!("text frame on a binary subprotocol: {t:?}"),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Receives one frame and records it (stdout, stderr, status); false once closed.
    async fn pump(&mut self, limit: Duration) -> bool {
        match self.next_frame(limit).await {
            None => false,
            Some((STDOUT, d)) => {
                self.stdout.extend_from_slice(&d);
                true
            }
            Some((STDERR, d)) => {
                self.stderr.extend_from_slice(&d);
                true
            }
            Some((STATUS, d)) => {
                if !d.is_empty() {
                    self.status = Some(parse_status(&d));
                }
                true
            }
            Some((ch, d)) => panic!("frame on unexpected channel {ch}: {d:?}"),
        }
    }

    /// Reads until `pred(stdout so far)` holds; panics (showing the output) after `limit`
    /// or if the session ends first.
    pub async fn read_stdout_until(&mut self, pred: impl Fn(&[u8]) -> bool, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !pred(&self.stdout) {
            let left = deadline.saturating_duration_since(Instant::now());
            let more = tokio::time::timeout(left, self.pump(limit)).await.unwrap_or_else(|_| {
                panic!(
                    "stdout never matched within {limit:?}; stdout so far: {:?}",
                    String::from_utf8_lossy(&self.stdout)
                )
            });
            assert!(
                more,
                "session ended before stdout matched; stdout: {:?}, stderr: {:?}, status: {:?}",
                String::from_utf8_lossy(&self.stdout),
                String::from_utf8_lossy(&self.stderr),
                self.status
            );
        }
    }

    /// Reads everything until the server closes the session; returns the status.
    pub async fn finish(&mut self, limit: Duration) -> Exit {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let more = tokio::time::timeout(left, self.pump(limit))
                .await
                .unwrap_or_else(|_| panic!("session did not end within {limit:?}"));
            if !more {
                return self.status.clone().unwrap_or(Exit::NoStatus);
            }
        }
    }

    /// Closes the websocket from this side (a detach).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A port-forward session for one port.
pub struct PortForward {
    session: Session,
    /// The forwarded port.
    pub port: u16,
    data_prefix_seen: bool,
    error_prefix_seen: bool,
    /// What the error channel said (after its port prefix).
    pub error: Vec<u8>,
}

impl PortForward {
    /// Connects to the PortForward URL for `port`.
    pub async fn connect(url: &str, port: u16) -> PortForward {
        let sep = if url.contains('?') { '&' } else { '?' };
        let session = Session::connect_with(&format!("{url}{sep}port={port}"), PORT_FORWARD_PROTOCOLS).await;
        PortForward {
            session,
            port,
            data_prefix_seen: false,
            error_prefix_seen: false,
            error: Vec::new(),
        }
    }

    /// Sends bytes to the pod's port.
    pub async fn send(&mut self, data: &[u8]) {
        self.session.send(0, data).await;
    }

    /// Reads what the pod's port sends until `pred(received so far)` holds or the
    /// connection ends; returns the bytes.
    pub async fn read_until(&mut self, pred: impl Fn(&[u8]) -> bool, limit: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = Instant::now() + limit;
        while !pred(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((ch, mut d)) = self.session.next_frame(left).await else {
                break;
            };
            let first = match ch {
                0 => !std::mem::replace(&mut self.data_prefix_seen, true),
                1 => !std::mem::replace(&mut self.error_prefix_seen, true),
                other => panic!("port-forward frame on channel {other}"),
            };
            if first {
                assert!(d.len() >= 2, "first frame of channel {ch} has no port prefix: {d:?}");
                let port = u16::from_le_bytes([d[0], d[1]]);
                assert_eq!(port, self.port, "port prefix of channel {ch}");
                d.drain(..2);
            }
            if ch == 0 {
                got.extend_from_slice(&d);
            } else {
                self.error.extend_from_slice(&d);
            }
        }
        got
    }

    /// Closes the websocket.
    pub async fn close(self) {
        self.session.close().await;
    }
}

/// A streaming session of `cmd` in container `id`: the CRI Exec call, then its URL.
pub async fn exec_session(
    cri: &mut crate::cri::Cri,
    id: &str,
    cmd: &[&str],
    tty: bool,
    stdin: bool,
) -> Session {
    let req = k8s_cri::v1::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    };
    let url = crate::cri::within(Duration::from_secs(60), "Exec", cri.rt.exec(req))
        .await
        .unwrap_or_else(|e| panic!("CRI Exec {cmd:?} in {id}: {e}"))
        .into_inner()
        .url;
    Session::connect(&url).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decode() {
        assert_eq!(parse_status(br#"{"metadata":{},"status":"Success"}"#), Exit::Success);
        let failure = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(parse_status(failure), Exit::Code(3));
        assert!(matches!(
            parse_status(br#"{"status":"Failure","reason":"InternalError"}"#),
            Exit::Other(_)
        ));
        assert!(matches!(parse_status(b"not json"), Exit::Other(_)));
    }
}

