//! iptables mode: the plan as `iptables-restore --noflush` input (one transaction per family), and
//! what `iptables-save` shows of weft's chains.
//!
//! Weft's rules live only in its own chains of the `nat` table, reached by one jump each from the
//! built-in `OUTPUT` and `PREROUTING` chains:
//!
//! ```text
//! OUTPUT     -j WEFT_OUTPUT          exemptions, DNS, then captured destinations → WEFT_REDIRECT
//! PREROUTING -p tcp -j WEFT_INBOUND  captured inbound ports → WEFT_IN_REDIRECT
//! WEFT_REDIRECT     REDIRECT --to-ports <outbound port>
//! WEFT_IN_REDIRECT  REDIRECT --to-ports <inbound port>
//! ```

use std::collections::BTreeMap;

use crate::plan::{Inbound, Normal};

pub const OUTPUT: &str = "WEFT_OUTPUT";
pub const REDIRECT: &str = "WEFT_REDIRECT";
pub const INBOUND: &str = "WEFT_INBOUND";
pub const IN_REDIRECT: &str = "WEFT_IN_REDIRECT";
/// Every chain weft creates, in the order they are declared.
pub const CHAINS: [&str; 4] = [OUTPUT, REDIRECT, INBOUND, IN_REDIRECT];
/// Chains named with this prefix belong to weft (also ones an older version left).
pub const CHAIN_PREFIX: &str = "WEFT_";
/// The jumps from the built-in chains, as `iptables-save` prints them.
pub const JUMPS: [&str; 2] = ["-A OUTPUT -j WEFT_OUTPUT", "-A PREROUTING -p tcp -j WEFT_INBOUND"];
/// The comment of the marker rule that records what the first install created.
const MARKER: &str = "weft-capture created";
/// `multiport` takes at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;

/// IPv4 (`iptables-*`) or IPv6 (`ip6tables-*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn restore_tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    pub fn save_tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    /// The nftables family iptables-nft keeps this family's tables in.
    pub fn nft_family(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// What weft's first install had to create in a `nat` table that iptables-nft manages, so that
/// uninstall can remove it again and leave the ruleset exactly as it was. Recorded in the rules
/// themselves (a comment-only rule in `WEFT_OUTPUT`), so no state file is needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// The whole `nat` table did not exist.
    Table,
    /// These built-in chains of `nat` did not exist (iptables-nft creates them on first use).
    Chains(Vec<String>),
}

impl Created {
    fn comment(&self) -> String {
        match self {
            Created::Table => format!("{MARKER} table"),
            Created::Chains(c) => format!("{MARKER} chains {}", c.join(",")),
        }
    }

    fn parse(rule: &str) -> Option<Created> {
        let at = rule.find(MARKER)?;
        let rest = rule[at + MARKER.len()..].trim_start();
        let rest = rest.split('"').next().unwrap_or(rest).trim();
        if rest == "table" {
            return Some(Created::Table);
        }
        let chains = rest.strip_prefix("chains")?.trim();
        Some(Created::Chains(chains.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect()))
    }
}

/// Weft's part of the `nat` table, read from `iptables-save` (all tables).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedNat {
    /// Whether `iptables-save` listed a `nat` table at all.
    pub table_exists: bool,
    /// Weft's chains (`WEFT_*`) and their rules, as saved (`-A WEFT_OUTPUT ...`).
    pub chains: BTreeMap<String, Vec<String>>,
    /// Rules of other chains that jump to a weft chain, as saved.
    pub jumps: Vec<String>,
    /// The marker of the first install, if any.
    pub created: Option<Created>,
}

impl SavedNat {
    /// Whether anything of weft's is there.
    pub fn installed(&self) -> bool {
        !self.chains.is_empty() || !self.jumps.is_empty()
    }
}

/// Reads the `nat` section of `iptables-save` output.
pub fn parse_save(text: &str) -> SavedNat {
    let mut saved = SavedNat::default();
    let mut in_nat = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
            saved.table_exists |= in_nat;
            continue;
        }
        if !in_nat || line == "COMMIT" {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name.starts_with(CHAIN_PREFIX) {
                saved.chains.entry(name.to_string()).or_default();
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            if chain.starts_with(CHAIN_PREFIX) {
                if chain == OUTPUT && saved.created.is_none() {
                    saved.created = Created::parse(rule);
                }
                saved.chains.entry(chain.to_string()).or_default().push(line.to_string());
            } else if jump_target(rule).is_some_and(|t| t.starts_with(CHAIN_PREFIX)) {
                saved.jumps.push(line.to_string());
            }
        }
    }
    saved
}

