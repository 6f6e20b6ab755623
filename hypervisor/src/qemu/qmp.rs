//! A small async QMP client over a unix socket.
//!
//! QMP speaks JSON, one object per line. After the greeting the client sends
//! `qmp_capabilities`; then each command carries an `id` that its answer echoes,
//! and asynchronous events arrive interleaved. Everything read is treated as
//! untrusted: lines are length-limited, malformed input is logged and skipped, and
//! nothing here panics on what QEMU (or a guest driving QEMU) sends.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, Mutex};
use tokio::task::JoinHandle;

/// Longest QMP line accepted.
pub const MAX_LINE: usize = 1 << 20;
/// How long one command may take before it is abandoned.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be opened.
    #[error("cannot connect to QMP socket {path}")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("QMP I/O failed")]
    Io(#[source] std::io::Error),
    /// QEMU closed the connection.
    #[error("QMP connection closed")]
    Closed,
    /// QEMU sent something that is not QMP.
    #[error("unexpected QMP message: {0}")]
    Protocol(String),
    /// The command failed on the QEMU side.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// Command name.
        command: String,
        /// QMP error class.
        class: String,
        /// QMP error description.
        desc: String,
    },
    /// No answer in time.
    #[error("QMP command {0} timed out")]
    Timeout(String),
}

/// A QMP event (`{"event": ..., "data": ..., "timestamp": ...}`).
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name, e.g. `STOP`, `SHUTDOWN`, `GUEST_PANICKED`.
    pub name: String,
    /// Event data (`null` when absent).
    pub data: Value,
}

/// QEMU run states (`query-status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    /// The guest runs.
    Running,
    /// Stopped by `stop` (or a debugger).
    Paused,
    /// Not started yet (`-S`).
    Prelaunch,
    /// The accelerator failed (e.g. KVM emulation failure): the guest is dead.
    InternalError,
    /// The guest reported a panic (pvpanic).
    GuestPanicked,
    /// A disk error paused the guest.
    IoError,
    /// The guest shut down and QEMU waits (`-no-shutdown`).
    Shutdown,
    /// The watchdog device fired.
    Watchdog,
    /// Any other state QEMU reports.
    Other(String),
}

impl RunStatus {
    /// Parses QMP's status string.
    pub fn parse(s: &str) -> Self {
        match s {
            "running" => Self::Running,
            "paused" => Self::Paused,
            "prelaunch" => Self::Prelaunch,
            "internal-error" => Self::InternalError,
            "guest-panicked" => Self::GuestPanicked,
            "io-error" => Self::IoError,
            "shutdown" => Self::Shutdown,
            "watchdog" => Self::Watchdog,
            other => Self::Other(other.chars().take(64).collect()),
        }
    }

    /// States from which the guest will not continue on its own: a crash, not a hang.
    pub fn is_crash(&self) -> bool {
        matches!(
            self,
            Self::InternalError | Self::GuestPanicked | Self::IoError | Self::Watchdog
        )
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Prelaunch => "prelaunch",
            Self::InternalError => "internal-error",
            Self::GuestPanicked => "guest-panicked",
            Self::IoError => "io-error",
            Self::Shutdown => "shutdown",
            Self::Watchdog => "watchdog",
            Self::Other(s) => s,
        };
        f.write_str(s)
    }
}

type Pending = Arc<StdMutex<HashMap<u64, oneshot::Sender<Result<Value, (String, String)>>>>>;

