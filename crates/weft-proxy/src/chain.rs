//! Filter chain selection: which chain of a listener handles a connection (Envoy's order).

use std::net::SocketAddr;

use weft_config::{ChainMatch, FilterChain, Transport};

/// What is known about a connection when its chain is chosen.
#[derive(Debug, Clone)]
pub struct ConnInfo<'a> {
    /// Original destination (captured traffic) or the listener's local address.
    pub destination: SocketAddr,
    pub source: SocketAddr,
    pub server_name: Option<&'a str>,
    pub transport: Transport,
    pub alpn: &'a [String],
}

/// Picks the most specific matching chain, criterion by criterion as Envoy does: destination
/// port, destination IP (longest prefix), server name (exact, then longest wildcard), transport,
/// ALPN, source IP. At each step only the candidates at the most specific level survive.
/// One selection criterion: None when the chain does not match, else its specificity.
type Criterion<'a> = &'a dyn Fn(&ChainMatch) -> Option<u32>;

pub fn select_chain(chains: &[FilterChain], c: &ConnInfo<'_>) -> Option<usize> {
    let mut cand: Vec<usize> = (0..chains.len()).collect();
    let m = |i: usize| -> &ChainMatch { &chains[i].matcher };

    // Each closure returns None when the chain does not match, else its specificity (higher wins).
    let steps: [Criterion; 6] = [
        &|m| match m.destination_port {
            None => Some(0),
            Some(p) if p == c.destination.port() => Some(1),
            Some(_) => None,
        },
        &|m| {
            if m.destination_ips.is_empty() {
                return Some(0);
            }
            m.destination_ips.iter().filter(|n| n.contains(c.destination.ip())).map(|n| n.prefix_len as u32 + 1).max()
        },
        &|m| {
            if m.server_names.is_empty() {
                return Some(0);
            }
            let sni = c.server_name?;
            m.server_names.iter().filter_map(|n| server_name_score(n, sni)).max()
        },
        &|m| match m.transport {
            None => Some(0),
            Some(t) if t == c.transport => Some(1),
            Some(_) => None,
        },
        &|m| {
            if m.alpn.is_empty() {
                return Some(0);
            }
            m.alpn.iter().any(|a| c.alpn.iter().any(|b| a == b)).then_some(1)
        },
        &|m| {
            if m.source_ips.is_empty() {
                return Some(0);
            }
            m.source_ips.iter().filter(|n| n.contains(c.source.ip())).map(|n| n.prefix_len as u32 + 1).max()
        },
    ];
    for step in steps {
        let scored: Vec<(usize, u32)> = cand.iter().filter_map(|&i| step(m(i)).map(|s| (i, s))).collect();
        let best = scored.iter().map(|(_, s)| *s).max()?;
        cand = scored.into_iter().filter(|(_, s)| *s == best).map(|(i, _)| i).collect();
    }
    cand.first().copied()
}

