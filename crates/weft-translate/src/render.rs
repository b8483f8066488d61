//! A stable, readable text form of xDS resources, for golden tests and for people (`weft check`).
//!
//! Protos have no field names at run time (no reflection), but prost's `Debug` prints them in
//! declaration order with enum variant names. This module parses that `Debug` text back into a
//! small tree, decodes the `Any` payloads it knows (so typed configs read as messages, not bytes),
//! drops fields that hold their proto default, sorts map entries (prost maps are `HashMap`s) and
//! prints the rest as indented YAML-like text. Durations print as `10s`, wrappers as their value.

use std::fmt::Write as _;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use prost::{Message, Name};
use weft_xds::{type_url, ResourceSet};

/// Renders every resource of the set, grouped by type (LDS, RDS, CDS, EDS) and sorted by name.
pub fn render_set(set: &ResourceSet) -> String {
    let mut out = String::new();
    for ty in [type_url::LISTENER, type_url::ROUTE, type_url::CLUSTER, type_url::ENDPOINT] {
        let Some(resources) = set.of_type(ty) else { continue };
        for (name, r) in resources {
            let _ = writeln!(out, "--- {} {}", type_url::short(ty), name);
            out.push_str(&render_any(&r.body.type_url, &r.body.value));
        }
    }
    let others: Vec<_> = set
        .by_type
        .iter()
        .filter(|(ty, _)| {
            ![type_url::LISTENER, type_url::ROUTE, type_url::CLUSTER, type_url::ENDPOINT].contains(&ty.as_str())
        })
        .collect();
    for (ty, resources) in others {
        for (name, r) in resources {
            let _ = writeln!(out, "--- {} {}", type_url::short(ty), name);
            out.push_str(&render_any(&r.body.type_url, &r.body.value));
        }
    }
    out
}

/// Renders one encoded message of a known type; unknown types print their size only.
pub fn render_any(type_url: &str, bytes: &[u8]) -> String {
    match decode_debug(type_url, bytes) {
        Some(text) => render_debug(&text),
        None => format!("<{} bytes of {}>\n", bytes.len(), type_url),
    }
}

/// Renders the `Debug` text of a prost message.
pub fn render_debug(debug: &str) -> String {
    let mut out = String::new();
    match Parser::new(debug).parse_all() {
        Some(node) => {
            let node = simplify(node);
            match &node {
                Node::Struct(_, fields) => emit_fields(&mut out, fields, 0),
                other => {
                    emit_value_line(&mut out, other, 0);
                }
            }
        }
        // Not expected for prost output; print it as it is rather than lose it.
        None => {
            out.push_str(debug);
            out.push('\n');
        }
    }
    out
}

fn decode_as<M: Message + Default + std::fmt::Debug>(bytes: &[u8]) -> Option<String> {
    M::decode(bytes).ok().map(|m| format!("{m:?}"))
}

