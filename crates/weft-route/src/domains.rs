//! Virtual host lookup by authority.
//!
//! Envoy's search order: exact domains, then suffix wildcards (`*.foo.com`, `*-bar.foo.com`),
//! then prefix wildcards (`foo.*`, `foo-*`), then `*`; among wildcards the longest wins.
//! Exact domains live in one hash map. Wildcards are grouped by the length of their fixed part,
//! one hash map per length, longest first: a lookup probes each distinct length once, so its
//! cost depends on how many different wildcard lengths exist (a few dozen at most), never on how
//! many virtual hosts there are.

use std::borrow::Cow;
use std::collections::HashMap as StdHashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::uri::split_port;

/// Domain maps hash with xxHash64 (fixed seed) instead of SipHash: about twice as fast on
/// host names. HashDoS resistance is not needed here: the keys come from config, and a request
/// only looks up, so it cannot lengthen any probe sequence.
type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<DomainHasher>>;

#[derive(Default)]
struct DomainHasher(u64);

impl Hasher for DomainHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = self.0.rotate_left(5) ^ weft_lb::hash_bytes(bytes);
    }
    fn write_u8(&mut self, b: u8) {
        // `str` hashing appends a 0xff terminator; a bijective mix keeps the xxHash spread
        // without a second full hash.
        self.0 = self.0.rotate_left(8) ^ u64::from(b);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Which end of the host a wildcard's fixed part is anchored to.
#[derive(Clone, Copy)]
enum Anchor {
    /// `*.example.com`: the fixed part is the host's suffix.
    End,
    /// `example.*`: the fixed part is the host's prefix.
    Start,
}

/// Wildcard domains of one kind, grouped by the length of their fixed part.
#[derive(Default)]
struct Wildcards {
    /// (length of the fixed part, fixed part → virtual host index), longest first.
    by_len: Vec<(usize, HashMap<Box<str>, usize>)>,
}

impl Wildcards {
    fn insert(&mut self, fixed: &str, vhost: usize) {
        let len = fixed.len();
        let group = match self.by_len.iter_mut().position(|(l, _)| *l == len) {
            Some(i) => &mut self.by_len[i].1,
            None => {
                self.by_len.push((len, HashMap::default()));
                let last = self.by_len.len() - 1;
                &mut self.by_len[last].1
            }
        };
        // Domains are unique after config validation; should a duplicate slip through, the first
        // virtual host keeps it, as it would in a linear scan in config order.
        group.entry(fixed.into()).or_insert(vhost);
    }

    fn finish(&mut self) {
        self.by_len.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
    }

    fn find(&self, host: &str, anchor: Anchor) -> Option<usize> {
        // Groups whose fixed part is as long as the host or longer cannot match: the `*` must
        // stand for at least one character (Envoy: `*.foo.com` does not match `.foo.com`).
        let start = self.by_len.partition_point(|(len, _)| *len >= host.len());
        for (len, group) in &self.by_len[start..] {
            // `get` rather than slicing: a cut inside a multi-byte character is simply no match.
            let part = match anchor {
                Anchor::End => host.get(host.len() - len..),
                Anchor::Start => host.get(..*len),
            };
            if let Some(i) = part.and_then(|p| group.get(p)) {
                return Some(*i);
            }
        }
        None
    }
}

/// All domains of a route config, indexed for lookup.
#[derive(Default)]
pub(crate) struct DomainIndex {
    exact: HashMap<Box<str>, usize>,
    /// Whether any exact / suffix-wildcard domain names a port; when none does, the
    /// `host:listener-port` candidate cannot match and is never built.
    exact_has_port: bool,
    suffix_has_port: bool,
    suffixes: Wildcards,
    prefixes: Wildcards,
    any: Option<usize>,
}

impl DomainIndex {
    pub(crate) fn new<'a>(vhost_domains: impl Iterator<Item = &'a [String]>) -> DomainIndex {
        let mut ix = DomainIndex::default();
        for (i, domains) in vhost_domains.enumerate() {
            for d in domains {
                // Config validation lowercases domains already; doing it again keeps the index
                // correct for models built by hand (tests, xDS conversions).
                let d = d.to_ascii_lowercase();
                if d == "*" {
                    ix.any.get_or_insert(i);
                } else if let Some(fixed) = d.strip_prefix('*') {
                    ix.suffix_has_port |= fixed.contains(':');
                    ix.suffixes.insert(fixed, i);
                } else if let Some(fixed) = d.strip_suffix('*') {
                    ix.prefixes.insert(fixed, i);
                } else {
                    ix.exact_has_port |= d.contains(':');
                    ix.exact.entry(d.into()).or_insert(i);
                }
            }
        }
        ix.suffixes.finish();
        ix.prefixes.finish();
        ix
    }

    /// The virtual host for `authority` (see [`crate::RouteTable::select_vhost`] for the order).
    /// `alternates`: also try the authority without its port, or with `port` added.
    pub(crate) fn find(&self, authority: &str, port: u16, alternates: bool) -> Option<usize> {
        let primary = ascii_lower(authority);
        let primary = primary.as_ref();
        // The common case, an exact domain as sent, costs one hash lookup and nothing else.
        if let Some(i) = self.exact.get(primary) {
            return Some(*i);
        }
        let mut buf = PortBuf::new();
        let (stripped, with_port): (Option<&str>, Option<&str>) = match split_port(primary) {
            _ if !alternates => (None, None),
            (host, Some(_)) => (Some(host), None),
            (host, None) if port != 0 && !host.is_empty() && (self.exact_has_port || self.suffix_has_port) => {
                (None, Some(buf.join(host, port)))
            }
            _ => (None, None),
        };
        let alternate = stripped.or(with_port);
        if let Some(i) = alternate.and_then(|a| self.exact.get(a)) {
            return Some(*i);
        }
        for c in [Some(primary), alternate].into_iter().flatten() {
            if let Some(i) = self.suffixes.find(c, Anchor::End) {
                return Some(i);
            }
        }
        // A synthesized `host:port` is of no use to prefix wildcards: `foo.*` would match the
        // bare `foo.` just because `:80` filled the `*`.
        for c in [Some(primary), stripped].into_iter().flatten() {
            if let Some(i) = self.prefixes.find(c, Anchor::Start) {
                return Some(i);
            }
        }
        self.any
    }
}

/// Lowercases only when needed: authorities are nearly always lowercase already, so the common
/// case borrows and allocates nothing.
fn ascii_lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Stack space for `host:port`, so trying the port-qualified domain does not allocate.
struct PortBuf {
    stack: [u8; 128],
    heap: String,
}

impl PortBuf {
    fn new() -> PortBuf {
        PortBuf { stack: [0; 128], heap: String::new() }
    }

    fn join(&mut self, host: &str, port: u16) -> &str {
        let mut digits = [0u8; 5];
        let mut n = 0;
        let mut p = port;
        loop {
            digits[n] = b'0' + (p % 10) as u8;
            n += 1;
            p /= 10;
            if p == 0 {
                break;
            }
        }
        let total = host.len() + 1 + n;
        if total <= self.stack.len() {
            self.stack[..host.len()].copy_from_slice(host.as_bytes());
            self.stack[host.len()] = b':';
            for (i, d) in digits[..n].iter().rev().enumerate() {
                self.stack[host.len() + 1 + i] = *d;
            }
            // Valid UTF-8 by construction (a str, ':' and digits); the fallback keeps this total.
            std::str::from_utf8(&self.stack[..total]).unwrap_or("")
        } else {
            self.heap = format!("{host}:{port}");
            &self.heap
        }
    }
}
