//! Pure functions over what a stream sees of a type: the selection of a generated set by a
//! subscription, version comparison, and the delta between what a client has and what it should
//! have. Resources are `Arc`s shared with the generated sets, kept in name order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use weft_xds::Resource;

use crate::subscription::Subscription;

/// Resources of one type in name order, names unique. Cloning shares the list.
pub type Res = Arc<[Arc<Resource>]>;

pub fn empty() -> Res {
    Arc::from(Vec::new())
}

/// The resources of one type a subscription selects, in name order.
pub fn select(of_type: Option<&BTreeMap<String, Arc<Resource>>>, sub: &Subscription) -> Vec<Arc<Resource>> {
    let Some(all) = of_type else { return Vec::new() };
    if sub.wildcard {
        return all.values().cloned().collect();
    }
    sub.names.iter().filter_map(|n| all.get(n)).cloned().collect()
}

pub fn find<'a>(res: &'a [Arc<Resource>], name: &str) -> Option<&'a Arc<Resource>> {
    res.binary_search_by(|r| r.name.as_str().cmp(name)).ok().map(|i| &res[i])
}

/// Same names with the same versions.
pub fn same(a: &[Arc<Resource>], b: &[Arc<Resource>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y) || (x.name == y.name && x.version == y.version))
}

/// A version for a list: the same hash `ResourceSet::type_version` uses, so a wildcard view has
/// the version of its whole type.
pub fn version(res: &[Arc<Resource>]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for r in res {
        for b in r.name.as_bytes().iter().chain(r.version.as_bytes()).chain(b"\0") {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{h:016x}")
}

/// What a delta response must carry to take a client from `known` to `view`.
#[derive(Debug, Default, PartialEq)]
pub struct DeltaDiff {
    pub upserts: Vec<Arc<Resource>>,
    pub removed: Vec<String>,
}

impl DeltaDiff {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removed.is_empty()
    }
}

pub fn delta_diff(known: &[Arc<Resource>], view: &[Arc<Resource>]) -> DeltaDiff {
    let stale = |r: &&Arc<Resource>| match find(known, &r.name) {
        None => true,
        Some(k) => k.version != r.version,
    };
    let upserts = view.iter().filter(stale).cloned().collect();
    let removed = known.iter().filter(|k| find(view, &k.name).is_none()).map(|k| k.name.clone()).collect();
    DeltaDiff { upserts, removed }
}

/// The client's side after a reconnect: of the resources it says it has
/// (`initial_resource_versions`), those the view has at the same version count as known; the
/// names it has that the view lacks must be removed.
pub fn from_client_versions(
    client: &HashMap<String, String>,
    view: &[Arc<Resource>],
    sub: &Subscription,
) -> (Vec<Arc<Resource>>, Vec<String>) {
    let mut known = Vec::new();
    let mut removed = Vec::new();
    for (name, version) in client {
        if !sub.covers(name) {
            continue;
        }
        match find(view, name) {
            Some(r) if &r.version == version => known.push(r.clone()),
            Some(_) => {}
            None => removed.push(name.clone()),
        }
    }
    known.sort_by(|a, b| a.name.cmp(&b.name));
    removed.sort();
    (known, removed)
}

/// `base` with `upserts` put in and `removed` taken out, in name order.
pub fn apply(base: &[Arc<Resource>], upserts: &[Arc<Resource>], removed: &[String]) -> Vec<Arc<Resource>> {
    let mut out: BTreeMap<&str, &Arc<Resource>> = base.iter().map(|r| (r.name.as_str(), r)).collect();
    for r in upserts {
        out.insert(r.name.as_str(), r);
    }
    for name in removed {
        out.remove(name.as_str());
    }
    out.into_values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use weft_xds::{type_url, ResourceSet};

    fn cluster(name: &str, stat: &str) -> Arc<Resource> {
        Arc::new(Resource::new(name, &Cluster { name: name.into(), alt_stat_name: stat.into(), ..Default::default() }))
    }

    fn names(res: &[Arc<Resource>]) -> Vec<&str> {
        res.iter().map(|r| r.name.as_str()).collect()
    }

    fn sub(wildcard: bool, names: &[&str]) -> Subscription {
        Subscription { wildcard, names: names.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn select_follows_the_subscription() {
        let mut set = ResourceSet::default();
        for n in ["c", "a", "b"] {
            set.insert((*cluster(n, "")).clone());
        }
        let all = set.of_type(type_url::CLUSTER);
        let cases: &[(Subscription, &[&str])] = &[
            (sub(true, &[]), &["a", "b", "c"]),
            (sub(true, &["zz"]), &["a", "b", "c"]),
            (sub(false, &["c", "a", "missing"]), &["a", "c"]),
            (sub(false, &[]), &[]),
        ];
        for (s, want) in cases {
            assert_eq!(names(&select(all, s)), *want, "{s:?}");
        }
        assert!(select(None, &sub(true, &[])).is_empty());
        assert_eq!(version(&select(all, &sub(true, &[]))), set.type_version(type_url::CLUSTER));
    }

    #[test]
    fn delta_diff_sends_changes_and_removals_only() {
        let a1 = cluster("a", "1");
        let a2 = cluster("a", "2");
        let b = cluster("b", "");
        let c = cluster("c", "");
        type Case = (&'static str, Vec<Arc<Resource>>, Vec<Arc<Resource>>, Vec<&'static str>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            ("nothing known", vec![], vec![a1.clone(), b.clone()], vec!["a", "b"], vec![]),
            ("unchanged", vec![a1.clone(), b.clone()], vec![a1.clone(), b.clone()], vec![], vec![]),
            ("changed one", vec![a1.clone(), b.clone()], vec![a2.clone(), b.clone()], vec!["a"], vec![]),
            ("removed one", vec![a1.clone(), b.clone()], vec![b.clone()], vec![], vec!["a"]),
            ("swap", vec![a1.clone(), b.clone()], vec![a1.clone(), c.clone()], vec!["c"], vec!["b"]),
        ];
        for (what, known, view, up, rm) in cases {
            let d = delta_diff(&known, &view);
            assert_eq!(names(&d.upserts), up, "{what}");
            assert_eq!(d.removed, rm, "{what}");
            assert_eq!(d.is_empty(), up.is_empty() && rm.is_empty(), "{what}");
            assert!(same(&apply(&known, &d.upserts, &d.removed), &view), "{what}: applying the diff gives the view");
        }
    }

    #[test]
    fn client_versions_on_reconnect() {
        let a = cluster("a", "1");
        let b = cluster("b", "");
        let view = vec![a.clone(), b.clone()];
        let client: HashMap<String, String> = [
            ("a".to_string(), a.version.clone()),
            ("b".to_string(), "stale".to_string()),
            ("gone".to_string(), "v".to_string()),
            ("other".to_string(), "v".to_string()),
        ]
        .into();
        let (known, removed) = from_client_versions(&client, &view, &sub(false, &["a", "b", "gone"]));
        assert_eq!(names(&known), ["a"]);
        assert_eq!(removed, ["gone"], "names outside the subscription are ignored");
        let d = delta_diff(&known, &view);
        assert_eq!(names(&d.upserts), ["b"], "only the stale resource is resent");
    }

    #[test]
    fn same_and_find() {
        let a = cluster("a", "1");
        let b = cluster("b", "");
        assert!(same(&[a.clone(), b.clone()], &[a.clone(), b.clone()]));
        assert!(!same(std::slice::from_ref(&a), &[a.clone(), b.clone()]));
        assert!(!same(std::slice::from_ref(&a), &[cluster("a", "2")]));
        assert_eq!(find(&[a.clone(), b.clone()], "b").map(|r| r.name.as_str()), Some("b"));
        assert!(find(&[a, b], "c").is_none());
        assert_eq!(version(&[]), version(&empty()));
    }
}
