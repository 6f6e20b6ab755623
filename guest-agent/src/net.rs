//! Pod networking inside the guest: the agent's UpdateInterface, UpdateRoutes,
//! ListInterfaces, ListRoutes and AddARPNeighbors, done with rtnetlink messages
//! (`netlink-packet-route` over a `netlink-sys` socket; no `ip` binary).
//!
//! Every request comes from the host and is validated before anything changes: addresses,
//! prefix lengths, MAC addresses, interface names (`IFNAMSIZ`, characters), MTUs, route
//! scopes and flags. A bad value is [`NetError::Invalid`] naming the field.
//!
//! Semantics:
//! - **UpdateInterface** finds the link by `hwAddr` when it is set (only by MAC then; an
//!   unknown MAC is an error), else by `name`. It renames the link to `name` if that
//!   differs (taking the link down for the rename), sets the MTU (`0` keeps it),
//!   `IFF_NOARP` from `raw_flags`, makes the addresses exactly the requested ones (IPv6
//!   link-local addresses the kernel made are kept) and brings the link up. It answers
//!   the interface as it now is.
//! - **UpdateRoutes** replaces the routes of the devices named in the request: it deletes
//!   their non-kernel routes of the main table, then adds the requested ones, routes
//!   without a gateway first, then gateway routes. A `dest` of `""` or `"default"` is the
//!   default route. A requested route the kernel already has (its own prefix and
//!   link-local routes, `EEXIST`) is left as it is, so a ListRoutes answer can be sent
//!   back unchanged. If an add fails, the old routes are put back (best effort). It
//!   answers the route table as it now is (as ListRoutes).
//! - **ListInterfaces** / **ListRoutes** list every link with its addresses, and the
//!   unicast routes of the main table.
//! - **AddARPNeighbors** adds or replaces permanent neighbour entries.
//!
//! Where this differs from Kata's agent:
//! - Kata finds the link by `hwAddr` only; here an empty `hwAddr` selects by `name`.
//! - Kata always takes the link down, deletes every address (IPv6 link-local included)
//!   and adds the requested ones; here only the difference is applied and the link goes
//!   down only for a rename, so repeating a request does not flap the link.
//! - Kata sets `mtu` as sent (0 fails); here 0 keeps the current MTU.
//! - Kata echoes the request as the UpdateInterface answer; here the link is read back.
//! - Kata's UpdateRoutes deletes the non-kernel routes of *every* non-loopback link;
//!   here only those of the devices the request names (an empty request changes
//!   nothing).
//! - A gateway-less route with scope 0 is added link-scoped, as `ip route add` does.
//! - A failed UpdateRoutes puts the previous routes back (Kata leaves them deleted).
//! - AddARPNeighbors replaces existing entries (idempotent), requires `lladdr`, and
//!   accepts only `state` 0 or NUD_PERMANENT and `flags` 0 or NTF_ROUTER.
//! - ListInterfaces also fills `device`, `type` (the netlink link kind) and `raw_flags`.
//!
//! All functions here block on netlink: call them from a blocking thread. Changes are
//! serialised by one process-wide lock.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use protocols::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};

use crate::error::{chain, AgentError};

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const MAX_IFNAME_LEN: usize = 15;
/// Most addresses one UpdateInterface may set.
pub const MAX_ADDRESSES: usize = 256;
/// Most routes one UpdateRoutes may set.
pub const MAX_ROUTES: usize = 4096;
/// Most neighbours one AddARPNeighbors may add.
pub const MAX_NEIGHBORS: usize = 4096;

const IFF_NOARP: u32 = libc::IFF_NOARP as u32;
const RTNH_F_ONLINK: u32 = 4;
const NUD_PERMANENT: i32 = 0x80;
const NTF_ROUTER: i32 = 0x80;

/// Serialises every change this module makes.
static NET_LOCK: Mutex<()> = Mutex::new(());

/// Errors of the network handlers.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A request field is malformed or not allowed.
    #[error("invalid {field}: {why}")]
    Invalid {
        /// Which field (`Interface.hwAddr`, `Route.dest`, ...).
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// No link matches the request.
    #[error("no interface with {what} {value:?}")]
    NotFound {
        /// `hwAddr`, `name` or `device`.
        what: &'static str,
        /// The value as sent.
        value: String,
    },
    /// A netlink request failed.
    #[error("{op}")]
    Netlink {
        /// What was being done.
        op: String,
        /// The request field the kernel judged, for kernel refusals (`EINVAL`, ...).
        field: &'static str,
        /// The kernel's (or the socket's) error.
        #[source]
        source: io::Error,
    },
}

impl NetError {
    fn invalid(field: &'static str, why: impl Into<String>) -> Self {
        Self::Invalid { field, why: why.into() }
    }

    fn netlink(op: impl Into<String>, field: &'static str) -> impl FnOnce(io::Error) -> Self {
        let op = op.into();
        move |source| Self::Netlink { op, field, source }
    }

    /// Whether the kernel refused a value of the request (rather than failing).
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::Invalid { .. } => true,
            Self::NotFound { .. } => false,
            Self::Netlink { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::EINVAL | libc::ERANGE | libc::ENETUNREACH | libc::EADDRNOTAVAIL | libc::EEXIST)
            ),
        }
    }
}

