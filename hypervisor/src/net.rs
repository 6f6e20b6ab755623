//! Pod networking on the host: connect the pod's CNI interface to the VM.
//!
//! The CNI plugin gives the pod a network namespace with one interface in it (usually
//! a veth whose peer sits on a host bridge) carrying the pod's IP. [`setup`] enters that
//! namespace on a dedicated thread and, as Kata's `tcfilter` internetworking model does:
//!
//! 1. creates a persistent tap ([`DEFAULT_TAP_NAME`]) with `IFF_TAP | IFF_NO_PI |
//!    IFF_VNET_HDR`, opened *inside* the netns so the returned fd can be handed to QEMU
//!    (`-netdev tap,fd=N`: QEMU reads `IFF_VNET_HDR` back with `TUNGETIFF` and then uses
//!    virtio-net headers), with the veth's MTU and no IPv6 address generation (so the
//!    pod netns sends nothing of its own to the guest);
//! 2. adds an `ingress` qdisc to the veth and to the tap, and on each a u32 filter that
//!    matches every frame (`protocol all`, one key with mask 0) with the action
//!    `mirred egress redirect` to the other device: frames arriving on the veth leave
//!    through the tap to the guest, and frames the guest writes leave through the veth;
//! 3. brings both links up and describes the veth for the guest agent: its MAC (the
//!    guest NIC must use it so that traffic matches), addresses, MTU, routes and
//!    permanent neighbours, as `protocols::types` values for UpdateInterface,
//!    UpdateRoutes and AddARPNeighbors.
//!
//! Everything goes through rtnetlink messages (`netlink-packet-route` on a `netlink-sys`
//! socket), including the tc qdiscs and filters; no `ip` or `tc` binary is run. The u32
//! classifier is used rather than `matchall` because it is the one every kernel has
//! (this host's kernel lacks `cls_matchall`) and the one Kata uses.
//!
//! [`teardown`] removes the filter, the ingress qdisc if setup created it, and the tap;
//! it is idempotent and succeeds if the namespace is already gone. The veth keeps its
//! addresses and routes throughout: the netns is left as the CNI plugin made it.
//!
//! Both functions block for a few milliseconds; from async code call them through
//! `tokio::task::spawn_blocking`. They never change the namespace of the calling
//! thread.
//!
//! # Example
//! ```no_run
//! use hypervisor::net::{setup, teardown, PodNetConfig};
//! # fn demo() -> Result<(), hypervisor::net::NetError> {
//! let net = setup(&PodNetConfig::new("/var/run/netns/cni-1234"))?;
//! let nic = net.net_device(); // for VmSpec::net: TapRef::Fd + the veth's MAC
//! println!("{:?} {:?} {:?}", nic, net.interface, net.routes);
//! // ... start the VM, UpdateInterface/UpdateRoutes through the agent ...
//! teardown(&net.state)?;
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteType,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use protocols::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};
use serde::{Deserialize, Serialize};

use crate::spec::{MacAddr, NetDevice, TapRef};

/// The tap name Kata gives the first pod interface.
pub const DEFAULT_TAP_NAME: &str = "tap0_kata";

/// Priority of the redirect filters this module installs (`tc ... pref 19267`); teardown
/// deletes filters of this priority only.
pub const FILTER_PRIORITY: u16 = 0x4b43;

const ETH_P_ALL: u16 = 0x0003;
const RTNH_F_ONLINK: u32 = 4;
const NUD_PERMANENT: i32 = 0x80;
/// `ingress` qdisc handle `ffff:`, also the parent of its filters.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

