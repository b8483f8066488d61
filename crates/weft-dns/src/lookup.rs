//! The decision for one question, as a pure function of the name table, the query name and the
//! search domains: a mesh answer, NXDOMAIN for unknown names of the mesh's domain, or forwarding.

use std::net::IpAddr;
use std::sync::Arc;

use crate::table::{Entry, NameTable};

/// What `weft dns` does with one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A mesh name. `alias`: the query name is a search-domain expansion of a table name
    /// (`reviews.corp.example` with search domain `corp.example`); the answer is a CNAME to the
    /// entry's host followed by its addresses.
    Mesh { entry: Arc<Entry>, alias: bool },
    /// A name in a mesh domain that the table does not have.
    NxDomain { zone: String },
    /// A name in a mesh domain before any table is known: answered SERVFAIL, so that clients
    /// ask again rather than cache a negative answer.
    NotReady,
    /// Everything else goes to the upstream resolvers.
    Forward,
}

/// The settings the decision depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LookupConfig {
    /// Search domains of the clients (resolv.conf's `search`), lowercase without dots at the ends.
    pub search: Vec<String>,
    /// Domains the mesh owns (`cluster.local`): unknown names in them are NXDOMAIN.
    pub mesh_domains: Vec<String>,
}

/// Lowercase, without the trailing dot (the root is the empty string).
pub fn normalize_query(qname: &str) -> String {
    qname.strip_suffix('.').unwrap_or(qname).to_ascii_lowercase()
}

/// Decides for a normalized query name. `table` is `None` until the first table is known.
pub fn resolve(table: Option<&NameTable>, qname: &str, cfg: &LookupConfig) -> Resolution {
    if let Some(t) = table {
        if let Some(e) = t.get(qname) {
            return Resolution::Mesh { entry: e.clone(), alias: false };
        }
        for d in &cfg.search {
            if let Some(stem) = strip_domain(qname, d) {
                if let Some(e) = t.get(stem) {
                    return Resolution::Mesh { entry: e.clone(), alias: true };
                }
            }
        }
    }
    for d in &cfg.mesh_domains {
        if qname == d || strip_domain(qname, d).is_some() {
            return match table {
                Some(_) => Resolution::NxDomain { zone: d.clone() },
                None => Resolution::NotReady,
            };
        }
    }
    Resolution::Forward
}

/// `name` without `.domain` at its end, when it has it and something before it.
fn strip_domain<'a>(name: &'a str, domain: &str) -> Option<&'a str> {
    if domain.is_empty() {
        return None;
    }
    let stem = name.strip_suffix(domain)?.strip_suffix('.')?;
    (!stem.is_empty()).then_some(stem)
}

/// Which addresses of an entry answer a question type: A, AAAA, or both for ANY. Other types
/// have none (NODATA: the name exists).
pub fn addresses(entry: &Entry, qtype: u16) -> Vec<IpAddr> {
    const A: u16 = 1;
    const AAAA: u16 = 28;
    const ANY: u16 = 255;
    let mut out = Vec::new();
    if qtype == A || qtype == ANY {
        out.extend(entry.v4.iter().map(|a| IpAddr::V4(*a)));
    }
    if qtype == AAAA || qtype == ANY {
        out.extend(entry.v6.iter().map(|a| IpAddr::V6(*a)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_xds::nds;

    fn table() -> NameTable {
        let mut p = nds::NameTable::default();
        let info = |ip: &str, alts: &[&str]| nds::NameInfo {
            ips: vec![ip.to_string()],
            alt_hosts: alts.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        p.table.insert(
            "reviews.shop.svc.cluster.local".into(),
            info("240.240.0.1", &["reviews", "reviews.shop", "reviews.shop.svc"]),
        );
        p.table.insert("com.example.greeter".into(), info("240.240.0.2", &[]));
        p.table.insert(
            "dual.example.com".into(),
            nds::NameInfo { ips: vec!["240.240.0.3".into(), "fd00::3".into()], ..Default::default() },
        );
        NameTable::from_proto(p).unwrap()
    }

    #[test]
    fn questions_are_decided() {
        let t = table();
        let cfg = LookupConfig {
            search: vec!["corp.example".into(), "shop.svc.cluster.local".into()],
            mesh_domains: vec!["cluster.local".into()],
        };
        enum Want {
            Mesh(&'static str, bool),
            Nx,
            NotReady,
            Forward,
        }
        use Want::*;
        let cases: &[(Option<&NameTable>, &str, Want)] = &[
            (Some(&t), "reviews.shop.svc.cluster.local.", Mesh("reviews.shop.svc.cluster.local", false)),
            (Some(&t), "REVIEWS.shop.svc", Mesh("reviews.shop.svc.cluster.local", false)),
            (Some(&t), "reviews.shop", Mesh("reviews.shop.svc.cluster.local", false)),
            (Some(&t), "reviews", Mesh("reviews.shop.svc.cluster.local", false)),
            (Some(&t), "com.example.Greeter.", Mesh("com.example.greeter", false)),
            // Search-domain expansions of table names, as a stub resolver sends them.
            (Some(&t), "reviews.corp.example", Mesh("reviews.shop.svc.cluster.local", true)),
            (Some(&t), "reviews.shop.corp.example.", Mesh("reviews.shop.svc.cluster.local", true)),
            (Some(&t), "reviews.shop.shop.svc.cluster.local", Mesh("reviews.shop.svc.cluster.local", true)),
            (Some(&t), "corp.example", Forward),
            // Unknown names in the mesh's domain, known or not yet.
            (Some(&t), "nope.shop.svc.cluster.local", Nx),
            (Some(&t), "cluster.local.", Nx),
            (None, "reviews.shop.svc.cluster.local", NotReady),
            (None, "reviews", Forward),
            // Everything else is forwarded.
            (Some(&t), "example.com", Forward),
            (Some(&t), "notcluster.local", Forward),
            (Some(&t), "", Forward),
        ];
        for (table, q, want) in cases {
            let got = resolve(*table, &normalize_query(q), &cfg);
            let ok = match (&got, want) {
                (Resolution::Mesh { entry, alias }, Mesh(host, a)) => entry.host == *host && alias == a,
                (Resolution::NxDomain { zone }, Nx) => zone == "cluster.local",
                (Resolution::NotReady, NotReady) | (Resolution::Forward, Forward) => true,
                _ => false,
            };
            assert!(ok, "{q}: got {got:?}");
        }
    }

    #[test]
    fn question_types_select_addresses() {
        let t = table();
        let dual = t.get("dual.example.com").unwrap();
        let s = |v: Vec<IpAddr>| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(s(addresses(dual, 1)), ["240.240.0.3"]);
        assert_eq!(s(addresses(dual, 28)), ["fd00::3"]);
        assert_eq!(s(addresses(dual, 255)), ["240.240.0.3", "fd00::3"]);
        assert!(addresses(dual, 16).is_empty(), "TXT: NODATA");
        assert!(addresses(t.get("reviews").unwrap(), 28).is_empty(), "AAAA of an IPv4-only service: NODATA");
    }
}