impl From<NetError> for AgentError {
    fn from(e: NetError) -> Self {
        let refused = e.is_refusal();
        let why = format!("refused by the kernel: {}", chain(&e));
        match e {
            NetError::Invalid { field, why } => AgentError::InvalidArgument { field, why },
            NetError::NotFound { what, value } => AgentError::NotFound {
                what: match what {
                    "hwAddr" => "interface with hwAddr",
                    "name" => "interface named",
                    _ => "device",
                },
                id: value,
            },
            NetError::Netlink { field, .. } if refused => AgentError::InvalidArgument { field, why },
            NetError::Netlink { op, source, .. } => AgentError::Io { op, source },
        }
    }
}

// ---- validation ----------------------------------------------------------------------

/// Quotes a host-supplied value for an error message, cut to a sane length.
fn q(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

/// Checks an interface name the way the kernel does (`dev_valid_name`), restricted to
/// printable ASCII.
pub fn validate_ifname(field: &'static str, name: &str) -> Result<(), NetError> {
    if name.is_empty() {
        return Err(NetError::invalid(field, "empty interface name"));
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(NetError::invalid(
            field,
            format!("{} is longer than {MAX_IFNAME_LEN} bytes (IFNAMSIZ)", q(name)),
        ));
    }
    if name == "." || name == ".." {
        return Err(NetError::invalid(field, format!("{} is not a valid interface name", q(name))));
    }
    if let Some(c) = name.chars().find(|&c| !c.is_ascii_graphic() || c == '/' || c == ':') {
        return Err(NetError::invalid(
            field,
            format!("{} contains {c:?}; allowed: printable ASCII except '/', ':' and spaces", q(name)),
        ));
    }
    Ok(())
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(field: &'static str, s: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::invalid(field, format!("{} is not a MAC address (aa:bb:cc:dd:ee:ff)", q(s)));
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// Formats a MAC address as Kata does (lower case, colons).
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn family_of(ip: &IpAddr) -> IPFamily {
    if ip.is_ipv4() {
        IPFamily::v4
    } else {
        IPFamily::v6
    }
}

fn max_prefix(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn parse_ip(field: &'static str, s: &str) -> Result<IpAddr, NetError> {
    s.parse::<IpAddr>()
        .map_err(|_| NetError::invalid(field, format!("{} is not an IP address", q(s))))
}

/// Parses a prefix length given as a decimal string.
fn parse_prefix(field: &'static str, s: &str, ip: &IpAddr) -> Result<u8, NetError> {
    let max = max_prefix(ip);
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NetError::invalid(field, format!("{} is not a prefix length (0-{max})", q(s))));
    }
    match s.parse::<u8>() {
        Ok(p) if p <= max => Ok(p),
        _ => Err(NetError::invalid(field, format!("prefix length {} is out of range 0-{max} for {ip}", q(s)))),
    }
}

/// Parses `ip/prefix` or a bare IP (a host route); zero host bits are required.
fn parse_cidr(field: &'static str, s: &str) -> Result<(IpAddr, u8), NetError> {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => {
            let ip = parse_ip(field, ip)?;
            (ip, parse_prefix(field, p, &ip)?)
        }
        None => {
            let ip = parse_ip(field, s)?;
            (ip, max_prefix(&ip))
        }
    };
    if network(&ip, prefix) != ip {
        return Err(NetError::invalid(
            field,
            format!("{} has host bits set (the network is {}/{prefix})", q(s), network(&ip, prefix)),
        ));
    }
    Ok((ip, prefix))
}

/// The network address of `ip/prefix`.
fn network(ip: &IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(*a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(*a) & mask))
        }
    }
}

fn check_family(field: &'static str, declared: &protobuf::EnumOrUnknown<IPFamily>, ip: &IpAddr) -> Result<(), NetError> {
    match declared.enum_value() {
        Ok(f) if f == family_of(ip) => Ok(()),
        Ok(f) => Err(NetError::invalid(field, format!("family {f:?} does not match the address {ip}"))),
        Err(n) => Err(NetError::invalid(field, format!("unknown IP family {n}"))),
    }
}

fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80)
}

/// One address of an UpdateInterface request, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct AddrReq {
    ip: IpAddr,
    prefix: u8,
}

fn parse_address(a: &IPAddress) -> Result<AddrReq, NetError> {
    let ip = parse_ip("Interface.IPAddresses.address", &a.address)?;
    check_family("Interface.IPAddresses.family", &a.family, &ip)?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(NetError::invalid("Interface.IPAddresses.address", format!("{ip} cannot be an interface address")));
    }
    if let IpAddr::V4(v4) = ip {
        if v4.is_broadcast() {
            return Err(NetError::invalid("Interface.IPAddresses.address", format!("{ip} cannot be an interface address")));
        }
    }
    let prefix = parse_prefix("Interface.IPAddresses.mask", &a.mask, &ip)?;
    Ok(AddrReq { ip, prefix })
}

/// How UpdateInterface finds its link.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    Mac([u8; 6]),
    Name(String),
}

/// A validated UpdateInterface request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IfaceReq {
    selector: Selector,
    /// Rename target (`None`: keep the name).
    name: Option<String>,
    addrs: Vec<AddrReq>,
    mtu: Option<u32>,
    noarp: bool,
}

