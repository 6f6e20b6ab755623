//! The host's async connection to the guest agent.
//!
//! [`AgentClient::connect`] dials an [`AgentAddr`] (with the hybrid-vsock `CONNECT`
//! handshake where needed), wraps the stream in a ttrpc client and hands out the
//! generated [`AgentServiceClient`] and [`HealthClient`]. [`AgentClient::wait_ready`]
//! is the boot-time variant: it keeps dialling and calling `Health.Check` until the
//! agent answers `SERVING` or a deadline passes.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use ttrpc::context::{self, Context};
use ttrpc::r#async::transport::Socket;

use crate::addr::AgentAddr;
use crate::agent_ttrpc::AgentServiceClient;
use crate::health::{
    health_check_response::ServingStatus, CheckRequest, HealthCheckResponse, VersionCheckResponse,
};
use crate::health_ttrpc::HealthClient;

/// Longest reply line accepted from a hybrid-vsock proxy (`OK 4294967295\n` is 14 bytes).
const MAX_HANDSHAKE_REPLY: usize = 64;

/// How [`AgentClient::connect`] and [`AgentClient::wait_ready`] behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Time allowed for [`AgentClient::connect`] to establish the connection,
    /// all retries included.
    pub timeout: Duration,
    /// Retry failed attempts until `timeout` has elapsed. When false, the first
    /// failure is returned as is.
    pub retry: bool,
    /// Pause between two attempts.
    pub retry_interval: Duration,
    /// Bound on one attempt: the dial with its hybrid-vsock handshake (and, in
    /// [`AgentClient::wait_ready`], the `Health.Check` that follows). A `CONNECT`
    /// sent while the guest's vsock driver is still coming up can be left
    /// unanswered by the proxy; such an attempt is abandoned and retried.
    /// [`Duration::ZERO`] means no bound but the overall deadline.
    pub attempt_timeout: Duration,
    /// Default per-request timeout, applied by [`AgentClient::context`].
    /// [`Duration::ZERO`] means no timeout.
    pub request_timeout: Duration,
}

impl Default for ConnectOptions {
    /// 10 s to connect, retrying every 50 ms, 5 s per attempt; 60 s per request.
    fn default() -> Self {
        ConnectOptions {
            timeout: Duration::from_secs(10),
            retry: true,
            retry_interval: Duration::from_millis(50),
            attempt_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Failure to reach the agent or to get a healthy answer from it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Dialling the socket failed.
    #[error("cannot connect to agent at {addr}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The hybrid-vsock proxy closed the connection before a full reply line.
    #[error("hybrid vsock proxy at {addr} closed the connection during CONNECT {port} (received {received:?})")]
    HandshakeClosed {
        /// The address dialled.
        addr: String,
        /// The guest port requested.
        port: u32,
        /// Whatever arrived before the close.
        received: String,
    },
    /// The hybrid-vsock proxy answered something other than `OK <n>`.
    #[error(
        "hybrid vsock proxy at {addr} answered {reply:?} to CONNECT {port}, expected \"OK <n>\""
    )]
    HandshakeRejected {
        /// The address dialled.
        addr: String,
        /// The guest port requested.
        port: u32,
        /// The reply as read (lossily decoded, truncated at a sane length).
        reply: String,
    },
    /// An RPC failed.
    #[error("agent RPC {method} failed")]
    Rpc {
        /// The method, e.g. `grpc.Health/Check`.
        method: &'static str,
        /// The ttrpc failure (transport or status).
        #[source]
        source: ttrpc::Error,
    },
    /// `Health.Check` answered, but not `SERVING`.
    #[error("agent at {addr} reports health status {status:?}")]
    NotServing {
        /// The address dialled.
        addr: String,
        /// What the agent reported.
        status: ServingStatus,
    },
    /// One attempt got no answer within [`ConnectOptions::attempt_timeout`].
    #[error("agent at {addr}: no answer to an attempt within {after:?}")]
    AttemptTimedOut {
        /// The address dialled.
        addr: String,
        /// The bound that passed.
        after: Duration,
    },
    /// The deadline passed; `last` is the most recent failure, if any.
    #[error("agent at {addr} not reachable within {waited:?}")]
    Timeout {
        /// The address dialled.
        addr: String,
        /// Time spent before giving up.
        waited: Duration,
        /// The last attempt's failure (none if the first attempt was still running).
        #[source]
        last: Option<Box<ClientError>>,
    },
}

