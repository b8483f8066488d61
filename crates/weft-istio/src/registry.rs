//! Service instances from registries (VM agents, the API): what ServiceEntries select by
//! `workloadSelector` labels, exactly like WorkloadEntries. An instance may also declare the
//! service it provides ([`InstanceService`]: host and ports), as Consul or Nacos registrations
//! do; the translator then builds that service from the instances when no ServiceEntry defines
//! the host.
//!
//! Instances are stored as JSON (serde); [`Instance::validate`] checks one at the edge with the
//! same error type and wording as the Istio resources.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec::{Address, Labels, Locality, Protocol, ServicePort, WorkloadEntry, WorkloadSelector};
use crate::walk::{check_dns1123_label, check_dns1123_subdomain, check_label_key, check_label_value, check_port_name};
use crate::{Error, Errors};

/// One running instance of a service, registered by an agent or through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Instance {
    /// Unique within (tenant, namespace); DNS-1123.
    pub name: String,
    #[serde(default = "default_str")]
    pub namespace: String,
    #[serde(default = "default_str")]
    pub tenant: String,
    /// ServiceEntry hosts this instance belongs to directly, besides being selected by labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_hosts: Vec<String>,
    pub address: IpAddr,
    /// Port name → port number (matched by name against the ServiceEntry's ports).
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "locality_serde")]
    pub locality: Option<Locality>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The agent's health verdict; unhealthy instances are kept but receive no traffic.
    #[serde(default = "default_true")]
    pub healthy: bool,
    /// The instance disappears unless renewed within this time; None: until deregistered.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration_serde")]
    pub lease_ttl: Option<Duration>,
    /// The service this instance provides, declared by the instance itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<InstanceService>,
}

/// A service declared by its instances: the host and its ports. Instances of one namespace that
/// declare the same host form one service (MESH_INTERNAL, STATIC endpoints, an allocated VIP);
/// a ServiceEntry for the host takes precedence and the instances join it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InstanceService {
    /// An FQDN, or a short name resolved in the instance's namespace
    /// (`reviews` → `reviews.NAMESPACE.svc.cluster.local`).
    pub host: String,
    pub ports: Vec<InstancePort>,
}

/// One port of a declared service. The instance receives it on its own port of the same name
/// (`Instance::ports`), else on `number`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InstancePort {
    pub name: String,
    pub number: u16,
    /// One of [`PROTOCOLS`] (any case); empty: inferred from the name's prefix, as Istio does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
}

/// The protocol names a declared port may carry (Istio's, case-insensitive).
pub const PROTOCOLS: [&str; 12] =
    ["HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-Web", "HTTPS", "TLS", "TCP", "UDP", "Mongo", "Redis", "MySQL"];

impl InstancePort {
    /// The port in ServiceEntry shape.
    pub fn to_service_port(&self) -> ServicePort {
        let protocol = if self.protocol.is_empty() { None } else { Some(self.protocol.as_str()) };
        ServicePort {
            number: self.number,
            protocol: Protocol::infer(protocol, None, &self.name),
            name: self.name.clone(),
            target_port: None,
        }
    }
}

impl InstanceService {
    /// Checks the host and the ports (names and numbers unique, known protocols).
    fn validate(&self, mut err: impl FnMut(&str, String)) {
        if let Err(m) = crate::walk::check_host(&self.host, false) {
            err("service.host", m);
        } else if self.host.starts_with('*') {
            err("service.host", format!("{:?}: a declared service needs a concrete host, not a wildcard", self.host));
        }
        if self.ports.is_empty() {
            err("service.ports", "at least one port is required".into());
        }
        for (i, p) in self.ports.iter().enumerate() {
            let field = format!("service.ports[{i}]");
            if let Err(m) = check_port_name(&p.name) {
                err(&format!("{field}.name"), m);
            }
            if p.number == 0 {
                err(&format!("{field}.number"), "port 0 is not valid (1..65535)".into());
            }
            if !p.protocol.is_empty() && matches!(Protocol::parse(&p.protocol), Protocol::Unsupported(_)) {
                err(
                    &format!("{field}.protocol"),
                    format!("unknown value {:?} (expected one of {})", p.protocol, PROTOCOLS.join(", ")),
                );
            }
            if let Some(j) = self.ports[..i].iter().position(|q| q.name == p.name) {
                err(&format!("{field}.name"), format!("{:?} is already used by service.ports[{j}]", p.name));
            }
            if let Some(j) = self.ports[..i].iter().position(|q| q.number == p.number) {
                err(&format!("{field}.number"), format!("{} is already used by service.ports[{j}]", p.number));
            }
        }
    }
}

