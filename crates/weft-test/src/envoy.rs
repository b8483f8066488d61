//! Envoy bootstraps for tests, and Envoy's own validation of generated resources.
//!
//! * [`AdsBootstrap`]: the YAML bootstrap of an Envoy that takes everything from a control plane
//!   over ADS (node identity in Istio's conventions, a static `xds` cluster speaking h2c).
//! * [`static_bootstrap`]: a set of xDS resources (listeners, routes, clusters, endpoints as
//!   `Any`s, as a control plane would send them) turned into one bootstrap with everything
//!   inline, so Envoy can check it offline: RDS route tables go into their connection managers,
//!   EDS assignments into their clusters (which become STATIC).
//! * [`validate`]: `envoy --mode validate` on such a bootstrap.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::bootstrap::v3::{bootstrap::StaticResources, Bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use prost::{Message, Name};

/// Which ADS flavour the bootstrap asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdsApi {
    /// State of the world (`GRPC`).
    Sotw,
    /// Incremental (`DELTA_GRPC`).
    Delta,
}

/// An Envoy bootstrap that takes listeners and clusters from `xds` over ADS.
///
/// ```
/// use weft_test::envoy::{AdsApi, AdsBootstrap};
/// let yaml = AdsBootstrap::new("sidecar~127.0.0.8~web.shop~shop.svc.cluster.local", "127.0.0.1:15010".parse().unwrap())
///     .cluster("web")
///     .namespace("shop")
///     .label("app", "web")
///     .api(AdsApi::Delta)
///     .admin()
///     .to_yaml();
/// assert!(yaml.contains("DELTA_GRPC"));
/// ```
#[derive(Clone, Debug)]
pub struct AdsBootstrap {
    node_id: String,
    cluster: String,
    xds: SocketAddr,
    api: AdsApi,
    admin: bool,
    namespace: Option<String>,
    labels: Vec<(String, String)>,
    metadata: Vec<(String, String)>,
}

impl AdsBootstrap {
    /// Delta ADS, node cluster `envoy`, no metadata, no admin listener.
    pub fn new(node_id: &str, xds: SocketAddr) -> AdsBootstrap {
        AdsBootstrap {
            node_id: node_id.to_string(),
            cluster: "envoy".to_string(),
            xds,
            api: AdsApi::Delta,
            admin: false,
            namespace: None,
            labels: Vec::new(),
            metadata: Vec::new(),
        }
    }

    /// The node's `cluster`.
    pub fn cluster(mut self, cluster: &str) -> Self {
        self.cluster = cluster.to_string();
        self
    }

    pub fn api(mut self, api: AdsApi) -> Self {
        self.api = api;
        self
    }

    /// An admin listener on `127.0.0.1:0`.
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }

    /// Metadata `NAMESPACE`.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_string());
        self
    }

    /// One entry of metadata `LABELS`.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    /// Another string-valued metadata key (`HTTP_PROXY_PORT`, `GENERATOR`, `TENANT`, ...).
    pub fn metadata(mut self, key: &str, value: &str) -> Self {
        self.metadata.push((key.to_string(), value.to_string()));
        self
    }

    pub fn to_yaml(&self) -> String {
        // Strings are written as JSON strings, which YAML reads as they are.
        let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        let mut y = String::new();
        let _ = writeln!(y, "node:\n  id: {}\n  cluster: {}", q(&self.node_id), q(&self.cluster));
        let mut meta = Vec::new();
        if let Some(ns) = &self.namespace {
            meta.push(format!("    NAMESPACE: {}", q(ns)));
        }
        if !self.labels.is_empty() {
            let labels: Vec<String> = self.labels.iter().map(|(k, v)| format!("{}: {}", q(k), q(v))).collect();
            meta.push(format!("    LABELS: {{ {} }}", labels.join(", ")));
        }
        for (k, v) in &self.metadata {
            meta.push(format!("    {}: {}", q(k), q(v)));
        }
        if !meta.is_empty() {
            let _ = writeln!(y, "  metadata:\n{}", meta.join("\n"));
        }
        if self.admin {
            y.push_str("admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }\n");
        }
        let api_type = match self.api {
            AdsApi::Sotw => "GRPC",
            AdsApi::Delta => "DELTA_GRPC",
        };
        let _ = write!(
            y,
            r#"dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}]
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }} }}
"#,
            ip = q(&self.xds.ip().to_string()),
            port = self.xds.port()
        );
        y
    }
}

