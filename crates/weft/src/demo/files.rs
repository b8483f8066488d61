//! The demo mesh as Istio YAML: what `weft demo` applies and what a user edits and re-applies.

use std::net::Ipv4Addr;

/// One workload of the demo: an application and its sidecar, on its own loopback address.
pub struct Workload {
    pub name: &'static str,
    pub app: &'static str,
    pub version: &'static str,
    pub ip: Ipv4Addr,
    /// Where the application itself listens (on `ip`); 0 for the demo client.
    pub app_port: u16,
    /// `http` or `grpc`.
    pub protocol: &'static str,
}

pub const NAMESPACE: &str = "demo";
pub const REVIEWS_PORT: u16 = 9080;
pub const RATINGS_PORT: u16 = 9090;
pub const REVIEWS_HOST: &str = "reviews.demo.svc.cluster.local";
pub const RATINGS_HOST: &str = "ratings.demo.svc.cluster.local";

pub fn workloads(base: Ipv4Addr) -> Vec<Workload> {
    let ip = |n: u8| {
        let o = base.octets();
        Ipv4Addr::new(o[0], o[1], o[2], o[3].wrapping_add(n))
    };
    vec![
        Workload {
            name: "productpage-v1",
            app: "productpage",
            version: "v1",
            ip: ip(0),
            app_port: 0,
            protocol: "http",
        },
        Workload { name: "reviews-v1", app: "reviews", version: "v1", ip: ip(1), app_port: 8080, protocol: "http" },
        Workload { name: "reviews-v2", app: "reviews", version: "v2", ip: ip(2), app_port: 8080, protocol: "http" },
        Workload { name: "ratings-v1", app: "ratings", version: "v1", ip: ip(3), app_port: 8090, protocol: "grpc" },
    ]
}

/// The services, their workloads and each workload's Sidecar (bind mode: no capture, no root).
pub fn mesh_yaml(w: &[Workload]) -> String {
    let mut out = format!(
        r#"# The demo's services and workloads. Each workload has its own loopback address; its sidecar
# listens there (bind mode, Sidecar captureMode NONE) so no iptables and no root are needed.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: reviews, namespace: {NAMESPACE} }}
spec:
  hosts: [{REVIEWS_HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: {REVIEWS_PORT}, name: http, protocol: HTTP }}]
  workloadSelector: {{ labels: {{ app: reviews }} }}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: ratings, namespace: {NAMESPACE} }}
spec:
  hosts: [{RATINGS_HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: {RATINGS_PORT}, name: grpc, protocol: GRPC }}]
  workloadSelector: {{ labels: {{ app: ratings }} }}
"#
    );
    for w in w.iter().filter(|w| w.app_port != 0) {
        let port_name = w.protocol;
        let service_port = if w.protocol == "grpc" { RATINGS_PORT } else { REVIEWS_PORT };
        out.push_str(&format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{ name: {name}, namespace: {NAMESPACE} }}
spec:
  address: {ip}
  labels: {{ app: {app}, version: {version} }}
  ports: {{ {port_name}: {service_port} }}
"#,
            name = w.name,
            ip = w.ip,
            app = w.app,
            version = w.version,
        ));
    }
    out.push_str(&format!(
        r#"---
# The client's sidecar: the application calls reviews on {client}:{REVIEWS_PORT} and ratings on
# {client}:{RATINGS_PORT}.
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: productpage, namespace: {NAMESPACE} }}
spec:
  workloadSelector: {{ labels: {{ app: productpage }} }}
  egress:
    - port: {{ number: {REVIEWS_PORT}, protocol: HTTP, name: http }}
      bind: {client}
      captureMode: NONE
      hosts: ["./{REVIEWS_HOST}"]
    - port: {{ number: {RATINGS_PORT}, protocol: GRPC, name: grpc }}
      bind: {client}
      captureMode: NONE
      hosts: ["./{RATINGS_HOST}"]
