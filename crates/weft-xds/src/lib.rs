//! The xDS vocabulary shared by Weft's control plane and its proxies: the type URLs it serves,
//! the identity a proxy presents in its `Node` (Istio's conventions, so Envoy bootstraps written
//! for istiod work unchanged), and [`ResourceSet`], the versioned per-proxy resources that the
//! translator produces and the ADS server sends.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Any, Struct, Value};
use prost::{Message, Name};

pub use envoy_types;

/// Type URLs of the resources Weft serves.
pub mod type_url {
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// The DNS name table (Istio's NDS): one resource per node, see [`crate::nds`].
    pub const NAME_TABLE: &str = "type.googleapis.com/istio.networking.nds.v1.NameTable";

    /// The order in which a proxy must apply updates so that nothing refers to what it does not
    /// have yet (clusters before the routes that name them, endpoints before the clusters warm).
    pub const PUSH_ORDER: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

    /// Short names used by the CLI and logs.
    pub fn short(url: &str) -> &str {
        match url {
            LISTENER => "LDS",
            ROUTE => "RDS",
            CLUSTER => "CDS",
            ENDPOINT => "EDS",
            NAME_TABLE => "NDS",
            other => other.rsplit('.').next().unwrap_or(other),
        }
    }
}

/// Istio's DNS name table (`istio.networking.nds.v1`, pkg/dns/proto/nds.proto), written out
/// with prost derives: the same field numbers, so Istio agents and Weft read each other's tables.
pub mod nds {
    use std::collections::BTreeMap;

    /// The name of the one name table resource a node receives. Istio's NDS resource has no
    /// name (state of the world carries only the `Any`); Weft uses the empty name in delta too.
    pub const RESOURCE_NAME: &str = "";

    /// Host name → what it resolves to. A sorted map, so equal tables encode to equal bytes.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NameTable {
        #[prost(btree_map = "string, message", tag = "1")]
        pub table: BTreeMap<String, NameInfo>,
        /// Istio's per-host form (the host in the resource's name); Weft neither sends nor reads it.
        #[prost(message, optional, tag = "2")]
        pub name_info: Option<NameInfo>,
    }

    /// `NameTable.NameInfo`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NameInfo {
        /// The addresses of the host (the service's virtual IPs).
        #[prost(string, repeated, tag = "1")]
        pub ips: Vec<String>,
        /// `Kubernetes` for hosts of the form `NAME.NS.svc.SUFFIX` (clients derive short names
        /// from `shortname` and `namespace`), `External` for other hosts.
        #[prost(string, tag = "2")]
        pub registry: String,
        #[prost(string, tag = "3")]
        pub shortname: String,
        #[prost(string, tag = "4")]
        pub namespace: String,
        /// Other names of the host for this node (deprecated in Istio; Weft lists the short
        /// forms the node's clients may ask here, so the table holds every name).
        #[prost(string, repeated, tag = "5")]
        pub alt_hosts: Vec<String>,
    }

    impl prost::Name for NameTable {
        const NAME: &'static str = "NameTable";
        const PACKAGE: &'static str = "istio.networking.nds.v1";

        fn type_url() -> String {
            crate::type_url::NAME_TABLE.to_string()
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XdsError {
    #[error("node: id is empty")]
    EmptyNodeId,
    #[error("node {id:?}: {message}")]
    BadNode { id: String, message: String },
}

/// What kind of proxy a node is (first field of an Istio node id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyType {
    Sidecar,
    Router,
}

/// Which config shape the node wants (Istio's `GENERATOR` metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Generator {
    /// Envoy or weft proxy: listeners with filter chains.
    Envoy,
    /// Proxyless gRPC: API listeners named `host:port`, state-of-the-world only.
    Grpc,
}

/// A proxy's identity, read from the `Node` it sends on its first request.
///
/// The id follows Istio: `TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local`. Metadata keys:
/// `NAMESPACE`, `LABELS` (a struct of strings), `INSTANCE_IPS` (comma-separated), `GENERATOR`
/// (`grpc` for proxyless clients), `TENANT`, and `HTTP_PROXY_PORT` (Istio's per-proxy
/// `proxyHttpPort`: the proxy wants an HTTP-proxy listener on 127.0.0.1 at that port). Metadata wins over what the id says; an id that
/// is not in Istio's form is accepted as a plain name in namespace `default`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeInfo {
    pub id: String,
    pub proxy_type: ProxyType,
    pub name: String,
    pub namespace: String,
    pub dns_domain: String,
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub generator: Generator,
    /// Tenant the proxy belongs to; it only ever sees resources of this tenant.
    pub tenant: String,
    /// Port of the HTTP-proxy listener the proxy asks for (metadata `HTTP_PROXY_PORT`).
    pub http_proxy_port: Option<u16>,
}

