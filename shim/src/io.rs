//! Relays a process's stdio between containerd's FIFOs on the host and the agent's
//! streams (ReadStdout/ReadStderr/WriteStdin/CloseStdin).
//!
//! - Output: one task reads the agent stream as fast as the agent gives it and queues
//!   chunks (up to [`MAX_BUFFERED`] bytes) for a second task that writes the FIFO, so a
//!   slow reader on the host does not stall the container until that much is pending.
//!   If the FIFO's reader goes away, output is still drained and dropped: the container
//!   never blocks on a reader that is gone.
//! - Input: the FIFO is opened read-write (so it never reads end-of-file while no
//!   writer is attached) and copied to WriteStdin until CloseIO, which ends with
//!   CloseStdin.

use std::sync::Arc;
use std::time::Duration;

use protocols::agent as pb;
use protocols::AgentClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};

/// Largest chunk asked from the agent (and sent to it). Kept well below the 64 KiB TX
/// buffer of vhost-device-vsock: with 64 KiB reads (a ttrpc frame just over the buffer)
/// guest-to-host credit stalled after ~200 KiB and the agent connection hung
/// (tests/tests/cri_streaming.rs, kata_cc_100mib_exec_stdout; docs/streaming.md).
const CHUNK: u32 = 16 * 1024;
/// Output bytes held for a slow FIFO reader before the agent stream is not read any more.
pub const MAX_BUFFERED: usize = 16 * 1024 * 1024;

/// containerd's FIFO paths for one process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    /// stdin FIFO ("" = none).
    pub stdin: String,
    /// stdout FIFO ("" = none).
    pub stdout: String,
    /// stderr FIFO ("" = none).
    pub stderr: String,
    /// A tty: stdout carries it, stderr is empty.
    pub terminal: bool,
}

/// The running relays of one process.
#[derive(Debug)]
pub struct IoRelay {
    output_done: watch::Receiver<bool>,
    close_stdin: Arc<Notify>,
}

impl IoRelay {
    /// Opens the FIFOs and starts relaying for `container`/`exec` ("" = the init process).
    pub async fn start(agent: AgentClient, container: &str, exec: &str, stdio: &Stdio) -> std::io::Result<IoRelay> {
        let mut outputs = Vec::new();
        for (path, is_stderr) in [(&stdio.stdout, false), (&stdio.stderr, true)] {
            if path.is_empty() || (is_stderr && stdio.terminal) {
                continue;
            }
            let fifo = open_writer(path).await?;
            outputs.push(tokio::spawn(relay_output(agent.clone(), container.to_string(), exec.to_string(), is_stderr, fifo)));
        }
        let (done_tx, done_rx) = watch::channel(false);
        tokio::spawn(async move {
            for o in outputs {
                let _ = o.await;
            }
            let _ = done_tx.send(true);
        });
        let close_stdin = Arc::new(Notify::new());
        if !stdio.stdin.is_empty() {
            let fifo = tokio::net::unix::pipe::OpenOptions::new().read_write(true).open_receiver(&stdio.stdin)?;
            tokio::spawn(relay_input(agent, container.to_string(), exec.to_string(), fifo, Arc::clone(&close_stdin)));
        }
        Ok(IoRelay { output_done: done_rx, close_stdin })
    }

    /// Waits until stdout and stderr reached end of stream (at most `limit`).
    pub async fn wait_output(&self, limit: Duration) -> bool {
        let mut rx = self.output_done.clone();
        tokio::time::timeout(limit, rx.wait_for(|d| *d)).await.is_ok_and(|r| r.is_ok())
    }

    /// Ends stdin: the rest of what the FIFO holds is sent, then CloseStdin.
    pub fn close_stdin(&self) {
        self.close_stdin.notify_one();
    }
}

/// Opens a FIFO for writing; containerd holds its read end open already. Retries for a
/// short while when no reader is there yet.
async fn open_writer(path: &str) -> std::io::Result<tokio::net::unix::pipe::Sender> {
    let mut tries = 0;
    loop {
        match tokio::net::unix::pipe::OpenOptions::new().open_sender(path) {
            Ok(s) => return Ok(s),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("open {path}: {e}"))),
        }
    }
}

async fn relay_output(
    agent: AgentClient,
    container: String,
    exec: String,
    is_stderr: bool,
    mut fifo: tokio::net::unix::pipe::Sender,
) {
    // Chunks of at most CHUNK bytes: the channel's capacity bounds the buffered bytes.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(MAX_BUFFERED / CHUNK as usize);
    let writer = tokio::spawn(async move {
        let mut broken = false;
        while let Some(chunk) = rx.recv().await {
            if broken {
                continue;
            }
            if let Err(e) = fifo.write_all(&chunk).await {
                tracing::warn!("stdio FIFO closed by its reader ({e}); dropping further output");
                broken = true;
            }
        }
    });
    let mut req = pb::ReadStreamRequest::new();
    req.container_id = container.clone();
    req.exec_id = exec.clone();
    req.len = CHUNK;
    loop {
        // No deadline: the process may be silent for as long as it likes.
        let ctx = protocols::context_with(Duration::ZERO);
        let r = if is_stderr {
            agent.agent().read_stderr(ctx, &req).await
        } else {
            agent.agent().read_stdout(ctx, &req).await
        };
        match r {
            Ok(resp) if resp.data.is_empty() => break,
            Ok(resp) => {
                if tx.send(resp.data).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!("{container}/{exec}: read {}: {e}", if is_stderr { "stderr" } else { "stdout" });
                break;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

async fn relay_input(
    agent: AgentClient,
    container: String,
    exec: String,
    mut fifo: tokio::net::unix::pipe::Receiver,
    close: Arc<Notify>,
) {
    let mut buf = vec![0u8; CHUNK as usize];
    loop {
        let n = tokio::select! {
            r = fifo.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = close.notified() => {
                // Forward what is already queued in the FIFO, then end.
                loop {
                    match fifo.try_read(&mut buf) {
                        Ok(n) if n > 0 => {
                            if write_all(&agent, &container, &exec, &buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
                break;
            }
        };
        if write_all(&agent, &container, &exec, &buf[..n]).await.is_err() {
            break;
        }
    }
    let mut r = pb::CloseStdinRequest::new();
    r.container_id = container.clone();
    r.exec_id = exec.clone();
    if let Err(e) = agent.agent().close_stdin(agent.context(), &r).await {
        tracing::debug!("{container}/{exec}: CloseStdin: {e}");
    }
}

async fn write_all(agent: &AgentClient, container: &str, exec: &str, mut data: &[u8]) -> Result<(), ttrpc::Error> {
    while !data.is_empty() {
        let mut r = pb::WriteStreamRequest::new();
        r.container_id = container.to_string();
        r.exec_id = exec.to_string();
        r.data = data.to_vec();
        let resp = agent.agent().write_stdin(protocols::context_with(Duration::ZERO), &r).await?;
        let n = usize::try_from(resp.len).unwrap_or(0).min(data.len());
        if n == 0 {
            return Err(ttrpc::Error::Others("WriteStdin accepted nothing".into()));
        }
        data = &data[n..];
    }
    Ok(())
}