fn parse_interface(i: &Interface) -> Result<IfaceReq, NetError> {
    let name = if i.name.is_empty() {
        None
    } else {
        validate_ifname("Interface.name", &i.name)?;
        Some(i.name.clone())
    };
    let selector = if !i.hwAddr.is_empty() {
        let mac = parse_mac("Interface.hwAddr", &i.hwAddr)?;
        if mac == [0; 6] {
            return Err(NetError::invalid("Interface.hwAddr", "the all-zero MAC names no interface"));
        }
        Selector::Mac(mac)
    } else if let Some(n) = &name {
        Selector::Name(n.clone())
    } else {
        return Err(NetError::invalid("Interface", "neither hwAddr nor name is set"));
    };
    if i.IPAddresses.len() > MAX_ADDRESSES {
        return Err(NetError::invalid("Interface.IPAddresses", format!("more than {MAX_ADDRESSES} addresses")));
    }
    let mut addrs = Vec::with_capacity(i.IPAddresses.len());
    for a in &i.IPAddresses {
        let a = parse_address(a)?;
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    let mtu = match i.mtu {
        0 => None,
        m @ 68..=65536 => Some(m as u32),
        m => return Err(NetError::invalid("Interface.mtu", format!("{m} is outside 68-65536"))),
    };
    Ok(IfaceReq { selector, name, addrs, mtu, noarp: i.raw_flags & IFF_NOARP != 0 })
}

/// A validated route of an UpdateRoutes request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteReq {
    family: IPFamily,
    /// Destination; `None` is the default route.
    dest: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    source: Option<IpAddr>,
    device: String,
    scope: u8,
    onlink: bool,
    mtu: Option<u32>,
}

fn parse_route(r: &Route) -> Result<RouteReq, NetError> {
    let dest = match r.dest.as_str() {
        "" | "default" => None,
        d => Some(parse_cidr("Route.dest", d)?),
    };
    let gateway = match r.gateway.as_str() {
        "" => None,
        g => Some(parse_ip("Route.gateway", g)?),
    };
    let source = match r.source.as_str() {
        "" => None,
        s => Some(parse_ip("Route.source", s)?),
    };
    // The family: from the addresses if any, else the declared one.
    let declared = r.family.enum_value().map_err(|n| NetError::invalid("Route.family", format!("unknown IP family {n}")))?;
    let mut family = None;
    for (field, ip) in [("Route.dest", dest.map(|d| d.0)), ("Route.gateway", gateway), ("Route.source", source)] {
        if let Some(ip) = ip {
            let f = family_of(&ip);
            match family {
                None => family = Some(f),
                Some(prev) if prev != f => {
                    return Err(NetError::invalid(field, format!("{ip} is not of the route's IP family {prev:?}")));
                }
                Some(_) => {}
            }
        }
    }
    let family = family.unwrap_or(declared);
    if let Some(g) = gateway {
        if g.is_unspecified() || g.is_multicast() {
            return Err(NetError::invalid("Route.gateway", format!("{g} cannot be a gateway")));
        }
    }
    if r.device.is_empty() {
        return Err(NetError::invalid("Route.device", "empty: every route names its device"));
    }
    validate_ifname("Route.device", &r.device)?;
    let scope = match u8::try_from(r.scope) {
        // `ip route add` makes gateway-less unicast routes link-scoped; proto3 cannot tell
        // "unset" from universe (0), so do the same.
        Ok(0) if gateway.is_none() => libc::RT_SCOPE_LINK,
        Ok(s @ (libc::RT_SCOPE_UNIVERSE | libc::RT_SCOPE_SITE | libc::RT_SCOPE_LINK | libc::RT_SCOPE_HOST)) => s,
        _ => return Err(NetError::invalid("Route.scope", format!("{} is not universe (0), site (200), link (253) or host (254)", r.scope))),
    };
    let mtu = match r.mtu {
        0 => None,
        m @ 68..=65536 => Some(m),
        m => return Err(NetError::invalid("Route.mtu", format!("{m} is outside 68-65536"))),
    };
    Ok(RouteReq { family, dest, gateway, source, device: r.device.clone(), scope, onlink: r.flags & RTNH_F_ONLINK != 0, mtu })
}

/// A validated neighbour of an AddARPNeighbors request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NeighReq {
    ip: IpAddr,
    device: String,
    lladdr: [u8; 6],
    router: bool,
}