/// Errors of pod network setup and teardown.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration is unusable.
    #[error("invalid pod network config: {0}")]
    Config(String),
    /// The network namespace cannot be opened or entered.
    #[error("cannot enter network namespace {}", path.display())]
    Netns {
        /// The namespace path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No interface of the namespace carries the pod IP.
    #[error("no interface with an IP address (other than lo) in {}", netns.display())]
    NoPodInterface {
        /// The namespace path.
        netns: PathBuf,
    },
    /// Several interfaces could be the pod's; name one in [`PodNetConfig::veth`].
    #[error("several interfaces with IP addresses in {}: {names:?}", netns.display())]
    AmbiguousPodInterface {
        /// The namespace path.
        netns: PathBuf,
        /// The candidates.
        names: Vec<String>,
    },
    /// The named interface does not exist.
    #[error("no interface {name:?} in {}", netns.display())]
    NoSuchInterface {
        /// The namespace path.
        netns: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// The tap already exists (a previous setup was not torn down).
    #[error("interface {name:?} already exists in {}; tear the previous setup down first", netns.display())]
    TapExists {
        /// The namespace path.
        netns: PathBuf,
        /// The tap name.
        name: String,
    },
    /// The veth has no usable MAC address.
    #[error("interface {name:?} has no Ethernet MAC address")]
    NoMac {
        /// The interface.
        name: String,
    },
    /// Creating or configuring the tap failed.
    #[error("{op}")]
    Tap {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A netlink request failed.
    #[error("{op}")]
    Netlink {
        /// What was being done.
        op: String,
        /// The kernel's (or the socket's) error.
        #[source]
        source: io::Error,
    },
    /// The namespace thread could not be started or died.
    #[error("network namespace thread failed")]
    Thread(#[source] io::Error),
}

fn netlink_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let op = op.into();
    move |source| NetError::Netlink { op, source }
}

/// What [`setup`] is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetConfig {
    /// The pod's network namespace: `/var/run/netns/NAME` or `/proc/PID/ns/net`.
    pub netns: PathBuf,
    /// Name of the tap to create (at most 15 bytes).
    pub tap_name: String,
    /// The pod interface; `None` picks the only non-loopback interface with an IP.
    pub veth: Option<String>,
}

impl PodNetConfig {
    /// Tap [`DEFAULT_TAP_NAME`], pod interface found automatically.
    pub fn new(netns: impl Into<PathBuf>) -> Self {
        Self {
            netns: netns.into(),
            tap_name: DEFAULT_TAP_NAME.into(),
            veth: None,
        }
    }

    fn validate(&self) -> Result<(), NetError> {
        valid_ifname(&self.tap_name).map_err(|why| NetError::Config(format!("tap name: {why}")))?;
        if let Some(v) = &self.veth {
            valid_ifname(v).map_err(|why| NetError::Config(format!("veth name: {why}")))?;
        }
        if !self.netns.is_absolute() {
            return Err(NetError::Config(format!(
                "netns path {} is not absolute",
                self.netns.display()
            )));
        }
        Ok(())
    }
}

fn valid_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 || name == "." || name == ".." {
        return Err(format!("{name:?} must be 1-15 bytes"));
    }
    if name
        .chars()
        .any(|c| !c.is_ascii_graphic() || c == '/' || c == ':')
    {
        return Err(format!(
            "{name:?} has characters other than printable ASCII without '/' and ':'"
        ));
    }
    Ok(())
}

/// What [`teardown`] needs; small and serialisable so a restarted shim can clean up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetState {
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// The tap created by setup.
    pub tap: String,
    /// The pod interface.
    pub veth: String,
    /// Whether setup added the veth's ingress qdisc (then teardown removes it once no
    /// filter is left on it).
    pub veth_ingress_created: bool,
}

/// A connected pod network: the tap fd for QEMU and the description for the agent.
#[derive(Debug)]
pub struct PodNetwork {
    /// For [`teardown`].
    pub state: PodNetState,
    /// The tap, opened inside the netns with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`
    /// (close-on-exec; the QEMU backend clears that for the child).
    pub tap_fd: OwnedFd,
    /// The veth's MAC, which the guest NIC must use.
    pub mac: MacAddr,
    /// For the agent's UpdateInterface: name, MAC, MTU and addresses of the veth
    /// (IPv6 link-local ones left out: the guest makes its own).
    pub interface: Interface,
    /// For UpdateRoutes: the veth's routes of the main table, without the kernel's own
    /// (prefix routes the guest derives from the addresses).
    pub routes: Vec<Route>,
    /// For AddARPNeighbors: the veth's permanent neighbour entries.
    pub neighbors: Vec<ARPNeighbor>,
}