fn decode_debug(url: &str, bytes: &[u8]) -> Option<String> {
    fn is<M: Name>(url: &str) -> bool {
        url == M::type_url()
    }
    if is::<Listener>(url) {
        decode_as::<Listener>(bytes)
    } else if is::<RouteConfiguration>(url) {
        decode_as::<RouteConfiguration>(bytes)
    } else if is::<Cluster>(url) {
        decode_as::<Cluster>(bytes)
    } else if is::<ClusterLoadAssignment>(url) {
        decode_as::<ClusterLoadAssignment>(bytes)
    } else if is::<HttpConnectionManager>(url) {
        decode_as::<HttpConnectionManager>(bytes)
    } else if is::<Router>(url) {
        decode_as::<Router>(bytes)
    } else if is::<HttpFault>(url) {
        decode_as::<HttpFault>(bytes)
    } else if is::<TcpProxy>(url) {
        decode_as::<TcpProxy>(bytes)
    } else if is::<HttpProtocolOptions>(url) {
        decode_as::<HttpProtocolOptions>(bytes)
    } else if is::<OriginalDst>(url) {
        decode_as::<OriginalDst>(bytes)
    } else if is::<HttpInspector>(url) {
        decode_as::<HttpInspector>(bytes)
    } else if is::<TlsInspector>(url) {
        decode_as::<TlsInspector>(bytes)
    } else if is::<PreviousHostsPredicate>(url) {
        decode_as::<PreviousHostsPredicate>(bytes)
    } else if is::<PreviousPrioritiesConfig>(url) {
        decode_as::<PreviousPrioritiesConfig>(bytes)
    } else {
        None
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    /// `Name { field: value, .. }` (a fieldless struct prints as its bare name: an `Atom`).
    Struct(String, Vec<(String, Node)>),
    /// `Name(value, ..)`: `Some(..)` and oneof variants.
    Tuple(String, Vec<Node>),
    List(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// A string literal, kept with its quotes and escapes.
    Str(String),
    /// Numbers, booleans, `None`, unit enum variants and fieldless structs.
    Atom(String),
    /// A value that is printed even when it is zero: the content of a wrapper (`UInt32Value`),
    /// whose presence is what matters.
    Kept(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Punct(char),
    Str(String),
    Word(String),
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn new(text: &str) -> Parser {
        Parser { toks: tokenize(text), pos: 0 }
    }

    fn parse_all(&mut self) -> Option<Node> {
        let node = self.value()?;
        (self.pos == self.toks.len()).then_some(node)
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Option<Node> {
        match self.next()? {
            Tok::Str(s) => Some(Node::Str(s)),
            Tok::Punct('[') => {
                let mut items = Vec::new();
                while !self.eat(']') {
                    items.push(self.value()?);
                    if !self.eat(',') && self.peek() != Some(&Tok::Punct(']')) {
                        return None;
                    }
                }
                Some(Node::List(items))
            }
            Tok::Punct('{') => {
                let mut entries = Vec::new();
                while !self.eat('}') {
                    let k = self.value()?;
                    if !self.eat(':') {
                        return None;
                    }
                    let v = self.value()?;
                    entries.push((k, v));
                    if !self.eat(',') && self.peek() != Some(&Tok::Punct('}')) {
                        return None;
                    }
                }
                Some(Node::Map(entries))
            }
            Tok::Word(w) => {
                if self.eat('{') {
                    let mut fields = Vec::new();
                    while !self.eat('}') {
                        let Some(Tok::Word(name)) = self.next() else { return None };
                        if !self.eat(':') {
                            return None;
                        }
                        let v = self.value()?;
                        fields.push((name, v));
                        if !self.eat(',') && self.peek() != Some(&Tok::Punct('}')) {
                            return None;
                        }
                    }
                    Some(Node::Struct(w, fields))
                } else if self.eat('(') {
                    let mut items = Vec::new();
                    while !self.eat(')') {
                        items.push(self.value()?);
                        if !self.eat(',') && self.peek() != Some(&Tok::Punct(')')) {
                            return None;
                        }
                    }
                    Some(Node::Tuple(w, items))
                } else {
                    Some(Node::Atom(w))
                }
            }
            Tok::Punct(_) => None,
        }
    }
}

fn tokenize(text: &str) -> Vec<Tok> {
    let mut toks = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if "{}()[]:,".contains(c) {
            toks.push(Tok::Punct(c));
            i += 1;
        } else if c == '"' || c == '\'' {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(chars.len());
            toks.push(Tok::Str(chars[start..i].iter().collect()));
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && !"{}()[]:,\"'".contains(chars[i]) {
                i += 1;
            }
            toks.push(Tok::Word(chars[start..i].iter().collect()));
        }
    }
    toks
}

/// Unwraps `Some`, turns durations and wrappers into scalars, decodes `Any`, drops defaults.
fn simplify(node: Node) -> Node {
    match node {
        Node::Tuple(name, mut items) if name == "Some" && items.len() == 1 => simplify(items.remove(0)),
        Node::Tuple(name, items) => Node::Tuple(name, items.into_iter().map(simplify).collect()),
        Node::Struct(name, fields) => simplify_struct(name, fields),
        Node::List(items) => Node::List(items.into_iter().map(simplify).collect()),
        Node::Map(entries) => {
            let mut entries: Vec<(Node, Node)> = entries.into_iter().map(|(k, v)| (k, simplify(v))).collect();
            entries.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
            Node::Map(entries)
        }
        other => other,
    }
}

fn simplify_struct(name: String, fields: Vec<(String, Node)>) -> Node {
    let field = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    match name.as_str() {
        "Duration" => {
            let secs = match field("seconds") {
                Some(Node::Atom(s)) => s.parse::<i64>().unwrap_or(0),
                _ => 0,
            };
            let nanos = match field("nanos") {
                Some(Node::Atom(s)) => s.parse::<i32>().unwrap_or(0),
                _ => 0,
            };
            return Node::Atom(format_duration(secs, nanos));
        }
        "UInt32Value" | "UInt64Value" | "Int32Value" | "Int64Value" | "BoolValue" | "DoubleValue" | "FloatValue"
        | "StringValue" => {
            return match field("value") {
                Some(Node::Atom(a)) => Node::Kept(a),
                Some(Node::Str(s)) => Node::Kept(s),
                Some(other) => other,
                None => Node::Kept("0".to_string()),
            };
        }
        "Any" => {
            if let (Some(Node::Str(url)), Some(Node::List(bytes))) = (field("type_url"), field("value")) {
                let url = unquote(&url);
                let bytes: Option<Vec<u8>> = bytes
                    .iter()
                    .map(|b| match b {
                        Node::Atom(s) => s.parse::<u8>().ok(),
                        _ => None,
                    })
                    .collect();
                if let Some(decoded) = bytes.as_deref().and_then(|b| decode_debug(&url, b)) {
                    if let Some(inner) = Parser::new(&decoded).parse_all() {
                        let short = url.rsplit('/').next().unwrap_or(&url).to_string();
                        let mut out = vec![("'@type'".to_string(), Node::Atom(short))];
                        match simplify(inner) {
                            Node::Struct(_, inner_fields) => out.extend(inner_fields),
                            Node::Atom(_) => {}
                            other => out.push(("value".to_string(), other)),
                        }
                        return Node::Struct("Any".to_string(), out);
                    }
                }
            }
        }
        _ => {}
    }
    let zero_enums = zero_enum_fields(&name);
    let fields = fields
        .into_iter()
        .map(|(k, v)| (k, simplify(v)))
        .filter(|(k, v)| !is_default(v) && !zero_enums.iter().any(|(zk, zv)| zk == k && Some(zv.as_str()) == atom(v)))
        .map(|(k, v)| (k.trim_start_matches("r#").to_string(), v))
        .collect();
    Node::Struct(name, fields)
}

fn atom(v: &Node) -> Option<&str> {
    match v {
        Node::Atom(a) => Some(a),
        _ => None,
    }
}

/// The enum fields of a message type that print a variant name when they hold zero (their
/// default): read off the `Debug` of the type's `Default`, for the types the translator emits.
fn zero_enum_fields(struct_name: &str) -> Vec<(String, String)> {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static TABLE: OnceLock<HashMap<String, Vec<(String, String)>>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
        use envoy_types::pb::envoy::config::core::v3 as core;
        use envoy_types::pb::envoy::config::endpoint::v3 as ep;
        use envoy_types::pb::envoy::config::listener::v3 as l;
        use envoy_types::pb::envoy::config::route::v3 as r;
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
        use envoy_types::pb::envoy::r#type::v3 as ty;
        let defaults: Vec<String> = vec![
            format!("{:?}", Cluster::default()),
            format!("{:?}", Thresholds::default()),
            format!("{:?}", Listener::default()),
            format!("{:?}", l::FilterChainMatch::default()),
            format!("{:?}", HttpConnectionManager::default()),
            format!("{:?}", hcm::Rds::default()),
            format!("{:?}", core::ConfigSource::default()),
            format!("{:?}", core::SocketAddress::default()),
            format!("{:?}", core::HeaderValueOption::default()),
            format!("{:?}", core::Http2ProtocolOptions::default()),
            format!("{:?}", core::Http1ProtocolOptions::default()),
            format!("{:?}", core::HttpProtocolOptions::default()),
            format!("{:?}", ep::LbEndpoint::default()),
            format!("{:?}", ep::LocalityLbEndpoints::default()),
            format!("{:?}", r::RouteAction::default()),
            format!("{:?}", r::RedirectAction::default()),
            format!("{:?}", r::VirtualHost::default()),
            format!("{:?}", r::RouteConfiguration::default()),
            format!("{:?}", ty::FractionalPercent::default()),
            format!("{:?}", TcpProxy::default()),
            format!("{:?}", envoy_types::pb::envoy::config::cluster::v3::cluster::RingHashLbConfig::default()),
        ];
        let mut table: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for text in defaults {
            if let Some(Node::Struct(name, fields)) = Parser::new(&text).parse_all() {
                let entry = table.entry(name).or_default();
                for (k, v) in fields {
                    if let Node::Atom(a) = v {
                        let is_enum_name = a.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && a != "None";
                        if is_enum_name {
                            entry.push((k, a));
                        }
                    }
                }
            }
        }
        table
    });
    table.get(struct_name).cloned().unwrap_or_default()
}

fn is_default(v: &Node) -> bool {
    match v {
        Node::Atom(a) => matches!(a.as_str(), "None" | "0" | "0.0" | "false"),
        Node::Str(s) => s == "\"\"",
        Node::List(items) => items.is_empty(),
        Node::Map(entries) => entries.is_empty(),
        _ => false,
    }
}

fn unquote(s: &str) -> String {
    let inner = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s);
    inner.replace("\\\"", "\"").replace("\\\\", "\\")
}

