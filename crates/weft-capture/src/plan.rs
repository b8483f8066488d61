//! The capture plan: what is redirected to the sidecar and what passes, validated before any rule
//! is rendered.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::Error;

/// Istio's outbound capture port (`virtualOutbound`).
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// Istio's inbound capture port (`virtualInbound`).
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// The uid the sidecar runs as; its own traffic is never captured.
pub const DEFAULT_PROXY_UID: u32 = 1337;
/// Where `weft dns` listens (on 127.0.0.1).
pub const DEFAULT_DNS_PORT: u16 = 15053;
/// The mesh's VIP range (the control plane allocates service VIPs in it).
pub const DEFAULT_VIP_CIDR: Cidr = Cidr { addr: IpAddr::V4(Ipv4Addr::new(240, 240, 0, 0)), len: 16 };

/// At most this many entries in any list of a plan (each becomes a rule or a set element).
pub const MAX_LIST: usize = 256;

/// An IPv4 or IPv6 prefix; host bits are cleared when parsed (`10.1.2.3/8` is `10.0.0.0/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// `addr/len` with the host bits cleared; `None` when `len` is too long for the family.
    pub fn new(addr: IpAddr, len: u8) -> Option<Cidr> {
        match addr {
            IpAddr::V4(a) if len <= 32 => {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                Some(Cidr { addr: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)), len })
            }
            IpAddr::V6(a) if len <= 128 => {
                let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
                Some(Cidr { addr: IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)), len })
            }
            _ => None,
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` lies inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Cidr::new(ip, self.len).is_some_and(|c| c.addr == self.addr)
    }

    /// Whether the two prefixes share any address.
    #[cfg(test)]
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `IP` (a /32 or /128) or `IP/LEN`.
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        };
        Cidr::new(addr, len).ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))
    }
}

/// Which inbound destination ports are redirected to the inbound capture port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboundPorts {
    /// Only these (none by default).
    List(Vec<u16>),
    /// Every port except `exclude_inbound_ports` and the capture ports themselves (Istio's `*`).
    All,
}

impl Default for InboundPorts {
    fn default() -> InboundPorts {
        InboundPorts::List(Vec::new())
    }
}

/// How rules are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ModeChoice {
    /// nftables when `nft` works here, else iptables.
    #[default]
    Auto,
    Iptables,
    Nftables,
}

impl FromStr for ModeChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<ModeChoice, String> {
        match s {
            "auto" => Ok(ModeChoice::Auto),
            "iptables" => Ok(ModeChoice::Iptables),
            "nftables" | "nft" => Ok(ModeChoice::Nftables),
            _ => Err(format!("{s:?}: expected auto, iptables or nftables")),
        }
    }
}

/// DNS capture: UDP and TCP port 53 redirected to `127.0.0.1:port` (`weft dns`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsCapture {
    /// The local port `weft dns` listens on.
    pub port: u16,
    /// Uids whose DNS queries go out unchanged (`weft dns` itself, when it does not run as the
    /// proxy uid, which is always exempt).
    pub exempt_uids: Vec<u32>,
}

impl Default for DnsCapture {
    fn default() -> DnsCapture {
        DnsCapture { port: DEFAULT_DNS_PORT, exempt_uids: Vec::new() }
    }
}

/// What to capture. Build it from [`Plan::default`] and change fields; [`crate::install`]
/// validates it ([`Plan::validate`]) before touching anything.
///
/// Outbound TCP from every process except the proxy's uid (and gid, when set) and the excluded
/// uids/gids goes to `outbound_port` when its destination is in `vip_cidrs` or `outbound_cidrs`,
/// or its destination port is in `outbound_ports` — unless the destination is loopback, in
/// `exclude_cidrs`, or its port in `exclude_outbound_ports`. Inbound TCP arriving on any interface
/// but `lo` for `inbound_ports` goes to `inbound_port`. Everything else passes untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// iptables, nftables, or detect.
    pub mode: ModeChoice,
    /// Where captured outbound connections are redirected (the proxy's `virtualOutbound`).
    pub outbound_port: u16,
    /// Where captured inbound connections are redirected (the proxy's `virtualInbound`).
    pub inbound_port: u16,
    /// The proxy's uid: its traffic is never captured.
    pub proxy_uid: u32,
    /// The proxy's gid, also exempt when set.
    pub proxy_gid: Option<u32>,
    /// The mesh VIP ranges: captured (every port) and, with `vip_route`, routed locally.
    pub vip_cidrs: Vec<Cidr>,
    /// Add a local route for each VIP range, so connect() to a VIP works without a default route.
    pub vip_route: bool,
    /// More destinations captured on every port (no route is added for them).
    pub outbound_cidrs: Vec<Cidr>,
    /// Destination ports captured whatever the destination address (Istio's
    /// `includeOutboundPorts`).
    pub outbound_ports: Vec<u16>,
    /// Inbound ports captured.
    pub inbound_ports: InboundPorts,
    /// Processes (by uid) whose traffic passes untouched (non-mesh services).
    pub exclude_uids: Vec<u32>,
    /// Processes (by gid) whose traffic passes untouched.
    pub exclude_gids: Vec<u32>,
    /// Destinations never captured (the control plane, SSH jump hosts, ...).
    pub exclude_cidrs: Vec<Cidr>,
    /// Destination ports never captured outbound.
    pub exclude_outbound_ports: Vec<u16>,
    /// Ports never captured inbound (with [`InboundPorts::All`]: SSH, node exporters, ...).
    pub exclude_inbound_ports: Vec<u16>,
    /// Redirect DNS to `weft dns`.
    pub dns: Option<DnsCapture>,
    /// Also write IPv6 rules (ip6tables, or an `inet` nftables table). IPv6 CIDRs need it.
    pub ipv6: bool,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            mode: ModeChoice::Auto,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            inbound_port: DEFAULT_INBOUND_PORT,
            proxy_uid: DEFAULT_PROXY_UID,
            proxy_gid: None,
            vip_cidrs: vec![DEFAULT_VIP_CIDR],
            vip_route: true,
            outbound_cidrs: Vec::new(),
            outbound_ports: Vec::new(),
            inbound_ports: InboundPorts::default(),
            exclude_uids: Vec::new(),
            exclude_gids: Vec::new(),
            exclude_cidrs: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_inbound_ports: Vec::new(),
            dns: None,
            ipv6: false,
        }
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::InvalidPlan { field: field.to_string(), reason: reason.into() }
}

fn check_len<T>(field: &str, list: &[T]) -> Result<(), Error> {
    if list.len() > MAX_LIST {
        return Err(invalid(field, format!("{} entries; at most {MAX_LIST}", list.len())));
    }
    Ok(())
}

fn check_ports(field: &str, ports: &[u16]) -> Result<(), Error> {
    check_len(field, ports)?;
    if ports.contains(&0) {
        return Err(invalid(field, "port 0 is not a port"));
    }
    Ok(())
}

/// Whether the prefix lies inside loopback (a wider one that contains it is fine: loopback is
/// exempted before any capture rule).
fn is_loopback(c: &Cidr) -> bool {
    match c.addr {
        IpAddr::V4(a) => c.len >= 8 && a.octets()[0] == 127,
        IpAddr::V6(a) => a == Ipv6Addr::LOCALHOST,
    }
}

impl Plan {
    /// Checks what rules cannot express or what would break the host; errors name the field.
    pub fn validate(&self) -> Result<(), Error> {
        for (field, port) in [("outbound_port", self.outbound_port), ("inbound_port", self.inbound_port)] {
            if port == 0 {
                return Err(invalid(field, "port 0 is not a port"));
            }
        }
        if self.outbound_port == self.inbound_port {
            return Err(invalid("inbound_port", "must differ from outbound_port"));
        }
        if let Some(dns) = &self.dns {
            if dns.port == 0 {
                return Err(invalid("dns.port", "port 0 is not a port"));
            }
            if dns.port == self.outbound_port || dns.port == self.inbound_port {
                return Err(invalid("dns.port", "must differ from the outbound and inbound capture ports"));
            }
            check_len("dns.exempt_uids", &dns.exempt_uids)?;
        }
        check_ports("outbound_ports", &self.outbound_ports)?;
        check_ports("exclude_outbound_ports", &self.exclude_outbound_ports)?;
        check_ports("exclude_inbound_ports", &self.exclude_inbound_ports)?;
        if let InboundPorts::List(ports) = &self.inbound_ports {
            check_ports("inbound_ports", ports)?;
            for p in [self.outbound_port, self.inbound_port] {
                if ports.contains(&p) {
                    return Err(invalid("inbound_ports", format!("{p} is a capture port; capturing it would loop")));
                }
            }
        }
        check_len("exclude_uids", &self.exclude_uids)?;
        check_len("exclude_gids", &self.exclude_gids)?;
        let lists: [(&str, &[Cidr]); 3] = [
            ("vip_cidrs", &self.vip_cidrs),
            ("outbound_cidrs", &self.outbound_cidrs),
            ("exclude_cidrs", &self.exclude_cidrs),
        ];
        for (field, list) in lists {
            check_len(field, list)?;
            for c in list {
                if !c.is_ipv4() && !self.ipv6 {
                    return Err(invalid(field, format!("{c} is IPv6; IPv6 rules need ipv6 (--ipv6)")));
                }
                if field != "exclude_cidrs" && is_loopback(c) {
                    return Err(invalid(field, format!("{c} covers loopback, which is never captured")));
                }
            }
        }
        for c in &self.vip_cidrs {
            // A VIP range becomes a local route: a wide one would swallow real destinations.
            let min = if c.is_ipv4() { 8 } else { 32 };
            if c.len < min {
                return Err(invalid("vip_cidrs", format!("{c} is wider than /{min}; a VIP range must be narrower")));
            }
        }
        Ok(())
    }

    /// The plan's lists sorted and without duplicates: what the renderers read.
    pub(crate) fn normal(&self) -> Normal {
        let set_cidrs = |l: &[Cidr]| l.iter().copied().collect::<BTreeSet<Cidr>>().into_iter().collect::<Vec<_>>();
        let set_ports = |l: &[u16]| l.iter().copied().collect::<BTreeSet<u16>>().into_iter().collect::<Vec<_>>();
        let set_ids = |l: &[u32]| l.iter().copied().collect::<BTreeSet<u32>>().into_iter().collect::<Vec<_>>();
        let mut capture = set_cidrs(&self.vip_cidrs);
        for c in set_cidrs(&self.outbound_cidrs) {
            if !capture.contains(&c) {
                capture.push(c);
            }
        }
        let exclude_uids: Vec<u32> = set_ids(&self.exclude_uids).into_iter().filter(|u| *u != self.proxy_uid).collect();
        let exclude_gids: Vec<u32> =
            set_ids(&self.exclude_gids).into_iter().filter(|g| Some(*g) != self.proxy_gid).collect();
        let inbound = match &self.inbound_ports {
            InboundPorts::List(l) => Inbound::List(set_ports(l)),
            InboundPorts::All => Inbound::All,
        };
        let mut exclude_inbound = set_ports(&self.exclude_inbound_ports);
        if inbound == Inbound::All {
            // Connections straight to the sidecar's own ports are never redirected to it.
            for p in [self.outbound_port, self.inbound_port] {
                if !exclude_inbound.contains(&p) {
                    exclude_inbound.push(p);
                }
            }
            exclude_inbound.sort_unstable();
        }
        let dns = self.dns.as_ref().map(|d| NormalDns {
            port: d.port,
            exempt_uids: set_ids(&d.exempt_uids).into_iter().filter(|u| *u != self.proxy_uid).collect(),
        });
        Normal {
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            exclude_uids,
            exclude_gids,
            exclude_cidrs: set_cidrs(&self.exclude_cidrs),
            exclude_outbound_ports: set_ports(&self.exclude_outbound_ports),
            capture_cidrs: capture,
            outbound_ports: set_ports(&self.outbound_ports),
            inbound,
            exclude_inbound_ports: exclude_inbound,
            dns,
        }
    }
}

/// A plan after sorting and deduplication.
#[derive(Debug)]
pub(crate) struct Normal {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub proxy_uid: u32,
    pub proxy_gid: Option<u32>,
    pub exclude_uids: Vec<u32>,
    pub exclude_gids: Vec<u32>,
    pub exclude_cidrs: Vec<Cidr>,
    pub exclude_outbound_ports: Vec<u16>,
    /// VIP ranges first, then the other captured CIDRs.
    pub capture_cidrs: Vec<Cidr>,
    pub outbound_ports: Vec<u16>,
    pub inbound: Inbound,
    pub exclude_inbound_ports: Vec<u16>,
    pub dns: Option<NormalDns>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbound {
    List(Vec<u16>),
    All,
}

impl Inbound {
    pub fn is_empty(&self) -> bool {
        matches!(self, Inbound::List(l) if l.is_empty())
    }
}

#[derive(Debug)]
pub(crate) struct NormalDns {
    pub port: u16,
    pub exempt_uids: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_clear_host_bits() {
        let cases: [(&str, Result<&str, &str>); 9] = [
            ("240.240.0.0/16", Ok("240.240.0.0/16")),
            ("240.240.7.9/16", Ok("240.240.0.0/16")),
            ("10.0.0.1", Ok("10.0.0.1/32")),
            ("0.0.0.0/0", Ok("0.0.0.0/0")),
            ("fd00::1/64", Ok("fd00::/64")),
            ("::1", Ok("::1/128")),
            ("10.0.0.0/33", Err("prefix length must be 0..=32")),
            ("10.0.0/8", Err("not an IP address")),
            ("fd00::/abc", Err("prefix length must be 0..=128")),
        ];
        for (input, want) in cases {
            match (input.parse::<Cidr>(), want) {
                (Ok(got), Ok(w)) => assert_eq!(got.to_string(), w, "{input}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{input}: {e}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn cidr_containment() {
        assert!(c("10.0.0.0/8").contains("10.200.1.1".parse().unwrap()));
        assert!(!c("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(!c("10.0.0.0/8").contains("::1".parse().unwrap()));
        assert!(c("0.0.0.0/0").overlaps(&c("127.0.0.1")));
        assert!(!c("240.240.0.0/16").overlaps(&c("127.0.0.0/8")));
    }

    #[test]
    fn validation_names_the_field() {
        type Edit = fn(&mut Plan);
        type Case = (&'static str, Edit, Option<(&'static str, &'static str)>);
        let cases: [Case; 14] = [
            ("default", |_| {}, None),
            ("zero outbound port", |p| p.outbound_port = 0, Some(("outbound_port", "port 0"))),
            ("same ports", |p| p.inbound_port = p.outbound_port, Some(("inbound_port", "must differ"))),
            (
                "inbound 15006 loops",
                |p| p.inbound_ports = InboundPorts::List(vec![80, 15006]),
                Some(("inbound_ports", "loop")),
            ),
            ("zero in a port list", |p| p.outbound_ports = vec![80, 0], Some(("outbound_ports", "port 0"))),
            ("v6 without ipv6", |p| p.outbound_cidrs = vec![c("fd00::/64")], Some(("outbound_cidrs", "--ipv6"))),
            (
                "v6 with ipv6",
                |p| {
                    p.ipv6 = true;
                    p.outbound_cidrs = vec![c("fd00::/64")];
                },
                None,
            ),
            ("loopback capture", |p| p.outbound_cidrs = vec![c("127.0.0.0/16")], Some(("outbound_cidrs", "loopback"))),
            ("everything as VIPs", |p| p.vip_cidrs = vec![c("0.0.0.0/0")], Some(("vip_cidrs", "wider than /8"))),
            ("wide VIP range", |p| p.vip_cidrs = vec![c("128.0.0.0/4")], Some(("vip_cidrs", "wider than /8"))),
            ("capture all outbound", |p| p.outbound_cidrs = vec![c("0.0.0.0/1"), c("128.0.0.0/1")], None),
            ("exclude loopback is fine", |p| p.exclude_cidrs = vec![c("127.0.0.1")], None),
            (
                "dns on a capture port",
                |p| p.dns = Some(DnsCapture { port: 15001, exempt_uids: vec![] }),
                Some(("dns.port", "must differ")),
            ),
            ("too many uids", |p| p.exclude_uids = (0..300).collect(), Some(("exclude_uids", "at most 256"))),
        ];
        for (name, edit, want) in cases {
            let mut plan = Plan::default();
            edit(&mut plan);
            match (plan.validate(), want) {
                (Ok(()), None) => {}
                (Err(Error::InvalidPlan { field, reason }), Some((f, r))) => {
                    assert_eq!(field, f, "{name}");
                    assert!(reason.contains(r), "{name}: {reason}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn normal_form_sorts_dedups_and_drops_the_proxy_ids() {
        let plan = Plan {
            proxy_gid: Some(1337),
            outbound_cidrs: vec![c("10.0.0.0/8"), c("240.240.0.0/16"), c("10.0.0.0/8")],
            outbound_ports: vec![9090, 80, 9090],
            exclude_uids: vec![1337, 7, 3, 7],
            exclude_gids: vec![1337, 5],
            inbound_ports: InboundPorts::All,
            exclude_inbound_ports: vec![22, 15006],
            dns: Some(DnsCapture { port: 15053, exempt_uids: vec![1337, 101] }),
            ..Plan::default()
        };
        let n = plan.normal();
        assert_eq!(n.capture_cidrs, vec![c("240.240.0.0/16"), c("10.0.0.0/8")]);
        assert_eq!(n.outbound_ports, vec![80, 9090]);
        assert_eq!(n.exclude_uids, vec![3, 7]);
        assert_eq!(n.exclude_gids, vec![5]);
        assert_eq!(n.exclude_inbound_ports, vec![22, 15001, 15006]);
        assert_eq!(n.dns.unwrap().exempt_uids, vec![101]);
    }
}
