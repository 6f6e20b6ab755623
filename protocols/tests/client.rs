//! `AgentClient` against real ttrpc servers and fake hybrid-vsock proxies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocols::health::{
    health_check_response::ServingStatus, CheckRequest, HealthCheckResponse, VersionCheckResponse,
};
use protocols::ttrpc::r#async::{Server, TtrpcContext};
use protocols::{
    agent, agent_ttrpc, client::hybrid_vsock_connect, health_ttrpc, AgentAddr, AgentClient,
    ClientError, ConnectOptions,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

struct TestHealth {
    status: ServingStatus,
}

#[async_trait::async_trait]
impl health_ttrpc::Health for TestHealth {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckRequest,
    ) -> protocols::ttrpc::Result<HealthCheckResponse> {
        let mut resp = HealthCheckResponse::new();
        resp.status = self.status.into();
        Ok(resp)
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckRequest,
    ) -> protocols::ttrpc::Result<VersionCheckResponse> {
        let mut resp = VersionCheckResponse::new();
        resp.grpc_version = "test-grpc".into();
        resp.agent_version = "test-agent 0.1".into();
        Ok(resp)
    }
}

/// Implements one agent method; every other one keeps the generated default.
struct TestAgent;

#[async_trait::async_trait]
impl agent_ttrpc::AgentService for TestAgent {
    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::GetOOMEventRequest,
    ) -> protocols::ttrpc::Result<agent::OOMEvent> {
        let mut ev = agent::OOMEvent::new();
        ev.container_id = "oom-c1".into();
        Ok(ev)
    }
}

/// Starts a ttrpc server with `grpc.Health` and `grpc.AgentService` on `path`.
async fn start_server(path: &Path, status: ServingStatus) -> Server {
    let mut server = Server::new()
        .bind(&format!("unix://{}", path.display()))
        .unwrap()
        .register_service(health_ttrpc::create_health(Arc::new(TestHealth { status })))
        .register_service(agent_ttrpc::create_agent_service(Arc::new(TestAgent)));
    server.start().await.unwrap();
    server
}

/// Listens on `path`, accepts every connection and never answers (holding them open).
fn start_silent(path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
}

/// What the fake hybrid-vsock proxy does after reading the CONNECT line.
#[derive(Clone)]
enum Proxy {
    /// Reply `OK 5000\n` and splice the stream to the unix socket at the path.
    Forward(PathBuf),
    /// Send these bytes, then close.
    Reply(&'static [u8]),
    /// Leave the first CONNECT unanswered (holding its stream open, as a proxy
    /// whose guest has no vsock buffers yet does), then behave like `Forward`.
    SilentOnce(PathBuf, Arc<std::sync::atomic::AtomicBool>),
}

/// Serves a fake hybrid-vsock socket at `path`; returns the CONNECT lines it saw.
fn start_proxy(path: &Path, behaviour: Proxy) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let listener = UnixListener::bind(path).unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let behaviour = behaviour.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                let _ = tx.send(line);
                let mut stream = reader.into_inner();
                match behaviour {
                    Proxy::Reply(bytes) => {
                        let _ = stream.write_all(bytes).await;
                    }
                    Proxy::SilentOnce(_, ref first)
                        if !first.swap(true, std::sync::atomic::Ordering::SeqCst) =>
                    {
                        std::future::pending::<()>().await;
                    }
                    Proxy::Forward(backend) | Proxy::SilentOnce(backend, _) => {
                        let mut backend = UnixStream::connect(backend).await.unwrap();
                        stream.write_all(b"OK 5000\n").await.unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut stream, &mut backend).await;
                    }
                }
            });
        }
    });
    rx
}