/// Node metadata key of the HTTP-proxy port (Istio's name).
pub const HTTP_PROXY_PORT: &str = "HTTP_PROXY_PORT";

pub const DEFAULT_TENANT: &str = "default";

impl NodeInfo {
    pub fn from_node(node: &Node) -> Result<NodeInfo, XdsError> {
        let id = node.id.trim().to_string();
        if id.is_empty() {
            return Err(XdsError::EmptyNodeId);
        }
        let meta = node.metadata.as_ref();
        let mut info = parse_id(&id)?;
        if let Some(ns) = meta_str(meta, "NAMESPACE") {
            info.namespace = ns;
        }
        if let Some(Kind::StructValue(s)) = meta_field(meta, "LABELS") {
            for (k, v) in &s.fields {
                if let Some(Kind::StringValue(v)) = &v.kind {
                    info.labels.insert(k.clone(), v.clone());
                }
            }
        }
        if let Some(ips) = meta_str(meta, "INSTANCE_IPS") {
            let mut parsed = Vec::new();
            for ip in ips.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let ip: IpAddr = ip.parse().map_err(|_| XdsError::BadNode {
                    id: id.clone(),
                    message: format!("metadata INSTANCE_IPS: {ip:?} is not an IP address"),
                })?;
                if !parsed.contains(&ip) {
                    parsed.push(ip);
                }
            }
            // The id's address first, then the rest, without repeats.
            for ip in parsed {
                if !info.ips.contains(&ip) {
                    info.ips.push(ip);
                }
            }
        }
        match meta_str(meta, "GENERATOR").as_deref() {
            None | Some("") => {}
            Some("grpc") => info.generator = Generator::Grpc,
            Some(_) => info.generator = Generator::Envoy,
        }
        if let Some(t) = meta_str(meta, "TENANT").filter(|t| !t.is_empty()) {
            info.tenant = t;
        }
        // Istio sends the port as a string; a number is accepted too. Empty or 0: none.
        let port = match meta_field(meta, HTTP_PROXY_PORT) {
            Some(Kind::StringValue(s)) if s.trim().is_empty() => None,
            Some(Kind::StringValue(s)) => Some(s.trim().parse::<u16>().map_err(|_| s.clone())),
            Some(Kind::NumberValue(n)) if n.fract() == 0.0 && (0.0..=65535.0).contains(n) => Some(Ok(*n as u16)),
            Some(other) => Some(Err(format!("{other:?}"))),
            None => None,
        };
        info.http_proxy_port = match port {
            None | Some(Ok(0)) => None,
            Some(Ok(p)) => Some(p),
            Some(Err(v)) => {
                return Err(XdsError::BadNode {
                    id,
                    message: format!("metadata {HTTP_PROXY_PORT}: {v:?} is not a port"),
                })
            }
        };
        Ok(info)
    }
}

fn parse_id(id: &str) -> Result<NodeInfo, XdsError> {
    let mut info = NodeInfo {
        id: id.to_string(),
        proxy_type: ProxyType::Sidecar,
        name: id.to_string(),
        namespace: "default".to_string(),
        dns_domain: "default.svc.cluster.local".to_string(),
        ips: Vec::new(),
        labels: BTreeMap::new(),
        generator: Generator::Envoy,
        tenant: DEFAULT_TENANT.to_string(),
        http_proxy_port: None,
    };
    let parts: Vec<&str> = id.split('~').collect();
    if parts.len() != 4 {
        return Ok(info);
    }
    info.proxy_type = match parts[0] {
        "sidecar" => ProxyType::Sidecar,
        "router" => ProxyType::Router,
        other => {
            return Err(XdsError::BadNode {
                id: id.to_string(),
                message: format!("unknown proxy type {other:?} (want sidecar or router)"),
            })
        }
    };
    if !parts[1].is_empty() {
        let ip: IpAddr = parts[1].parse().map_err(|_| XdsError::BadNode {
            id: id.to_string(),
            message: format!("{:?} is not an IP address", parts[1]),
        })?;
        info.ips.push(ip);
    }
    match parts[2].split_once('.') {
        Some((name, ns)) if !name.is_empty() && !ns.is_empty() => {
            info.name = name.to_string();
            info.namespace = ns.to_string();
        }
        _ => info.name = parts[2].to_string(),
    }
    if !parts[3].is_empty() {
        info.dns_domain = parts[3].to_string();
    }
    Ok(info)
}

fn meta_field<'a>(meta: Option<&'a Struct>, key: &str) -> Option<&'a Kind> {
    meta?.fields.get(key)?.kind.as_ref()
}

