//! What a stream asked for, per type: the wildcard flag and the names, with the xDS rules for how
//! state-of-the-world and delta requests change it.

use std::collections::BTreeSet;

use weft_xds::type_url;

/// The name that subscribes to every resource of a type.
pub const WILDCARD: &str = "*";

/// Types whose empty first request means "everything" (the xDS legacy wildcard). Routes and
/// endpoints are only ever asked for by name: an empty list there means "none".
pub fn wildcard_capable(type_url: &str) -> bool {
    type_url != type_url::ROUTE && type_url != type_url::ENDPOINT
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    pub wildcard: bool,
    pub names: BTreeSet<String>,
}

impl Subscription {
    pub fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Nothing subscribed: no response is owed for this type.
    pub fn is_empty(&self) -> bool {
        !self.wildcard && self.names.is_empty()
    }

    /// The subscription after a state-of-the-world request: its list replaces the previous one.
    ///
    /// `prev` is `None` on the first request for the type on this stream. An empty list is a
    /// wildcard on the first request of a wildcard-capable type, and stays one while the client
    /// keeps sending empty lists (Envoy's ACKs for CDS and LDS); once the client has named
    /// resources without `*`, an empty list unsubscribes from everything.
    pub fn sotw(prev: Option<&Subscription>, type_url: &str, names: &[String]) -> Subscription {
        let named: BTreeSet<String> = names.iter().filter(|n| *n != WILDCARD && !n.is_empty()).cloned().collect();
        let explicit = names.iter().any(|n| n == WILDCARD);
        let legacy = names.is_empty()
            && wildcard_capable(type_url)
            && match prev {
                None => true,
                Some(p) => p.wildcard && p.names.is_empty(),
            };
        Subscription { wildcard: explicit || legacy, names: named }
    }

    /// Applies a delta request's subscribe and unsubscribe lists. Returns the names that became
    /// subscribed by name (the server owes the client an answer for each of them, even "does not
    /// exist") and whether anything changed.
    pub fn delta(
        &mut self,
        first: bool,
        type_url: &str,
        subscribe: &[String],
        unsubscribe: &[String],
    ) -> (Vec<String>, bool) {
        let mut changed = false;
        if first && subscribe.is_empty() && wildcard_capable(type_url) {
            self.wildcard = true;
            changed = true;
        }
        let mut added = Vec::new();
        for name in subscribe {
            if name == WILDCARD {
                changed |= !self.wildcard;
                self.wildcard = true;
            } else if !name.is_empty() && self.names.insert(name.clone()) {
                added.push(name.clone());
                changed = true;
            }
        }
        for name in unsubscribe {
            if name == WILDCARD {
                changed |= self.wildcard;
                self.wildcard = false;
            } else if self.names.remove(name) {
                added.retain(|a| a != name);
                changed = true;
            }
        }
        (added, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_xds::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn sub(wildcard: bool, names: &[&str]) -> Subscription {
        Subscription { wildcard, names: names.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn sotw_requests_replace_the_subscription() {
        let legacy = sub(true, &[]);
        let named = sub(false, &["a"]);
        let cases: &[(&str, Option<&Subscription>, &[&str], Subscription)] = &[
            ("first empty LDS is a wildcard", None, &[], sub(true, &[])),
            ("first empty CDS is a wildcard", None, &[], sub(true, &[])),
            ("first empty RDS asks for nothing", None, &[], sub(false, &[])),
            ("named LDS (gRPC)", None, &["svc.ns:80"], sub(false, &["svc.ns:80"])),
            ("explicit wildcard with names", None, &["*", "a"], sub(true, &["a"])),
            ("legacy wildcard ACK stays wildcard", Some(&legacy), &[], sub(true, &[])),
            ("names end the legacy wildcard", Some(&legacy), &["a"], sub(false, &["a"])),
            ("empty after names unsubscribes all", Some(&named), &[], sub(false, &[])),
            ("empty names are ignored", None, &["", "b"], sub(false, &["b"])),
        ];
        let types = [LISTENER, CLUSTER, ROUTE, LISTENER, LISTENER, CLUSTER, CLUSTER, LISTENER, ENDPOINT];
        for ((what, prev, names, want), ty) in cases.iter().zip(types) {
            assert_eq!(&Subscription::sotw(*prev, ty, &strings(names)), want, "{what}");
        }
    }

    #[test]
    fn delta_requests_change_the_subscription() {
        struct Case {
            what: &'static str,
            start: Subscription,
            first: bool,
            type_url: &'static str,
            subscribe: &'static [&'static str],
            unsubscribe: &'static [&'static str],
            want: Subscription,
            added: &'static [&'static str],
            changed: bool,
        }
        let cases = [
            Case {
                what: "empty first CDS request is the legacy wildcard",
                start: sub(false, &[]),
                first: true,
                type_url: CLUSTER,
                subscribe: &[],
                unsubscribe: &[],
                want: sub(true, &[]),
                added: &[],
                changed: true,
            },
            Case {
                what: "empty first EDS request asks for nothing",
                start: sub(false, &[]),
                first: true,
                type_url: ENDPOINT,
                subscribe: &[],
                unsubscribe: &[],
                want: sub(false, &[]),
                added: &[],
                changed: false,
            },
            Case {
                what: "names add up",
                start: sub(false, &["a"]),
                first: false,
                type_url: ENDPOINT,
                subscribe: &["b", "a"],
                unsubscribe: &[],
                want: sub(false, &["a", "b"]),
                added: &["b"],
                changed: true,
            },
            Case {
                what: "unsubscribe removes names and the wildcard",
                start: sub(true, &["a", "b"]),
                first: false,
                type_url: CLUSTER,
                subscribe: &[],
                unsubscribe: &["*", "a"],
                want: sub(false, &["b"]),
                added: &[],
                changed: true,
            },
            Case {
                what: "explicit wildcard on a named type",
                start: sub(false, &[]),
                first: false,
                type_url: ROUTE,
                subscribe: &["*"],
                unsubscribe: &[],
                want: sub(true, &[]),
                added: &[],
                changed: true,
            },
            Case {
                what: "an ACK changes nothing",
                start: sub(true, &[]),
                first: false,
                type_url: CLUSTER,
                subscribe: &[],
                unsubscribe: &[],
                want: sub(true, &[]),
                added: &[],
                changed: false,
            },
            Case {
                what: "subscribed and unsubscribed in one request is not added",
                start: sub(false, &[]),
                first: false,
                type_url: ROUTE,
                subscribe: &["r"],
                unsubscribe: &["r"],
                want: sub(false, &[]),
                added: &[],
                changed: true,
            },
        ];
        for c in cases {
            let mut s = c.start.clone();
            let (added, changed) = s.delta(c.first, c.type_url, &strings(c.subscribe), &strings(c.unsubscribe));
            assert_eq!(s, c.want, "{}", c.what);
            assert_eq!(added, strings(c.added), "{}", c.what);
            assert_eq!(changed, c.changed, "{}", c.what);
        }
    }

    #[test]
    fn coverage() {
        assert!(sub(true, &[]).covers("x"));
        assert!(sub(false, &["x"]).covers("x"));
        assert!(!sub(false, &["x"]).covers("y"));
        assert!(sub(false, &[]).is_empty());
        assert!(!sub(true, &[]).is_empty());
    }
}
