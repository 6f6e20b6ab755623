//! Pod networking on the host (`hypervisor::net`), against real namespaces: a "host"
//! netns and a pod netns joined by a veth pair, as the bridge CNI plugin would leave
//! them. Checks what setup installs (with `ip` and `tc`), what it reports for the agent,
//! that teardown restores the namespace, and that frames really flow both ways between
//! the host side and the tap fd (ARP and ICMP answered by hand through the fd, no VM).
//! Run as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hypervisor::net::{setup, teardown, NetError, PodNetConfig, PodNetwork, DEFAULT_TAP_NAME};
use hypervisor::TapRef;
use serde_json::Value;

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&run(args)).unwrap()
}

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kcc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        run(&["ip", "netns", "add", &name]);
        Netns(name)
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "-n", &self.0];
        a.extend_from_slice(args);
        run(&a)
    }

    fn ip_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["ip", "-j", "-n", &self.0];
        a.extend_from_slice(args);
        json(&a)
    }

    fn tc(&self, args: &[&str]) -> String {
        let mut a = vec!["tc", "-n", &self.0];
        a.extend_from_slice(args);
        run(&a)
    }

    fn mac(&self, dev: &str) -> String {
        self.ip_json(&["link", "show", dev])[0]["address"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// host netns (`hveth` 10.99.N.1/24) <-> pod netns (`eth0` 10.99.N.2/24, default via .1,
/// fd99:N::2/64, a permanent neighbour 10.99.N.7).
struct Pod {
    host: Netns,
    pod: Netns,
    subnet: u8,
}

fn pod(subnet: u8) -> Pod {
    let host = Netns::new("h");
    let pod = Netns::new("p");
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "hveth", "netns", &host.0,
    ]);
    host.ip(&[
        "addr",
        "add",
        &format!("10.99.{subnet}.1/24"),
        "dev",
        "hveth",
    ]);
    host.ip(&["link", "set", "hveth", "up"]);
    pod.ip(&["link", "set", "lo", "up"]);
    pod.ip(&["link", "set", "eth0", "mtu", "1450"]);
    pod.ip(&[
        "addr",
        "add",
        &format!("10.99.{subnet}.2/24"),
        "dev",
        "eth0",
    ]);
    pod.ip(&[
        "addr",
        "add",
        &format!("fd99:{subnet}::2/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        &format!("10.99.{subnet}.1"),
        "dev",
        "eth0",
    ]);
    pod.ip(&[
        "neigh",
        "add",
        &format!("10.99.{subnet}.7"),
        "lladdr",
        "02:00:00:00:00:07",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    Pod { host, pod, subnet }
}

/// What teardown must give back: links (name, kind, flags, mtu), addresses, routes,
/// qdiscs and filters of the pod netns.
fn snapshot(ns: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    for l in ns.ip_json(&["-d", "link", "show"]).as_array().unwrap() {
        out.push(format!(
            "link {} {} {} {}",
            l["ifname"], l["linkinfo"]["info_kind"], l["flags"], l["mtu"]
        ));
    }
    out.push(
        ns.ip(&["addr", "show"])
            .lines()
            .filter(|l| !l.contains("valid_lft"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    out.push(ns.ip(&["route", "show", "table", "all"]));
    out.push(ns.tc(&["qdisc", "show"]));
    out.push(ns.tc(&["filter", "show", "dev", "eth0", "ingress"]));
    out
}

#[test]
fn setup_describes_the_veth_and_teardown_restores_the_netns() {
    let p = pod(41);
    let before = snapshot(&p.pod);
    let net = setup(&PodNetConfig::new(p.pod.path())).unwrap();

    // The tap exists in the pod netns, up, with the veth's MTU.
    let tap = &p.pod.ip_json(&["-d", "link", "show", DEFAULT_TAP_NAME])[0];
    assert_eq!(tap["linkinfo"]["info_kind"], "tun", "{tap}");
    assert_eq!(tap["linkinfo"]["info_data"]["type"], "tap", "{tap}");
    assert_eq!(tap["mtu"], 1450);
    assert_eq!(tap["inet6_addr_gen_mode"], "none", "{tap}");
    assert!(
        tap["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{tap}"
    );
    // Redirects both ways.
    let f = p.pod.tc(&["filter", "show", "dev", "eth0", "ingress"]);
    assert!(
        f.contains("pref 19267 u32") && f.contains("Egress Redirect to device tap0_kata"),
        "{f}"
    );
    let f = p
        .pod
        .tc(&["filter", "show", "dev", DEFAULT_TAP_NAME, "ingress"]);
    assert!(
        f.contains("pref 19267 u32") && f.contains("Egress Redirect to device eth0"),
        "{f}"
    );

    // The fd is a queue of that tap with the flags QEMU's tap backend expects.
    let (name, flags) = tun_get_iff(&net.tap_fd);
    assert_eq!(name, DEFAULT_TAP_NAME);
    let want = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    assert_eq!(flags & want, want, "flags {flags:#x}");
    match net.net_device().tap {
        TapRef::Fd(fd) => assert_eq!(fd, net.tap_fd.as_raw_fd()),
        other => panic!("{other:?}"),
    }

    // What the agent will be told.
    assert_eq!(net.state.veth, "eth0");
    assert!(net.state.veth_ingress_created);
    let mac = p.pod.mac("eth0");
    assert_eq!(net.mac.to_string(), mac);
    let i = &net.interface;
    assert_eq!(
        (i.name.as_str(), i.hwAddr.as_str(), i.mtu, i.type_.as_str()),
        ("eth0", mac.as_str(), 1450, "veth")
    );
    let addrs: Vec<String> = i
        .IPAddresses
        .iter()
        .map(|a| format!("{}/{}", a.address, a.mask))
        .collect();
    assert_eq!(
        addrs,
        vec![
            format!("10.99.{}.2/24", p.subnet),
            format!("fd99:{}::2/64", p.subnet)
        ]
    );
    let routes: Vec<String> = net
        .routes
        .iter()
        .map(|r| {
            format!(
                "{:?} via {:?} dev {} scope {}",
                r.dest, r.gateway, r.device, r.scope
            )
        })
        .collect();
    assert_eq!(
        routes,
        vec![format!(
            "\"\" via \"10.99.{}.1\" dev eth0 scope 0",
            p.subnet
        )],
        "kernel and link-local routes are left out"
    );
    assert_eq!(net.neighbors.len(), 1);
    let n = &net.neighbors[0];
    assert_eq!(
        (n.toIPAddress.address.as_str(), n.lladdr.as_str(), n.state),
        (
            format!("10.99.{}.7", p.subnet).as_str(),
            "02:00:00:00:00:07",
            0x80
        )
    );

    // A second setup refuses to stack on the first.
    match setup(&PodNetConfig::new(p.pod.path())) {
        Err(NetError::TapExists { .. }) => {}
        other => panic!("{other:?}"),
    }

    let state = net.state.clone();
    drop(net);
    teardown(&state).unwrap();
    assert_eq!(snapshot(&p.pod), before);
    // Idempotent.
    teardown(&state).unwrap();
    assert_eq!(snapshot(&p.pod), before);
}

#[test]
fn an_existing_ingress_qdisc_and_its_filters_survive_teardown() {
    let p = pod(42);
    p.pod.tc(&["qdisc", "add", "dev", "eth0", "ingress"]);
    p.pod.tc(&[
        "filter",
        "add",
        "dev",
        "eth0",
        "parent",
        "ffff:",
        "protocol",
        "ip",
        "pref",
        "7",
        "u32",
        "match",
        "ip",
        "dst",
        "10.1.2.3/32",
        "action",
        "mirred",
        "egress",
        "mirror",
        "dev",
        "lo",
    ]);
    let before = snapshot(&p.pod);
    let net = setup(&PodNetConfig::new(p.pod.path())).unwrap();
    assert!(!net.state.veth_ingress_created);
    teardown(&net.state).unwrap();
    assert_eq!(snapshot(&p.pod), before);
}

#[test]
fn setup_errors() {
    // Nothing but lo.
    let empty = Netns::new("e");
    match setup(&PodNetConfig::new(empty.path())) {
        Err(NetError::NoPodInterface { .. }) => {}
        other => panic!("{other:?}"),
    }
    // Two candidates, then one named explicitly.
    let p = pod(43);
    p.pod.ip(&[
        "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p",
    ]);
    p.pod.ip(&["addr", "add", "10.98.0.2/24", "dev", "eth1"]);
    match setup(&PodNetConfig::new(p.pod.path())) {
        Err(NetError::AmbiguousPodInterface { names, .. }) => assert_eq!(names.len(), 2),
        other => panic!("{other:?}"),
    }
    let mut cfg = PodNetConfig::new(p.pod.path());
    cfg.veth = Some("eth9".into());
    assert!(matches!(setup(&cfg), Err(NetError::NoSuchInterface { .. })));
    cfg.veth = Some("eth0".into());
    cfg.tap_name = "tap1_kata".into();
    let net = setup(&cfg).unwrap();
    assert_eq!(net.state.tap, "tap1_kata");
    teardown(&net.state).unwrap();
    // A path that is not a network namespace.
    let f = tempfile::NamedTempFile::new().unwrap();
    assert!(matches!(
        setup(&PodNetConfig::new(f.path())),
        Err(NetError::Netns { .. })
    ));
    // The caller's namespace is untouched by all of this.
    assert!(!run(&["ip", "link", "show"]).contains(DEFAULT_TAP_NAME));
}

/// Host pings the pod IP; the test answers through the tap fd in place of a guest.
#[test]
fn frames_flow_between_the_host_side_and_the_tap_fd() {
    let p = pod(44);
    let net = setup(&PodNetConfig::new(p.pod.path())).unwrap();
    let host_mac = parse_mac(&p.host.mac("hveth"));
    let pod_mac = net.mac.0;
    let pod_ip = [10, 99, p.subnet, 2];
    let host_ip = [10, 99, p.subnet, 1];

    let mut ping = Command::new("ip")
        .args([
            "netns", "exec", &p.host.0, "busybox", "ping", "-c", "1", "-W", "10",
        ])
        .arg(format!("10.99.{}.2", p.subnet))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    // veth -> tap: the host's ARP request for the pod IP comes out of the fd.
    let arp = read_frame(&net, |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 1] && f[38..42] == pod_ip
    });
    assert_eq!(arp[6..12], host_mac);
    // tap -> veth: answer it as the guest would.
    let mut reply = Vec::new();
    reply.extend_from_slice(&host_mac);
    reply.extend_from_slice(&pod_mac);
    reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    reply.extend_from_slice(&pod_mac);
    reply.extend_from_slice(&pod_ip);
    reply.extend_from_slice(&host_mac);
    reply.extend_from_slice(&host_ip);
    write_frame(&net, &reply);

    // The echo request only comes once the host has learnt the MAC from our reply.
    let req = read_frame(&net, |f| {
        f.len() >= 42
            && f[12..14] == [0x08, 0x00]
            && f[23] == 1
            && f[34] == 8
            && f[30..34] == pod_ip
    });
    assert_eq!(req[0..6], pod_mac);
    let mut echo = req.clone();
    echo[0..6].copy_from_slice(&host_mac);
    echo[6..12].copy_from_slice(&pod_mac);
    echo[26..30].copy_from_slice(&pod_ip);
    echo[30..34].copy_from_slice(&host_ip);
    echo[24..26].copy_from_slice(&[0, 0]);
    let ip_sum = checksum(&echo[14..34]);
    echo[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    echo[34] = 0; // echo reply
    echo[36..38].copy_from_slice(&[0, 0]);
    let total = u16::from_be_bytes([echo[16], echo[17]]) as usize;
    let icmp_sum = checksum(&echo[34..14 + total]);
    echo[36..38].copy_from_slice(&icmp_sum.to_be_bytes());
    write_frame(&net, &echo);

    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = ping.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "ping did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "the host got no echo reply through the tap"
    );
    teardown(&net.state).unwrap();
}

// ---- helpers ---------------------------------------------------------------------------

fn tun_get_iff(fd: &OwnedFd) -> (String, i32) {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    const TUNGETIFF: libc::c_ulong = 0x800454d2;
    // SAFETY: TUNGETIFF fills a `struct ifreq`, which `req` matches in size and layout.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &mut req as *mut IfReq) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let end = req.name.iter().position(|&b| b == 0).unwrap_or(16);
    (
        String::from_utf8_lossy(&req.name[..end]).into_owned(),
        i32::from(req.flags),
    )
}

fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// Size of the `virtio_net_hdr` that prefixes every frame on an `IFF_VNET_HDR` tap.
const VNET_HDR: usize = 10;

/// Reads frames from the tap until one matches (10 s at most); returns the Ethernet frame.
fn read_frame(net: &PodNetwork, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no matching frame came out of the tap");
        let mut pfd = libc::pollfd {
            fd: net.tap_fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
        if n <= 0 {
            continue;
        }
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::read(net.tap_fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n >= 0, "{}", std::io::Error::last_os_error());
        let frame = &buf[VNET_HDR.min(n as usize)..n as usize];
        if want(frame) {
            return frame.to_vec();
        }
    }
}

fn write_frame(net: &PodNetwork, frame: &[u8]) {
    let mut pkt = vec![0u8; VNET_HDR];
    pkt.extend_from_slice(frame);
    // SAFETY: `pkt` is readable for its whole length.
    let n = unsafe { libc::write(net.tap_fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) };
    assert_eq!(n, pkt.len() as isize, "{}", std::io::Error::last_os_error());
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
