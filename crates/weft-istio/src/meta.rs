//! Resource identity: kinds, keys, object metadata and the resource envelope.

use std::collections::BTreeMap;
use std::fmt;

use crate::spec::{DestinationRule, ServiceEntry, Sidecar, VirtualService, WorkloadEntry};

/// The label that puts a resource (or a registry instance) in a tenant.
pub const TENANT_LABEL: &str = "weft.io/tenant";

/// The Istio kinds Weft accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    ServiceEntry,
    WorkloadEntry,
    WorkloadGroup,
    VirtualService,
    DestinationRule,
    Sidecar,
    Gateway,
    AuthorizationPolicy,
    PeerAuthentication,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::WorkloadGroup,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Sidecar,
        Kind::Gateway,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
    ];

    /// The kind as written in YAML (`VirtualService`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::WorkloadGroup => "WorkloadGroup",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Sidecar => "Sidecar",
            Kind::Gateway => "Gateway",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
        }
    }

    /// kubectl's short name (`vs`, `dr`, `se`...).
    pub fn short_name(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "se",
            Kind::WorkloadEntry => "we",
            Kind::WorkloadGroup => "wg",
            Kind::VirtualService => "vs",
            Kind::DestinationRule => "dr",
            Kind::Sidecar => "sidecar",
            Kind::Gateway => "gw",
            Kind::AuthorizationPolicy => "ap",
            Kind::PeerAuthentication => "pa",
        }
    }

    /// For the CLI: the kind name in any case, its plural, or its short name
    /// (`VirtualService`, `virtualservices`, `serviceentries`, `vs`).
    pub fn parse(s: &str) -> Option<Kind> {
        let lower = s.trim().to_ascii_lowercase();
        Kind::ALL.into_iter().find(|k| {
            let name = k.as_str().to_ascii_lowercase();
            // kubectl's plurals: `virtualservices`, `serviceentries`, `authorizationpolicies`.
            let plural = match name.strip_suffix('y') {
                Some(stem) => format!("{stem}ies"),
                None => format!("{name}s"),
            };
            lower == name || lower == k.short_name() || lower == plural
        })
    }

    /// The API group the kind belongs to.
    pub fn group(self) -> &'static str {
        match self {
            Kind::AuthorizationPolicy | Kind::PeerAuthentication => "security.istio.io",
            _ => "networking.istio.io",
        }
    }

    /// The `apiVersion`s accepted for this kind, newest first.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::AuthorizationPolicy | Kind::PeerAuthentication => {
                &["security.istio.io/v1", "security.istio.io/v1beta1"]
            }
            _ => &["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"],
        }
    }

    /// Kinds whose spec Weft stores but does not translate yet.
    pub fn is_applied(self) -> bool {
        !matches!(self, Kind::WorkloadGroup | Kind::Gateway | Kind::AuthorizationPolicy | Kind::PeerAuthentication)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::parse(s).ok_or_else(|| {
            let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown kind {s:?} (one of {})", names.join(", "))
        })
    }
}

impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A resource's identity. Displays as `VirtualService default/reviews`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Key {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Key {
        Key { kind, namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The parts of Kubernetes object metadata Weft reads. Other metadata fields Kubernetes writes
/// (uid, generation, managedFields...) are accepted and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectMeta {
    /// DNS-1123 label or subdomain, required.
    pub name: String,
    /// Defaults to `default`.
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339, e.g. `2024-05-01T10:00:00Z`; decides conflicts (oldest wins).
    pub creation_timestamp: Option<String>,
    pub resource_version: Option<String>,
}

impl ObjectMeta {
    /// `metadata.labels["weft.io/tenant"]`, else `default`.
    pub fn tenant(&self) -> &str {
        self.labels.get(TENANT_LABEL).map(String::as_str).unwrap_or("default")
    }
}

/// A typed spec. Kinds Weft does not apply yet keep their spec as JSON (`Opaque`).
// Resources are few and long-lived; boxing the larger specs would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadEntry),
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    Sidecar(Sidecar),
    Opaque(serde_json::Value),
}

/// One validated Istio resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub api_version: String,
    pub kind: Kind,
    pub meta: ObjectMeta,
    pub spec: Spec,
    /// Field paths Weft accepted but does not apply (`spec.trafficPolicy.tls`,
    /// `spec.http[0].corsPolicy`; `spec` for kinds not applied at all), for `weft check`.
    pub not_applied: Vec<String>,
    /// The document as given (JSON form of the YAML), for storage and `weft get`.
    pub raw: serde_json::Value,
}

impl Resource {
    pub fn key(&self) -> Key {
        Key { kind: self.kind, namespace: self.meta.namespace.clone(), name: self.meta.name.clone() }
    }

    pub fn tenant(&self) -> &str {
        self.meta.tenant()
    }

    /// Sets `metadata.creationTimestamp` (the store stamps it on first apply) in both the typed
    /// metadata and `raw`, so a reload from `raw` sees the same value.
    pub fn set_creation_timestamp(&mut self, rfc3339: &str) {
        self.meta.creation_timestamp = Some(rfc3339.to_string());
        self.set_raw_meta("creationTimestamp", rfc3339);
    }

    /// Sets `metadata.resourceVersion` in both the typed metadata and `raw`.
    pub fn set_resource_version(&mut self, version: &str) {
        self.meta.resource_version = Some(version.to_string());
        self.set_raw_meta("resourceVersion", version);
    }

    fn set_raw_meta(&mut self, field: &str, value: &str) {
        if let Some(obj) = self.raw.as_object_mut() {
            let meta = obj.entry("metadata").or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert(field.to_string(), serde_json::Value::String(value.to_string()));
            }
        }
    }
}
