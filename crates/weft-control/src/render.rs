//! Readable views of xDS resources for `weft proxy-config`: a few summary columns per resource
//! (as istioctl prints them) and the whole message for `-o detail`.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{route, route_match, RouteConfiguration};
use prost::Message;
use weft_xds::{type_url, Resource};

use crate::wire::RenderedResource;

pub fn render(r: &Resource) -> RenderedResource {
    let (summary, detail) = match r.type_url() {
        type_url::LISTENER => decode::<Listener>(r, listener),
        type_url::ROUTE => decode::<RouteConfiguration>(r, routes),
        type_url::CLUSTER => decode::<Cluster>(r, cluster),
        type_url::ENDPOINT => decode::<ClusterLoadAssignment>(r, endpoints),
        other => (vec![("TYPE".to_string(), other.to_string())], String::new()),
    };
    RenderedResource { name: r.name.clone(), version: r.version.clone(), summary, detail }
}

type Columns = Vec<(String, String)>;

fn decode<M: Message + Default + std::fmt::Debug>(r: &Resource, f: fn(&M) -> Columns) -> (Columns, String) {
    match M::decode(r.body.value.as_slice()) {
        Ok(m) => (f(&m), format!("{m:#?}")),
        Err(e) => (vec![("ERROR".to_string(), e.to_string())], String::new()),
    }
}

fn col(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

fn addr(a: Option<&Address>) -> String {
    match a.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => match s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => format!("{}:{p}", s.address),
            _ => s.address.clone(),
        },
        Some(address::Address::Pipe(p)) => p.path.clone(),
        _ => "-".to_string(),
    }
}

fn listener(l: &Listener) -> Columns {
    let kind = if l.api_listener.is_some() { "api-listener" } else { "listener" };
    let chains = l.filter_chains.len() + usize::from(l.default_filter_chain.is_some());
    vec![
        col("ADDRESS", if l.api_listener.is_some() { "-".to_string() } else { addr(l.address.as_ref()) }),
        col("KIND", kind),
        col("CHAINS", chains.to_string()),
        col("ORIGINAL_DST", l.use_original_dst.as_ref().map(|b| b.value).unwrap_or(false).to_string()),
    ]
}

fn routes(rc: &RouteConfiguration) -> Columns {
    let mut domains: Vec<&str> = rc.virtual_hosts.iter().flat_map(|v| v.domains.iter().map(String::as_str)).collect();
    let more = domains.len().saturating_sub(3);
    domains.truncate(3);
    let mut d = domains.join(",");
    if more > 0 {
        d.push_str(&format!(" +{more}"));
    }
    let first = rc.virtual_hosts.iter().flat_map(|v| v.routes.first()).next();
    let target = first
        .map(|r| {
            let m = match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
                Some(route_match::PathSpecifier::Prefix(p)) => format!("{p}*"),
                Some(route_match::PathSpecifier::Path(p)) => p.clone(),
                Some(route_match::PathSpecifier::SafeRegex(r)) => format!("~{}", r.regex),
                _ => "*".to_string(),
            };
            let to = match &r.action {
                Some(route::Action::Route(a)) => match &a.cluster_specifier {
                    Some(envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier::Cluster(c)) => {
                        c.clone()
                    }
                    Some(
                        envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier::WeightedClusters(w),
                    ) => format!("{} weighted", w.clusters.len()),
                    _ => "-".to_string(),
                },
                Some(route::Action::Redirect(_)) => "redirect".to_string(),
                Some(route::Action::DirectResponse(d)) => format!("direct {}", d.status),
                _ => "-".to_string(),
            };
            format!("{m} → {to}")
        })
        .unwrap_or_else(|| "-".to_string());
    vec![col("VHOSTS", rc.virtual_hosts.len().to_string()), col("DOMAINS", d), col("FIRST ROUTE", target)]
}

fn cluster(c: &Cluster) -> Columns {
    let ty = match c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) => {
            cluster::DiscoveryType::try_from(t).map(|t| t.as_str_name().to_string()).unwrap_or_else(|_| t.to_string())
        }
        _ => "-".to_string(),
    };
    let lb = cluster::LbPolicy::try_from(c.lb_policy).map(|p| p.as_str_name().to_string()).unwrap_or_default();
    let mut parts = c.name.splitn(4, '|');
    let (dir, port, subset, host) = (parts.next(), parts.next(), parts.next(), parts.next());
    let (port, subset, host) = if host.is_some() && matches!(dir, Some("outbound" | "inbound")) {
        (port.unwrap_or("-"), subset.unwrap_or(""), host.unwrap_or(""))
    } else {
        ("-", "", "")
    };
    vec![
        col("SERVICE FQDN", if host.is_empty() { "-" } else { host }),
        col("PORT", port),
        col("SUBSET", if subset.is_empty() { "-" } else { subset }),
        col("TYPE", ty),
        col("LB", lb),
    ]
}

fn endpoints(cla: &ClusterLoadAssignment) -> Columns {
    let mut eps = Vec::new();
    for (i, l) in cla.endpoints.iter().enumerate() {
        for e in &l.lb_endpoints {
            let a = match &e.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => addr(ep.address.as_ref()),
                _ => "-".to_string(),
            };
            let health = envoy_types::pb::envoy::config::core::v3::HealthStatus::try_from(e.health_status)
                .map(|h| h.as_str_name().to_string())
                .unwrap_or_default();
            let prio = if l.priority > 0 || i > 0 { format!(" p{}", l.priority) } else { String::new() };
            eps.push(format!("{a} {health}{prio}"));
        }
    }
    vec![col("ENDPOINTS", eps.len().to_string()), col("ADDRESSES", eps.join(", "))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::SocketAddress;
    use envoy_types::pb::envoy::config::endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints};

    #[test]
    fn clusters_and_endpoints_render_as_columns() {
        let c = Cluster {
            name: "outbound|9080|v2|reviews.default.svc.cluster.local".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
            ..Default::default()
        };
        let out = render(&Resource::new(c.name.clone(), &c));
        let get = |k: &str| out.summary.iter().find(|(c, _)| c == k).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get("SERVICE FQDN"), "reviews.default.svc.cluster.local");
        assert_eq!((get("PORT").as_str(), get("SUBSET").as_str(), get("TYPE").as_str()), ("9080", "v2", "EDS"));
        assert!(out.detail.contains("reviews"));

        let ep = |ip: &str| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: ip.into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(9080)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            health_status: 1,
            ..Default::default()
        };
        let cla = ClusterLoadAssignment {
            cluster_name: c.name.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![ep("10.0.0.1"), ep("10.0.0.2")],
                ..Default::default()
            }],
            ..Default::default()
        };
        let out = render(&Resource::new(c.name.clone(), &cla));
        assert_eq!(out.summary[0].1, "2");
        assert_eq!(out.summary[1].1, "10.0.0.1:9080 HEALTHY, 10.0.0.2:9080 HEALTHY");
    }
}