fn quick() -> ConnectOptions {
    ConnectOptions {
        timeout: Duration::from_secs(5),
        retry: true,
        retry_interval: Duration::from_millis(20),
        attempt_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn health_round_trip_over_unix() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _server = start_server(&sock, ServingStatus::SERVING).await;

    let addr: AgentAddr = format!("unix://{}", sock.display()).parse().unwrap();
    let client = AgentClient::connect(&addr, quick()).await.unwrap();
    assert_eq!(client.addr(), &addr);
    assert_eq!(
        client.check().await.unwrap().status.enum_value(),
        Ok(ServingStatus::SERVING)
    );
    let version = client.version().await.unwrap();
    assert_eq!(version.grpc_version, "test-grpc");
    assert_eq!(version.agent_version, "test-agent 0.1");

    // The generated clients are usable directly, too.
    let resp = client
        .health()
        .check(client.context(), &CheckRequest::new())
        .await
        .unwrap();
    assert_eq!(resp.status.enum_value(), Ok(ServingStatus::SERVING));
}

#[tokio::test]
async fn agent_service_round_trip_and_generated_default() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _server = start_server(&sock, ServingStatus::SERVING).await;
    let client = AgentClient::connect(&AgentAddr::Unix(sock), quick())
        .await
        .unwrap();

    let ev = client
        .agent()
        .get_oom_event(client.context(), &agent::GetOOMEventRequest::new())
        .await
        .unwrap();
    assert_eq!(ev.container_id, "oom-c1");

    let err = client
        .agent()
        .create_container(client.context(), &agent::CreateContainerRequest::new())
        .await
        .unwrap_err();
    match err {
        // ttrpc-compiler 0.9's generated default answers NOT_FOUND ("... is not
        // supported"); an agent that must answer UNIMPLEMENTED overrides the method.
        protocols::ttrpc::Error::RpcStatus(status) => {
            assert_eq!(
                status.code(),
                protocols::ttrpc::Code::NOT_FOUND,
                "{status:?}"
            );
            assert!(
                status
                    .message()
                    .contains("/grpc.AgentService/CreateContainer"),
                "{status:?}"
            );
        }
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

#[tokio::test]
async fn health_round_trip_over_hybrid_vsock() {
    let dir = tempfile::tempdir().unwrap();
    let backend = dir.path().join("agent.sock");
    let vsock = dir.path().join("vm.vsock");
    let _server = start_server(&backend, ServingStatus::SERVING).await;
    let mut seen = start_proxy(&vsock, Proxy::Forward(backend));

    let addr: AgentAddr = format!("hvsock://{}:1024", vsock.display())
        .parse()
        .unwrap();
    let client = AgentClient::connect(&addr, quick()).await.unwrap();
    assert_eq!(seen.recv().await.unwrap(), "CONNECT 1024\n");
    assert_eq!(
        client.check().await.unwrap().status.enum_value(),
        Ok(ServingStatus::SERVING)
    );
    assert_eq!(
        client.version().await.unwrap().agent_version,
        "test-agent 0.1"
    );
}

#[tokio::test]
async fn hvsock_handshake_ok_leaves_stream_at_guest_data() {
    let dir = tempfile::tempdir().unwrap();
    let vsock = dir.path().join("vm.vsock");
    // The proxy's reply is immediately followed by guest bytes.
    let mut seen = start_proxy(&vsock, Proxy::Reply(b"OK 1073741824\nguest"));
    let mut stream = hybrid_vsock_connect(&vsock, 52).await.unwrap();
    assert_eq!(seen.recv().await.unwrap(), "CONNECT 52\n");
    let mut rest = String::new();
    stream.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "guest");
}

async fn handshake_error(reply: &'static [u8]) -> ClientError {
    let dir = tempfile::tempdir().unwrap();
    let vsock = dir.path().join("vm.vsock");
    let _seen = start_proxy(&vsock, Proxy::Reply(reply));
    hybrid_vsock_connect(&vsock, 1024).await.unwrap_err()
}

#[tokio::test]
async fn hvsock_handshake_error_reply() {
    let err = handshake_error(b"ERR connection refused\n").await;
    match &err {
        ClientError::HandshakeRejected { reply, port, .. } => {
            assert_eq!(reply, "ERR connection refused");
            assert_eq!(*port, 1024);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string().contains("\"ERR connection refused\""),
        "{err}"
    );
}

#[tokio::test]
async fn hvsock_handshake_connection_closed() {
    match handshake_error(b"").await {
        ClientError::HandshakeClosed { received, .. } => assert_eq!(received, ""),
        other => panic!("unexpected {other:?}"),
    }
    // Closed half-way through the line.
    match handshake_error(b"OK 12").await {
        ClientError::HandshakeClosed { received, .. } => assert_eq!(received, "OK 12"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn hvsock_handshake_garbage() {
    for (reply, expect) in [
        (&b"OK\n"[..], "OK"),
        (b"OK abc\n", "OK abc"),
        (b"OK 99999999999\n", "OK 99999999999"),
        (b"ok 5\n", "ok 5"),
        (b"\xff\xfe\n", "\u{fffd}\u{fffd}"),
    ] {
        match handshake_error(reply).await {
            ClientError::HandshakeRejected { reply, .. } => assert_eq!(reply, expect),
            other => panic!("unexpected {other:?} for {reply:?}"),
        }
    }
    // An endless line without a newline is cut off, not read forever.
    let long: &'static [u8] = Box::leak(vec![b'x'; 4096].into_boxed_slice());
    match handshake_error(long).await {
        ClientError::HandshakeRejected { reply, .. } => {
            assert!(reply.len() <= 65, "{}", reply.len())
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn connect_without_retry_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let addr = AgentAddr::Unix(dir.path().join("missing.sock"));
    let opts = ConnectOptions {
        retry: false,
        ..quick()
    };
    let started = Instant::now();
    let err = AgentClient::connect(&addr, opts).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn connect_retries_until_deadline_and_reports_last_error() {
    let dir = tempfile::tempdir().unwrap();
    let addr = AgentAddr::Unix(dir.path().join("missing.sock"));
    let opts = ConnectOptions {
        timeout: Duration::from_millis(200),
        ..quick()
    };
    let started = Instant::now();
    let err = AgentClient::connect(&addr, opts).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    match err {
        ClientError::Timeout {
            last: Some(last), ..
        } => assert!(matches!(*last, ClientError::Connect { .. })),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn connect_retries_until_socket_appears() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("late.sock");
    let late = sock.clone();
    let server = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        start_server(&late, ServingStatus::SERVING).await
    });
    let client = AgentClient::connect(&AgentAddr::Unix(sock), quick())
        .await
        .unwrap();
    let _server = server.await.unwrap();
    assert_eq!(
        client.check().await.unwrap().status.enum_value(),
        Ok(ServingStatus::SERVING)
    );
}

#[tokio::test]
async fn wait_ready_waits_for_a_booting_agent() {
    let dir = tempfile::tempdir().unwrap();
    let backend = dir.path().join("agent.sock");
    let vsock = dir.path().join("vm.vsock");
    // The proxy is up at once (the VMM started) but refuses until the agent listens.
    let _seen = start_proxy(&vsock, Proxy::Reply(b"ERR no listener\n"));
    let addr = AgentAddr::HybridVsock {
        path: vsock.clone(),
        port: 1024,
    };

    let backend2 = backend.clone();
    let vsock2 = vsock.clone();
    let boot = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let server = start_server(&backend2, ServingStatus::SERVING).await;
        // Swap the refusing proxy for a forwarding one.
        std::fs::remove_file(&vsock2).unwrap();
        let _ = start_proxy(&vsock2, Proxy::Forward(backend2));
        server
    });
    let started = Instant::now();
    let client = AgentClient::wait_ready(&addr, quick(), Instant::now() + Duration::from_secs(10))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    let _server = boot.await.unwrap();
    assert_eq!(
        client.version().await.unwrap().agent_version,
        "test-agent 0.1"
    );
}

#[tokio::test]
async fn wait_ready_abandons_an_unanswered_connect_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let backend = dir.path().join("agent.sock");
    let vsock = dir.path().join("vm.vsock");
    let _server = start_server(&backend, ServingStatus::SERVING).await;
    let first = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut seen = start_proxy(&vsock, Proxy::SilentOnce(backend, first));
    let addr = AgentAddr::HybridVsock {
        path: vsock,
        port: 1024,
    };
    let opts = ConnectOptions {
        attempt_timeout: Duration::from_millis(300),
        ..quick()
    };
    let started = Instant::now();
    let client = AgentClient::wait_ready(&addr, opts, Instant::now() + Duration::from_secs(10))
        .await
        .unwrap();
    // One abandoned attempt, then a second that got through.
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(seen.recv().await.unwrap(), "CONNECT 1024\n");
    assert_eq!(seen.recv().await.unwrap(), "CONNECT 1024\n");
    assert_eq!(
        client.version().await.unwrap().agent_version,
        "test-agent 0.1"
    );
}

#[tokio::test]
async fn connect_reports_an_unanswered_connect_as_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let vsock = dir.path().join("vm.vsock");
    // A proxy that accepts and never answers any CONNECT.
    start_silent(&vsock);
    let addr = AgentAddr::HybridVsock {
        path: vsock,
        port: 1024,
    };
    let opts = ConnectOptions {
        timeout: Duration::from_secs(1),
        attempt_timeout: Duration::from_millis(200),
        ..quick()
    };
    let err = AgentClient::connect(&addr, opts).await.unwrap_err();
    match err {
        ClientError::Timeout {
            last: Some(last), ..
        } => assert!(
            matches!(*last, ClientError::AttemptTimedOut { after, .. } if after == Duration::from_millis(200)),
            "{last:?}"
        ),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn wait_ready_times_out_on_not_serving() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _server = start_server(&sock, ServingStatus::NOT_SERVING).await;
    let started = Instant::now();
    let err = AgentClient::wait_ready(
        &AgentAddr::Unix(sock),
        quick(),
        Instant::now() + Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    match err {
        ClientError::Timeout {
            last: Some(last), ..
        } => match *last {
            ClientError::NotServing { status, .. } => {
                assert_eq!(status, ServingStatus::NOT_SERVING)
            }
            other => panic!("unexpected last error {other:?}"),
        },
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn wait_ready_is_bounded_by_a_silent_agent() {
    // Accepts connections but never answers: Check must not hang past the deadline.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("silent.sock");
    start_silent(&sock);
    let opts = ConnectOptions {
        request_timeout: Duration::ZERO,
        ..quick()
    };
    let started = Instant::now();
    let err = AgentClient::wait_ready(
        &AgentAddr::Unix(sock),
        opts,
        Instant::now() + Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
}