fn parse_neighbor(n: &ARPNeighbor) -> Result<NeighReq, NetError> {
    let to = n
        .toIPAddress
        .as_ref()
        .ok_or_else(|| NetError::invalid("ARPNeighbor.toIPAddress", "missing"))?;
    let ip = parse_ip("ARPNeighbor.toIPAddress.address", &to.address)?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(NetError::invalid("ARPNeighbor.toIPAddress.address", format!("{ip} cannot be a neighbour")));
    }
    if n.device.is_empty() {
        return Err(NetError::invalid("ARPNeighbor.device", "empty"));
    }
    validate_ifname("ARPNeighbor.device", &n.device)?;
    if n.lladdr.is_empty() {
        return Err(NetError::invalid("ARPNeighbor.lladdr", "empty: a permanent entry needs a link-layer address"));
    }
    let lladdr = parse_mac("ARPNeighbor.lladdr", &n.lladdr)?;
    if n.state != 0 && n.state != NUD_PERMANENT {
        return Err(NetError::invalid("ARPNeighbor.state", format!("{} is not NUD_PERMANENT (0x80); only permanent entries are added", n.state)));
    }
    if n.flags & !NTF_ROUTER != 0 {
        return Err(NetError::invalid("ARPNeighbor.flags", format!("{:#x} has flags other than NTF_ROUTER (0x80)", n.flags)));
    }
    Ok(NeighReq { ip, device: n.device.clone(), lladdr, router: n.flags & NTF_ROUTER != 0 })
}

// ---- netlink ---------------------------------------------------------------------------

/// A blocking rtnetlink socket in the caller's network namespace.
struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    fn open() -> Result<Self, NetError> {
        let op = "open a netlink socket";
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetError::netlink(op, "request"))?;
        sock.bind_auto().map_err(NetError::netlink(op, "request"))?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(NetError::netlink(op, "request"))?;
        Ok(Self { sock, seq: 0 })
    }

    /// Sends one request and collects the answers until the ack (or the end of a dump).
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf, 0)?;

        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut off = 0;
            while off < data.len() {
                let rest = &data[off..];
                if rest.len() < 16 {
                    break;
                }
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < 16 || len > rest.len() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed netlink message length"));
                }
                off += (len + 3) & !3;
                let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len]) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!("skipping an undecodable netlink message: {e}");
                        continue;
                    }
                };
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(out),
                        Some(_) => return Err(e.to_io()),
                    },
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.request(msg, NLM_F_DUMP)
    }

    fn exec(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(msg, flags).map(|_| ())
    }
}

/// A link as the kernel describes it.
#[derive(Debug, Clone)]
struct Link {
    index: u32,
    name: String,
    mac: Vec<u8>,
    mtu: u32,
    flags: u32,
    kind: String,
}

impl Link {
    fn from_msg(m: &LinkMessage) -> Self {
        let mut l = Link { index: m.header.index, name: String::new(), mac: Vec::new(), mtu: 0, flags: m.header.flags.bits(), kind: String::new() };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(mac) => l.mac = mac.clone(),
                LinkAttribute::Mtu(mtu) => l.mtu = *mtu,
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = k.to_string();
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// An address as the kernel describes it.
#[derive(Debug, Clone)]
struct Addr {
    index: u32,
    ip: IpAddr,
    prefix: u8,
    msg: AddressMessage,
}

fn links(nl: &mut Netlink) -> Result<Vec<Link>, NetError> {
    let msgs = nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default())).map_err(NetError::netlink("list links", "request"))?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(Link::from_msg(l)),
            _ => None,
        })
        .collect())
}

fn addresses(nl: &mut Netlink) -> Result<Vec<Addr>, NetError> {
    let msgs = nl.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default())).map_err(NetError::netlink("list addresses", "request"))?;
    let mut out = Vec::new();
    for m in msgs {
        if let RouteNetlinkMessage::NewAddress(a) = m {
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on
            // point-to-point links); IPv6 only sends IFA_ADDRESS.
            let mut local = None;
            let mut address = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                out.push(Addr { index: a.header.index, ip, prefix: a.header.prefix_len, msg: a });
            }
        }
    }
    Ok(out)
}

/// A route as the kernel describes it, with the parts we use.
#[derive(Debug, Clone)]
struct KRoute {
    msg: RouteMessage,
    oif: Option<u32>,
}

fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

/// Unicast routes of the main table, both families.
fn main_routes(nl: &mut Netlink) -> Result<Vec<KRoute>, NetError> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        let msgs = nl.dump(RouteNetlinkMessage::GetRoute(req)).map_err(NetError::netlink("list routes", "request"))?;
        for m in msgs {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                if r.header.address_family != family
                    || route_table(&r) != u32::from(RouteHeader::RT_TABLE_MAIN)
                    || r.header.kind != RouteType::Unicast
                {
                    continue;
                }
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                out.push(KRoute { msg: r, oif });
            }
        }
    }
    Ok(out)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_to_pb(r: &KRoute, names: &HashMap<u32, String>) -> Option<Route> {
    let mut out = Route::new();
    let family = match r.msg.header.address_family {
        AddressFamily::Inet => IPFamily::v4,
        AddressFamily::Inet6 => IPFamily::v6,
        _ => return None,
    };
    out.family = family.into();
    out.device = names.get(&r.oif?)?.clone();
    out.scope = u32::from(u8::from(r.msg.header.scope));
    out.flags = r.msg.header.flags.bits() & RTNH_F_ONLINK;
    for a in &r.msg.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                if let Some(ip) = route_ip(d) {
                    out.dest = format!("{ip}/{}", r.msg.header.destination_prefix_length);
                }
            }
            RouteAttribute::Gateway(g) => {
                if let Some(ip) = route_ip(g) {
                    out.gateway = ip.to_string();
                }
            }
            RouteAttribute::PrefSource(s) => {
                if let Some(ip) = route_ip(s) {
                    out.source = ip.to_string();
                }
            }
            RouteAttribute::Metrics(ms) => {
                for m in ms {
                    if let RouteMetric::Mtu(mtu) = m {
                        out.mtu = *mtu;
                    }
                }
            }
            _ => {}
        }
    }
    Some(out)
}