/// The target of `-j TARGET` (or `-g TARGET`) in a saved rule.
fn jump_target(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" || w == "--jump" || w == "--goto" {
            return words.next();
        }
    }
    None
}

fn ports_matches(ports: &[u16]) -> Vec<String> {
    ports
        .chunks(MULTIPORT_MAX)
        .map(|chunk| match chunk {
            [one] => format!("--dport {one}"),
            many => {
                let list: Vec<String> = many.iter().map(u16::to_string).collect();
                format!("-m multiport --dports {}", list.join(","))
            }
        })
        .collect()
}

/// Weft's rules for one family, as `-A` lines (chain declarations and jumps not included).
pub fn rules(n: &Normal, family: Family, created: Option<&Created>) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |chain: &str, spec: String| out.push(format!("-A {chain} {spec}"));
    if let Some(c) = created {
        add(OUTPUT, format!("-m comment --comment \"{}\"", c.comment()));
    }
    add(OUTPUT, format!("-m owner --uid-owner {} -j RETURN", n.proxy_uid));
    if let Some(gid) = n.proxy_gid {
        add(OUTPUT, format!("-m owner --gid-owner {gid} -j RETURN"));
    }
    for uid in &n.exclude_uids {
        add(OUTPUT, format!("-m owner --uid-owner {uid} -j RETURN"));
    }
    for gid in &n.exclude_gids {
        add(OUTPUT, format!("-m owner --gid-owner {gid} -j RETURN"));
    }
    // weft dns listens on 127.0.0.1 only, so DNS is captured over IPv4 only.
    if let (Some(dns), Family::V4) = (&n.dns, family) {
        for uid in &dns.exempt_uids {
            for proto in ["udp", "tcp"] {
                add(OUTPUT, format!("-p {proto} --dport 53 -m owner --uid-owner {uid} -j RETURN"));
            }
        }
        for proto in ["udp", "tcp"] {
            add(OUTPUT, format!("-p {proto} --dport 53 -j REDIRECT --to-ports {}", dns.port));
        }
    }
    add(OUTPUT, "! -p tcp -j RETURN".into());
    add(OUTPUT, format!("-d {} -j RETURN", family.loopback()));
    let in_family = |c: &&crate::Cidr| c.is_ipv4() == (family == Family::V4);
    for c in n.exclude_cidrs.iter().filter(in_family) {
        add(OUTPUT, format!("-d {c} -j RETURN"));
    }
    for m in ports_matches(&n.exclude_outbound_ports) {
        add(OUTPUT, format!("-p tcp {m} -j RETURN"));
    }
    for c in n.capture_cidrs.iter().filter(in_family) {
        add(OUTPUT, format!("-d {c} -j {REDIRECT}"));
    }
    for m in ports_matches(&n.outbound_ports) {
        add(OUTPUT, format!("-p tcp {m} -j {REDIRECT}"));
    }
    add(REDIRECT, format!("-p tcp -j REDIRECT --to-ports {}", n.outbound_port));

    add(INBOUND, "-i lo -j RETURN".into());
    if !n.inbound.is_empty() {
        for m in ports_matches(&n.exclude_inbound_ports) {
            add(INBOUND, format!("-p tcp {m} -j RETURN"));
        }
    }
    match &n.inbound {
        Inbound::List(ports) => {
            for m in ports_matches(ports) {
                add(INBOUND, format!("-p tcp {m} -j {IN_REDIRECT}"));
            }
        }
        Inbound::All => add(INBOUND, format!("-p tcp -j {IN_REDIRECT}")),
    }
    add(IN_REDIRECT, format!("-p tcp -j REDIRECT --to-ports {}", n.inbound_port));
    out
}

