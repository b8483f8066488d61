//! The host's resolver settings from resolv.conf: the upstream name servers and the search
//! domains, the defaults of `weft dns --upstream` and `--search`.

use std::net::{IpAddr, SocketAddr};

/// What `weft dns` takes from resolv.conf.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<SocketAddr>,
    pub search: Vec<String>,
}

/// Reads resolv.conf text: `nameserver IP` lines (port 53; a scope id such as `%eth0` is
/// dropped), and the last `search` or `domain` line (as the C library does). Unreadable lines
/// are skipped.
pub fn parse(text: &str) -> ResolvConf {
    let mut out = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                let Some(addr) = words.next() else { continue };
                let addr = addr.split('%').next().unwrap_or(addr);
                if let Ok(ip) = addr.parse::<IpAddr>() {
                    out.nameservers.push(SocketAddr::new(ip, 53));
                }
            }
            Some("search") | Some("domain") => {
                out.search =
                    words.map(|d| d.trim_end_matches('.').to_ascii_lowercase()).filter(|d| !d.is_empty()).collect();
            }
            _ => {}
        }
    }
    out
}

/// Parses `IP`, `IP:PORT` or `[IPv6]:PORT` (port 53 when absent).
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!("{s:?} is not IP, IP:PORT or [IPv6]:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_is_read_like_the_c_library() {
        let text = "# comment\nnameserver 10.0.0.2\nnameserver fe80::1%eth0 \nnameserver bogus\n\
                    domain old.example\nsearch Corp.Example. shop.svc.cluster.local ; trailing\noptions ndots:5\n";
        let r = parse(text);
        assert_eq!(r.nameservers, ["10.0.0.2:53".parse().unwrap(), "[fe80::1]:53".parse().unwrap()]);
        assert_eq!(r.search, ["corp.example", "shop.svc.cluster.local"]);
        assert_eq!(parse(""), ResolvConf::default());
    }

    #[test]
    fn upstreams_take_a_port_or_default_to_53() {
        assert_eq!(parse_upstream("127.0.0.1").unwrap(), "127.0.0.1:53".parse().unwrap());
        assert_eq!(parse_upstream("127.0.0.1:5353").unwrap(), "127.0.0.1:5353".parse().unwrap());
        assert_eq!(parse_upstream("::1").unwrap(), "[::1]:53".parse().unwrap());
        assert_eq!(parse_upstream("[::1]:54").unwrap(), "[::1]:54".parse().unwrap());
        assert!(parse_upstream("dns.example").is_err());
    }
}