/// A connected QMP session. Dropping it closes the connection.
#[derive(Debug)]
pub struct QmpClient {
    writer: Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
    reader: JoinHandle<()>,
    /// QEMU version from the greeting, e.g. `10.0.2`.
    version: String,
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl QmpClient {
    /// Connects, reads the greeting and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let greeting = tokio::time::timeout(COMMAND_TIMEOUT, read_message(&mut reader))
            .await
            .map_err(|_| QmpError::Timeout("greeting".into()))??
            .ok_or(QmpError::Closed)?;
        let qemu = greeting
            .get("QMP")
            .and_then(|q| q.get("version"))
            .and_then(|v| v.get("qemu"))
            .ok_or_else(|| QmpError::Protocol(truncate(&greeting.to_string())))?;
        let version = format!(
            "{}.{}.{}",
            qemu.get("major").and_then(Value::as_u64).unwrap_or(0),
            qemu.get("minor").and_then(Value::as_u64).unwrap_or(0),
            qemu.get("micro").and_then(Value::as_u64).unwrap_or(0)
        );
        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(64);
        let task = tokio::spawn(read_loop(reader, pending.clone(), events.clone()));
        let client = Self {
            writer: Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events,
            reader: task,
            version,
        };
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// QEMU version from the greeting.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Receives events sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": command, "id": id });
        if let (Some(args), Some(obj)) = (arguments, msg.as_object_mut()) {
            obj.insert("arguments".into(), args);
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let mut line = msg.to_string();
        line.push('\n');
        let write = async {
            let mut w = self.writer.lock().await;
            w.write_all(line.as_bytes()).await?;
            w.flush().await
        };
        if let Err(e) = write.await {
            lock(&self.pending).remove(&id);
            return Err(if e.kind() == std::io::ErrorKind::BrokenPipe {
                QmpError::Closed
            } else {
                QmpError::Io(e)
            });
        }
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, rx).await;
        lock(&self.pending).remove(&id);
        match answer {
            Err(_) => Err(QmpError::Timeout(command.to_owned())),
            Ok(Err(_)) => Err(QmpError::Closed),
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::Command {
                command: command.to_owned(),
                class,
                desc,
            }),
        }
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<RunStatus, QmpError> {
        let v = self.execute("query-status", None).await?;
        let status = v
            .get("status")
            .and_then(Value::as_str)
            .ok_or_else(|| QmpError::Protocol(truncate(&v.to_string())))?;
        Ok(RunStatus::parse(status))
    }

