//! Pod networking end to end: a pod network namespace with a veth to the host (as a CNI
//! plugin would make it), the tap joined to the veth by tc mirred, the VM's NIC on that
//! tap, the agent configuring the guest from the host's description, and a container in
//! the VM fetching a page from an HTTP server on the host side.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kata_cc_tests::{create_start, guest_spec, read_stdout_all, PodVm};
use protocols::agent as pb;
use protocols::protobuf::MessageField;
use protocols::context_with;

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?} failed");
}

/// A pod netns with `eth0` (10.207.N.2/24, default via .1) paired with a host-side veth.
struct PodNetns {
    name: String,
    host_if: String,
}

impl PodNetns {
    fn new(n: u32) -> PodNetns {
        let name = format!("kata-cc-e2e-{}-{n}", std::process::id());
        let host_if = format!("kcc{}h{n}", std::process::id() % 10000);
        ip(&["netns", "add", &name]);
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name]);
        ip(&["addr", "add", &format!("10.207.{n}.1/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &name, "addr", "add", &format!("10.207.{n}.2/24"), "dev", "eth0"]);
        ip(&["-n", &name, "link", "set", "eth0", "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&["-n", &name, "route", "add", "default", "via", &format!("10.207.{n}.1")]);
        PodNetns { name, host_if }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

#[tokio::test]
async fn container_in_vm_reaches_http_server_on_host_side() {
    let n = 1 + std::process::id() % 200;
    let netns = PodNetns::new(n);
    // The host-side HTTP server, bound to the host end of the veth only.
    let server = TcpListener::bind(format!("10.207.{n}.1:0")).unwrap();
    let port = server.local_addr().unwrap().port();
    let serve = std::thread::spawn(move || {
        let (mut conn, peer) = server.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf).unwrap();
        let body = format!("hello pod, you are {}", peer.ip());
        write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    });

    let net = hypervisor::net::setup(&hypervisor::net::PodNetConfig {
        netns: netns.path(),
        tap_name: "tap0_kata".into(),
        veth: None,
    })
    .unwrap();
    let pod = PodVm::boot_with("net", 256, vec![net.net_device()]).await;
    let a = &pod.agent;

    let mut ui = pb::UpdateInterfaceRequest::new();
    ui.interface = MessageField::some(net.interface.clone());
    a.agent().update_interface(a.context(), &ui).await.unwrap();
    let mut ur = pb::UpdateRoutesRequest::new();
    let mut routes = pb::Routes::new();
    routes.Routes = net.routes.clone();
    ur.routes = MessageField::some(routes);
    a.agent().update_routes(a.context(), &ur).await.unwrap();

    // A raw HTTP/1.0 request through busybox nc (busybox-static's wget crashes under
    // TCG in this guest; nc exercises the same network path).
    let request = format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 20 10.207.{n}.1 {port} || {{ /bin/busybox ip addr >&2; /bin/busybox ip route >&2; exit 1; }}"
    );
    create_start(a, "web", &guest_spec(&["/bin/busybox", "sh", "-c", &request])).await;
    let out = read_stdout_all(a, "web", "").await;

    let mut rd = pb::ReadStreamRequest::new();
    rd.container_id = "web".into();
    rd.len = 65536;
    let err = a.agent().read_stderr(context_with(Duration::from_secs(60)), &rd).await.unwrap().data;
    let mut w = pb::WaitProcessRequest::new();
    w.container_id = "web".into();
    let status = a.agent().wait_process(context_with(Duration::from_secs(60)), &w).await.unwrap().status;
    assert_eq!(status, 0, "nc failed: {}\nconsole:\n{}", String::from_utf8_lossy(&err), pod.console());
    // The server saw the pod's own address: traffic went VM -> tap -> veth -> host.
    assert!(out.ends_with(&format!("\r\n\r\nhello pod, you are 10.207.{n}.2")), "{out:?}");
    serve.join().unwrap();

    pod.vm.shutdown(Duration::from_secs(2)).await.unwrap();
    hypervisor::net::teardown(&net.state).unwrap();
}