fn default_str() -> String {
    "default".into()
}

fn default_true() -> bool {
    true
}

impl Instance {
    /// `tenant/namespace/name`: unique per registry.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.tenant, self.namespace, self.name)
    }

    /// Whether a ServiceEntry's selector picks this instance (same tenant and namespace are the
    /// caller's business, as for WorkloadEntries). An empty selector selects every instance.
    pub fn selected_by(&self, selector: &WorkloadSelector) -> bool {
        selector.matches(&self.labels)
    }

    /// The instance in WorkloadEntry shape, so translation treats both alike.
    pub fn to_workload_entry(&self) -> WorkloadEntry {
        WorkloadEntry {
            address: Some(Address::Ip(self.address)),
            ports: self.ports.clone(),
            labels: self.labels.clone(),
            network: self.network.clone(),
            locality: self.locality.clone(),
            weight: self.weight,
            service_account: self.service_account.clone(),
        }
    }

    /// Parses and validates one instance from JSON; `source` names it in errors.
    pub fn from_json(source: &str, value: serde_json::Value) -> Result<Instance, Errors> {
        let name = value.get("name").and_then(|n| n.as_str()).unwrap_or("").to_string();
        let inst: Instance = serde_json::from_value(value).map_err(|e| {
            Errors(vec![Error {
                file: source.to_string(),
                resource: format!("Instance {name}"),
                field: String::new(),
                message: e.to_string(),
            }])
        })?;
        inst.validate(source)?;
        Ok(inst)
    }

    /// Checks names, labels, ports, weight and lease; every problem is reported.
    pub fn validate(&self, source: &str) -> Result<(), Errors> {
        let mut errs = Vec::new();
        let resource = format!("Instance {}/{}", self.namespace, self.name);
        let mut err = |field: &str, message: String| {
            errs.push(Error { file: source.to_string(), resource: resource.clone(), field: field.into(), message })
        };
        if let Err(m) = check_dns1123_subdomain(&self.name) {
            err("name", m);
        }
        if let Err(m) = check_dns1123_label(&self.namespace) {
            err("namespace", m);
        }
        if let Err(m) = check_label_value(&self.tenant) {
            err("tenant", m);
        } else if self.tenant.is_empty() {
            err("tenant", "must not be empty".into());
        }
        for (i, h) in self.service_hosts.iter().enumerate() {
            if let Err(m) = crate::walk::check_host(h, false) {
                err(&format!("serviceHosts[{i}]"), m);
            }
        }
        if self.address.is_unspecified() || self.address.is_multicast() {
            err("address", format!("{} is not a unicast address", self.address));
        }
        for (name, port) in &self.ports {
            if let Err(m) = check_port_name(name) {
                err(&format!("ports.{name}"), m);
            }
            if *port == 0 {
                err(&format!("ports.{name}"), "port 0 is not valid (1..65535)".into());
            }
        }
        for (k, v) in &self.labels {
            if let Err(m) = check_label_key(k).and_then(|_| check_label_value(v)) {
                err(&format!("labels.{k}"), m);
            }
        }
        if let Some(w) = self.weight {
            if w == 0 || w > 128 {
                err("weight", format!("{w} is out of range 1..128"));
            }
        }
        if let Some(n) = &self.network {
            if let Err(m) = check_label_value(n) {
                err("network", m);
            }
        }
        if let Some(sa) = &self.service_account {
            if let Err(m) = check_dns1123_subdomain(sa) {
                err("serviceAccount", m);
            }
        }
        if let Some(ttl) = self.lease_ttl {
            if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(24 * 3600) {
                err("leaseTtl", "must be between 1s and 24h".into());
            }
        }
        if let Some(service) = &self.service {
            service.validate(&mut err);
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Errors(errs))
        }
    }
}

mod locality_serde {
    use super::Locality;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(l: &Option<Locality>, s: S) -> Result<S::Ok, S::Error> {
        match l {
            Some(l) => s.serialize_str(&l.to_string()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Locality>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => Locality::parse(&s).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

mod duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&crate::walk::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => crate::walk::parse_duration(&s).map(Some).map_err(serde::de::Error::custom),
        }
    }
}
