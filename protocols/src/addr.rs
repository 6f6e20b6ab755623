//! Where the guest agent listens, as seen from the host.
//!
//! Three transports, written as URLs:
//!
//! | form | meaning |
//! |---|---|
//! | `vsock://CID:PORT` | kernel AF_VSOCK (needs `/dev/vhost-vsock` on the host) |
//! | `hvsock://PATH:PORT` | hybrid vsock: a unix socket `PATH` served by Firecracker, cloud-hypervisor or `vhost-device-vsock`; the host writes `CONNECT <PORT>\n` and expects `OK <n>\n` before the ttrpc stream starts |
//! | `unix://PATH` or `/absolute/path` | a plain unix socket (tests, virtio-serial bridges) |
//!
//! [`AgentAddr`] parses these ([`FromStr`]) and prints them back ([`fmt::Display`]),
//! so `addr.to_string().parse()` gives the same address.

use std::fmt;
use std::num::ParseIntError;
use std::path::PathBuf;
use std::str::FromStr;

/// The agent's default vsock port (Kata's as well).
pub const DEFAULT_AGENT_PORT: u32 = 1024;

/// An address at which the host can reach the guest agent's ttrpc server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AgentAddr {
    /// Kernel vsock: guest context id and port.
    Vsock {
        /// Guest context id (3 or above for a guest).
        cid: u32,
        /// vsock port the agent listens on.
        port: u32,
    },
    /// Hybrid vsock: a unix socket of the VMM's vsock device, plus the guest port
    /// named in the `CONNECT` handshake.
    HybridVsock {
        /// Host path of the VMM's vsock unix socket.
        path: PathBuf,
        /// Guest vsock port the agent listens on.
        port: u32,
    },
    /// A unix socket connected straight to the agent.
    Unix(PathBuf),
}

/// Why a string is not a valid [`AgentAddr`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    /// The string is empty.
    #[error("agent address is empty")]
    Empty,
    /// The scheme is not one of `vsock`, `hvsock`, `unix`.
    #[error("agent address {addr:?} has unsupported scheme {scheme:?} (expected vsock://, hvsock:// or unix://)")]
    UnsupportedScheme {
        /// The whole address.
        addr: String,
        /// The scheme found before `://`.
        scheme: String,
    },
    /// Neither a `scheme://` URL nor an absolute path.
    #[error("agent address {addr:?} is neither a scheme:// URL nor an absolute unix socket path")]
    NotAUrl {
        /// The whole address.
        addr: String,
    },
    /// A `vsock://` or `hvsock://` address without the `:PORT` suffix.
    #[error("agent address {addr:?} lacks the ':PORT' suffix")]
    MissingPort {
        /// The whole address.
        addr: String,
    },
    /// The port is not a decimal `u32`.
    #[error("agent address {addr:?} has invalid port {port:?}")]
    InvalidPort {
        /// The whole address.
        addr: String,
        /// The text where the port should be.
        port: String,
        /// The parse failure.
        #[source]
        source: ParseIntError,
    },
    /// The vsock context id is not a decimal `u32`.
    #[error("agent address {addr:?} has invalid vsock CID {cid:?}")]
    InvalidCid {
        /// The whole address.
        addr: String,
        /// The text where the CID should be.
        cid: String,
        /// The parse failure.
        #[source]
        source: ParseIntError,
    },
    /// `unix://` or `hvsock://` with nothing where the socket path goes.
    #[error("agent address {addr:?} has an empty socket path")]
    EmptyPath {
        /// The whole address.
        addr: String,
    },
}

impl AgentAddr {
    /// The scheme this address prints with: `vsock`, `hvsock` or `unix`.
    pub fn scheme(&self) -> &'static str {
        match self {
            AgentAddr::Vsock { .. } => "vsock",
            AgentAddr::HybridVsock { .. } => "hvsock",
            AgentAddr::Unix(_) => "unix",
        }
    }
}

/// Splits `rest` at its last `:` into a non-empty head and a `u32` port.
fn split_port<'a>(addr: &str, rest: &'a str) -> Result<(&'a str, u32), AddrError> {
    let (head, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| AddrError::MissingPort {
            addr: addr.to_owned(),
        })?;
    if port.is_empty() {
        return Err(AddrError::MissingPort {
            addr: addr.to_owned(),
        });
    }
    let value = parse_decimal(port).map_err(|source| AddrError::InvalidPort {
        addr: addr.to_owned(),
        port: port.to_owned(),
        source,
    })?;
    Ok((head, value))
}

/// `u32::from_str` also takes a leading `+`; an address should not.
fn parse_decimal(s: &str) -> Result<u32, ParseIntError> {
    if s.starts_with('+') {
        // Produce the library's own "invalid digit" error.
        return "x".parse::<u32>();
    }
    s.parse::<u32>()
}

