//! The network RPCs of the real agent binary, run inside a fresh network namespace with
//! a veth pair (`kcc0` with a known MAC, peer `kcc0p`): UpdateInterface (match by MAC,
//! rename, addresses, MTU, up), UpdateRoutes (a link route and a gateway route through
//! it, sent in the "wrong" order; replacement), ListInterfaces/ListRoutes against `ip`,
//! AddARPNeighbors, and bad input. Run as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};

use protocols::agent as pb;
use protocols::protobuf::MessageField;
use protocols::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};
use protocols::AgentClient;
use serde_json::Value;

const MAC: &str = "02:00:00:00:aa:01";

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A named network namespace, deleted on drop (after the agent in it is gone).
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("kata-cc-nettest-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        run(&["ip", "netns", "add", &name]);
        Netns(name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "-n", &self.0];
        a.extend_from_slice(args);
        run(&a)
    }

    fn ip_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["ip", "-j", "-n", &self.0];
        a.extend_from_slice(args);
        serde_json::from_str(&run(&a)).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The agent binary running in the netns; killed on drop (before the netns goes).
struct NetAgent {
    client: AgentClient,
    child: Child,
    _dir: tempfile::TempDir,
    ns: Netns,
}

impl NetAgent {
    async fn start() -> NetAgent {
        let ns = Netns::new();
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "add", "kcc0", "address", MAC, "type", "veth", "peer", "name", "kcc0p"]);
        ns.ip(&["link", "set", "kcc0p", "up"]);
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.0, common::AGENT_BIN])
            .args(common::agent_args(dir.path(), &format!("/kata-cc-nettest-{}", std::process::id())))
            .spawn()
            .unwrap();
        let client = common::agent_client(dir.path()).await;
        NetAgent { client, child, _dir: dir, ns }
    }

    async fn update_interface(&self, i: Interface) -> ttrpc::Result<Interface> {
        let mut r = pb::UpdateInterfaceRequest::new();
        r.interface = MessageField::some(i);
        self.client.agent().update_interface(self.client.context(), &r).await
    }

    async fn update_routes(&self, routes: Vec<Route>) -> ttrpc::Result<Vec<Route>> {
        let mut rs = pb::Routes::new();
        rs.Routes = routes;
        let mut r = pb::UpdateRoutesRequest::new();
        r.routes = MessageField::some(rs);
        self.client.agent().update_routes(self.client.context(), &r).await.map(|r| r.Routes)
    }

    async fn list_interfaces(&self) -> Vec<Interface> {
        let r = pb::ListInterfacesRequest::new();
        self.client.agent().list_interfaces(self.client.context(), &r).await.unwrap().Interfaces
    }

    async fn list_routes(&self) -> Vec<Route> {
        let r = pb::ListRoutesRequest::new();
        self.client.agent().list_routes(self.client.context(), &r).await.unwrap().Routes
    }

    async fn add_neighbors(&self, n: Vec<ARPNeighbor>) -> ttrpc::Result<()> {
        let mut ns = pb::ARPNeighbors::new();
        ns.ARPNeighbors = n;
        let mut r = pb::AddARPNeighborsRequest::new();
        r.neighbors = MessageField::some(ns);
        self.client.agent().add_arp_neighbors(self.client.context(), &r).await.map(|_| ())
    }
}

impl Drop for NetAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.ns; // dropped after this: the netns goes once its agent is gone
    }
}

fn addr(a: &str, mask: &str) -> IPAddress {
    let mut p = IPAddress::new();
    p.family = if a.contains(':') { IPFamily::v6 } else { IPFamily::v4 }.into();
    p.address = a.into();
    p.mask = mask.into();
    p
}

fn iface(mac: &str, name: &str, mtu: u64, addrs: &[(&str, &str)]) -> Interface {
    let mut i = Interface::new();
    i.hwAddr = mac.into();
    i.name = name.into();
    i.mtu = mtu;
    i.IPAddresses = addrs.iter().map(|(a, m)| addr(a, m)).collect();
    i
}

fn route(dest: &str, gw: &str, dev: &str) -> Route {
    let mut r = Route::new();
    r.dest = dest.into();
    r.gateway = gw.into();
    r.device = dev.into();
    r
}

fn neighbor(ip: &str, lladdr: &str, dev: &str) -> ARPNeighbor {
    let mut n = ARPNeighbor::new();
    n.toIPAddress = MessageField::some(addr(ip, ""));
    n.lladdr = lladdr.into();
    n.device = dev.into();
    n.state = 0x80;
    n
}

fn status(e: &ttrpc::Error) -> (ttrpc::Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a status: {other:?}"),
    }
}