fn link_to_pb(l: &Link, addrs: &[Addr]) -> Interface {
    let mut i = Interface::new();
    i.device = l.name.clone();
    i.name = l.name.clone();
    i.mtu = u64::from(l.mtu);
    i.hwAddr = format_mac(&l.mac);
    i.type_ = l.kind.clone();
    i.raw_flags = l.flags;
    for a in addrs.iter().filter(|a| a.index == l.index) {
        let mut p = IPAddress::new();
        p.family = family_of(&a.ip).into();
        p.address = a.ip.to_string();
        p.mask = a.prefix.to_string();
        i.IPAddresses.push(p);
    }
    i
}

fn find_link<'a>(links: &'a [Link], sel: &Selector) -> Result<&'a Link, NetError> {
    match sel {
        // Lowest index first: a NIC comes before the vlans or macvlans that share its MAC.
        Selector::Mac(mac) => links
            .iter()
            .filter(|l| l.mac.as_slice() == mac.as_slice())
            .min_by_key(|l| l.index)
            .ok_or_else(|| NetError::NotFound { what: "hwAddr", value: format_mac(mac) }),
        Selector::Name(n) => links
            .iter()
            .find(|l| &l.name == n)
            .ok_or_else(|| NetError::NotFound { what: "name", value: n.clone() }),
    }
}

fn link_index(links: &[Link], field_value: &str) -> Result<u32, NetError> {
    links
        .iter()
        .find(|l| l.name == field_value)
        .map(|l| l.index)
        .ok_or_else(|| NetError::NotFound { what: "device", value: field_value.to_string() })
}

fn set_link(nl: &mut Netlink, index: u32, f: impl FnOnce(&mut LinkMessage)) -> io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    f(&mut m);
    nl.exec(RouteNetlinkMessage::SetLink(m), 0)
}

fn address_message(index: u32, a: &AddrReq) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = if a.ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.prefix_len = a.prefix;
    m.header.index = index;
    m.header.scope = if a.ip.is_loopback() { AddressScope::Host } else { AddressScope::Universe };
    m.attributes.push(AddressAttribute::Local(a.ip));
    m.attributes.push(AddressAttribute::Address(a.ip));
    if let IpAddr::V4(v4) = a.ip {
        if a.prefix < 31 {
            let host = u32::MAX.checked_shr(u32::from(a.prefix)).unwrap_or(0);
            m.attributes.push(AddressAttribute::Broadcast(Ipv4Addr::from(u32::from(v4) | host)));
        }
    }
    m
}

// ---- the handlers ----------------------------------------------------------------------

fn lock() -> std::sync::MutexGuard<'static, ()> {
    NET_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// UpdateInterface: configures one link (see the module docs) and answers it as it now is.
pub fn update_interface(iface: &Interface) -> Result<Interface, NetError> {
    let req = parse_interface(iface)?;
    let _guard = lock();
    let mut nl = Netlink::open()?;
    let all = links(&mut nl)?;
    let link = find_link(&all, &req.selector)?.clone();
    let index = link.index;
    let what = format!("interface {} (index {index})", link.name);

    let rename = req.name.as_ref().filter(|n| **n != link.name);
    if let Some(new) = rename {
        if all.iter().any(|l| &l.name == new && l.index != index) {
            return Err(NetError::invalid("Interface.name", format!("{} is already the name of another interface", q(new))));
        }
    }

    // Links cannot be renamed while up.
    if rename.is_some() && link.flags & libc::IFF_UP as u32 != 0 {
        set_link(&mut nl, index, |m| m.header.change_mask = LinkFlags::Up)
            .map_err(NetError::netlink(format!("bring {what} down"), "Interface"))?;
    }

    // Addresses: exactly the requested ones (kernel-made IPv6 link-local ones stay).
    let current: Vec<Addr> = addresses(&mut nl)?.into_iter().filter(|a| a.index == index).collect();
    for a in &current {
        let wanted = req.addrs.iter().any(|r| r.ip == a.ip && r.prefix == a.prefix);
        if !wanted && !is_ipv6_link_local(&a.ip) {
            nl.exec(RouteNetlinkMessage::DelAddress(a.msg.clone()), 0)
                .map_err(NetError::netlink(format!("delete {}/{} from {what}", a.ip, a.prefix), "Interface.IPAddresses"))?;
        }
    }
    for r in &req.addrs {
        if current.iter().any(|a| a.ip == r.ip && a.prefix == r.prefix) {
            continue;
        }
        nl.exec(RouteNetlinkMessage::NewAddress(address_message(index, r)), NLM_F_CREATE | NLM_F_REPLACE)
            .map_err(NetError::netlink(format!("add {}/{} to {what}", r.ip, r.prefix), "Interface.IPAddresses"))?;
    }

    set_link(&mut nl, index, |m| {
        if let Some(n) = rename {
            m.attributes.push(LinkAttribute::IfName(n.clone()));
        }
        if let Some(mtu) = req.mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.header.change_mask = LinkFlags::Noarp;
        if req.noarp {
            m.header.flags = LinkFlags::Noarp;
        }
    })
    .map_err(NetError::netlink(format!("set name, MTU and ARP of {what}"), "Interface"))?;
    set_link(&mut nl, index, |m| {
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
    })
    .map_err(NetError::netlink(format!("bring {what} up"), "Interface"))?;

    let now = links(&mut nl)?;
    let link = now
        .iter()
        .find(|l| l.index == index)
        .ok_or_else(|| NetError::NotFound { what: "name", value: link.name.clone() })?;
    let addrs = addresses(&mut nl)?;
    let mut out = link_to_pb(link, &addrs);
    out.devicePath = iface.devicePath.clone();
    Ok(out)
}

