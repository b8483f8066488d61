//! nftables mode: the plan as one `nft -f` script (one transaction) building weft's own table,
//! `ip weft` (IPv4) or `inet weft` (IPv4 and IPv6), with two base chains:
//!
//! ```text
//! output      nat hook output,     priority -100: exemptions, DNS, captured destinations → :outbound
//! prerouting  nat hook prerouting, priority -100: captured inbound ports → :inbound
//! ```
//!
//! Nothing outside the table is touched; uninstall deletes the table.

use crate::plan::{Cidr, Inbound, Normal};

/// The table's name (in family `ip` or `inet`).
pub const TABLE: &str = "weft";
/// The families a weft table can live in.
pub const FAMILIES: [&str; 2] = ["ip", "inet"];

/// Creating then deleting a table is how an nft script removes it whether or not it exists
/// (`destroy` needs nft 1.0.8); inside one transaction nothing is ever half-applied.
fn remove_both() -> String {
    FAMILIES.iter().map(|f| format!("table {f} {TABLE}\ndelete table {f} {TABLE}\n")).collect()
}

fn set<T: ToString>(items: &[T]) -> String {
    match items {
        [one] => one.to_string(),
        many => format!("{{ {} }}", many.iter().map(T::to_string).collect::<Vec<_>>().join(", ")),
    }
}

fn daddr(c: &Cidr) -> String {
    let family = if c.is_ipv4() { "ip" } else { "ip6" };
    format!("{family} daddr {c}")
}

/// The rules of the two chains.
pub fn chain_rules(n: &Normal, ipv6: bool) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    out.push(format!("meta skuid {} return", n.proxy_uid));
    if let Some(gid) = n.proxy_gid {
        out.push(format!("meta skgid {gid} return"));
    }
    if !n.exclude_uids.is_empty() {
        out.push(format!("meta skuid {} return", set(&n.exclude_uids)));
    }
    if !n.exclude_gids.is_empty() {
        out.push(format!("meta skgid {} return", set(&n.exclude_gids)));
    }
    if let Some(dns) = &n.dns {
        // weft dns listens on 127.0.0.1 only, so DNS is captured over IPv4 only.
        let v4 = if ipv6 { "meta nfproto ipv4 " } else { "" };
        if !dns.exempt_uids.is_empty() {
            for proto in ["udp", "tcp"] {
                out.push(format!("{v4}{proto} dport 53 meta skuid {} return", set(&dns.exempt_uids)));
            }
        }
        for proto in ["udp", "tcp"] {
            out.push(format!("{v4}{proto} dport 53 redirect to :{}", dns.port));
        }
    }
    out.push("meta l4proto != tcp return".into());
    out.push("ip daddr 127.0.0.0/8 return".into());
    if ipv6 {
        out.push("ip6 daddr ::1 return".into());
    }
    let in_table = |c: &&Cidr| ipv6 || c.is_ipv4();
    for c in n.exclude_cidrs.iter().filter(in_table) {
        out.push(format!("{} return", daddr(c)));
    }
    if !n.exclude_outbound_ports.is_empty() {
        out.push(format!("tcp dport {} return", set(&n.exclude_outbound_ports)));
    }
    // One rule per prefix: anonymous interval sets reject overlapping elements.
    for c in n.capture_cidrs.iter().filter(in_table) {
        out.push(format!("{} meta l4proto tcp redirect to :{}", daddr(c), n.outbound_port));
    }
    if !n.outbound_ports.is_empty() {
        out.push(format!("tcp dport {} redirect to :{}", set(&n.outbound_ports), n.outbound_port));
    }

    let mut pre = vec!["iifname \"lo\" return".to_string()];
    if !n.inbound.is_empty() {
        pre.push("meta l4proto != tcp return".into());
        if !n.exclude_inbound_ports.is_empty() {
            pre.push(format!("tcp dport {} return", set(&n.exclude_inbound_ports)));
        }
    }
    match &n.inbound {
        Inbound::List(ports) if ports.is_empty() => {}
        Inbound::List(ports) => pre.push(format!("tcp dport {} redirect to :{}", set(ports), n.inbound_port)),
        Inbound::All => pre.push(format!("meta l4proto tcp redirect to :{}", n.inbound_port)),
    }
    (out, pre)
}