---
# Inbound sidecars listen on the workload's own address (its WorkloadEntry address) and hand
# requests to the application on the same address.
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: reviews, namespace: {NAMESPACE} }}
spec:
  workloadSelector: {{ labels: {{ app: reviews }} }}
  ingress:
    - port: {{ number: {REVIEWS_PORT}, protocol: HTTP, name: http }}
      captureMode: NONE
      defaultEndpoint: 0.0.0.0:8080
  egress:
    - captureMode: NONE
      hosts: ["~/*"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: ratings, namespace: {NAMESPACE} }}
spec:
  workloadSelector: {{ labels: {{ app: ratings }} }}
  ingress:
    - port: {{ number: {RATINGS_PORT}, protocol: GRPC, name: grpc }}
      captureMode: NONE
      defaultEndpoint: 0.0.0.0:8090
  egress:
    - captureMode: NONE
      hosts: ["~/*"]
"#,
        client = w[0].ip,
    ));
    out
}

/// The canary: 90/10 between v1 and v2, retries, and outlier detection. Edit the weights and
/// `weft apply -f` this file while the demo runs.
pub fn reviews_yaml() -> String {
    format!(
        r#"# reviews: a 90/10 canary with retries and outlier detection.
# Try: change the weights to 50/50 and run `weft apply -f` on this file while the demo runs.
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: reviews, namespace: {NAMESPACE} }}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {{ consecutive5xxErrors: 5, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 50 }}
  subsets:
    - {{ name: v1, labels: {{ version: v1 }} }}
    - {{ name: v2, labels: {{ version: v2 }} }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews, namespace: {NAMESPACE} }}
spec:
  hosts: [reviews]
  http:
    - route:
        - {{ destination: {{ host: reviews, subset: v1 }}, weight: 90 }}
        - {{ destination: {{ host: reviews, subset: v2 }}, weight: 10 }}
      timeout: 2s
      retries: {{ attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,connect-failure,reset" }}
"#
    )
}

pub fn ratings_yaml() -> String {
    format!(
        r#"# ratings: gRPC with least-request balancing and retries on UNAVAILABLE.
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: ratings, namespace: {NAMESPACE} }}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: {{ simple: LEAST_REQUEST }}
    outlierDetection: {{ consecutiveGatewayErrors: 5, interval: 5s, baseEjectionTime: 30s }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: ratings, namespace: {NAMESPACE} }}
spec:
  hosts: [ratings]
  http:
    - route: [{{ destination: {{ host: ratings }} }}]
      timeout: 2s
      retries: {{ attempts: 2, perTryTimeout: 1s, retryOn: "unavailable,connect-failure,reset" }}
"#
    )
}

/// The sidecar's bootstrap: its admin listener on the workload's own address.
pub fn boot_yaml(w: &Workload) -> String {
    format!(
        "# The sidecar of {name}: everything else comes from the control plane over xDS.\n\
         admin: {{ address: \"{ip}:15000\", health_address: \"{ip}:15021\", metrics_address: \"{ip}:15090\" }}\n",
        name = w.name,
        ip = w.ip,
    )
}

/// Istio's node id for a workload's sidecar.
pub fn node_id(w: &Workload) -> String {
    format!("sidecar~{}~{}.{NAMESPACE}~{NAMESPACE}.svc.cluster.local", w.ip, w.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_yaml_is_valid_istio() {
        let w = workloads(Ipv4Addr::new(127, 0, 0, 10));
        for (name, text) in
            [("mesh.yaml", mesh_yaml(&w)), ("reviews.yaml", reviews_yaml()), ("ratings.yaml", ratings_yaml())]
        {
            let resources = weft_istio::parse_yaml(name, &text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!resources.is_empty(), "{name}");
            for r in &resources {
                assert!(r.not_applied.is_empty(), "{name}: {:?}", r.not_applied);
            }
        }
        assert_eq!(node_id(&w[1]), "sidecar~127.0.0.11~reviews-v1.demo~demo.svc.cluster.local");
        assert!(weft_config::parse_str(&boot_yaml(&w[0]), "boot.yaml").is_ok());
    }
}