fn format_duration(secs: i64, nanos: i32) -> String {
    if nanos == 0 {
        return format!("{secs}s");
    }
    if secs == 0 && nanos % 1_000_000 == 0 {
        return format!("{}ms", nanos / 1_000_000);
    }
    let frac = format!("{:09}", nanos);
    format!("{secs}.{}s", frac.trim_end_matches('0'))
}

fn is_scalar(v: &Node) -> bool {
    matches!(v, Node::Atom(_) | Node::Str(_) | Node::Kept(_))
}

fn scalar_text(v: &Node) -> &str {
    match v {
        Node::Atom(a) | Node::Kept(a) => a,
        Node::Str(s) => s,
        _ => "",
    }
}

fn pad(out: &mut String, indent: usize) {
    for _ in 0..indent {
        out.push_str("  ");
    }
}

fn emit_fields(out: &mut String, fields: &[(String, Node)], indent: usize) {
    for (k, v) in fields {
        pad(out, indent);
        out.push_str(k);
        out.push(':');
        emit_after_key(out, v, indent);
    }
}

/// Writes what follows `key:` (same line for scalars, nested lines for the rest).
fn emit_after_key(out: &mut String, v: &Node, indent: usize) {
    match v {
        Node::Atom(_) | Node::Str(_) | Node::Kept(_) => {
            out.push(' ');
            out.push_str(scalar_text(v));
            out.push('\n');
        }
        Node::Struct(_, fields) if fields.is_empty() => out.push_str(" {}\n"),
        Node::Struct(_, fields) => {
            out.push('\n');
            emit_fields(out, fields, indent + 1);
        }
        Node::Tuple(name, items) => {
            let _ = write!(out, " !{name}");
            match items.as_slice() {
                [] => out.push('\n'),
                [one] => emit_after_key(out, one, indent),
                many => {
                    out.push('\n');
                    for item in many {
                        emit_value_line(out, item, indent + 1);
                    }
                }
            }
        }
        Node::List(items) if items.is_empty() => out.push_str(" []\n"),
        Node::List(items) if items.iter().all(is_scalar) && items.len() <= 16 => {
            let texts: Vec<&str> = items.iter().map(scalar_text).collect();
            let _ = writeln!(out, " [{}]", texts.join(", "));
        }
        Node::List(items) => {
            out.push('\n');
            for item in items {
                emit_value_line(out, item, indent + 1);
            }
        }
        Node::Map(entries) if entries.is_empty() => out.push_str(" {}\n"),
        Node::Map(entries) => {
            out.push('\n');
            for (k, v) in entries {
                pad(out, indent + 1);
                out.push_str(scalar_text(k));
                out.push(':');
                emit_after_key(out, v, indent + 1);
            }
        }
    }
}