impl PodNetwork {
    /// The NIC for [`crate::VmSpec::net`]. The fd stays owned by `self`: keep it alive
    /// until the VM has started.
    pub fn net_device(&self) -> NetDevice {
        NetDevice {
            tap: TapRef::Fd(self.tap_fd.as_raw_fd()),
            mac: self.mac,
        }
    }
}

/// Creates the tap in the pod netns, connects it to the pod interface and describes
/// that interface. On error nothing is left behind.
pub fn setup(cfg: &PodNetConfig) -> Result<PodNetwork, NetError> {
    cfg.validate()?;
    in_netns(&cfg.netns, || setup_in_netns(cfg))?.ok_or_else(|| NetError::Netns {
        path: cfg.netns.clone(),
        source: io::ErrorKind::NotFound.into(),
    })
}

/// Undoes [`setup`]: deletes the redirect filter on the veth, the veth's ingress qdisc
/// if setup created it and nothing else uses it, and the tap (with its qdisc and
/// filter). Idempotent; a namespace that no longer exists counts as torn down.
pub fn teardown(state: &PodNetState) -> Result<(), NetError> {
    valid_ifname(&state.tap).map_err(|why| NetError::Config(format!("tap name: {why}")))?;
    in_netns(&state.netns, || teardown_in_netns(state)).map(|_| ())
}

/// For CRI port-forward (the shim's forwarder, `shim/src/portforward.rs`): a TCP listener
/// bound to `127.0.0.1:0` *inside* the namespace at `netns` (the socket stays in that
/// namespace when the thread that made it leaves), and the namespace's IPv4 addresses
/// other than loopback (the pod IPs, which the VM carries). `Ok(None)` if the namespace
/// does not exist.
pub fn loopback_listener(netns: &Path) -> Result<Option<(std::net::TcpListener, Vec<IpAddr>)>, NetError> {
    in_netns(netns, || {
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| NetError::Config(format!("bind 127.0.0.1:0 in {}: {e}", netns.display())))?;
        let mut nl = Netlink::open()?;
        let ips = addresses(&mut nl)?
            .into_iter()
            .map(|a| a.ip)
            .filter(|ip| ip.is_ipv4() && !ip.is_loopback())
            .collect();
        Ok((listener, ips))
    })
}

/// Runs `f` on a new thread that has joined the namespace at `path`. `Ok(None)` if the
/// namespace does not exist (any more).
fn in_netns<T: Send>(
    path: &Path,
    f: impl FnOnce() -> Result<T, NetError> + Send,
) -> Result<Option<T>, NetError> {
    let ns = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(NetError::Netns {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("kata-cc-netns".into())
            .spawn_scoped(s, || {
                // SAFETY: `ns` is an open fd for the duration of the call; setns only
                // changes this thread's network namespace, and the thread ends after `f`.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(NetError::Netns {
                        path: path.to_path_buf(),
                        source: io::Error::last_os_error(),
                    });
                }
                f()
            })
            .map_err(NetError::Thread)?;
        handle
            .join()
            .map_err(|_| {
                NetError::Thread(io::Error::other("the network namespace thread panicked"))
            })?
            .map(Some)
    })
}

// ---- the work, inside the namespace ----------------------------------------------------

