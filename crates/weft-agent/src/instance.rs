//! What the agent registers: one registry instance per service of the host (declaring the
//! service's host and ports), or one built from a WorkloadGroup's template. Pure functions.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use weft_istio::registry::{Instance, InstancePort, InstanceService};
use weft_istio::Locality;

use crate::config::{HealthCheck, HostConfig, Probe, ServiceConfig};

/// The instance name of a service (or WorkloadGroup) on a host: `NAME-HOSTNAME`.
pub fn instance_name(name: &str, host: &HostConfig) -> String {
    format!("{}-{}", name, host.name)
}

/// The instance that registers `service` of `host`.
pub fn for_service(service: &ServiceConfig, host: &HostConfig, lease_ttl: Duration, healthy: bool) -> Instance {
    Instance {
        name: instance_name(&service.name, host),
        namespace: service.namespace.clone(),
        tenant: host.tenant.clone(),
        service_hosts: Vec::new(),
        address: host.address,
        ports: service.ports.iter().map(|p| (p.name.clone(), p.target_port)).collect(),
        labels: service.labels.clone(),
        locality: host.locality.clone(),
        weight: service.weight,
        network: host.network.clone(),
        service_account: service.service_account.clone().or_else(|| host.service_account.clone()),
        healthy,
        lease_ttl: Some(lease_ttl),
        service: Some(InstanceService {
            host: service.host(),
            ports: service
                .ports
                .iter()
                .map(|p| InstancePort { name: p.name.clone(), number: p.number, protocol: p.protocol.clone() })
                .collect(),
        }),
    }
}

/// What a WorkloadGroup gives the instances registered against it (Istio's VM
/// auto-registration): `spec.metadata.labels` and the `spec.template` WorkloadEntry's labels,
/// ports, serviceAccount, network, locality and weight; its `probe` becomes the health check.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupTemplate {
    pub labels: BTreeMap<String, String>,
    pub ports: BTreeMap<String, u16>,
    pub service_account: Option<String>,
    pub network: Option<String>,
    pub locality: Option<Locality>,
    pub weight: Option<u32>,
    pub health_check: Option<HealthCheck>,
}

/// Reads a stored WorkloadGroup (`body` as the API returns it); `host` is where probes go.
pub fn parse_group(body: &Value, host: IpAddr) -> Result<GroupTemplate, String> {
    let spec = body.get("spec").ok_or("has no spec")?;
    let mut labels = string_map(spec.pointer("/metadata/labels"), "spec.metadata.labels")?;
    let template = spec.get("template").ok_or("spec.template is missing")?;
    labels.extend(string_map(template.get("labels"), "spec.template.labels")?);
    let mut ports = BTreeMap::new();
    if let Some(p) = template.get("ports") {
        let map = p.as_object().ok_or("spec.template.ports is not a map")?;
        for (name, v) in map {
            let n = v
                .as_u64()
                .filter(|n| (1..=65535).contains(n))
                .ok_or_else(|| format!("spec.template.ports.{name}: {v} is not a port"))?;
            ports.insert(name.clone(), n as u16);
        }
    }
    let text = |key: &str| template.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from);
    let locality = match text("locality") {
        Some(l) => Some(Locality::parse(&l).map_err(|e| format!("spec.template.locality: {e}"))?),
        None => None,
    };
    let weight = template.get("weight").and_then(Value::as_u64).map(|w| w.min(u32::MAX as u64) as u32);
    let health_check = match spec.get("probe") {
        Some(p) => Some(probe(p, host)?),
        None => None,
    };
    Ok(GroupTemplate {
        labels,
        ports,
        service_account: text("serviceAccount"),
        network: text("network"),
        locality,
        weight,
        health_check,
    })
}

fn string_map(v: Option<&Value>, what: &str) -> Result<BTreeMap<String, String>, String> {
    let Some(v) = v else { return Ok(BTreeMap::new()) };
    let map = v.as_object().ok_or_else(|| format!("{what} is not a map"))?;
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_string())),
            None => Err(format!("{what}.{k} is not a string")),
        })
        .collect()
}