/// Exact names beat wildcards; longer wildcard suffixes beat shorter ones.
fn server_name_score(pattern: &str, sni: &str) -> Option<u32> {
    if pattern.eq_ignore_ascii_case(sni) {
        return Some(u32::MAX);
    }
    let suffix = pattern.strip_prefix('*')?; // ".example.com"
    let sni_l = sni.to_ascii_lowercase();
    (sni_l.len() > suffix.len() && sni_l.ends_with(suffix)).then_some(suffix.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use weft_config::{ChainAction, Cidr, ClusterSpecifier, TcpProxy};

    fn chain(name: &str, m: ChainMatch) -> FilterChain {
        FilterChain {
            name: name.into(),
            matcher: m,
            action: ChainAction::Tcp(TcpProxy {
                stat_prefix: name.into(),
                cluster: ClusterSpecifier::Single("c".into()),
                idle_timeout: None,
            }),
        }
    }
    fn cidr(s: &str) -> Cidr {
        let (a, l) = s.split_once('/').unwrap();
        Cidr { addr: a.parse().unwrap(), prefix_len: l.parse().unwrap() }
    }

    #[test]
    fn most_specific_chain_wins() {
        let chains = vec![
            chain("any", ChainMatch::default()),
            chain("port-9080", ChainMatch { destination_port: Some(9080), ..Default::default() }),
            chain(
                "vip-9080",
                ChainMatch {
                    destination_port: Some(9080),
                    destination_ips: vec![cidr("10.96.0.10/32")],
                    ..Default::default()
                },
            ),
            chain(
                "net-9080",
                ChainMatch {
                    destination_port: Some(9080),
                    destination_ips: vec![cidr("10.96.0.0/16")],
                    ..Default::default()
                },
            ),
            chain(
                "tls-exact",
                ChainMatch {
                    destination_port: Some(443),
                    server_names: vec!["api.example.com".into()],
                    transport: Some(Transport::Tls),
                    ..Default::default()
                },
            ),
            chain(
                "tls-wild",
                ChainMatch {
                    destination_port: Some(443),
                    server_names: vec!["*.example.com".into()],
                    transport: Some(Transport::Tls),
                    ..Default::default()
                },
            ),
            chain(
                "tls-any",
                ChainMatch { destination_port: Some(443), transport: Some(Transport::Tls), ..Default::default() },
            ),
            chain(
                "h2-only",
                ChainMatch { destination_port: Some(8443), alpn: vec!["h2".into()], ..Default::default() },
            ),
        ];
        let _ = Arc::new(());
        let h2 = vec!["h2".to_string()];
        let none: Vec<String> = vec![];
        // (destination, sni, transport, alpn, expected chain name)
        type Case<'a> = (&'a str, Option<&'a str>, Transport, &'a Vec<String>, Option<&'a str>);
        let table: Vec<Case> = vec![
            ("10.96.0.10:9080", None, Transport::RawBuffer, &none, Some("vip-9080")),
            ("10.96.1.1:9080", None, Transport::RawBuffer, &none, Some("net-9080")),
            ("10.97.0.1:9080", None, Transport::RawBuffer, &none, Some("port-9080")),
            ("10.97.0.1:80", None, Transport::RawBuffer, &none, Some("any")),
            ("1.2.3.4:443", Some("api.example.com"), Transport::Tls, &none, Some("tls-exact")),
            ("1.2.3.4:443", Some("API.example.com"), Transport::Tls, &none, Some("tls-exact")),
            ("1.2.3.4:443", Some("www.example.com"), Transport::Tls, &none, Some("tls-wild")),
            ("1.2.3.4:443", Some("example.com"), Transport::Tls, &none, Some("tls-any")),
            ("1.2.3.4:443", None, Transport::Tls, &none, Some("tls-any")),
            ("1.2.3.4:443", None, Transport::RawBuffer, &none, None),
            ("1.2.3.4:8443", None, Transport::Tls, &h2, Some("h2-only")),
            ("1.2.3.4:8443", None, Transport::Tls, &none, None),
        ];
        for (dst, sni, transport, alpn, want) in table {
            let info = ConnInfo {
                destination: dst.parse().unwrap(),
                source: "127.0.0.1:5000".parse().unwrap(),
                server_name: sni,
                transport,
                alpn,
            };
            let got = select_chain(&chains, &info).map(|i| chains[i].name.as_str());
            assert_eq!(got, want, "{dst} sni={sni:?} {transport:?} alpn={alpn:?}");
        }
    }

    #[test]
    fn no_chains_selects_nothing() {
        let info = ConnInfo {
            destination: "1.1.1.1:1".parse().unwrap(),
            source: "2.2.2.2:2".parse().unwrap(),
            server_name: None,
            transport: Transport::RawBuffer,
            alpn: &[],
        };
        assert_eq!(select_chain(&[], &info), None);
    }
}