fn route_message(r: &RouteReq, oif: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = match r.family {
        IPFamily::v4 => AddressFamily::Inet,
        IPFamily::v6 => AddressFamily::Inet6,
    };
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = RouteScope::from(r.scope);
    m.header.kind = RouteType::Unicast;
    if r.onlink {
        m.header.flags = RouteFlags::Onlink;
    }
    if let Some((ip, prefix)) = r.dest {
        m.header.destination_prefix_length = prefix;
        m.attributes.push(RouteAttribute::Destination(RouteAddress::from(ip)));
    }
    if let Some(g) = r.gateway {
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::from(g)));
    }
    if let Some(s) = r.source {
        m.attributes.push(RouteAttribute::PrefSource(RouteAddress::from(s)));
    }
    m.attributes.push(RouteAttribute::Oif(oif));
    if let Some(mtu) = r.mtu {
        m.attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    m
}

/// UpdateRoutes: replaces the routes of the devices the request names (see the module
/// docs) and answers the main table as it now is.
pub fn update_routes(routes: &[Route]) -> Result<Vec<Route>, NetError> {
    if routes.len() > MAX_ROUTES {
        return Err(NetError::invalid("Routes", format!("more than {MAX_ROUTES} routes")));
    }
    let reqs = routes.iter().map(parse_route).collect::<Result<Vec<_>, _>>()?;
    let _guard = lock();
    let mut nl = Netlink::open()?;
    let all = links(&mut nl)?;
    let mut resolved = Vec::with_capacity(reqs.len());
    for r in &reqs {
        resolved.push((r, link_index(&all, &r.device)?));
    }
    let devices: HashSet<u32> = resolved.iter().map(|(_, i)| *i).collect();

    let (kernel, old): (Vec<KRoute>, Vec<KRoute>) = main_routes(&mut nl)?
        .into_iter()
        .filter(|r| r.oif.is_some_and(|i| devices.contains(&i)))
        .partition(|r| r.msg.header.protocol == RouteProtocol::Kernel);
    // The kernel's own prefix and link-local routes, which a request may repeat (a
    // ListRoutes answer sent back): keep them as they are rather than add duplicates.
    let kernel: HashSet<(Option<IpAddr>, u8, u32)> = kernel.iter().filter_map(kernel_route_key).collect();
    for r in &old {
        nl.exec(RouteNetlinkMessage::DelRoute(r.msg.clone()), 0)
            .map_err(NetError::netlink("delete an old route", "Routes"))?;
    }

    // Gateway-less (link) routes first: gateway routes need their gateway reachable.
    let (link_routes, gw_routes): (Vec<_>, Vec<_>) = resolved.into_iter().partition(|(r, _)| r.gateway.is_none());
    let mut added: Vec<RouteMessage> = Vec::new();
    for (r, oif) in link_routes.into_iter().chain(gw_routes) {
        if r.gateway.is_none() && kernel.contains(&(r.dest.map(|d| d.0), r.dest.map_or(0, |d| d.1), oif)) {
            continue;
        }
        let m = route_message(r, oif);
        let res = match nl.exec(RouteNetlinkMessage::NewRoute(m.clone()), NLM_F_CREATE | NLM_F_EXCL) {
            // As Kata: a route the kernel already has (for example an IPv4 prefix route
            // of an address) is not an error.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                tracing::info!("route {:?} already exists", r.dest);
                continue;
            }
            res => res,
        };
        if let Err(e) = res {
            // Put the table back the way it was, as far as possible.
            for a in added.iter().rev() {
                let _ = nl.exec(RouteNetlinkMessage::DelRoute(a.clone()), 0);
            }
            for o in &old {
                let _ = nl.exec(RouteNetlinkMessage::NewRoute(o.msg.clone()), NLM_F_CREATE | NLM_F_EXCL);
            }
            let dest = r.dest.map_or("default".to_string(), |(ip, p)| format!("{ip}/{p}"));
            let via = r.gateway.map_or(String::new(), |g| format!(" via {g}"));
            return Err(NetError::netlink(format!("add route {dest}{via} dev {}", r.device), "Routes")(e));
        }
        added.push(m);
    }
    list_routes_locked(&mut nl)
}

/// (destination, prefix length, output interface) of a gateway-less route.
fn kernel_route_key(r: &KRoute) -> Option<(Option<IpAddr>, u8, u32)> {
    if r.msg.attributes.iter().any(|a| matches!(a, RouteAttribute::Gateway(_))) {
        return None;
    }
    let dest = r.msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => route_ip(d),
        _ => None,
    });
    Some((dest, r.msg.header.destination_prefix_length, r.oif?))
}