fn meta_str(meta: Option<&Struct>, key: &str) -> Option<String> {
    match meta_field(meta, key)? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// Builds node metadata in Istio's shape (used by weft proxy and by tests).
pub fn node_metadata(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    ips: &[IpAddr],
    generator: Option<&str>,
) -> Struct {
    let s = |v: &str| Value { kind: Some(Kind::StringValue(v.to_string())) };
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("NAMESPACE".to_string(), s(namespace));
    let labels = Struct { fields: labels.iter().map(|(k, v)| (k.clone(), s(v))).collect() };
    fields.insert("LABELS".to_string(), Value { kind: Some(Kind::StructValue(labels)) });
    if !ips.is_empty() {
        let joined: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
        fields.insert("INSTANCE_IPS".to_string(), s(&joined.join(",")));
    }
    if let Some(g) = generator {
        fields.insert("GENERATOR".to_string(), s(g));
    }
    Struct { fields: fields.into_iter().collect() }
}

/// One named resource, encoded once, with a version derived from its bytes: two resources with
/// the same version are the same resource, so pushes can be skipped by comparing versions.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: Any,
}

impl Resource {
    pub fn new<M: Message + Name>(name: impl Into<String>, msg: &M) -> Resource {
        let value = msg.encode_to_vec();
        let version = format!("{:016x}", fnv1a(&value));
        Resource { name: name.into(), version, body: Any { type_url: M::type_url(), value } }
    }

    pub fn type_url(&self) -> &str {
        &self.body.type_url
    }
}

/// FNV-1a 64: a stable content hash (no randomness, same on every run and machine).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// All resources one proxy should have, by type URL and name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceSet {
    pub by_type: BTreeMap<String, BTreeMap<String, Arc<Resource>>>,
}

impl ResourceSet {
    pub fn insert(&mut self, r: Resource) {
        self.by_type.entry(r.body.type_url.clone()).or_default().insert(r.name.clone(), Arc::new(r));
    }

