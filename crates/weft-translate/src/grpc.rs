//! Proxyless gRPC clients (node metadata `GENERATOR: grpc`): what istiod's gRPC generator serves,
//! in the shapes gRPC's xDS client accepts.
//!
//! A channel to `xds:///reviews.default.svc.cluster.local:9080` asks LDS for the listener named
//! like the target's authority and follows it to RDS, CDS and EDS. For every visible HTTP/gRPC
//! service port the client gets an API listener under the service's host name and under each
//! short form (`reviews`, `reviews.default`, `reviews.default.svc`, as DNS would resolve them),
//! all pointing at one RouteConfiguration named like the port's cluster
//! (`outbound|9080||reviews.default.svc.cluster.local`, as istiod names it) whose virtual host
//! answers every one of those names. Clusters are the Envoy ones, reshaped where gRPC is
//! stricter (see [`for_grpc`]).

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy as PbLb, RingHashLbConfig,
};
use envoy_types::pb::google::protobuf::UInt64Value;
use weft_istio::Resolution;
use weft_xds::{Resource, ResourceSet};

use crate::cluster::{self, Built};
use crate::listener::{self, PortKind};
use crate::naming::{outbound_cluster, short_names};
use crate::route;
use crate::scope::Scope;

/// Istio's (and Envoy's) default ring size for consistent hashing.
const DEFAULT_RING_SIZE: u64 = 1024;
/// The largest ring gRPC accepts (`minimum_ring_size`, `maximum_ring_size`).
const GRPC_MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// Listeners, routes, clusters and endpoints for a gRPC client's scope.
pub fn resources(scope: &Scope) -> ResourceSet {
    let mut set = ResourceSet::default();
    for s in scope.services.values() {
        let rule = scope.destination_rule(s);
        for p in &s.ports {
            for built in cluster::service_port_clusters(scope, s, p, rule.as_ref()).into_iter().filter_map(for_grpc) {
                if let Some(cla) = &built.assignment {
                    set.insert(Resource::new(&cla.cluster_name, cla));
                }
                set.insert(Resource::new(&built.cluster.name, &built.cluster));
            }
        }
    }
    for s in scope.services.values() {
        // Wildcard hosts cannot be dialled and resolution NONE has only original-destination
        // clusters, which gRPC does not have.
        if s.is_wildcard() || s.resolution == Resolution::None {
            continue;
        }
        for p in &s.ports {
            let visible = scope.ports.get(&p.number).is_some_and(|v| v.iter().any(|ps| ps.service.host == s.host));
            let http = matches!(listener::port_kind(&p.protocol), PortKind::Http | PortKind::Sniffed);
            if !visible || !http {
                continue;
            }
            let route_name = outbound_cluster(p.number, "", &s.host);
            let rc = route::grpc_routes(scope, s, p.number, &route_name);
            set.insert(Resource::new(&rc.name, &rc));
            let names = std::iter::once(s.host.clone()).chain(short_names(
                &s.host,
                &scope.proxy.namespace,
                &scope.opts.domain_suffix,
            ));
            for name in names {
                let l = listener::grpc_listener(&format!("{name}:{}", p.number), &route_name);
                set.insert(Resource::new(&l.name, &l));
            }
        }
    }
    set
}