fn list_routes_locked(nl: &mut Netlink) -> Result<Vec<Route>, NetError> {
    let names: HashMap<u32, String> = links(nl)?.into_iter().map(|l| (l.index, l.name)).collect();
    Ok(main_routes(nl)?.iter().filter_map(|r| route_to_pb(r, &names)).collect())
}

/// ListInterfaces: every link with its addresses.
pub fn list_interfaces() -> Result<Vec<Interface>, NetError> {
    let mut nl = Netlink::open()?;
    let all = links(&mut nl)?;
    let addrs = addresses(&mut nl)?;
    Ok(all.iter().map(|l| link_to_pb(l, &addrs)).collect())
}

/// ListRoutes: the unicast routes of the main table, IPv4 then IPv6.
pub fn list_routes() -> Result<Vec<Route>, NetError> {
    let mut nl = Netlink::open()?;
    list_routes_locked(&mut nl)
}

/// AddARPNeighbors: adds (or replaces) permanent neighbour entries.
pub fn add_arp_neighbors(neighbors: &[ARPNeighbor]) -> Result<(), NetError> {
    if neighbors.len() > MAX_NEIGHBORS {
        return Err(NetError::invalid("ARPNeighbors", format!("more than {MAX_NEIGHBORS} neighbours")));
    }
    let reqs = neighbors.iter().map(parse_neighbor).collect::<Result<Vec<_>, _>>()?;
    let _guard = lock();
    let mut nl = Netlink::open()?;
    let all = links(&mut nl)?;
    let mut resolved = Vec::with_capacity(reqs.len());
    for n in &reqs {
        resolved.push((n, link_index(&all, &n.device)?));
    }
    for (n, index) in resolved {
        let mut m = NeighbourMessage::default();
        m.header.family = if n.ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.kind = RouteType::Unicast;
        if n.router {
            m.header.flags = NeighbourFlags::Router;
        }
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::from(n.ip)));
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(n.lladdr.to_vec()));
        nl.exec(RouteNetlinkMessage::NewNeighbour(m), NLM_F_CREATE | NLM_F_REPLACE).map_err(NetError::netlink(
            format!("add neighbour {} lladdr {} dev {}", n.ip, format_mac(&n.lladdr), n.device),
            "ARPNeighbors",
        ))?;
    }
    Ok(())
}