/// Listeners, routes, clusters and endpoints (as a control plane sends them) in one bootstrap
/// that needs no control plane:
///
/// * an HTTP connection manager that names an RDS route table gets that table inline; an inline
///   table is validated by Envoy against the clusters unless it says otherwise, which RDS tables
///   are not, so an inlined table without `validate_clusters` gets `false`, as over RDS;
/// * an EDS cluster becomes STATIC with its `ClusterLoadAssignment` as `load_assignment`.
///
/// A route table or assignment that is referenced but missing is an error: over xDS the listener
/// or cluster would wait for it forever. Resources of other types are an error too.
pub fn static_bootstrap<'a>(node_id: &str, resources: impl IntoIterator<Item = &'a Any>) -> Result<Bootstrap, String> {
    let mut listeners = Vec::new();
    let mut routes = BTreeMap::new();
    let mut clusters = Vec::new();
    let mut assignments = BTreeMap::new();
    for any in resources {
        let bad = |e: prost::DecodeError| format!("{}: {e}", any.type_url);
        match any.type_url.as_str() {
            u if u == Listener::type_url() => listeners.push(Listener::decode(any.value.as_slice()).map_err(bad)?),
            u if u == RouteConfiguration::type_url() => {
                let r = RouteConfiguration::decode(any.value.as_slice()).map_err(bad)?;
                routes.insert(r.name.clone(), r);
            }
            u if u == Cluster::type_url() => clusters.push(Cluster::decode(any.value.as_slice()).map_err(bad)?),
            u if u == ClusterLoadAssignment::type_url() => {
                let a = ClusterLoadAssignment::decode(any.value.as_slice()).map_err(bad)?;
                assignments.insert(a.cluster_name.clone(), a);
            }
            other => return Err(format!("a resource of type {other} cannot go into a static bootstrap")),
        }
    }
    for c in &mut clusters {
        let Some(eds) = c.eds_cluster_config.take() else { continue };
        let name = if eds.service_name.is_empty() { c.name.clone() } else { eds.service_name };
        let cla = assignments
            .get(&name)
            .ok_or_else(|| format!("cluster {:?} wants endpoints {name:?}, which are not in the set", c.name))?;
        c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
        c.load_assignment = Some(cla.clone());
    }
    for l in &mut listeners {
        let name = l.name.clone();
        for fc in l.filter_chains.iter_mut().chain(l.default_filter_chain.as_mut()) {
            inline_routes(&name, fc, &routes)?;
        }
    }
    Ok(Bootstrap {
        node: Some(Node { id: node_id.to_string(), cluster: "validate".to_string(), ..Default::default() }),
        static_resources: Some(StaticResources { listeners, clusters, ..Default::default() }),
        ..Default::default()
    })
}

fn inline_routes(
    listener: &str,
    fc: &mut FilterChain,
    routes: &BTreeMap<String, RouteConfiguration>,
) -> Result<(), String> {
    for f in &mut fc.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else { continue };
        if any.type_url != HttpConnectionManager::type_url() {
            continue;
        }
        let mut hcm = HttpConnectionManager::decode(any.value.as_slice())
            .map_err(|e| format!("listener {listener:?}: connection manager: {e}"))?;
        let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else { continue };
        let mut table = routes.get(&rds.route_config_name).cloned().ok_or_else(|| {
            format!("listener {listener:?} wants route table {:?}, which is not in the set", rds.route_config_name)
        })?;
        table.validate_clusters.get_or_insert(BoolValue { value: false });
        hcm.route_specifier = Some(RouteSpecifier::RouteConfig(table));
        any.value = hcm.encode_to_vec();
    }
    Ok(())
}

/// How long one `envoy --mode validate` may take before it counts as hung.
pub const VALIDATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `envoy --mode validate` on `bootstrap` (written as binary protobuf into `dir`, under
/// `name.pb`). `Err` carries what Envoy printed about the rejection.
pub fn validate(envoy: &Path, dir: &Path, name: &str, bootstrap: &Bootstrap) -> Result<(), String> {
    let file = dir.join(format!("{name}.pb"));
    std::fs::write(&file, bootstrap.encode_to_vec()).map_err(|e| format!("writing {}: {e}", file.display()))?;
    let log = dir.join(format!("{name}.log"));
    let log_file = std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let mut child = Command::new(envoy)
        .args(["--mode", "validate", "--disable-hot-restart", "--log-level", "error", "-c"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file.try_clone().map_err(|e| e.to_string())?))
        .stderr(Stdio::from(log_file))
        .spawn()
        .map_err(|e| format!("running {}: {e}", envoy.display()))?;
    let deadline = Instant::now() + VALIDATE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("envoy --mode validate took longer than {VALIDATE_TIMEOUT:?}"));
            }
            Err(e) => return Err(format!("waiting for envoy: {e}")),
        }
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(format!("envoy --mode validate exited with {status}:\n{}", output.trim_end()))
    }
}