/// The family weft's table uses for this plan.
pub fn family(ipv6: bool) -> &'static str {
    if ipv6 {
        "inet"
    } else {
        "ip"
    }
}

/// The `nft -f` script: removes any weft table (either family) and creates the plan's, in one
/// transaction, so a second install replaces the first.
pub fn install_script(n: &Normal, ipv6: bool) -> String {
    let (output, prerouting) = chain_rules(n, ipv6);
    let mut s = remove_both();
    s.push_str(&format!("table {} {TABLE} {{\n", family(ipv6)));
    let chains = [("output", "output", output), ("prerouting", "prerouting", prerouting)];
    for (i, (name, hook, rules)) in chains.into_iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(&format!("\tchain {name} {{\n\t\ttype nat hook {hook} priority -100; policy accept;\n"));
        for r in rules {
            s.push_str(&format!("\t\t{r}\n"));
        }
        s.push_str("\t}\n");
    }
    s.push_str("}\n");
    s
}

/// The `nft -f` script removing weft's table in either family (and nothing else).
pub fn uninstall_script() -> String {
    remove_both()
}

/// Weft's tables in `nft list tables` output, as `(family, name)`.
pub fn weft_tables(list: &str) -> Vec<String> {
    list.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("table"), Some(family), Some(TABLE)) if FAMILIES.contains(&family) => Some(family.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// Chains and their rules in `nft list table ...` output (base chain declarations left out).
pub fn table_chains(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("chain ").and_then(|r| r.strip_suffix('{')) {
            current = Some((name.trim().to_string(), Vec::new()));
        } else if line == "}" {
            if let Some(c) = current.take() {
                out.push(c);
            }
        } else if let Some((_, rules)) = current.as_mut() {
            if !line.is_empty() && !line.starts_with("type ") && !line.starts_with('#') && !line.starts_with("policy ")
            {
                rules.push(line.to_string());
            }
        }
    }
    out
}