fn setup_in_netns(cfg: &PodNetConfig) -> Result<PodNetwork, NetError> {
    let mut nl = Netlink::open()?;
    let links = links(&mut nl)?;
    if links.iter().any(|l| l.name == cfg.tap_name) {
        return Err(NetError::TapExists {
            netns: cfg.netns.clone(),
            name: cfg.tap_name.clone(),
        });
    }
    let addrs = addresses(&mut nl)?;
    let veth = pick_veth(cfg, &links, &addrs)?.clone();
    let mac: [u8; 6] = veth
        .mac
        .as_slice()
        .try_into()
        .ok()
        .filter(|m| *m != [0u8; 6])
        .ok_or_else(|| NetError::NoMac {
            name: veth.name.clone(),
        })?;

    let tap_fd = open_tap(&cfg.tap_name)?;
    let mut state = PodNetState {
        netns: cfg.netns.clone(),
        tap: cfg.tap_name.clone(),
        veth: veth.name.clone(),
        veth_ingress_created: false,
    };
    match connect(&mut nl, cfg, &veth, &mut state) {
        Ok(()) => {}
        Err(e) => {
            if let Err(t) = teardown_in_netns(&state) {
                tracing::warn!("cleaning up after a failed pod network setup: {t}");
            }
            return Err(e);
        }
    }
    let described = describe(&mut nl, &veth, &addrs);
    let (interface, routes, neighbors) = match described {
        Ok(d) => d,
        Err(e) => {
            if let Err(t) = teardown_in_netns(&state) {
                tracing::warn!("cleaning up after a failed pod network setup: {t}");
            }
            return Err(e);
        }
    };
    Ok(PodNetwork {
        state,
        tap_fd,
        mac: MacAddr(mac),
        interface,
        routes,
        neighbors,
    })
}

fn pick_veth<'a>(
    cfg: &PodNetConfig,
    links: &'a [Link],
    addrs: &[Addr],
) -> Result<&'a Link, NetError> {
    if let Some(name) = &cfg.veth {
        return links
            .iter()
            .find(|l| &l.name == name)
            .ok_or_else(|| NetError::NoSuchInterface {
                netns: cfg.netns.clone(),
                name: name.clone(),
            });
    }
    let with_ip: HashSet<u32> = addrs
        .iter()
        .filter(|a| !is_ipv6_link_local(&a.ip))
        .map(|a| a.index)
        .collect();
    let candidates: Vec<&Link> = links
        .iter()
        .filter(|l| l.flags & libc::IFF_LOOPBACK as u32 == 0 && with_ip.contains(&l.index))
        .collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => Err(NetError::NoPodInterface {
            netns: cfg.netns.clone(),
        }),
        many => Err(NetError::AmbiguousPodInterface {
            netns: cfg.netns.clone(),
            names: many.iter().map(|l| l.name.clone()).collect(),
        }),
    }
}

