//! The VIP route: without a route for the VIP range, connect() to a VIP fails with ENETUNREACH on
//! a host without a default route before any netfilter rule sees the packet. Weft adds a `local`
//! route in the `local` table (`ip route add local 240.240.0.0/16 dev lo table local`): connect()
//! then succeeds and the nat rules redirect it; a process whose traffic is not captured gets a
//! quick "connection refused" instead of packets leaking to a default gateway. The route carries
//! its own protocol number so uninstall removes weft's routes and no other.

use crate::plan::Cidr;

/// The route protocol (`proto`) marking weft's routes.
pub const PROTO: &str = "87";

fn base(verb: &str, c: &Cidr) -> Vec<String> {
    let family = if c.is_ipv4() { "-4" } else { "-6" };
    let mut args: Vec<String> = [family, "route", verb, "local", &c.to_string(), "dev", "lo", "table", "local"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["proto".to_string(), PROTO.to_string()]);
    args
}

/// `ip` arguments adding the route for `c`. IPv4 routes take 127.0.0.1 as the source address, so
/// a captured connection looks like any other loopback client to the proxy.
pub fn add_args(c: &Cidr) -> Vec<String> {
    let mut args = base("add", c);
    if c.is_ipv4() {
        args.extend(["src".to_string(), "127.0.0.1".to_string()]);
    }
    args
}

/// `ip` arguments deleting weft's route for `c` (the kernel matches the protocol too).
pub fn del_args(c: &Cidr) -> Vec<String> {
    base("del", c)
}

/// `ip` arguments listing weft's routes of one family.
pub fn list_args(v6: bool) -> Vec<String> {
    let family = if v6 { "-6" } else { "-4" };
    [family, "route", "show", "table", "local", "proto", PROTO].iter().map(|s| s.to_string()).collect()
}

/// The prefixes in `ip route show` output (`local 240.240.0.0/16 dev lo scope host src ...`).
pub fn parse_list(text: &str) -> Vec<Cidr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let first = words.next()?;
            let prefix = if first == "local" { words.next()? } else { first };
            prefix.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_commands() {
        let v4: Cidr = "240.240.0.0/16".parse().unwrap();
        let v6: Cidr = "fd00:240::/64".parse().unwrap();
        let cases: [(Vec<String>, &str); 5] = [
            (add_args(&v4), "-4 route add local 240.240.0.0/16 dev lo table local proto 87 src 127.0.0.1"),
            (add_args(&v6), "-6 route add local fd00:240::/64 dev lo table local proto 87"),
            (del_args(&v4), "-4 route del local 240.240.0.0/16 dev lo table local proto 87"),
            (list_args(false), "-4 route show table local proto 87"),
            (list_args(true), "-6 route show table local proto 87"),
        ];
        for (args, want) in cases {
            assert_eq!(args.join(" "), want);
        }
    }

    #[test]
    fn listing_is_parsed() {
        let text = "local 240.240.0.0/16 dev lo scope host src 127.0.0.1 \nlocal 10.9.0.0/24 dev lo scope host\n\
                    fd00:240::/64 dev lo metric 1024 pref medium\nnonsense\n";
        let got: Vec<String> = parse_list(text).iter().map(|c| c.to_string()).collect();
        assert_eq!(got, ["240.240.0.0/16", "10.9.0.0/24", "fd00:240::/64"]);
    }
}