    /// `system_powerdown`: ACPI power button.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// `quit`: QEMU exits at once. The connection may close before the answer.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `stop`: pause the vCPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// `cont`: resume the vCPUs.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned map is still consistent (inserts/removes only).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Reads one JSON object line; `None` at end of stream.
async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> Result<Option<Value>, QmpError> {
    loop {
        let mut buf = Vec::new();
        let n = (&mut *reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(QmpError::Io)?;
        if n == 0 {
            return Ok(None);
        }
        if buf.len() > MAX_LINE {
            return Err(QmpError::Protocol(format!(
                "line longer than {MAX_LINE} bytes"
            )));
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return match serde_json::from_slice::<Value>(&buf) {
            Ok(v) if v.is_object() => Ok(Some(v)),
            Ok(_) | Err(_) => Err(QmpError::Protocol(truncate(&String::from_utf8_lossy(&buf)))),
        };
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: BufReader<R>,
    pending: Pending,
    events: broadcast::Sender<QmpEvent>,
) {
    loop {
        let msg = match read_message(&mut reader).await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(QmpError::Protocol(bad)) => {
                tracing::warn!(message = %bad, "ignoring malformed QMP message");
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "QMP read failed");
                break;
            }
        };
        dispatch(msg, &pending, &events);
    }
    // Dropping the senders wakes every waiting command with `Closed`.
    lock(&pending).clear();
}

fn dispatch(msg: Value, pending: &Pending, events: &broadcast::Sender<QmpEvent>) {
    if let Some(name) = msg.get("event").and_then(Value::as_str) {
        let event = QmpEvent {
            name: truncate(name),
            data: msg.get("data").cloned().unwrap_or(Value::Null),
        };
        // No subscriber is fine.
        let _ = events.send(event);
        return;
    }
    let Some(id) = msg.get("id").and_then(Value::as_u64) else {
        tracing::debug!("QMP answer without our id ignored");
        return;
    };
    let Some(tx) = lock(pending).remove(&id) else {
        return;
    };
    let result = if let Some(ret) = msg.get("return") {
        Ok(ret.clone())
    } else if let Some(err) = msg.get("error") {
        let field = |k: &str| {
            err.get(k)
                .and_then(Value::as_str)
                .map(truncate)
                .unwrap_or_default()
        };
        Err((field("class"), field("desc")))
    } else {
        Err(("Protocol".to_owned(), truncate(&msg.to_string())))
    };
    let _ = tx.send(result);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;

    use super::*;

    /// A scripted QMP server: answers each command from `replies` by name.
    async fn fake_server(dir: &Path, script: fn(&str) -> Vec<String>) -> std::path::PathBuf {
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n").await.unwrap();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line).unwrap();
                let cmd = v["execute"].as_str().unwrap().to_owned();
                let id = v["id"].clone();
                for out in script(&cmd) {
                    let out = out.replace("$ID", &id.to_string());
                    if out == "CLOSE" {
                        return;
                    }
                    w.write_all(out.as_bytes()).await.unwrap();
                    w.write_all(b"\n").await.unwrap();
                }
            }
        });
        path
    }

    #[tokio::test]
    async fn handshake_status_events_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_server(dir.path(), |cmd| match cmd {
            "qmp_capabilities" => vec![r#"{"return": {}, "id": $ID}"#.into()],
            "query-status" => vec![
                r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#.into(),
                "this is not json".into(),
                r#"[1,2]"#.into(),
                r#"{"return": {}, "id": 999999}"#.into(),
                r#"{"return": {"status": "internal-error", "running": false}, "id": $ID}"#.into(),
            ],
            "stop" => {
                vec![r#"{"error": {"class": "GenericError", "desc": "nope"}, "id": $ID}"#.into()]
            }
            "quit" => vec!["CLOSE".into()],
            _ => vec![r#"{"return": {}, "id": $ID}"#.into()],
        })
        .await;
        let qmp = QmpClient::connect(&path).await.unwrap();
        assert_eq!(qmp.version(), "10.0.2");
        let mut events = qmp.subscribe();
        let status = qmp.query_status().await.unwrap();
        assert_eq!(status, RunStatus::InternalError);
        assert!(status.is_crash());
        assert_eq!(events.recv().await.unwrap().name, "STOP");
        match qmp.stop().await {
            Err(QmpError::Command { class, desc, .. }) => {
                assert_eq!((class.as_str(), desc.as_str()), ("GenericError", "nope"))
            }
            other => panic!("{other:?}"),
        }
        qmp.cont().await.unwrap();
        qmp.quit().await.unwrap();
        assert!(matches!(
            qmp.query_status().await,
            Err(QmpError::Closed | QmpError::Io(_))
        ));
    }

    #[tokio::test]
    async fn overlong_line_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_server(dir.path(), |cmd| match cmd {
            "query-status" => vec![
                format!("{{\"event\": \"{}\"}}", "A".repeat(MAX_LINE + 10)),
                r#"{"return": {"status": "running", "running": true}, "id": $ID}"#.into(),
            ],
            _ => vec![r#"{"return": {}, "id": $ID}"#.into()],
        })
        .await;
        let qmp = QmpClient::connect(&path).await.unwrap();
        // The over-long line is reported as a protocol error and skipped; the
        // remainder of it is read as garbage lines and skipped as well.
        assert_eq!(qmp.query_status().await.unwrap(), RunStatus::Running);
    }

    #[tokio::test]
    async fn bad_greeting_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"{\"hello\": 1}\n").await.unwrap();
        });
        assert!(matches!(
            QmpClient::connect(&path).await,
            Err(QmpError::Protocol(_))
        ));
    }

    #[test]
    fn run_status_parse() {
        assert_eq!(RunStatus::parse("guest-panicked"), RunStatus::GuestPanicked);
        assert!(!RunStatus::parse("paused").is_crash());
        assert_eq!(RunStatus::parse("weird").to_string(), "weird");
    }
}
