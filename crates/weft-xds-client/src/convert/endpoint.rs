//! `envoy.config.endpoint.v3.ClusterLoadAssignment` → localities with endpoints (EDS, and the
//! inline `load_assignment` of static and DNS clusters).

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as pb;
use envoy_types::pb::google::protobuf::value::Kind;
use weft_config::{Endpoint, EndpointAddress, EndpointHealth, Labels, Locality, LocalityEndpoints};

use super::common::*;

/// Envoy's default overprovisioning factor, the one weft's balancer uses.
const OVERPROVISIONING: u32 = 140;

#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Sorted by priority; locality weights as sent (see [`weigh_localities`]).
    pub localities: Vec<LocalityEndpoints>,
}

/// Converts an EDS resource. Host names are not allowed (EDS carries addresses).
pub fn endpoints(cla: &pb::ClusterLoadAssignment) -> R<Assignment> {
    let ctx = Ctx::new("ClusterLoadAssignment", &cla.cluster_name);
    if cla.cluster_name.is_empty() {
        return Err(ctx.err("cluster_name", "must not be empty"));
    }
    assignment(&ctx, "", cla, false, true)
}

/// Locality weights count only when the cluster asks for locality-weighted balancing.
pub fn weigh_localities(localities: &mut [LocalityEndpoints], locality_weighted: bool) {
    if !locality_weighted {
        for l in localities {
            l.weight = None;
        }
    }
}

pub(crate) fn assignment(
    ctx: &Ctx,
    field: &str,
    cla: &pb::ClusterLoadAssignment,
    dns: bool,
    locality_weighted: bool,
) -> R<Assignment> {
    if let Some(p) = &cla.policy {
        let pf = join(field, "policy");
        if !p.drop_overloads.is_empty() {
            return Err(ctx.unsupported(format!("{pf}.drop_overloads")));
        }
        if let Some(f) = &p.overprovisioning_factor {
            if f.value != OVERPROVISIONING {
                return Err(ctx.err(
                    format!("{pf}.overprovisioning_factor"),
                    format!("{}: only the default {OVERPROVISIONING} is supported", f.value),
                ));
            }
        }
        if p.weighted_priority_health {
            return Err(ctx.unsupported(format!("{pf}.weighted_priority_health")));
        }
    }
    if !cla.named_endpoints.is_empty() {
        return Err(ctx.unsupported(join(field, "named_endpoints")));
    }
    let mut localities = Vec::with_capacity(cla.endpoints.len());
    for (i, le) in cla.endpoints.iter().enumerate() {
        let lf = join(field, &format!("endpoints[{i}]"));
        if le.lb_config.is_some() {
            return Err(ctx.unsupported(format!("{lf}.lb_config")));
        }
        let weight = match &le.load_balancing_weight {
            None => None,
            Some(w) if w.value == 0 => return Err(ctx.err(format!("{lf}.load_balancing_weight"), "must be at least 1")),
            Some(w) => Some(w.value),
        };
        let locality = le
            .locality
            .as_ref()
            .map(|l| Locality { region: l.region.clone(), zone: l.zone.clone(), sub_zone: l.sub_zone.clone() })
            .unwrap_or_default();
        let mut eps = Vec::with_capacity(le.lb_endpoints.len());
        for (j, e) in le.lb_endpoints.iter().enumerate() {
            eps.push(lb_endpoint(ctx, &format!("{lf}.lb_endpoints[{j}]"), e, dns)?);
        }
        localities.push(LocalityEndpoints { locality, priority: le.priority, weight, endpoints: eps });
    }
    localities.sort_by_key(|l| l.priority);
    weigh_localities(&mut localities, locality_weighted);
    Ok(Assignment { localities })
}

fn lb_endpoint(ctx: &Ctx, f: &str, e: &pb::LbEndpoint, dns: bool) -> R<Endpoint> {
    use pb::lb_endpoint::HostIdentifier as H;
    let ep = match &e.host_identifier {
        Some(H::Endpoint(ep)) => ep,
        Some(H::EndpointName(_)) => return Err(ctx.unsupported(format!("{f}.endpoint_name"))),
        None => return Err(ctx.err(format!("{f}.endpoint"), "required")),
    };
    if !ep.additional_addresses.is_empty() {
        return Err(ctx.unsupported(format!("{f}.endpoint.additional_addresses")));
    }
    if let Some(hc) = &ep.health_check_config {
        if hc.port_value != 0 || hc.address.is_some() {
            return Err(ctx.unsupported(format!("{f}.endpoint.health_check_config")));
        }
    }
    let address = match address(ctx, &format!("{f}.endpoint.address"), &ep.address, dns)? {
        Addr::Ip(sa) => EndpointAddress::Socket(sa),
        Addr::Name(host, port) => EndpointAddress::Dns { host, port },
    };
    let weight = match &e.load_balancing_weight {
        None => 1,
        Some(w) if w.value == 0 => return Err(ctx.err(format!("{f}.load_balancing_weight"), "must be at least 1")),
        Some(w) => w.value,
    };
    use core::HealthStatus as S;
    let health = match S::try_from(e.health_status) {
        Ok(S::Unknown) | Ok(S::Healthy) => EndpointHealth::Healthy,
        Ok(S::Unhealthy) | Ok(S::Timeout) => EndpointHealth::Unhealthy,
        Ok(S::Draining) => EndpointHealth::Draining,
        Ok(S::Degraded) => return Err(ctx.err(format!("{f}.health_status"), "DEGRADED is not supported")),
        Err(_) => return Err(ctx.err(format!("{f}.health_status"), format!("unknown value {}", e.health_status))),
    };
    Ok(Endpoint { address, weight, health, metadata: endpoint_labels(&e.metadata) })
}

/// Istio's endpoint metadata `filter_metadata.istio.workload` =
/// `NAME;NAMESPACE;CANONICAL_NAME;REVISION;CLUSTER`, as destination labels for metrics.
fn endpoint_labels(md: &Option<core::Metadata>) -> Labels {
    let mut out = Labels::new();
    if let Some(Kind::StringValue(w)) = metadata_field(md, "istio", "workload") {
        let keys = ["workload", "namespace", "app", "version", "cluster"];
        for (k, v) in keys.iter().zip(w.split(';')) {
            if !v.is_empty() {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    out
}