    pub fn of_type(&self, type_url: &str) -> Option<&BTreeMap<String, Arc<Resource>>> {
        self.by_type.get(type_url)
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&Arc<Resource>> {
        self.by_type.get(type_url)?.get(name)
    }

    /// A version for the whole set of one type: changes whenever any resource of it changes.
    pub fn type_version(&self, type_url: &str) -> String {
        let mut h: u64 = 0xcbf29ce484222325;
        if let Some(m) = self.by_type.get(type_url) {
            for (name, r) in m {
                for b in name.as_bytes().iter().chain(r.version.as_bytes()).chain(b"\0") {
                    h ^= *b as u64;
                    h = h.wrapping_mul(0x100000001b3);
                }
            }
        }
        format!("{h:016x}")
    }

    pub fn len(&self) -> usize {
        self.by_type.values().map(|m| m.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total encoded bytes (for the control-plane bench and `weft check`).
    pub fn encoded_bytes(&self) -> usize {
        self.by_type.values().flat_map(|m| m.values()).map(|r| r.body.value.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn node(id: &str, meta: Option<Struct>) -> Node {
        Node { id: id.to_string(), metadata: meta, ..Default::default() }
    }

    #[test]
    fn istio_node_ids_parse() {
        // id, type, name, namespace, domain, first IP
        type Case<'a> = (&'a str, ProxyType, &'a str, &'a str, &'a str, Option<&'a str>);
        let cases: &[Case] = &[
            (
                "sidecar~10.0.0.7~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local",
                ProxyType::Sidecar,
                "reviews-v1-abc",
                "bookinfo",
                "bookinfo.svc.cluster.local",
                Some("10.0.0.7"),
            ),
            (
                "router~~gw.istio-system~istio-system.svc.cluster.local",
                ProxyType::Router,
                "gw",
                "istio-system",
                "istio-system.svc.cluster.local",
                None,
            ),
            ("plain-name", ProxyType::Sidecar, "plain-name", "default", "default.svc.cluster.local", None),
        ];
        for (id, ty, name, ns, domain, ip) in cases {
            let n = NodeInfo::from_node(&node(id, None)).unwrap();
            assert_eq!(
                (n.proxy_type, n.name.as_str(), n.namespace.as_str(), n.dns_domain.as_str()),
                (*ty, *name, *ns, *domain),
                "{id}"
            );
            assert_eq!(n.ips.first().map(|i| i.to_string()), ip.map(str::to_string), "{id}");
            assert_eq!(n.generator, Generator::Envoy);
        }
    }

    #[test]
    fn the_http_proxy_port_comes_from_metadata() {
        let with = |v: Value| {
            let meta = Struct { fields: [(HTTP_PROXY_PORT.to_string(), v)].into_iter().collect() };
            NodeInfo::from_node(&node("sidecar~10.0.0.7~a.ns~ns.svc.cluster.local", Some(meta)))
        };
        let s = |v: &str| Value { kind: Some(Kind::StringValue(v.into())) };
        let n = |v: f64| Value { kind: Some(Kind::NumberValue(v)) };
        assert_eq!(NodeInfo::from_node(&node("x", None)).unwrap().http_proxy_port, None);
        let cases: &[(Value, Option<Option<u16>>)] = &[
            (s("15080"), Some(Some(15080))),
            (s(" 8080 "), Some(Some(8080))),
            (n(15080.0), Some(Some(15080))),
            (s(""), Some(None)),
            (s("0"), Some(None)),
            (s("70000"), None),
            (s("http"), None),
            (n(1.5), None),
            (Value { kind: Some(Kind::BoolValue(true)) }, None),
        ];
        for (v, want) in cases {
            let got = with(v.clone());
            match want {
                Some(port) => assert_eq!(got.unwrap().http_proxy_port, *port, "{v:?}"),
                None => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains("HTTP_PROXY_PORT"), "{v:?}: {e}");
                }
            }
        }
    }

    #[test]
    fn bad_node_ids_are_errors() {
        assert_eq!(NodeInfo::from_node(&node("  ", None)), Err(XdsError::EmptyNodeId));
        let e = NodeInfo::from_node(&node("gateway~1.2.3.4~a.b~b.svc.cluster.local", None)).unwrap_err();
        assert!(e.to_string().contains("unknown proxy type"), "{e}");
        let e = NodeInfo::from_node(&node("sidecar~not-an-ip~a.b~b.svc.cluster.local", None)).unwrap_err();
        assert!(e.to_string().contains("not an IP address"), "{e}");
    }

    #[test]
    fn metadata_overrides_and_extends_the_id() {
        let labels: BTreeMap<String, String> =
            [("app".to_string(), "reviews".to_string()), ("version".to_string(), "v2".to_string())].into();
        let ips: Vec<IpAddr> = vec!["10.0.0.7".parse().unwrap(), "10.0.0.8".parse().unwrap()];
        let meta = node_metadata("shop", &labels, &ips, Some("grpc"));
        let n = NodeInfo::from_node(&node("sidecar~10.0.0.7~r.default~default.svc.cluster.local", Some(meta))).unwrap();
        assert_eq!(n.namespace, "shop");
        assert_eq!(n.labels, labels);
        assert_eq!(n.ips, ips, "no repeats, id address first");
        assert_eq!(n.generator, Generator::Grpc);
        assert_eq!(n.tenant, DEFAULT_TENANT);
    }

    #[test]
    fn name_table_matches_istio_wire_format() {
        use prost::Message;
        let mut t = nds::NameTable::default();
        t.table.insert(
            "a.b".into(),
            nds::NameInfo {
                ips: vec!["240.240.0.1".into()],
                registry: "External".into(),
                alt_hosts: vec!["x".into()],
                ..Default::default()
            },
        );
        let r = Resource::new(nds::RESOURCE_NAME, &t);
        assert_eq!(r.type_url(), type_url::NAME_TABLE);
        assert_eq!(type_url::short(type_url::NAME_TABLE), "NDS");
        // field 1 (map entry, length-delimited): key "a.b" (1), value NameInfo (2) with ips (1),
        // registry (2) and alt_hosts (5).
        let bytes = t.encode_to_vec();
        assert_eq!(bytes[0], 0x0a);
        let info = [&[0x0a, 11][..], b"240.240.0.1", &[0x12, 8], b"External", &[0x2a, 1], b"x"].concat();
        let entry = [&[0x0a, 3][..], b"a.b", &[0x12, info.len() as u8], &info].concat();
        assert_eq!(bytes, [&[0x0a, entry.len() as u8][..], &entry].concat());
        assert_eq!(nds::NameTable::decode(bytes.as_slice()).unwrap(), t);
    }

    #[test]
    fn resource_versions_follow_content() {
        let a = Resource::new("c", &Cluster { name: "c".into(), ..Default::default() });
        let b = Resource::new("c", &Cluster { name: "c".into(), ..Default::default() });
        let c = Resource::new("c", &Cluster { name: "c".into(), alt_stat_name: "x".into(), ..Default::default() });
        assert_eq!(a.version, b.version);
        assert_ne!(a.version, c.version);
        assert_eq!(a.type_url(), type_url::CLUSTER);
        let mut set = ResourceSet::default();
        set.insert(a);
        let v1 = set.type_version(type_url::CLUSTER);
        set.insert(c);
        assert_ne!(v1, set.type_version(type_url::CLUSTER));
        assert_eq!(set.len(), 1);
    }
}
