//! The immutable run-time view of one config version: compiled listeners, route tables and
//! clusters. Built off the hot path, swapped atomically. A connection keeps the listener and
//! connection-manager settings it was accepted with, but each request looks up named route tables
//! (RDS) and clusters in the current snapshot, so open connections follow route and cluster changes.

use std::collections::HashMap;
use std::sync::Arc;

use weft_config::{ChainAction, FilterChain, HttpConnectionManager, Listener, ProxyConfig, RouteSource, TcpProxy};
use weft_route::RouteTable;

use crate::cluster::{resolve_cluster, ClusterRt};

pub struct Snapshot {
    pub config: Arc<ProxyConfig>,
    pub listeners: HashMap<String, Arc<ListenerRt>>,
    pub clusters: HashMap<String, Arc<ClusterRt>>,
    /// Named route tables (RDS), looked up per request.
    pub routes: HashMap<String, Arc<RouteTable>>,
}

pub struct ListenerRt {
    pub cfg: Arc<Listener>,
    pub name: Arc<str>,
    /// Istio's `reporter` label: inbound listeners report as the destination.
    pub reporter: &'static str,
    pub chains: Vec<ChainRt>,
    pub default_chain: Option<ChainRt>,
}

#[derive(Clone)]
pub enum ChainRt {
    Http(Arc<HttpRt>),
    Tcp(Arc<TcpProxy>),
}

/// Where a connection manager finds its routes.
pub enum Routes {
    Inline(Arc<RouteTable>),
    /// A named table in the current snapshot; when it does not exist every request gets 404 NR.
    Named(String),
}

pub struct HttpRt {
    pub hcm: Arc<HttpConnectionManager>,
    pub routes: Routes,
    pub reporter: &'static str,
    pub listener: Arc<str>,
    /// `hcm.forwarded_proto` and `hcm.server_name` as header values, made once.
    pub forwarded_proto: Option<http::HeaderValue>,
    pub server_name: Option<http::HeaderValue>,
}

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            config: Arc::new(ProxyConfig::default()),
            listeners: HashMap::new(),
            clusters: HashMap::new(),
            routes: HashMap::new(),
        }
    }

    /// Compiles `config`, reusing the clusters of `previous` whose config did not change (so their
    /// pools, health and ejection state survive a reload).
    pub async fn build(config: Arc<ProxyConfig>, previous: &Snapshot) -> Snapshot {
        let mut clusters = HashMap::new();
        for (name, c) in &config.clusters {
            let prev = previous.clusters.get(name);
            if let Some(p) = prev {
                if *p.cfg == **c {
                    clusters.insert(name.clone(), p.clone());
                    continue;
                }
            }
            let resolved = resolve_cluster(c).await;
            let rt = ClusterRt::new(c.clone(), prev.map(|p| &**p), &resolved);
            rt.start_background();
            clusters.insert(name.clone(), rt);
        }
        let mut tables: HashMap<String, Arc<RouteTable>> = HashMap::with_capacity(config.route_configs.len());
        for (name, rc) in &config.route_configs {
            tables.insert(name.clone(), Arc::new(RouteTable::new(rc.clone())));
        }
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let name: Arc<str> = Arc::from(l.name.as_str());
            let reporter = if l.name.starts_with("inbound") || l.name.starts_with("virtualInbound") {
                "destination"
            } else {
                "source"
            };
            let compile = |c: &FilterChain| -> ChainRt {
                match &c.action {
                    ChainAction::Tcp(t) => ChainRt::Tcp(Arc::new(t.clone())),
                    ChainAction::Http(h) => {
                        let routes = match &h.routes {
                            RouteSource::Inline(rc) => Routes::Inline(Arc::new(RouteTable::new(rc.clone()))),
                            RouteSource::Named(n) => Routes::Named(n.clone()),
                        };
                        ChainRt::Http(Arc::new(HttpRt {
                            hcm: h.clone(),
                            routes,
                            reporter,
                            listener: name.clone(),
                            forwarded_proto: http::HeaderValue::from_str(&h.forwarded_proto).ok(),
                            server_name: http::HeaderValue::from_str(&h.server_name).ok(),
                        }))
                    }
                }
            };
            let chains = l.filter_chains.iter().map(compile).collect();
            let default_chain = l.default_chain.as_ref().map(compile);
            listeners.insert(
                l.name.clone(),
                Arc::new(ListenerRt { cfg: l.clone(), name: name.clone(), reporter, chains, default_chain }),
            );
        }
        Snapshot { config, listeners, clusters, routes: tables }
    }
}