/// Tap MTU, ingress qdiscs, redirect filters, links up.
fn connect(
    nl: &mut Netlink,
    cfg: &PodNetConfig,
    veth: &Link,
    state: &mut PodNetState,
) -> Result<(), NetError> {
    let tap = links(nl)?
        .into_iter()
        .find(|l| l.name == cfg.tap_name)
        .ok_or_else(|| NetError::NoSuchInterface {
            netns: cfg.netns.clone(),
            name: cfg.tap_name.clone(),
        })?;
    let tap_name = &cfg.tap_name;
    set_link(nl, tap.index, |m| {
        m.attributes.push(LinkAttribute::Mtu(veth.mtu))
    })
    .map_err(netlink_err(format!(
        "set the MTU of {tap_name} to {}",
        veth.mtu
    )))?;
    // No IPv6 link-local address on the tap: the pod netns's own router solicitations
    // and MLD reports would otherwise go to the guest. (Fails harmlessly without IPv6.)
    if let Err(e) = set_link(nl, tap.index, |m| {
        m.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]))
    }) {
        tracing::debug!("addrgenmode none on {tap_name}: {e}");
    }

    match nl.exec(
        RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(veth.index)),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Ok(()) => state.veth_ingress_created = true,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => {
            return Err(netlink_err(format!(
                "add an ingress qdisc to {}",
                veth.name
            ))(e))
        }
    }
    nl.exec(
        RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(tap.index)),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .map_err(netlink_err(format!("add an ingress qdisc to {tap_name}")))?;
    nl.exec(
        RouteNetlinkMessage::NewTrafficFilter(redirect_filter(veth.index, tap.index)),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .map_err(netlink_err(format!(
        "redirect {} ingress to {tap_name}",
        veth.name
    )))?;
    nl.exec(
        RouteNetlinkMessage::NewTrafficFilter(redirect_filter(tap.index, veth.index)),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .map_err(netlink_err(format!(
        "redirect {tap_name} ingress to {}",
        veth.name
    )))?;

    for (index, name) in [
        (tap.index, tap_name.as_str()),
        (veth.index, veth.name.as_str()),
    ] {
        set_link(nl, index, |m| {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        })
        .map_err(netlink_err(format!("bring {name} up")))?;
    }
    Ok(())
}

fn teardown_in_netns(state: &PodNetState) -> Result<(), NetError> {
    let mut nl = Netlink::open()?;
    let links = links(&mut nl)?;
    let gone = |e: &io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)
        )
    };
    if let Some(veth) = links.iter().find(|l| l.name == state.veth) {
        let mut del = TcMessage::default();
        del.header.index = veth.index as i32;
        del.header.parent = INGRESS_HANDLE;
        del.header.info = filter_info();
        match nl.exec(RouteNetlinkMessage::DelTrafficFilter(del), 0) {
            Ok(()) => {}
            Err(e) if gone(&e) => {}
            Err(e) => {
                return Err(netlink_err(format!(
                    "delete the redirect filter of {}",
                    veth.name
                ))(e))
            }
        }
        if state.veth_ingress_created && ingress_filters(&mut nl, veth.index)? == 0 {
            match nl.exec(
                RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(veth.index)),
                0,
            ) {
                Ok(()) => {}
                Err(e) if gone(&e) => {}
                Err(e) => {
                    return Err(netlink_err(format!(
                        "delete the ingress qdisc of {}",
                        veth.name
                    ))(e))
                }
            }
        }
    }
    if let Some(tap) = links.iter().find(|l| l.name == state.tap) {
        if tap.kind != "tun" {
            return Err(NetError::Config(format!(
                "{} is a {:?} link, not the tap setup made",
                state.tap, tap.kind
            )));
        }
        let mut m = LinkMessage::default();
        m.header.index = tap.index;
        match nl.exec(RouteNetlinkMessage::DelLink(m), 0) {
            Ok(()) => {}
            Err(e) if gone(&e) => {}
            Err(e) => return Err(netlink_err(format!("delete {}", state.tap))(e)),
        }
    }
    Ok(())
}

