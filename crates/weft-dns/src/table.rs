//! The name table as `weft dns` uses it: every name a client may ask (lowercase, without the
//! trailing dot) mapped to its service's addresses, validated from the control plane's
//! `NameTable` at the edge.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use prost::Message;
use weft_xds::nds;

use crate::DnsError;

/// One service as DNS sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The host as the table names it (the canonical name, target of CNAMEs).
    pub host: String,
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

/// An immutable, validated name table.
#[derive(Clone, Debug, Default)]
pub struct NameTable {
    names: HashMap<String, Arc<Entry>>,
    hosts: usize,
    /// The table as received, for persisting and `/nametable`.
    proto: nds::NameTable,
}

impl NameTable {
    /// Validates a table: every host and alternative name must be a DNS name, every address an
    /// IP address. Hosts win over alternative names of other hosts; among alternative names
    /// the first host in name order keeps a name claimed twice.
    pub fn from_proto(proto: nds::NameTable) -> Result<NameTable, DnsError> {
        let mut names: HashMap<String, Arc<Entry>> = HashMap::with_capacity(proto.table.len() * 4);
        let mut entries = Vec::with_capacity(proto.table.len());
        for (host, info) in &proto.table {
            let bad = |field: &str, reason: String| DnsError::Table { host: host.clone(), field: field.into(), reason };
            let canonical = normalize(host).map_err(|r| bad("name", r))?;
            let mut v4 = Vec::new();
            let mut v6 = Vec::new();
            for (i, ip) in info.ips.iter().enumerate() {
                match ip.trim().parse::<IpAddr>() {
                    Ok(IpAddr::V4(a)) if !v4.contains(&a) => v4.push(a),
                    Ok(IpAddr::V6(a)) if !v6.contains(&a) => v6.push(a),
                    Ok(_) => {}
                    Err(_) => return Err(bad(&format!("ips[{i}]"), format!("{ip:?} is not an IP address"))),
                }
            }
            let mut alts = Vec::with_capacity(info.alt_hosts.len());
            for (i, alt) in info.alt_hosts.iter().enumerate() {
                alts.push(normalize(alt).map_err(|r| bad(&format!("alt_hosts[{i}]"), r))?);
            }
            let entry = Arc::new(Entry { host: canonical.clone(), v4, v6 });
            names.insert(canonical, entry.clone());
            entries.push((entry, alts));
        }
        let hosts = names.len();
        for (entry, alts) in entries {
            for alt in alts {
                names.entry(alt).or_insert_with(|| entry.clone());
            }
        }
        Ok(NameTable { names, hosts, proto })
    }

    /// Decodes and validates the bytes of a `NameTable` message.
    pub fn decode(bytes: &[u8]) -> Result<NameTable, DnsError> {
        let proto = nds::NameTable::decode(bytes).map_err(|e| DnsError::Decode(e.to_string()))?;
        NameTable::from_proto(proto)
    }

    /// The names of several resources merged (the first resource keeps a host both name).
    pub fn merge(tables: Vec<nds::NameTable>) -> nds::NameTable {
        let mut out = nds::NameTable::default();
        for t in tables {
            for (host, info) in t.table {
                out.table.entry(host).or_insert(info);
            }
        }
        out
    }

    /// The entry of a normalized name.
    pub fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.names.get(name)
    }

    /// Names answered (hosts and alternative names).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Hosts (table keys).
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    pub fn proto(&self) -> &nds::NameTable {
        &self.proto
    }

    /// Every name and its entry, sorted (for `/nametable` and tests).
    pub fn names(&self) -> Vec<(&str, &Entry)> {
        let mut v: Vec<(&str, &Entry)> = self.names.iter().map(|(k, e)| (k.as_str(), e.as_ref())).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }
}

/// A name as the table keys it: ASCII lowercase without the trailing dot, at most 253
/// characters, labels of 1 to 63 letters, digits, `-` or `_`.
pub fn normalize(name: &str) -> Result<String, String> {
    let n = name.strip_suffix('.').unwrap_or(name);
    if n.is_empty() {
        return Err("empty name".into());
    }
    if n.len() > 253 {
        return Err(format!("{} characters (at most 253)", n.len()));
    }
    for label in n.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{name:?}: labels must have 1 to 63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(format!("{name:?}: only letters, digits, '-' and '_' are allowed"));
        }
    }
    Ok(n.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(ips: &[&str], alts: &[&str]) -> nds::NameInfo {
        nds::NameInfo {
            ips: ips.iter().map(|s| s.to_string()).collect(),
            alt_hosts: alts.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn names_are_normalized_and_checked() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("Reviews.Shop.svc.cluster.local.", Ok("reviews.shop.svc.cluster.local")),
            ("com.example.Greeter", Ok("com.example.greeter")),
            ("_grpc._tcp.x", Ok("_grpc._tcp.x")),
            ("", Err("empty")),
            (".", Err("empty")),
            ("a..b", Err("1 to 63")),
            ("*.example.com", Err("only letters")),
            ("a b", Err("only letters")),
        ];
        for (name, want) in cases {
            match (normalize(name), want) {
                (Ok(got), Ok(w)) => assert_eq!(&got, w, "{name}"),
                (Err(got), Err(w)) => assert!(got.contains(w), "{name}: {got}"),
                (got, w) => panic!("{name}: got {got:?}, want {w:?}"),
            }
        }
        assert!(normalize(&"a".repeat(64)).is_err());
        assert!(normalize(&["a"; 128].join(".")).is_err());
    }

    #[test]
    fn hosts_win_over_alternative_names() {
        let mut p = nds::NameTable::default();
        p.table.insert("a.ns.svc.cluster.local".into(), info(&["10.0.0.1", "fd00::1", "10.0.0.1"], &["a", "b.ns"]));
        p.table.insert("b.ns".into(), info(&["10.0.0.2"], &[]));
        p.table.insert("c.ns.svc.cluster.local".into(), info(&["10.0.0.3"], &["a"]));
        let t = NameTable::from_proto(p).unwrap();
        assert_eq!((t.hosts(), t.len()), (3, 4));
        assert_eq!(t.get("a").unwrap().host, "a.ns.svc.cluster.local");
        assert_eq!(t.get("b.ns").unwrap().v4, [Ipv4Addr::new(10, 0, 0, 2)]);
        let a = t.get("a.ns.svc.cluster.local").unwrap();
        assert_eq!((a.v4.len(), a.v6.len()), (1, 1));
    }

    #[test]
    fn bad_entries_name_host_and_field() {
        let mut p = nds::NameTable::default();
        p.table.insert("a.example".into(), info(&["10.0.0.1", "nope"], &[]));
        let e = NameTable::from_proto(p).unwrap_err().to_string();
        assert!(e.contains("a.example") && e.contains("ips[1]") && e.contains("not an IP"), "{e}");
        let mut p = nds::NameTable::default();
        p.table.insert("a.example".into(), info(&["10.0.0.1"], &["ok", "bad name"]));
        let e = NameTable::from_proto(p).unwrap_err().to_string();
        assert!(e.contains("alt_hosts[1]"), "{e}");
        assert!(NameTable::decode(&[0xff, 0xff]).is_err());
    }
}