/// The base chains of a table listing, as `(name, hook)`.
pub fn base_chains(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("chain ").and_then(|r| r.strip_suffix('{')) {
            current = Some(name.trim().to_string());
        } else if let (Some(name), Some(rest)) = (current.as_ref(), line.strip_prefix("type ")) {
            let mut w = rest.split_whitespace();
            if let (Some(_), Some("hook"), Some(hook)) = (w.next(), w.next(), w.next()) {
                out.push((name.clone(), hook.to_string()));
            }
        } else if line == "}" {
            current = None;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{DnsCapture, InboundPorts, Plan};

    fn script(plan: &Plan) -> String {
        plan.validate().unwrap();
        install_script(&plan.normal(), plan.ipv6)
    }

    const HEADER: &str = "table ip weft\ndelete table ip weft\ntable inet weft\ndelete table inet weft\n";

    #[test]
    fn scripts_render_each_part_of_the_plan() {
        let cases: [(&str, Plan, &str); 4] = [
            (
                "default",
                Plan::default(),
                "table ip weft {
	chain output {
		type nat hook output priority -100; policy accept;
		meta skuid 1337 return
		meta l4proto != tcp return
		ip daddr 127.0.0.0/8 return
		ip daddr 240.240.0.0/16 meta l4proto tcp redirect to :15001
	}

	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		iifname \"lo\" return
	}
}
",
            ),
            (
                "everything",
                Plan {
                    proxy_gid: Some(1337),
                    exclude_uids: vec![1000, 33],
                    exclude_gids: vec![50],
                    exclude_cidrs: vec!["10.0.0.5".parse().unwrap()],
                    exclude_outbound_ports: vec![22, 15014],
                    outbound_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
                    outbound_ports: vec![8080],
                    inbound_ports: InboundPorts::List(vec![9080, 9090]),
                    exclude_inbound_ports: vec![22],
                    dns: Some(DnsCapture { port: 15053, exempt_uids: vec![101] }),
                    ..Plan::default()
                },
                "table ip weft {
	chain output {
		type nat hook output priority -100; policy accept;
		meta skuid 1337 return
		meta skgid 1337 return
		meta skuid { 33, 1000 } return
		meta skgid 50 return
		udp dport 53 meta skuid 101 return
		tcp dport 53 meta skuid 101 return
		udp dport 53 redirect to :15053
		tcp dport 53 redirect to :15053
		meta l4proto != tcp return
		ip daddr 127.0.0.0/8 return
		ip daddr 10.0.0.5/32 return
		tcp dport { 22, 15014 } return
		ip daddr 240.240.0.0/16 meta l4proto tcp redirect to :15001
		ip daddr 10.0.0.0/8 meta l4proto tcp redirect to :15001
		tcp dport 8080 redirect to :15001
	}

	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		iifname \"lo\" return
		meta l4proto != tcp return
		tcp dport 22 return
		tcp dport { 9080, 9090 } redirect to :15006
	}
}
",
            ),
            (
                "IPv6: an inet table, DNS over IPv4 only",
                Plan {
                    ipv6: true,
                    vip_cidrs: vec!["240.240.0.0/16".parse().unwrap(), "fd00:240::/64".parse().unwrap()],
                    dns: Some(DnsCapture::default()),
                    inbound_ports: InboundPorts::All,
                    ..Plan::default()
                },
                "table inet weft {
	chain output {
		type nat hook output priority -100; policy accept;
		meta skuid 1337 return
		meta nfproto ipv4 udp dport 53 redirect to :15053
		meta nfproto ipv4 tcp dport 53 redirect to :15053
		meta l4proto != tcp return
		ip daddr 127.0.0.0/8 return
		ip6 daddr ::1 return
		ip daddr 240.240.0.0/16 meta l4proto tcp redirect to :15001
		ip6 daddr fd00:240::/64 meta l4proto tcp redirect to :15001
	}

	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		iifname \"lo\" return
		meta l4proto != tcp return
		tcp dport { 15001, 15006 } return
		meta l4proto tcp redirect to :15006
	}
}
",
            ),
            (
                "no VIP range, ports only",
                Plan { vip_cidrs: vec![], outbound_ports: vec![80, 443], ..Plan::default() },
                "table ip weft {
	chain output {
		type nat hook output priority -100; policy accept;
		meta skuid 1337 return
		meta l4proto != tcp return
		ip daddr 127.0.0.0/8 return
		tcp dport { 80, 443 } redirect to :15001
	}

	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		iifname \"lo\" return
	}
}
",
            ),
        ];
        for (name, plan, want) in cases {
            assert_eq!(script(&plan), format!("{HEADER}{want}"), "{name}");
        }
    }

    #[test]
    fn uninstall_removes_both_families_only() {
        assert_eq!(uninstall_script(), HEADER);
    }

    #[test]
    fn listings_are_read() {
        let tables = "table ip filter\ntable ip weft\ntable inet weft\ntable ip6 weft\ntable inet weftish\n";
        assert_eq!(weft_tables(tables), ["ip", "inet"]);
        let listing = "table ip weft {
	chain output {
		type nat hook output priority -100; policy accept;
		meta skuid 1337 return
		ip daddr 240.240.0.0/16 meta l4proto tcp redirect to :15001
	}

	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname \"lo\" return
	}

	chain helper {
	}
}
";
        let chains = table_chains(listing);
        assert_eq!(chains.len(), 3);
        assert_eq!(chains[0].0, "output");
        assert_eq!(chains[0].1.len(), 2);
        assert_eq!(chains[1].1, ["iifname \"lo\" return"]);
        assert!(chains[2].1.is_empty());
        assert_eq!(
            base_chains(listing),
            [("output".to_string(), "output".to_string()), ("prerouting".to_string(), "prerouting".to_string())]
        );
    }
}