/// An Envoy cluster reshaped for gRPC, or None when gRPC has no form for it.
///
/// - Discovery: EDS stays; a DNS cluster with one host name becomes LOGICAL_DNS (gRPC resolves
///   the name itself); DNS clusters with several names and original-destination clusters are
///   left out (gRPC knows neither).
/// - Endpoints: every locality group carries a locality (empty when unknown), which gRPC requires.
/// - Load balancing: gRPC's xDS client knows only ROUND_ROBIN and RING_HASH. Consistent hashing
///   (ring hash or Maglev) becomes RING_HASH with the ring size clamped to gRPC's limit; every
///   other policy (Istio's default LEAST_REQUEST, RANDOM) becomes ROUND_ROBIN, as istiod does.
pub fn for_grpc(mut built: Built) -> Option<Built> {
    let c = &mut built.cluster;
    let kind = match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).ok()?,
        _ => return None,
    };
    match kind {
        DiscoveryType::Eds => {}
        DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
            let single = c.load_assignment.as_ref().is_some_and(|cla| {
                cla.endpoints.len() == 1 && cla.endpoints.first().is_some_and(|l| l.lb_endpoints.len() == 1)
            });
            if !single {
                return None;
            }
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns as i32));
        }
        _ => return None,
    }
    // gRPC rejects a locality group without a locality; Envoy reads an empty one as none.
    if let Some(cla) = built.assignment.as_mut() {
        for group in &mut cla.endpoints {
            group.locality.get_or_insert_with(Default::default);
        }
    }
    let c = &mut built.cluster;
    let hashing = c.lb_policy == PbLb::RingHash as i32 || c.lb_policy == PbLb::Maglev as i32;
    if hashing {
        let min = match &c.lb_config {
            Some(LbConfig::RingHashLbConfig(r)) => r.minimum_ring_size.as_ref().map_or(DEFAULT_RING_SIZE, |v| v.value),
            _ => DEFAULT_RING_SIZE,
        };
        c.lb_policy = PbLb::RingHash as i32;
        c.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: min.clamp(1, GRPC_MAX_RING_SIZE) }),
            ..Default::default()
        }));
    } else {
        c.lb_policy = PbLb::RoundRobin as i32;
        c.lb_config = None;
    }
    Some(built)
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{LeastRequestLbConfig, MaglevLbConfig};
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints};

    use super::*;

    fn cluster(kind: DiscoveryType, lb: PbLb, lb_config: Option<LbConfig>, dns_names: usize) -> Built {
        let load_assignment = (dns_names > 0).then(|| ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint::default(); dns_names],
                ..Default::default()
            }],
            ..Default::default()
        });
        Built {
            cluster: Cluster {
                name: "c".into(),
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
                lb_policy: lb as i32,
                lb_config,
                load_assignment,
                ..Default::default()
            },
            assignment: None,
        }
    }

    fn ring(min: u64) -> Option<LbConfig> {
        Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: min }),
            ..Default::default()
        }))
    }

    /// What a cluster became: discovery type, LB policy and LB config.
    type Shape = (DiscoveryType, PbLb, Option<LbConfig>);

    #[test]
    fn clusters_take_the_shapes_grpc_accepts() {
        use DiscoveryType::*;
        let least = Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig::default()));
        let maglev = Some(LbConfig::MaglevLbConfig(MaglevLbConfig { table_size: Some(UInt64Value { value: 65537 }) }));
        // (case, input, want: None when left out)
        let cases: Vec<(&str, Built, Option<Shape>)> = vec![
            (
                "least request becomes round robin",
                cluster(Eds, PbLb::LeastRequest, least, 0),
                Some((Eds, PbLb::RoundRobin, None)),
            ),
            ("random becomes round robin", cluster(Eds, PbLb::Random, None, 0), Some((Eds, PbLb::RoundRobin, None))),
            ("round robin stays", cluster(Eds, PbLb::RoundRobin, None, 0), Some((Eds, PbLb::RoundRobin, None))),
            (
                "ring hash keeps its size",
                cluster(Eds, PbLb::RingHash, ring(4096), 0),
                Some((Eds, PbLb::RingHash, ring(4096))),
            ),
            (
                "maglev becomes ring hash",
                cluster(Eds, PbLb::Maglev, maglev, 0),
                Some((Eds, PbLb::RingHash, ring(1024))),
            ),
            (
                "huge rings are clamped",
                cluster(Eds, PbLb::RingHash, ring(1 << 30), 0),
                Some((Eds, PbLb::RingHash, ring(1 << 23))),
            ),
            (
                "one DNS name: logical DNS",
                cluster(StrictDns, PbLb::LeastRequest, None, 1),
                Some((LogicalDns, PbLb::RoundRobin, None)),
            ),
            ("several DNS names: left out", cluster(StrictDns, PbLb::LeastRequest, None, 2), None),
            ("original destination: left out", cluster(OriginalDst, PbLb::ClusterProvided, None, 0), None),
            ("static: left out", cluster(Static, PbLb::RoundRobin, None, 0), None),
        ];
        for (name, input, want) in cases {
            let got = for_grpc(input).map(|b| {
                let kind = match b.cluster.cluster_discovery_type {
                    Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).unwrap(),
                    other => panic!("{name}: discovery type {other:?}"),
                };
                (kind, PbLb::try_from(b.cluster.lb_policy).unwrap(), b.cluster.lb_config)
            });
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn every_locality_group_has_a_locality() {
        let mut input = cluster(DiscoveryType::Eds, PbLb::LeastRequest, None, 0);
        input.assignment = Some(ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: vec![LocalityLbEndpoints::default(); 2],
            ..Default::default()
        });
        let out = for_grpc(input).expect("EDS cluster kept");
        let groups = out.assignment.expect("assignment kept").endpoints;
        assert_eq!(groups.len(), 2);
        assert!(groups.iter().all(|g| g.locality.is_some()), "{groups:?}");
    }
}