/// A connection to the guest agent's ttrpc server.
///
/// Cloning is cheap: clones share the connection.
#[derive(Clone)]
pub struct AgentClient {
    addr: AgentAddr,
    ttrpc: ttrpc::r#async::Client,
    agent: AgentServiceClient,
    health: HealthClient,
    request_timeout: Duration,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("addr", &self.addr)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    /// Connects to the agent at `addr`, retrying as `opts` says.
    ///
    /// This only establishes the transport (and the hybrid-vsock handshake); it
    /// does not prove the agent answers. Use [`AgentClient::wait_ready`] for that.
    ///
    /// # Errors
    ///
    /// The dial or handshake failure when `opts.retry` is false, otherwise
    /// [`ClientError::Timeout`] carrying the last failure.
    pub async fn connect(addr: &AgentAddr, opts: ConnectOptions) -> Result<Self, ClientError> {
        let start = Instant::now();
        let deadline = tokio::time::Instant::from_std(start + opts.timeout);
        let mut last = None;
        loop {
            match tokio::time::timeout_at(deadline, bounded(addr, opts.attempt_timeout, dial(addr))).await {
                Ok(Ok(socket)) => {
                    return Ok(Self::from_socket(
                        addr.clone(),
                        socket,
                        opts.request_timeout,
                    ))
                }
                Ok(Err(err)) if !opts.retry => return Err(err),
                Ok(Err(err)) => last = Some(Box::new(err)),
                Err(_elapsed) => break,
            }
            if !pause_before(deadline, opts.retry_interval).await {
                break;
            }
        }
        Err(ClientError::Timeout {
            addr: addr.to_string(),
            waited: start.elapsed(),
            last,
        })
    }

    /// Waits until the agent at `addr` answers `Health.Check` with `SERVING`.
    ///
    /// Each attempt dials afresh (the VM may still be booting, the socket may not
    /// exist yet, the proxy may refuse while nothing listens in the guest), calls
    /// `Check`, and on any failure pauses `opts.retry_interval` and tries again,
    /// until `deadline`. `opts.timeout` and `opts.retry` are not used; each
    /// `Check` is bounded by `opts.request_timeout` and by the deadline.
    ///
    /// # Errors
    ///
    /// [`ClientError::Timeout`] once `deadline` passes, carrying the last failure.
    pub async fn wait_ready(
        addr: &AgentAddr,
        opts: ConnectOptions,
        deadline: Instant,
    ) -> Result<Self, ClientError> {
        let start = Instant::now();
        let tokio_deadline = tokio::time::Instant::from_std(deadline);
        let mut last = None;
        loop {
            let attempt = async {
                let client =
                    Self::from_socket(addr.clone(), dial(addr).await?, opts.request_timeout);
                let left = deadline.saturating_duration_since(Instant::now());
                let bound = match opts.request_timeout {
                    Duration::ZERO => left,
                    t => t.min(left),
                };
                let reply = client.check_with(context_with(bound)).await?;
                match reply.status.enum_value() {
                    Ok(ServingStatus::SERVING) => Ok(client),
                    Ok(status) => Err(ClientError::NotServing {
                        addr: addr.to_string(),
                        status,
                    }),
                    Err(_) => Err(ClientError::NotServing {
                        addr: addr.to_string(),
                        status: ServingStatus::UNKNOWN,
                    }),
                }
            };
            match tokio::time::timeout_at(tokio_deadline, bounded(addr, opts.attempt_timeout, attempt)).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(err)) => last = Some(Box::new(err)),
                Err(_elapsed) => break,
            }
            if !pause_before(tokio_deadline, opts.retry_interval).await {
                break;
            }
        }
        Err(ClientError::Timeout {
            addr: addr.to_string(),
            waited: start.elapsed(),
            last,
        })
    }

    fn from_socket(addr: AgentAddr, socket: Socket, request_timeout: Duration) -> Self {
        let ttrpc = ttrpc::r#async::Client::new(socket);
        AgentClient {
            addr,
            agent: AgentServiceClient::new(ttrpc.clone()),
            health: HealthClient::new(ttrpc.clone()),
            ttrpc,
            request_timeout,
        }
    }

    /// The address this client is connected to.
    pub fn addr(&self) -> &AgentAddr {
        &self.addr
    }

    /// The generated `grpc.AgentService` client. Pass it [`AgentClient::context`]
    /// (or [`context_with`] for calls that may legitimately run long, such as
    /// `WaitProcess` or a `CreateContainer` that pulls an image in the guest).
    pub fn agent(&self) -> &AgentServiceClient {
        &self.agent
    }

    /// The generated `grpc.Health` client.
    pub fn health(&self) -> &HealthClient {
        &self.health
    }

    /// The underlying ttrpc connection (shared by [`AgentClient::agent`] and
    /// [`AgentClient::health`]).
    pub fn ttrpc_client(&self) -> &ttrpc::r#async::Client {
        &self.ttrpc
    }

    /// The default per-request timeout ([`Duration::ZERO`]: none).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// A request context carrying the default per-request timeout.
    pub fn context(&self) -> Context {
        context_with(self.request_timeout)
    }

    /// `Health.Check` with the default timeout.
    ///
    /// # Errors
    ///
    /// [`ClientError::Rpc`] when the call fails.
    pub async fn check(&self) -> Result<HealthCheckResponse, ClientError> {
        self.check_with(self.context()).await
    }

    /// `Health.Version` with the default timeout.
    ///
    /// # Errors
    ///
    /// [`ClientError::Rpc`] when the call fails.
    pub async fn version(&self) -> Result<VersionCheckResponse, ClientError> {
        self.health
            .version(self.context(), &CheckRequest::new())
            .await
            .map_err(|source| ClientError::Rpc {
                method: "grpc.Health/Version",
                source,
            })
    }

    async fn check_with(&self, ctx: Context) -> Result<HealthCheckResponse, ClientError> {
        self.health
            .check(ctx, &CheckRequest::new())
            .await
            .map_err(|source| ClientError::Rpc {
                method: "grpc.Health/Check",
                source,
            })
    }
}