fn filter_info() -> u32 {
    (u32::from(FILTER_PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be())
}

fn ingress_qdisc(index: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = index as i32;
    m.header.handle = INGRESS_HANDLE;
    m.header.parent = TcHandle::INGRESS;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m
}

/// `tc filter add dev <from> parent ffff: protocol all pref 19267 u32 match u32 0 0
/// action mirred egress redirect dev <to>`.
fn redirect_filter(from: u32, to: u32) -> TcMessage {
    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action
        .attributes
        .push(TcActionAttribute::Kind("mirred".into()));
    action
        .attributes
        .push(TcActionAttribute::Options(vec![TcActionOption::Mirror(
            TcActionMirrorOption::Parms(mirror),
        )]));

    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![TcU32Key::default()];

    let mut m = TcMessage::default();
    m.header.index = from as i32;
    m.header.parent = INGRESS_HANDLE;
    m.header.info = filter_info();
    m.attributes.push(TcAttribute::Kind("u32".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(sel)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    m
}

/// Number of filters on the ingress qdisc of `index`.
fn ingress_filters(nl: &mut Netlink, index: u32) -> Result<usize, NetError> {
    let mut req = TcMessage::default();
    req.header.index = index as i32;
    req.header.parent = INGRESS_HANDLE;
    match nl.dump(RouteNetlinkMessage::GetTrafficFilter(req)) {
        Ok(msgs) => Ok(msgs
            .iter()
            .filter(|m| matches!(m, RouteNetlinkMessage::NewTrafficFilter(_)))
            .count()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => Ok(0),
        Err(e) => Err(netlink_err("list ingress filters")(e)),
    }
}

/// `ifreq` as TUNSETIFF reads it: the name, then the flags in the union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates the persistent tap `name` in the current netns and returns its queue fd.
fn open_tap(name: &str) -> Result<OwnedFd, NetError> {
    let tap_err = |op: &str| {
        let op = format!("{op} tap {name}");
        move |source| NetError::Tap { op, source }
    };
    // SAFETY: a NUL-terminated constant path; the returned fd is checked and owned below.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(tap_err("open /dev/net/tun for")(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // Validated to 1-15 bytes, so the name stays NUL-terminated.
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads a `struct ifreq` (40 bytes, which `IfReq` matches) and may
    // write the chosen name back into it; `req` lives across the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } != 0 {
        return Err(tap_err("create")(io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument by value; `fd` is a tun queue.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } != 0 {
        let err = io::Error::last_os_error();
        drop(fd); // not persistent: closing removes it
        return Err(tap_err("make persistent")(err));
    }
    Ok(fd)
}

/// The veth as `protocols::types` values for the agent.
fn describe(
    nl: &mut Netlink,
    veth: &Link,
    addrs: &[Addr],
) -> Result<(Interface, Vec<Route>, Vec<ARPNeighbor>), NetError> {
    let mut iface = Interface::new();
    iface.device = veth.name.clone();
    iface.name = veth.name.clone();
    iface.mtu = u64::from(veth.mtu);
    iface.hwAddr = format_mac(&veth.mac);
    iface.type_ = veth.kind.clone();
    iface.raw_flags = veth.flags & libc::IFF_NOARP as u32;
    for a in addrs
        .iter()
        .filter(|a| a.index == veth.index && !is_ipv6_link_local(&a.ip))
    {
        let mut p = IPAddress::new();
        p.family = family_of(&a.ip).into();
        p.address = a.ip.to_string();
        p.mask = a.prefix.to_string();
        iface.IPAddresses.push(p);
    }

    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        let msgs = nl
            .dump(RouteNetlinkMessage::GetRoute(req))
            .map_err(netlink_err("list routes"))?;
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.address_family != family
                || route_table(&r) != u32::from(RouteHeader::RT_TABLE_MAIN)
                || r.header.kind != RouteType::Unicast
                || r.header.protocol == RouteProtocol::Kernel
            {
                continue;
            }
            if let Some(route) = route_to_pb(&r, veth) {
                routes.push(route);
            }
        }
    }

    let mut neighbors = Vec::new();
    let msgs = nl
        .dump(RouteNetlinkMessage::GetNeighbour(
            NeighbourMessage::default(),
        ))
        .map_err(netlink_err("list neighbours"))?;
    for m in msgs {
        let RouteNetlinkMessage::NewNeighbour(n) = m else {
            continue;
        };
        if n.header.ifindex != veth.index || n.header.state != NeighbourState::Permanent {
            continue;
        }
        let mut ip = None;
        let mut lladdr = None;
        for a in &n.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    ip = Some(IpAddr::V4(*v4))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    ip = Some(IpAddr::V6(*v6))
                }
                NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                    lladdr = Some(format_mac(l))
                }
                _ => {}
            }
        }
        if let (Some(ip), Some(lladdr)) = (ip, lladdr) {
            let mut to = IPAddress::new();
            to.family = family_of(&ip).into();
            to.address = ip.to_string();
            let mut a = ARPNeighbor::new();
            a.toIPAddress = protocols::protobuf::MessageField::some(to);
            a.device = veth.name.clone();
            a.lladdr = lladdr;
            a.state = NUD_PERMANENT;
            neighbors.push(a);
        }
    }
    Ok((iface, routes, neighbors))
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

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A route of the veth as the agent's UpdateRoutes wants it; `None` for other devices
/// and for IPv6 link-local or multicast destinations (the guest kernel makes those).
fn route_to_pb(r: &RouteMessage, veth: &Link) -> Option<Route> {
    let oif = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    });
    if oif != Some(veth.index) {
        return None;
    }
    let mut out = Route::new();
    out.family = match r.header.address_family {
        AddressFamily::Inet => IPFamily::v4,
        _ => IPFamily::v6,
    }
    .into();
    out.device = veth.name.clone();
    out.scope = u32::from(u8::from(r.header.scope));
    out.flags = r.header.flags.bits() & RTNH_F_ONLINK;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                let ip = route_ip(d)?;
                if is_ipv6_link_local(&ip) || ip.is_multicast() {
                    return None;
                }
                out.dest = format!("{ip}/{}", r.header.destination_prefix_length);
            }
            RouteAttribute::Gateway(g) => out.gateway = route_ip(g)?.to_string(),
            RouteAttribute::PrefSource(s) => out.source = route_ip(s)?.to_string(),
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

