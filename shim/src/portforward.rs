//! CRI port-forward for a pod whose processes run in a VM.
//!
//! containerd's CRI PortForward enters the pod's network namespace on the host and dials
//! `localhost:PORT` there. With kata-cc nothing listens in that namespace: the pod's
//! servers run in the guest, behind the tap (Kata has the same gap: kata-containers
//! issue 1693). So, for each pod with a network namespace, the shim:
//!
//! 1. binds a listener on `127.0.0.1:<L>` inside the pod netns
//!    ([`hypervisor::net::loopback_listener`]), and
//! 2. adds one NAT rule there, `iptables -t nat -A OUTPUT -o lo -p tcp -d 127.0.0.1 -j
//!    REDIRECT --to-ports L`: every TCP connection made to loopback in that namespace
//!    (only containerd's port-forward dials happen there: the pod's own processes are in
//!    the VM) reaches the listener;
//! 3. for each accepted connection, reads the port that was dialled (`SO_ORIGINAL_DST`),
//!    connects from the host's network namespace to `<pod IP>:<port>` (the path any node
//!    agent uses to reach a pod: host → bridge → veth → tap → guest), and copies bytes both
//!    ways.
//!
//! A server in the pod that listens only on the guest's loopback is therefore not
//! reachable (with runc it is); one on `0.0.0.0` or the pod IP is. The rule and the
//! listener disappear with the pod's network namespace. Trust: the host can already
//! reach the pod IP over the network; this reaches nothing more (docs/threat-model.md).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Forwarded connections open at once per pod; more wait for a free slot.
pub const MAX_CONNECTIONS: usize = 64;
/// How long connecting to the pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The comment on the NAT rule (to find it).
const RULE_COMMENT: &str = "kata-cc port-forward";

/// Starts the forwarder for the pod netns `netns`; the task lives as long as the shim.
pub async fn start(netns: &Path) -> Result<(), String> {
    let ns = netns.to_path_buf();
    let (listener, ips) = tokio::task::spawn_blocking(move || hypervisor::net::loopback_listener(&ns))
        .await
        .map_err(|e| format!("listener thread: {e}"))?
        .map_err(|e| format!("listener in {}: {e}", netns.display()))?
        .ok_or_else(|| format!("network namespace {} does not exist", netns.display()))?;
    let pod_ip = *ips.first().ok_or_else(|| format!("no IPv4 pod address in {}", netns.display()))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let out = tokio::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-o", "lo", "-p", "tcp", "-d", "127.0.0.1"])
        .args(["-m", "comment", "--comment", RULE_COMMENT, "-j", "REDIRECT", "--to-ports"])
        .arg(port.to_string())
        .output()
        .await
        .map_err(|e| format!("run nsenter iptables: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "iptables REDIRECT in {}: {}: {}",
            netns.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let listener = TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    tracing::info!("port-forward: 127.0.0.1:* in {} -> {pod_ip} (listener port {port})", netns.display());
    tokio::spawn(serve(listener, pod_ip));
    Ok(())
}

async fn serve(listener: TcpListener, pod_ip: IpAddr) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::warn!("port-forward: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = forward(conn, pod_ip).await {
                tracing::info!("port-forward: {e}");
            }
        });
    }
}

/// The destination the client dialled before the REDIRECT rule changed it.
fn original_port(conn: &TcpStream) -> Result<u16, String> {
    let sa = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::OriginalDst)
        .map_err(|e| format!("SO_ORIGINAL_DST: {e}"))?;
    Ok(u16::from_be(sa.sin_port))
}

async fn forward(mut conn: TcpStream, pod_ip: IpAddr) -> Result<(), String> {
    let port = original_port(&conn)?;
    if port == 0 {
        return Err("dialled port 0".into());
    }
    let to = SocketAddr::new(pod_ip, port);
    let mut pod = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to))
        .await
        .map_err(|_| format!("connect {to}: no answer within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connect {to}: {e}"))?;
    tokio::io::copy_bidirectional(&mut conn, &mut pod)
        .await
        .map(|_| ())
        .map_err(|e| format!("{to}: {e}"))
}
