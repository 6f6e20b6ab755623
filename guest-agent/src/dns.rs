//! CreateSandbox's `dns`: the lines the agent writes to the guest's `/etc/resolv.conf`
//! as PID 1 (Kata's shim sends the pod's resolv.conf, one line per entry). The host is
//! untrusted, so only what a pod's DNS configuration can say is accepted:
//!
//! - `nameserver <IPv4 | IPv6[%zone]>`, at most [`MAX_NAMESERVERS`];
//! - `search <domain>...`, at most [`MAX_SEARCH`] domains in all;
//! - `options <opt>...` with `opt` from `ndots:N` (N ≤ 15), `timeout:N` (N ≤ 30),
//!   `attempts:N` (N ≤ 5), `rotate`, `edns0`, `single-request`, `single-request-reopen`,
//!   `use-vc`, `no-tld-query`, `trust-ad`;
//!
//! at most [`MAX_LINES`] lines of at most [`MAX_LINE`] bytes, fields separated by spaces
//! or tabs, no other control character. Anything else is refused naming the line.

use std::net::IpAddr;

use crate::error::AgentError;

/// Most lines.
pub const MAX_LINES: usize = 16;
/// Longest line (bytes; Kubernetes allows 2048 characters of search domains).
pub const MAX_LINE: usize = 2048;
/// Most `nameserver` lines (Kubernetes' and glibc's limit).
pub const MAX_NAMESERVERS: usize = 3;
/// Most search domains in all (Kubernetes' limit).
pub const MAX_SEARCH: usize = 32;

/// Checks the lines and returns the file's contents (one line each, `\n`-terminated).
pub fn resolv_conf(lines: &[String]) -> Result<String, AgentError> {
    if lines.len() > MAX_LINES {
        return Err(AgentError::invalid("dns", format!("{} lines, at most {MAX_LINES}", lines.len())));
    }
    let (mut nameservers, mut search) = (0usize, 0usize);
    let mut body = String::new();
    for (i, line) in lines.iter().enumerate() {
        let bad = |why: String| AgentError::invalid("dns", format!("line {i} {line:?}: {why}"));
        if line.len() > MAX_LINE {
            return Err(bad(format!("longer than {MAX_LINE} bytes")));
        }
        if line.chars().any(|c| c.is_control() && c != ' ' && c != '\t') {
            return Err(bad("contains a control character".into()));
        }
        let mut words = line.split([' ', '\t']).filter(|w| !w.is_empty());
        let keyword = words.next();
        let args: Vec<&str> = words.collect();
        match keyword {
            Some("nameserver") => {
                let [ip] = args.as_slice() else { return Err(bad("nameserver takes one IP address".into())) };
                if !is_ip(ip) {
                    return Err(bad(format!("{ip:?} is not an IP address")));
                }
                nameservers += 1;
                if nameservers > MAX_NAMESERVERS {
                    return Err(bad(format!("more than {MAX_NAMESERVERS} nameservers")));
                }
            }
            Some("search") => {
                if args.is_empty() {
                    return Err(bad("search needs at least one domain".into()));
                }
                if let Some(d) = args.iter().find(|d| !is_domain(d)) {
                    return Err(bad(format!("{d:?} is not a domain name")));
                }
                search += args.len();
                if search > MAX_SEARCH {
                    return Err(bad(format!("more than {MAX_SEARCH} search domains")));
                }
            }
            Some("options") => {
                if args.is_empty() {
                    return Err(bad("options needs at least one option".into()));
                }
                if let Some(o) = args.iter().find(|o| !is_option(o)) {
                    return Err(bad(format!("option {o:?} is not allowed")));
                }
            }
            _ => return Err(bad("only nameserver, search and options lines are accepted".into())),
        }
        body.push_str(line);
        body.push('\n');
    }
    Ok(body)
}

fn is_ip(s: &str) -> bool {
    match s.split_once('%') {
        None => s.parse::<IpAddr>().is_ok(),
        Some((ip, zone)) => {
            ip.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6())
                && (1..=15).contains(&zone.len())
                && zone.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        }
    }
}

fn is_domain(s: &str) -> bool {
    let name = s.strip_suffix('.').unwrap_or(s);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn is_option(o: &str) -> bool {
    const FLAGS: &[&str] =
        &["rotate", "edns0", "single-request", "single-request-reopen", "use-vc", "no-tld-query", "trust-ad"];
    if FLAGS.contains(&o) {
        return true;
    }
    let Some((name, n)) = o.split_once(':') else { return false };
    let max = match name {
        "ndots" => 15,
        "timeout" => 30,
        "attempts" => 5,
        _ => return false,
    };
    (1..=2).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<u32>().is_ok_and(|v| v <= max)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lines(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_kubernetes_resolv_conf_passes() {
        let l = lines(&[
            "nameserver 10.96.0.10",
            "nameserver fd00::a",
            "nameserver fe80::1%eth0",
            "search default.svc.cluster.local svc.cluster.local cluster.local.",
            "options ndots:5 timeout:2 attempts:3 rotate edns0 single-request-reopen use-vc no-tld-query trust-ad",
            "options\tsingle-request",
        ]);
        assert_eq!(resolv_conf(&l).unwrap(), l.iter().map(|s| format!("{s}\n")).collect::<String>());
        assert_eq!(resolv_conf(&[]).unwrap(), "");
    }

    #[test]
    fn anything_else_is_refused_naming_the_line() {
        let long_search = format!("search {}", ["a.example"; 33].join(" "));
        let too_long = format!("search {}", "a".repeat(MAX_LINE));
        let cases: Vec<String> = vec![
            "nameserver 10.0.0.1\nnameserver 6.6.6.6".into(),
            "nameserver 10.0.0.1\rx".into(),
            "nameserver 10.0.0.1\0".into(),
            "nameserver evil.example".into(),
            "nameserver 10.0.0.1 10.0.0.2".into(),
            "nameserver".into(),
            "nameserver 10.0.0.1%eth0".into(),
            "search".into(),
            "search bad/domain".into(),
            "search a..b".into(),
            long_search,
            too_long,
            "options ndots:16".into(),
            "options ndots:".into(),
            "options timeout:99".into(),
            "options debug".into(),
            "options inet6".into(),
            "options".into(),
            "domain example.com".into(),
            "sortlist 10.0.0.0/8".into(),
            "# comment".into(),
            "".into(),
        ];
        for c in &cases {
            let e = resolv_conf(std::slice::from_ref(c)).unwrap_err().to_string();
            assert!(e.contains("invalid dns: line 0"), "{c:?}: {e}");
            assert!(e.contains(&format!("{:?}", c.chars().take(20).collect::<String>()).trim_end_matches('"').to_string()), "{c:?}: {e}");
        }
        let four = lines(&["nameserver 1.1.1.1", "nameserver 1.1.1.2", "nameserver 1.1.1.3", "nameserver 1.1.1.4"]);
        assert!(resolv_conf(&four).unwrap_err().to_string().contains("line 3"));
        let many = vec!["options rotate".to_string(); MAX_LINES + 1];
        assert!(resolv_conf(&many).unwrap_err().to_string().contains("lines, at most"));
    }
}