fn family_of(ip: &IpAddr) -> IPFamily {
    if ip.is_ipv4() {
        IPFamily::v4
    } else {
        IPFamily::v6
    }
}

fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80)
}

fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---- netlink ---------------------------------------------------------------------------

/// A blocking rtnetlink socket in the namespace of the thread that opened it.
struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    fn open() -> Result<Self, NetError> {
        let err = netlink_err("open a netlink socket");
        let mut sock = match Socket::new(NETLINK_ROUTE) {
            Ok(s) => s,
            Err(e) => return Err(err(e)),
        };
        if let Err(e) = sock
            .bind_auto()
            .and_then(|_| sock.connect(&SocketAddr::new(0, 0)))
        {
            return Err(err(e));
        }
        Ok(Self { sock, seq: 0 })
    }

    /// Sends one request and collects the answers until the ack (or the end of a dump).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
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
            while off + 16 <= data.len() {
                let rest = &data[off..];
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < 16 || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed netlink message length",
                    ));
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

/// An interface address.
#[derive(Debug, Clone)]
struct Addr {
    index: u32,
    ip: IpAddr,
    prefix: u8,
}

fn links(nl: &mut Netlink) -> Result<Vec<Link>, NetError> {
    let msgs = nl
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .map_err(netlink_err("list links"))?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewLink(m) = m else {
            continue;
        };
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            flags: m.header.flags.bits(),
            kind: String::new(),
        };
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
        out.push(l);
    }
    Ok(out)
}

fn addresses(nl: &mut Netlink) -> Result<Vec<Addr>, NetError> {
    let msgs = nl
        .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
        .map_err(netlink_err("list addresses"))?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
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
            out.push(Addr {
                index: a.header.index,
                ip,
                prefix: a.header.prefix_len,
            });
        }
    }
    Ok(out)
}

fn set_link(nl: &mut Netlink, index: u32, f: impl FnOnce(&mut LinkMessage)) -> io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    f(&mut m);
    nl.exec(RouteNetlinkMessage::SetLink(m), 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated() {
        assert!(PodNetConfig::new("/var/run/netns/x").validate().is_ok());
        let mut c = PodNetConfig::new("relative/path");
        assert!(c.validate().is_err());
        c = PodNetConfig::new("/n");
        c.tap_name = "tap0_kata,script=/x".into();
        assert!(c.validate().is_err());
        c.tap_name = "a_name_far_too_long".into();
        assert!(c.validate().is_err());
        c.tap_name = "tap0".into();
        c.veth = Some("eth 0".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn filter_header_encodes_priority_and_protocol() {
        // `tc` shows `protocol all pref 19267`: prio in the high half, ETH_P_ALL in
        // network byte order in the low half.
        let info = filter_info();
        assert_eq!(info >> 16, 0x4b43);
        assert_eq!(u16::from_be((info & 0xffff) as u16), ETH_P_ALL);
        let f = redirect_filter(2, 3);
        assert_eq!(f.header.parent, INGRESS_HANDLE);
        assert_eq!(f.attributes[0], TcAttribute::Kind("u32".into()));
    }

    #[test]
    fn missing_netns_is_torn_down() {
        let state = PodNetState {
            netns: "/nonexistent/netns/kata-cc".into(),
            tap: DEFAULT_TAP_NAME.into(),
            veth: "eth0".into(),
            veth_ingress_created: true,
        };
        teardown(&state).unwrap();
    }
}