/// A request context with the given timeout; [`Duration::ZERO`] means none.
pub fn context_with(timeout: Duration) -> Context {
    // Saturate: a timeout beyond i64 nanoseconds (292 years) is "forever".
    context::with_timeout(i64::try_from(timeout.as_nanos()).unwrap_or(0))
}

/// Sleeps `interval`, or until `deadline` if sooner. False when the deadline has passed.
/// `attempt`, failed with [`ClientError::AttemptTimedOut`] if it takes longer than
/// `bound` (unbounded when `bound` is zero).
async fn bounded<T>(
    addr: &AgentAddr,
    bound: Duration,
    attempt: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    if bound.is_zero() {
        return attempt.await;
    }
    match tokio::time::timeout(bound, attempt).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ClientError::AttemptTimedOut {
            addr: addr.to_string(),
            after: bound,
        }),
    }
}

async fn pause_before(deadline: tokio::time::Instant, interval: Duration) -> bool {
    let now = tokio::time::Instant::now();
    if now >= deadline {
        return false;
    }
    tokio::time::sleep_until((now + interval).min(deadline)).await;
    tokio::time::Instant::now() < deadline
}

/// Opens one connected stream to `addr`, ready for ttrpc (no retry, no timeout).
///
/// # Errors
///
/// [`ClientError::Connect`] when the socket cannot be dialled; for hybrid vsock
/// also [`ClientError::HandshakeClosed`] / [`ClientError::HandshakeRejected`].
pub async fn dial(addr: &AgentAddr) -> Result<Socket, ClientError> {
    let connect_err = |source| ClientError::Connect {
        addr: addr.to_string(),
        source,
    };
    match addr {
        AgentAddr::Unix(path) => Ok(Socket::from(
            UnixStream::connect(path).await.map_err(connect_err)?,
        )),
        AgentAddr::HybridVsock { path, port } => {
            Ok(Socket::from(hybrid_vsock_connect(path, *port).await?))
        }
        AgentAddr::Vsock { cid, port } => {
            let stream =
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port))
                    .await
                    .map_err(connect_err)?;
            Ok(Socket::from(stream))
        }
    }
}

/// Dials a hybrid-vsock unix socket and asks its proxy for guest `port`.
///
/// Writes `CONNECT <port>\n` and reads one line, which must be `OK <n>\n`
/// (`n` is the host-side port the proxy assigned). On success the stream is
/// positioned at the first byte of the guest's data.
///
/// # Errors
///
/// [`ClientError::Connect`] for socket errors, [`ClientError::HandshakeClosed`]
/// when the proxy hangs up before a full line, [`ClientError::HandshakeRejected`]
/// for any other reply.
pub async fn hybrid_vsock_connect(path: &Path, port: u32) -> Result<UnixStream, ClientError> {
    let addr = || {
        AgentAddr::HybridVsock {
            path: path.to_owned(),
            port,
        }
        .to_string()
    };
    let connect_err = |source| ClientError::Connect {
        addr: addr(),
        source,
    };
    let mut stream = UnixStream::connect(path).await.map_err(connect_err)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(connect_err)?;

    // Byte by byte: anything after the newline already belongs to the guest.
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        let n = match stream.read(&mut byte).await {
            Ok(n) => n,
            // A proxy that refuses often just resets the connection.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(connect_err(e)),
        };
        if n == 0 {
            return Err(ClientError::HandshakeClosed {
                addr: addr(),
                port,
                received: String::from_utf8_lossy(&line).into_owned(),
            });
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_HANDSHAKE_REPLY {
            return Err(ClientError::HandshakeRejected {
                addr: addr(),
                port,
                reply: String::from_utf8_lossy(&line).into_owned(),
            });
        }
    }
    let reply = String::from_utf8_lossy(&line);
    let ok = reply.strip_prefix("OK ").is_some_and(|n| {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<u32>().is_ok()
    });
    if !ok {
        return Err(ClientError::HandshakeRejected {
            addr: addr(),
            port,
            reply: reply.into_owned(),
        });
    }
    Ok(stream)
}
