//! Service instances from registries (VM agents, the API): what ServiceEntries select by
//! `workloadSelector` labels, exactly like WorkloadEntries.
//!
//! Instances are stored as JSON (serde); [`Instance::validate`] checks one at the edge with the
//! same error type and wording as the Istio resources.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec::{Address, Labels, Locality, WorkloadEntry, WorkloadSelector};
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