/// A Kubernetes-style probe (`httpGet`, `tcpSocket`, `exec`; seconds, thresholds) as a check.
fn probe(p: &Value, host: IpAddr) -> Result<HealthCheck, String> {
    let secs = |key: &str, default: u64| -> Result<Duration, String> {
        match p.get(key) {
            None => Ok(Duration::from_secs(default)),
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("spec.probe.{key}: {v} is not a positive number of seconds")),
        }
    };
    let count = |key: &str, default: u32| -> Result<u32, String> {
        match p.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=100).contains(n))
                .map(|n| n as u32)
                .ok_or_else(|| format!("spec.probe.{key}: {v} is out of range 1..100")),
        }
    };
    let target = |o: &Value, what: &str| -> Result<SocketAddr, String> {
        let port = o.get("port").and_then(Value::as_u64).filter(|n| (1..=65535).contains(n)).ok_or_else(|| {
            format!("spec.probe.{what}.port: a port number is required (named ports are not supported)")
        })?;
        let ip = match o.get("host").and_then(Value::as_str) {
            Some(h) => h.parse().map_err(|_| format!("spec.probe.{what}.host: {h:?} is not an IP address"))?,
            None => host,
        };
        Ok(SocketAddr::new(ip, port as u16))
    };
    let probe = if let Some(h) = p.get("httpGet") {
        if h.get("scheme").and_then(Value::as_str).is_some_and(|s| !s.eq_ignore_ascii_case("http")) {
            return Err("spec.probe.httpGet.scheme: only HTTP is supported".into());
        }
        let path = h.get("path").and_then(Value::as_str).unwrap_or("/").to_string();
        Probe::Http { address: target(h, "httpGet")?, path }
    } else if let Some(t) = p.get("tcpSocket") {
        Probe::Tcp { address: target(t, "tcpSocket")? }
    } else if let Some(e) = p.get("exec") {
        let argv: Vec<String> = e
            .get("command")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
            .unwrap_or_default();
        if argv.is_empty() {
            return Err("spec.probe.exec.command: must name a program".into());
        }
        Probe::Command(argv)
    } else {
        return Err("spec.probe: only httpGet, tcpSocket and exec probes are supported".into());
    };
    let interval = secs("periodSeconds", 10)?;
    let timeout = secs("timeoutSeconds", 1)?.min(interval);
    Ok(HealthCheck {
        probe,
        interval,
        timeout,
        healthy_threshold: count("successThreshold", 1)?,
        unhealthy_threshold: count("failureThreshold", 3)?,
    })
}