/// `addr/prefix` of `dev` as `ip` sees them, link-local IPv6 left out.
fn ip_addrs(ns: &Netns, dev: &str) -> Vec<String> {
    let v = ns.ip_json(&["addr", "show", "dev", dev]);
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// `dest via gw dev` of the main table as `ip` sees them (IPv4).
fn ip_routes(ns: &Netns) -> Vec<String> {
    let mut v: Vec<String> = ns
        .ip_json(&["route", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{} via {} dev {}", r["dst"].as_str().unwrap(), r["gateway"].as_str().unwrap_or("-"), r["dev"].as_str().unwrap()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interface_routes_neighbours_in_a_netns() {
    let a = NetAgent::start().await;

    // UpdateInterface: found by MAC, renamed kcc0 -> eth0, addresses, MTU, up.
    let got = a
        .update_interface(iface(MAC, "eth0", 1400, &[("10.77.0.2", "24"), ("fd77::2", "64")]))
        .await
        .unwrap();
    assert_eq!((got.name.as_str(), got.hwAddr.as_str(), got.mtu), ("eth0", MAC, 1400));
    let link = &a.ns.ip_json(&["link", "show", "dev", "eth0"])[0];
    assert_eq!(link["address"], MAC);
    assert_eq!(link["mtu"], 1400);
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"), "{link}");
    assert_eq!(ip_addrs(&a.ns, "eth0"), vec!["10.77.0.2/24", "fd77::2/64"]);
    assert!(a.ns.ip_json(&["link", "show"]).as_array().unwrap().iter().all(|l| l["ifname"] != "kcc0"));

    // Again, with other addresses: exactly those remain (the name is kept).
    let got = a.update_interface(iface(MAC, "eth0", 0, &[("10.77.0.3", "24")])).await.unwrap();
    assert_eq!(got.mtu, 1400, "mtu 0 keeps the MTU");
    assert_eq!(ip_addrs(&a.ns, "eth0"), vec!["10.77.0.3/24"]);
    let got = a.update_interface(iface(MAC, "eth0", 1500, &[("10.77.0.2", "24")])).await.unwrap();
    assert_eq!(got.IPAddresses.iter().filter(|i| i.address == "10.77.0.2").count(), 1);
    assert_eq!(ip_addrs(&a.ns, "eth0"), vec!["10.77.0.2/24"]);

    // UpdateRoutes: the default route's gateway is only reachable through the link
    // route sent after it; the agent adds link routes first.
    let got = a
        .update_routes(vec![route("", "10.88.0.1", "eth0"), route("10.88.0.0/16", "", "eth0")])
        .await
        .unwrap();
    let want = vec!["10.77.0.0/24 via - dev eth0", "10.88.0.0/16 via - dev eth0", "default via 10.88.0.1 dev eth0"];
    assert_eq!(ip_routes(&a.ns), want);
    assert!(got.iter().any(|r| r.dest.is_empty() && r.gateway == "10.88.0.1" && r.device == "eth0"), "{got:?}");
    let link_route = got.iter().find(|r| r.dest == "10.88.0.0/16").unwrap();
    assert_eq!(link_route.scope, 253, "gateway-less routes are link-scoped");
    // Replacing: the old non-kernel routes of eth0 go, the kernel's prefix route stays.
    a.update_routes(vec![route("default", "10.77.0.1", "eth0")]).await.unwrap();
    assert_eq!(ip_routes(&a.ns), vec!["10.77.0.0/24 via - dev eth0", "default via 10.77.0.1 dev eth0"]);

    // ListInterfaces / ListRoutes agree with `ip`.
    let ifs = a.list_interfaces().await;
    let eth0 = ifs.iter().find(|i| i.name == "eth0").unwrap();
    assert_eq!((eth0.hwAddr.as_str(), eth0.mtu, eth0.type_.as_str()), (MAC, 1500, "veth"));
    assert!(eth0.IPAddresses.iter().any(|i| i.address == "10.77.0.2" && i.mask == "24" && i.family.enum_value() == Ok(IPFamily::v4)));
    let lo = ifs.iter().find(|i| i.name == "lo").unwrap();
    assert!(lo.IPAddresses.iter().any(|i| i.address == "127.0.0.1" && i.mask == "8"));
    let routes = a.list_routes().await;
    let mut v4: Vec<String> = routes
        .iter()
        .filter(|r| r.family.enum_value() == Ok(IPFamily::v4))
        .map(|r| format!("{} via {} dev {}", if r.dest.is_empty() { "default" } else { &r.dest }, if r.gateway.is_empty() { "-" } else { &r.gateway }, r.device))
        .collect();
    v4.sort();
    assert_eq!(v4, ip_routes(&a.ns));
    // A round trip of ListRoutes into UpdateRoutes changes nothing.
    let again = a.update_routes(routes.clone()).await.unwrap();
    assert_eq!(ip_routes(&a.ns), vec!["10.77.0.0/24 via - dev eth0", "default via 10.77.0.1 dev eth0"]);
    assert_eq!(again.len(), routes.len(), "{again:?} vs {routes:?}");

    // AddARPNeighbors: permanent, and idempotent.
    for _ in 0..2 {
        a.add_neighbors(vec![neighbor("10.77.0.9", "02:00:00:00:00:09", "eth0"), neighbor("fd77::9", "02:00:00:00:00:0a", "eth0")])
            .await
            .unwrap();
    }
    let neigh = a.ns.ip_json(&["neigh", "show", "dev", "eth0"]);
    for (ip, ll) in [("10.77.0.9", "02:00:00:00:00:09"), ("fd77::9", "02:00:00:00:00:0a")] {
        let n = neigh.as_array().unwrap().iter().find(|n| n["dst"] == ip).unwrap_or_else(|| panic!("{neigh}"));
        assert_eq!(n["lladdr"], ll);
        assert_eq!(n["state"][0], "PERMANENT", "{n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_network_input_is_refused_and_changes_nothing() {
    let a = NetAgent::start().await;
    a.update_interface(iface(MAC, "eth0", 1400, &[("10.77.0.2", "24")])).await.unwrap();
    a.update_routes(vec![route("default", "10.77.0.1", "eth0")]).await.unwrap();
    let before = (ip_addrs(&a.ns, "eth0"), a.ns.ip(&["route", "show"]), a.ns.ip(&["link", "show"]));

    use ttrpc::Code::{INVALID_ARGUMENT, NOT_FOUND};
    let cases: Vec<(ttrpc::Result<()>, ttrpc::Code, &str)> = vec![
        (a.update_interface(iface(MAC, "eth0", 1400, &[("10.77.0.2", "33")])).await.map(|_| ()), INVALID_ARGUMENT, "Interface.IPAddresses.mask"),
        (a.update_interface(iface(MAC, "eth0", 1400, &[("10.77.0.2/24", "24")])).await.map(|_| ()), INVALID_ARGUMENT, "Interface.IPAddresses.address"),
        (a.update_interface(iface("02:00:00:00:bb:01", "eth0", 1400, &[])).await.map(|_| ()), NOT_FOUND, "02:00:00:00:bb:01"),
        (a.update_interface(iface("02:00:00:00:aa", "eth0", 1400, &[])).await.map(|_| ()), INVALID_ARGUMENT, "Interface.hwAddr"),
        (a.update_interface(iface(MAC, "a-very-long-ifname", 1400, &[])).await.map(|_| ()), INVALID_ARGUMENT, "Interface.name"),
        (a.update_interface(iface(MAC, "eth/0", 1400, &[])).await.map(|_| ()), INVALID_ARGUMENT, "Interface.name"),
        (a.update_interface(iface(MAC, "kcc0p", 1400, &[])).await.map(|_| ()), INVALID_ARGUMENT, "already the name"),
        (a.update_interface(iface(MAC, "eth0", 70000, &[])).await.map(|_| ()), INVALID_ARGUMENT, "Interface.mtu"),
        (a.update_routes(vec![route("10.0.0.0/40", "", "eth0")]).await.map(|_| ()), INVALID_ARGUMENT, "Route.dest"),
        (a.update_routes(vec![route("10.0.0.1/8", "", "eth0")]).await.map(|_| ()), INVALID_ARGUMENT, "host bits"),
        (a.update_routes(vec![route("", "10.77.0.256", "eth0")]).await.map(|_| ()), INVALID_ARGUMENT, "Route.gateway"),
        (a.update_routes(vec![route("", "10.77.0.1", "eth9")]).await.map(|_| ()), NOT_FOUND, "eth9"),
        (a.update_routes(vec![route("", "10.66.0.1", "eth0")]).await.map(|_| ()), INVALID_ARGUMENT, "refused by the kernel"),
        (a.add_neighbors(vec![neighbor("10.77.0.9", "zz:00:00:00:00:09", "eth0")]).await, INVALID_ARGUMENT, "ARPNeighbor.lladdr"),
        (a.add_neighbors(vec![neighbor("10.77.0.300", "02:00:00:00:00:09", "eth0")]).await, INVALID_ARGUMENT, "ARPNeighbor.toIPAddress"),
    ];
    for (i, (r, want_code, want_msg)) in cases.into_iter().enumerate() {
        let e = r.expect_err(&format!("case {i} should fail"));
        let (code, msg) = status(&e);
        assert_eq!(code, want_code, "case {i}: {msg}");
        assert!(msg.contains(want_msg), "case {i}: {msg:?} lacks {want_msg:?}");
    }
    // The IPv6 address with a v4 family, explicitly.
    let mut i = iface(MAC, "eth0", 1400, &[]);
    let mut bad = addr("fd77::2", "64");
    bad.family = IPFamily::v4.into();
    i.IPAddresses.push(bad);
    let (code, msg) = status(&a.update_interface(i).await.unwrap_err());
    assert_eq!(code, INVALID_ARGUMENT);
    assert!(msg.contains("Interface.IPAddresses.family"), "{msg}");

    // The failed gateway route was rolled back: the old default route is still there.
    let after = (ip_addrs(&a.ns, "eth0"), a.ns.ip(&["route", "show"]), a.ns.ip(&["link", "show"]));
    assert_eq!(after, before);
}