impl FromStr for AgentAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(AddrError::Empty);
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            if s.starts_with('/') {
                return Ok(AgentAddr::Unix(PathBuf::from(s)));
            }
            return Err(AddrError::NotAUrl { addr: s.to_owned() });
        };
        match scheme {
            "vsock" => {
                let (cid, port) = split_port(s, rest)?;
                let cid = parse_decimal(cid).map_err(|source| AddrError::InvalidCid {
                    addr: s.to_owned(),
                    cid: cid.to_owned(),
                    source,
                })?;
                Ok(AgentAddr::Vsock { cid, port })
            }
            "hvsock" => {
                let (path, port) = split_port(s, rest)?;
                if path.is_empty() {
                    return Err(AddrError::EmptyPath { addr: s.to_owned() });
                }
                Ok(AgentAddr::HybridVsock {
                    path: PathBuf::from(path),
                    port,
                })
            }
            "unix" => {
                if rest.is_empty() {
                    return Err(AddrError::EmptyPath { addr: s.to_owned() });
                }
                Ok(AgentAddr::Unix(PathBuf::from(rest)))
            }
            other => Err(AddrError::UnsupportedScheme {
                addr: s.to_owned(),
                scheme: other.to_owned(),
            }),
        }
    }
}

impl fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentAddr::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            AgentAddr::HybridVsock { path, port } => {
                write!(f, "hvsock://{}:{port}", path.display())
            }
            AgentAddr::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<AgentAddr, AddrError> {
        s.parse()
    }

    #[test]
    fn parses_good_addresses() {
        assert_eq!(
            parse("vsock://3:1024").unwrap(),
            AgentAddr::Vsock { cid: 3, port: 1024 }
        );
        assert_eq!(
            parse("vsock://4294967295:0").unwrap(),
            AgentAddr::Vsock {
                cid: u32::MAX,
                port: 0
            }
        );
        assert_eq!(
            parse("hvsock:///run/kata/vm.vsock:1024").unwrap(),
            AgentAddr::HybridVsock {
                path: "/run/kata/vm.vsock".into(),
                port: 1024
            }
        );
        // Colons in the path: the port is after the last one.
        assert_eq!(
            parse("hvsock:///tmp/a:b/vm.sock:5").unwrap(),
            AgentAddr::HybridVsock {
                path: "/tmp/a:b/vm.sock".into(),
                port: 5
            }
        );
        assert_eq!(
            parse("hvsock://vm.vsock:1").unwrap(),
            AgentAddr::HybridVsock {
                path: "vm.vsock".into(),
                port: 1
            }
        );
        assert_eq!(
            parse("unix:///run/agent.sock").unwrap(),
            AgentAddr::Unix("/run/agent.sock".into())
        );
        assert_eq!(
            parse("unix://agent.sock").unwrap(),
            AgentAddr::Unix("agent.sock".into())
        );
        assert_eq!(
            parse("/run/agent.sock").unwrap(),
            AgentAddr::Unix("/run/agent.sock".into())
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "vsock://3:1024",
            "hvsock:///run/vm.vsock:1024",
            "unix:///run/agent.sock",
            "hvsock:///a:b:7",
        ] {
            let addr = parse(s).unwrap();
            assert_eq!(addr.to_string(), s);
            assert_eq!(parse(&addr.to_string()).unwrap(), addr);
        }
        assert_eq!(parse("/x.sock").unwrap().to_string(), "unix:///x.sock");
    }

    #[test]
    fn scheme_names() {
        assert_eq!(parse("vsock://3:1").unwrap().scheme(), "vsock");
        assert_eq!(parse("hvsock:///p:1").unwrap().scheme(), "hvsock");
        assert_eq!(parse("/p").unwrap().scheme(), "unix");
    }

    #[test]
    fn rejects_bad_addresses() {
        assert_eq!(parse(""), Err(AddrError::Empty));
        assert!(
            matches!(parse("tcp://1.2.3.4:5"), Err(AddrError::UnsupportedScheme { scheme, .. }) if scheme == "tcp")
        );
        assert!(matches!(
            parse("relative/agent.sock"),
            Err(AddrError::NotAUrl { .. })
        ));
        assert!(matches!(
            parse("vsock://3"),
            Err(AddrError::MissingPort { .. })
        ));
        assert!(matches!(
            parse("vsock://3:"),
            Err(AddrError::MissingPort { .. })
        ));
        assert!(matches!(
            parse("hvsock:///run/vm.vsock"),
            Err(AddrError::MissingPort { .. })
        ));
        assert!(
            matches!(parse("vsock://3:port"), Err(AddrError::InvalidPort { port, .. }) if port == "port")
        );
        assert!(matches!(
            parse("vsock://3:+5"),
            Err(AddrError::InvalidPort { .. })
        ));
        assert!(matches!(
            parse("vsock://3:4294967296"),
            Err(AddrError::InvalidPort { .. })
        ));
        assert!(
            matches!(parse("vsock://-1:1024"), Err(AddrError::InvalidCid { cid, .. }) if cid == "-1")
        );
        assert!(matches!(
            parse("vsock://:1024"),
            Err(AddrError::InvalidCid { .. })
        ));
        assert!(matches!(
            parse("hvsock://:1024"),
            Err(AddrError::EmptyPath { .. })
        ));
        assert!(matches!(parse("unix://"), Err(AddrError::EmptyPath { .. })));
    }

    #[test]
    fn errors_name_the_offending_text() {
        let msg = parse("vsock://3:abc").unwrap_err().to_string();
        assert!(
            msg.contains("\"vsock://3:abc\"") && msg.contains("\"abc\""),
            "{msg}"
        );
        let msg = parse("http://x").unwrap_err().to_string();
        assert!(msg.contains("\"http\""), "{msg}");
    }
}