/// The instance that registers `host` against WorkloadGroup `group` (in `host.namespace`).
pub fn for_group(group: &str, t: &GroupTemplate, host: &HostConfig, lease_ttl: Duration, healthy: bool) -> Instance {
    Instance {
        name: instance_name(group, host),
        namespace: host.namespace.clone(),
        tenant: host.tenant.clone(),
        service_hosts: Vec::new(),
        address: host.address,
        ports: t.ports.clone(),
        labels: t.labels.clone(),
        locality: host.locality.clone().or_else(|| t.locality.clone()),
        weight: t.weight,
        network: host.network.clone().or_else(|| t.network.clone()),
        service_account: t.service_account.clone().or_else(|| host.service_account.clone()),
        healthy,
        lease_ttl: Some(lease_ttl),
        service: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const FILE: &str = r#"
control: { api: 127.0.0.1:15014, xds: 127.0.0.1:15010 }
host: { address: 10.0.0.5, name: vm-1, tenant: acme, namespace: shop, locality: eu/west-1a, network: n1, serviceAccount: vm }
services:
  - name: reviews
    ports:
      - { name: http, number: 9080, protocol: HTTP, targetPort: 8080 }
      - { name: grpc-admin, number: 9090 }
    labels: { app: reviews, version: v1 }
    weight: 3
  - name: ratings
    namespace: other
    serviceAccount: ratings
    ports: [{ name: tcp, number: 7000, protocol: tcp }]
"#;

    #[test]
    fn each_service_becomes_an_instance_declaring_its_host_and_ports() {
        let c = parse("agent.yaml", FILE).unwrap();
        let i = for_service(&c.services[0], &c.host, Duration::from_secs(30), true);
        let json = serde_json::to_value(&i).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "reviews-vm-1", "namespace": "shop", "tenant": "acme", "address": "10.0.0.5",
                "ports": {"http": 8080, "grpc-admin": 9090},
                "labels": {"app": "reviews", "version": "v1"},
                "locality": "eu/west-1a", "weight": 3, "network": "n1", "serviceAccount": "vm",
                "healthy": true, "leaseTtl": "30s",
                "service": {"host": "reviews.shop.svc.cluster.local", "ports": [
                    {"name": "http", "number": 9080, "protocol": "HTTP"},
                    {"name": "grpc-admin", "number": 9090},
                ]},
            })
        );
        i.validate("test").unwrap();
        let r = for_service(&c.services[1], &c.host, Duration::from_secs(30), false);
        assert_eq!((r.name.as_str(), r.namespace.as_str()), ("ratings-vm-1", "other"));
        assert_eq!((r.service_account.as_deref(), r.healthy), (Some("ratings"), false));
        assert_eq!(r.service.unwrap().host, "ratings.other.svc.cluster.local");
    }

    #[test]
    fn a_workload_group_template_gives_labels_ports_account_and_probe() {
        let c = parse("agent.yaml", "control: {api: 127.0.0.1:15014}\nhost: {address: 10.0.0.5, name: vm-1}\nworkloadGroup: reviews\nproxy: {enabled: false}\n").unwrap();
        let body = serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "WorkloadGroup",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {
                "metadata": {"labels": {"app": "reviews"}},
                "template": {"ports": {"http": 9080}, "serviceAccount": "reviews", "network": "vm-net", "labels": {"version": "v2"}},
                "probe": {"httpGet": {"port": 9080, "path": "/ready"}, "periodSeconds": 2, "failureThreshold": 2},
            },
        });
        let t = parse_group(&body, c.host.address).unwrap();
        assert_eq!(
            t.health_check,
            Some(HealthCheck {
                probe: Probe::Http { address: "10.0.0.5:9080".parse().unwrap(), path: "/ready".into() },
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                healthy_threshold: 1,
                unhealthy_threshold: 2,
            })
        );
        let i = for_group("reviews", &t, &c.host, Duration::from_secs(30), true);
        assert_eq!(i.name, "reviews-vm-1");
        assert_eq!(i.labels, BTreeMap::from([("app".into(), "reviews".into()), ("version".into(), "v2".into())]));
        assert_eq!(i.ports, BTreeMap::from([("http".into(), 9080)]));
        assert_eq!((i.service_account.as_deref(), i.network.as_deref()), (Some("reviews"), Some("vm-net")));
        assert!(i.service.is_none(), "the ServiceEntry selecting the labels defines the service");
        i.validate("test").unwrap();
    }

    #[test]
    fn unusable_workload_groups_are_explained() {
        let cases = [
            (serde_json::json!({}), "has no spec"),
            (serde_json::json!({"spec": {}}), "spec.template is missing"),
            (
                serde_json::json!({"spec": {"template": {"ports": {"http": 0}}}}),
                "spec.template.ports.http: 0 is not a port",
            ),
            (
                serde_json::json!({"spec": {"template": {}, "probe": {"grpc": {"port": 1}}}}),
                "spec.probe: only httpGet, tcpSocket and exec probes are supported",
            ),
            (
                serde_json::json!({"spec": {"template": {}, "probe": {"httpGet": {"port": "http"}}}}),
                "spec.probe.httpGet.port: a port number is required (named ports are not supported)",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(parse_group(&body, "10.0.0.5".parse().unwrap()).unwrap_err(), want, "{body}");
        }
    }
}