/// `iptables-restore --noflush` input that makes weft's chains exactly the plan's, whatever is
/// there now: declaring a chain flushes it, stale weft chains are removed, and the jumps are only
/// rewritten when they are not already exactly the two weft needs — so a second install replaces
/// and never duplicates. The marker of the first install is kept.
pub fn install_input(n: &Normal, family: Family, saved: &SavedNat, created: Option<&Created>) -> String {
    let created = saved.created.as_ref().or(created);
    let mut s = String::from("*nat\n");
    for chain in CHAINS {
        s.push_str(&format!(":{chain} - [0:0]\n"));
    }
    let mut jumps_ok = saved.jumps.len() == JUMPS.len();
    if jumps_ok {
        let mut have: Vec<&str> = saved.jumps.iter().map(String::as_str).collect();
        let mut want: Vec<&str> = JUMPS.to_vec();
        have.sort_unstable();
        want.sort_unstable();
        jumps_ok = have == want;
    }
    if !jumps_ok {
        for j in &saved.jumps {
            s.push_str(&format!("-D{}\n", &j[2..]));
        }
    }
    let stale: Vec<&String> = saved.chains.keys().filter(|c| !CHAINS.contains(&c.as_str())).collect();
    for c in &stale {
        s.push_str(&format!("-F {c}\n"));
    }
    for c in &stale {
        s.push_str(&format!("-X {c}\n"));
    }
    for r in rules(n, family, created) {
        s.push_str(&r);
        s.push('\n');
    }
    if !jumps_ok {
        for j in JUMPS {
            s.push_str(j);
            s.push('\n');
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// `iptables-restore --noflush` input removing weft's jumps and chains, or `None` when there are
/// none. Nothing else in the table is touched.
pub fn uninstall_input(saved: &SavedNat) -> Option<String> {
    restore_input(saved, &SavedNat::default())
}

/// `iptables-restore --noflush` input that turns weft's part of the table from `now` back into
/// `previous` (both as saved): how a failed install of the second family undoes the first.
/// `None` when neither has anything of weft's.
pub fn restore_input(now: &SavedNat, previous: &SavedNat) -> Option<String> {
    if !now.installed() && !previous.installed() {
        return None;
    }
    let mut s = String::from("*nat\n");
    for c in previous.chains.keys() {
        s.push_str(&format!(":{c} - [0:0]\n"));
    }
    for j in &now.jumps {
        s.push_str(&format!("-D{}\n", &j[2..]));
    }
    let gone: Vec<&String> = now.chains.keys().filter(|c| !previous.chains.contains_key(*c)).collect();
    for c in &gone {
        s.push_str(&format!("-F {c}\n"));
    }
    for c in &gone {
        s.push_str(&format!("-X {c}\n"));
    }
    for rule in previous.chains.values().flatten().chain(&previous.jumps) {
        s.push_str(rule);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{DnsCapture, InboundPorts, Plan};

    fn plan_rules(plan: &Plan, family: Family) -> String {
        plan.validate().unwrap();
        rules(&plan.normal(), family, None).join("\n")
    }

    #[test]
    fn rules_render_each_part_of_the_plan() {
        let cases: [(&str, Plan, Family, &str); 6] = [
            (
                "default: the VIP range only",
                Plan::default(),
                Family::V4,
                "-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WEFT_OUTPUT ! -p tcp -j RETURN
-A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN
-A WEFT_OUTPUT -d 240.240.0.0/16 -j WEFT_REDIRECT
-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A WEFT_INBOUND -i lo -j RETURN
-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            ),
            (
                "exclusions come before captures",
                Plan {
                    proxy_gid: Some(1338),
                    exclude_uids: vec![1000, 33],
                    exclude_gids: vec![50],
                    exclude_cidrs: vec!["10.0.0.5".parse().unwrap(), "fd00::/8".parse().unwrap()],
                    exclude_outbound_ports: vec![22],
                    outbound_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
                    outbound_ports: vec![9080, 8080],
                    ipv6: true,
                    ..Plan::default()
                },
                Family::V4,
                "-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WEFT_OUTPUT -m owner --gid-owner 1338 -j RETURN
-A WEFT_OUTPUT -m owner --uid-owner 33 -j RETURN
-A WEFT_OUTPUT -m owner --uid-owner 1000 -j RETURN
-A WEFT_OUTPUT -m owner --gid-owner 50 -j RETURN
-A WEFT_OUTPUT ! -p tcp -j RETURN
-A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN
-A WEFT_OUTPUT -d 10.0.0.5/32 -j RETURN
-A WEFT_OUTPUT -p tcp --dport 22 -j RETURN
-A WEFT_OUTPUT -d 240.240.0.0/16 -j WEFT_REDIRECT
-A WEFT_OUTPUT -d 10.0.0.0/8 -j WEFT_REDIRECT
-A WEFT_OUTPUT -p tcp -m multiport --dports 8080,9080 -j WEFT_REDIRECT
-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A WEFT_INBOUND -i lo -j RETURN
-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            ),
            (
                "IPv6 takes only IPv6 prefixes and no DNS",
                Plan {
                    vip_cidrs: vec!["fd00:240::/64".parse().unwrap()],
                    exclude_cidrs: vec!["10.0.0.5".parse().unwrap(), "fd00::1".parse().unwrap()],
                    dns: Some(DnsCapture::default()),
                    inbound_ports: InboundPorts::List(vec![9080]),
                    ipv6: true,
                    ..Plan::default()
                },
                Family::V6,
                "-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WEFT_OUTPUT ! -p tcp -j RETURN
-A WEFT_OUTPUT -d ::1/128 -j RETURN
-A WEFT_OUTPUT -d fd00::1/128 -j RETURN
-A WEFT_OUTPUT -d fd00:240::/64 -j WEFT_REDIRECT
-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A WEFT_INBOUND -i lo -j RETURN
-A WEFT_INBOUND -p tcp --dport 9080 -j WEFT_IN_REDIRECT
-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            ),
            (
                "DNS: exempt uids first, then UDP and TCP 53 to weft dns",
                Plan {
                    vip_cidrs: vec![],
                    dns: Some(DnsCapture { port: 15053, exempt_uids: vec![101] }),
                    ..Plan::default()
                },
                Family::V4,
                "-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WEFT_OUTPUT -p udp --dport 53 -m owner --uid-owner 101 -j RETURN
-A WEFT_OUTPUT -p tcp --dport 53 -m owner --uid-owner 101 -j RETURN
-A WEFT_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053
-A WEFT_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 15053
-A WEFT_OUTPUT ! -p tcp -j RETURN
-A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN
-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A WEFT_INBOUND -i lo -j RETURN
-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            ),
            (
                "inbound list, other capture ports",
                Plan {
                    outbound_port: 16001,
                    inbound_port: 16006,
                    inbound_ports: InboundPorts::List(vec![9090, 9080]),
                    exclude_inbound_ports: vec![22],
                    ..Plan::default()
                },
                Family::V4,
                "-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WEFT_OUTPUT ! -p tcp -j RETURN
-A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN
-A WEFT_OUTPUT -d 240.240.0.0/16 -j WEFT_REDIRECT
-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 16001
-A WEFT_INBOUND -i lo -j RETURN
-A WEFT_INBOUND -p tcp --dport 22 -j RETURN
-A WEFT_INBOUND -p tcp -m multiport --dports 9080,9090 -j WEFT_IN_REDIRECT
-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006",
            ),
            (
                "inbound all keeps the capture ports and the excluded ones out",
                Plan { inbound_ports: InboundPorts::All, exclude_inbound_ports: vec![22], ..Plan::default() },
                Family::V4,
                "-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WEFT_OUTPUT ! -p tcp -j RETURN
-A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN
-A WEFT_OUTPUT -d 240.240.0.0/16 -j WEFT_REDIRECT
-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A WEFT_INBOUND -i lo -j RETURN
-A WEFT_INBOUND -p tcp -m multiport --dports 22,15001,15006 -j RETURN
-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT
-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            ),
        ];
        for (name, plan, family, want) in cases {
            assert_eq!(plan_rules(&plan, family), want, "{name}");
        }
    }

    #[test]
    fn long_port_lists_are_split_for_multiport() {
        let plan = Plan { outbound_ports: (1..=17).collect(), ..Plan::default() };
        let r = plan_rules(&plan, Family::V4);
        assert!(r.contains("-m multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 -j WEFT_REDIRECT"), "{r}");
        assert!(r.contains("-m multiport --dports 16,17 -j WEFT_REDIRECT"), "{r}");
    }

    const SAVE_WITH_WEFT: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -p tcp --dport 22 -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:WEFT_INBOUND - [0:0]
:WEFT_IN_REDIRECT - [0:0]
:WEFT_OLD - [0:0]
:WEFT_OUTPUT - [0:0]
:WEFT_REDIRECT - [0:0]
-A PREROUTING -p tcp -j WEFT_INBOUND
-A OUTPUT -j DOCKER
-A OUTPUT -j WEFT_OUTPUT
-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE
-A WEFT_OUTPUT -m comment --comment \"weft-capture created chains OUTPUT,PREROUTING\"
-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
";

    #[test]
    fn save_output_is_read_for_weft_chains_jumps_and_marker() {
        let s = parse_save(SAVE_WITH_WEFT);
        assert!(s.table_exists);
        assert_eq!(
            s.chains.keys().map(String::as_str).collect::<Vec<_>>(),
            ["WEFT_INBOUND", "WEFT_IN_REDIRECT", "WEFT_OLD", "WEFT_OUTPUT", "WEFT_REDIRECT"]
        );
        assert_eq!(s.chains["WEFT_OUTPUT"].len(), 2);
        assert_eq!(s.jumps, ["-A PREROUTING -p tcp -j WEFT_INBOUND", "-A OUTPUT -j WEFT_OUTPUT"]);
        assert_eq!(s.created, Some(Created::Chains(vec!["OUTPUT".into(), "PREROUTING".into()])));
        assert!(s.installed());

        let empty = parse_save("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n");
        assert!(!empty.table_exists && !empty.installed());
        assert_eq!(uninstall_input(&empty), None);
    }

    #[test]
    fn reinstall_keeps_correct_jumps_and_marker_and_drops_stale_chains() {
        let saved = parse_save(SAVE_WITH_WEFT);
        let input = install_input(&Plan::default().normal(), Family::V4, &saved, Some(&Created::Table));
        let want = "*nat
:WEFT_OUTPUT - [0:0]
:WEFT_REDIRECT - [0:0]
:WEFT_INBOUND - [0:0]
:WEFT_IN_REDIRECT - [0:0]
-F WEFT_OLD
-X WEFT_OLD
-A WEFT_OUTPUT -m comment --comment \"weft-capture created chains OUTPUT,PREROUTING\"
-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WEFT_OUTPUT ! -p tcp -j RETURN
-A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN
-A WEFT_OUTPUT -d 240.240.0.0/16 -j WEFT_REDIRECT
-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A WEFT_INBOUND -i lo -j RETURN
-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
COMMIT
";
        assert_eq!(input, want);
    }

    #[test]
    fn first_install_adds_jumps_and_marker_and_duplicates_are_repaired() {
        let fresh = SavedNat::default();
        let input = install_input(&Plan::default().normal(), Family::V4, &fresh, Some(&Created::Table));
        assert!(input.contains("-A WEFT_OUTPUT -m comment --comment \"weft-capture created table\"\n"), "{input}");
        assert!(input.ends_with("-A OUTPUT -j WEFT_OUTPUT\n-A PREROUTING -p tcp -j WEFT_INBOUND\nCOMMIT\n"), "{input}");

        let doubled = SavedNat {
            table_exists: true,
            chains: BTreeMap::new(),
            jumps: vec!["-A OUTPUT -j WEFT_OUTPUT".into(), "-A OUTPUT -j WEFT_OUTPUT".into()],
            created: None,
        };
        let input = install_input(&Plan::default().normal(), Family::V4, &doubled, None);
        assert_eq!(input.matches("-D OUTPUT -j WEFT_OUTPUT\n").count(), 2, "{input}");
        assert_eq!(input.matches("-A OUTPUT -j WEFT_OUTPUT\n").count(), 1, "{input}");
        assert!(!input.contains("comment"), "{input}");
    }

    #[test]
    fn uninstall_removes_jumps_then_flushes_then_deletes_only_weft_chains() {
        let input = uninstall_input(&parse_save(SAVE_WITH_WEFT)).unwrap();
        let want = "*nat
-D PREROUTING -p tcp -j WEFT_INBOUND
-D OUTPUT -j WEFT_OUTPUT
-F WEFT_INBOUND
-F WEFT_IN_REDIRECT
-F WEFT_OLD
-F WEFT_OUTPUT
-F WEFT_REDIRECT
-X WEFT_INBOUND
-X WEFT_IN_REDIRECT
-X WEFT_OLD
-X WEFT_OUTPUT
-X WEFT_REDIRECT
COMMIT
";
        assert_eq!(input, want);
        assert!(!input.contains("DOCKER") && !input.contains("MASQUERADE"));
    }

    #[test]
    fn a_failed_install_is_undone_to_the_saved_state() {
        let previous = parse_save(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:WEFT_OUTPUT - [0:0]\n-A OUTPUT -j WEFT_OUTPUT\n\
             -A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN\nCOMMIT\n",
        );
        let now = parse_save(SAVE_WITH_WEFT);
        let input = restore_input(&now, &previous).unwrap();
        let want = "*nat
:WEFT_OUTPUT - [0:0]
-D PREROUTING -p tcp -j WEFT_INBOUND
-D OUTPUT -j WEFT_OUTPUT
-F WEFT_INBOUND
-F WEFT_IN_REDIRECT
-F WEFT_OLD
-F WEFT_REDIRECT
-X WEFT_INBOUND
-X WEFT_IN_REDIRECT
-X WEFT_OLD
-X WEFT_REDIRECT
-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A OUTPUT -j WEFT_OUTPUT
COMMIT
";
        assert_eq!(input, want);
        assert_eq!(restore_input(&SavedNat::default(), &SavedNat::default()), None);
    }
}