/// The request checks of UpdateInterface, UpdateRoutes and AddARPNeighbors without
/// netlink (whether each item is accepted), for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn check_for_fuzzing(i: &Interface, routes: &[Route], neighbors: &[ARPNeighbor]) -> Vec<bool> {
    let mut ok = vec![parse_interface(i).is_ok()];
    ok.extend(routes.iter().map(|r| parse_route(r).is_ok()));
    ok.extend(neighbors.iter().map(|n| parse_neighbor(n).is_ok()));
    ok
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn addr(a: &str, m: &str, f: IPFamily) -> IPAddress {
        let mut p = IPAddress::new();
        p.address = a.into();
        p.mask = m.into();
        p.family = f.into();
        p
    }

    fn field(e: NetError) -> &'static str {
        match e {
            NetError::Invalid { field, .. } => field,
            other => panic!("not Invalid: {other:?}"),
        }
    }

    #[test]
    fn ifnames() {
        for ok in ["eth0", "a", "veth-1_x.2@", "abcdefghijklmno"] {
            validate_ifname("f", ok).unwrap();
        }
        for bad in ["", "abcdefghijklmnop", ".", "..", "a/b", "a:b", "a b", "é", "a\0", "a\n"] {
            assert!(validate_ifname("f", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("f", "02:AB:cd:00:11:ff").unwrap(), [2, 0xab, 0xcd, 0, 0x11, 0xff]);
        for bad in ["", "02:ab:cd:00:11", "02:ab:cd:00:11:ff:00", "2:ab:cd:00:11:ff", "02-ab-cd-00-11-ff", "0x:ab:cd:00:11:ff", "+2:ab:cd:00:11:ff"] {
            assert!(parse_mac("f", bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_mac(&[2, 0xab, 0, 0, 0, 1]), "02:ab:00:00:00:01");
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("f", "10.1.0.0/16").unwrap(), ("10.1.0.0".parse().unwrap(), 16));
        assert_eq!(parse_cidr("f", "10.1.2.3").unwrap(), ("10.1.2.3".parse().unwrap(), 32));
        assert_eq!(parse_cidr("f", "fd00::/64").unwrap(), ("fd00::".parse().unwrap(), 64));
        assert_eq!(parse_cidr("f", "0.0.0.0/0").unwrap(), ("0.0.0.0".parse().unwrap(), 0));
        for bad in ["10.1.2.3/16", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/+8", "10.0.0/8", "fd00::/129", "x/8", "10.0.0.0/08x"] {
            assert!(parse_cidr("f", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn interface_requests() {
        let mut i = Interface::new();
        i.hwAddr = "02:00:00:00:00:01".into();
        i.name = "eth0".into();
        i.mtu = 1400;
        i.IPAddresses.push(addr("10.0.0.2", "24", IPFamily::v4));
        i.IPAddresses.push(addr("fd00::2", "64", IPFamily::v6));
        let r = parse_interface(&i).unwrap();
        assert_eq!(r.selector, Selector::Mac([2, 0, 0, 0, 0, 1]));
        assert_eq!(r.addrs.len(), 2);
        assert_eq!(r.mtu, Some(1400));

        let mut bad = i.clone();
        bad.IPAddresses[0].mask = "33".into();
        assert_eq!(field(parse_interface(&bad).unwrap_err()), "Interface.IPAddresses.mask");
        let mut bad = i.clone();
        bad.IPAddresses[0].family = IPFamily::v6.into();
        assert_eq!(field(parse_interface(&bad).unwrap_err()), "Interface.IPAddresses.family");
        let mut bad = i.clone();
        bad.IPAddresses[0].address = "10.0.0.2/24".into();
        assert_eq!(field(parse_interface(&bad).unwrap_err()), "Interface.IPAddresses.address");
        let mut bad = i.clone();
        bad.IPAddresses[0].address = "224.0.0.1".into();
        assert_eq!(field(parse_interface(&bad).unwrap_err()), "Interface.IPAddresses.address");
        let mut bad = i.clone();
        bad.name = "a-name-that-is-too-long".into();
        assert_eq!(field(parse_interface(&bad).unwrap_err()), "Interface.name");
        let mut bad = i.clone();
        bad.hwAddr = "00:00:00:00:00:00".into();
        assert_eq!(field(parse_interface(&bad).unwrap_err()), "Interface.hwAddr");
        let mut bad = i.clone();
        bad.mtu = 1 << 40;
        assert_eq!(field(parse_interface(&bad).unwrap_err()), "Interface.mtu");
        let mut bad = i.clone();
        bad.hwAddr.clear();
        bad.name.clear();
        assert_eq!(field(parse_interface(&bad).unwrap_err()), "Interface");
        let mut by_name = i.clone();
        by_name.hwAddr.clear();
        assert_eq!(parse_interface(&by_name).unwrap().selector, Selector::Name("eth0".into()));
    }

    #[test]
    fn route_requests() {
        let mut r = Route::new();
        r.dest = "default".into();
        r.gateway = "10.0.0.1".into();
        r.device = "eth0".into();
        let p = parse_route(&r).unwrap();
        assert_eq!(p.dest, None);
        assert_eq!(p.family, IPFamily::v4);
        assert_eq!(p.scope, libc::RT_SCOPE_UNIVERSE);

        let mut l = Route::new();
        l.dest = "fd00::/64".into();
        l.device = "eth0".into();
        let p = parse_route(&l).unwrap();
        assert_eq!(p.family, IPFamily::v6);
        assert_eq!(p.scope, libc::RT_SCOPE_LINK);

        let mut bad = r.clone();
        bad.gateway = "fd00::1".into();
        bad.dest = "10.0.0.0/8".into();
        assert_eq!(field(parse_route(&bad).unwrap_err()), "Route.gateway");
        let mut bad = r.clone();
        bad.device.clear();
        assert_eq!(field(parse_route(&bad).unwrap_err()), "Route.device");
        let mut bad = r.clone();
        bad.scope = 300;
        assert_eq!(field(parse_route(&bad).unwrap_err()), "Route.scope");
        let mut bad = r.clone();
        bad.dest = "10.0.0.1/8".into();
        assert_eq!(field(parse_route(&bad).unwrap_err()), "Route.dest");
    }

    #[test]
    fn neighbor_requests() {
        let mut n = ARPNeighbor::new();
        n.toIPAddress = protobuf::MessageField::some(addr("10.0.0.9", "", IPFamily::v4));
        n.device = "eth0".into();
        n.lladdr = "02:00:00:00:00:09".into();
        n.state = NUD_PERMANENT;
        parse_neighbor(&n).unwrap();
        let mut bad = n.clone();
        bad.state = 2;
        assert_eq!(field(parse_neighbor(&bad).unwrap_err()), "ARPNeighbor.state");
        let mut bad = n.clone();
        bad.lladdr = "zz".into();
        assert_eq!(field(parse_neighbor(&bad).unwrap_err()), "ARPNeighbor.lladdr");
        let mut bad = n.clone();
        bad.toIPAddress = protobuf::MessageField::none();
        assert_eq!(field(parse_neighbor(&bad).unwrap_err()), "ARPNeighbor.toIPAddress");
    }

    #[test]
    fn errors_map_to_agent_errors() {
        let e: AgentError = NetError::invalid("Route.dest", "bad").into();
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        let e: AgentError = NetError::NotFound { what: "hwAddr", value: "02:00:00:00:00:01".into() }.into();
        assert_eq!(e.code(), ttrpc::Code::NOT_FOUND);
        let e: AgentError = NetError::netlink("add route", "Routes")(io::Error::from_raw_os_error(libc::ENETUNREACH)).into();
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        let e: AgentError = NetError::netlink("list links", "request")(io::Error::from_raw_os_error(libc::ENOBUFS)).into();
        assert_eq!(e.code(), ttrpc::Code::INTERNAL);
    }
}