/// Writes a list item (`- value`), nesting structs under the dash.
fn emit_value_line(out: &mut String, v: &Node, indent: usize) {
    pad(out, indent);
    out.push('-');
    match v {
        Node::Struct(_, fields) if !fields.is_empty() => {
            // The first field shares the dash's line, the rest align under it.
            let (k, first) = &fields[0];
            let _ = write!(out, " {k}:");
            emit_after_key(out, first, indent + 1);
            emit_fields(out, &fields[1..], indent + 1);
        }
        other => emit_after_key(out, other, indent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
    use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};

    #[test]
    fn clusters_render_without_defaults_and_with_decoded_any() {
        let opts = HttpProtocolOptions::default();
        let c = Cluster {
            name: "outbound|9080||reviews".into(),
            connect_timeout: Some(Duration { seconds: 1, nanos: 500_000_000 }),
            lb_policy: LbPolicy::LeastRequest as i32,
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            per_connection_buffer_limit_bytes: Some(UInt32Value { value: 0 }),
            typed_extension_protocol_options: [(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
                Any { type_url: HttpProtocolOptions::type_url(), value: opts.encode_to_vec() },
            )]
            .into(),
            ..Default::default()
        };
        let text = render_debug(&format!("{c:?}"));
        let want = "\
name: \"outbound|9080||reviews\"
connect_timeout: 1.5s
per_connection_buffer_limit_bytes: 0
lb_policy: LeastRequest
typed_extension_protocol_options:
  \"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\":
    '@type': envoy.extensions.upstreams.http.v3.HttpProtocolOptions
cluster_discovery_type: !Type Eds
";
        assert_eq!(text, want, "got:\n{text}");
    }

    #[test]
    fn strings_with_punctuation_and_escapes_survive() {
        let node = Parser::new(r#"X { a: "x{y}: \"z\", [w]", b: ['c', 'd'] }"#).parse_all().unwrap();
        assert_eq!(
            node,
            Node::Struct(
                "X".into(),
                vec![
                    ("a".into(), Node::Str(r#""x{y}: \"z\", [w]""#.into())),
                    ("b".into(), Node::List(vec![Node::Str("'c'".into()), Node::Str("'d'".into())]))
                ]
            )
        );
    }

    #[test]
    fn durations_print_compactly() {
        for (s, n, want) in [(0, 0, "0s"), (10, 0, "10s"), (0, 250_000_000, "250ms"), (1, 500_000_000, "1.5s")] {
            assert_eq!(format_duration(s, n), want);
        }
    }

    #[test]
    fn malformed_debug_text_is_printed_verbatim() {
        assert_eq!(render_debug("X { a: "), "X { a: \n");
    }
}
