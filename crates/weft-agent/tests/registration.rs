//! The agent in-process against a real control plane (also in-process) on loopback: leased
//! registration and renewal, health transitions, deregistration on stop, retries while the
//! control plane is away, WorkloadGroup registration.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use weft_agent::{config, Agent, Options};
use weft_control::wire::{ApplyRequest, InstanceList};
use weft_control::{Control, Options as ControlOptions};

const WAIT: Duration = Duration::from_secs(20);

fn control_opts(dir: &Path, api: SocketAddr) -> ControlOptions {
    ControlOptions {
        data_dir: dir.to_path_buf(),
        xds_listen: "127.0.0.1:0".parse().unwrap(),
        api_listen: api,
        debounce: Duration::from_millis(20),
        lease_sweep: Duration::from_millis(200),
        ..Default::default()
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn http(api: SocketAddr, method: http::Method, path: &str, body: Option<Vec<u8>>) -> (u16, Vec<u8>) {
    use http_body_util::BodyExt;
    let stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(api)).await.unwrap().unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), tx.send_request(req)).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
}

async fn instances(api: SocketAddr) -> InstanceList {
    let (status, body) = http(api, http::Method::GET, "/v1/instances", None).await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

/// Waits until the control plane's instance list satisfies `f`.
async fn wait_instances(api: SocketAddr, what: &str, f: impl Fn(&InstanceList) -> bool) -> InstanceList {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = instances(api).await;
        if f(&list) {
            return list;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {WAIT:?}; instances: {list:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn agent_yaml(api: SocketAddr, state: &Path, health_port: u16, extra: &str) -> String {
    format!(
        r#"
control: {{ api: "{api}" }}
host: {{ address: 127.0.0.1, name: vm-1, namespace: shop }}
services:
  - name: reviews
    ports: [{{ name: http, number: 9080, protocol: HTTP, targetPort: {health_port} }}]
    labels: {{ app: reviews }}
    healthCheck: {{ tcp: {{ port: {health_port} }}, interval: 100ms, timeout: 100ms, unhealthyThreshold: 2 }}
leaseTtl: 3s
heartbeat: 200ms
proxy: {{ enabled: false }}
status: {{ listen: "127.0.0.1:0" }}
stateDir: "{state}"
{extra}
"#,
        state = state.display()
    )
}

fn opts() -> Options {
    Options { weft_binary: "/nonexistent/weft".into() }
}

fn instance_healthy(list: &InstanceList, name: &str) -> Option<bool> {
    list.items.iter().find(|i| i.name == name).map(|i| i.instance["healthy"].as_bool().unwrap_or(true))
}

#[tokio::test]
async fn registers_renews_reports_health_and_deregisters() {
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(control_opts(&dir.path().join("cp"), "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let api = control.api_addr;
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    let cfg = config::parse("agent.yaml", &agent_yaml(api, &dir.path().join("state"), app_port, "")).unwrap();
    let agent = Agent::start(cfg, opts()).await.unwrap();

    let list = wait_instances(api, "registered healthy", |l| instance_healthy(l, "reviews-vm-1") == Some(true)).await;
    let entry = &list.items[0];
    assert_eq!((entry.namespace.as_str(), entry.tenant.as_str()), ("shop", "default"));
    assert_eq!(entry.instance["service"]["host"], "reviews.shop.svc.cluster.local");
    assert_eq!(entry.instance["ports"]["http"], app_port);
    let first_expiry = entry.lease_expires_unix_ms.unwrap();
    wait_instances(api, "the lease is renewed", |l| {
        l.items.first().and_then(|i| i.lease_expires_unix_ms).is_some_and(|e| e > first_expiry)
    })
    .await;
    let s = agent.status();
    assert_eq!(s.services[0].registration.state, "registered");
    assert!(s.problems.is_empty(), "{:?}", s.problems);

    // The application stops listening: after two failed checks the instance is unhealthy.
    drop(app);
    wait_instances(api, "reported unhealthy", |l| instance_healthy(l, "reviews-vm-1") == Some(false)).await;
    let s = agent.status();
    assert_eq!(s.services[0].health.healthy, Some(false));
    assert!(s.problems.iter().any(|p| p.starts_with("reviews-vm-1: unhealthy")), "{:?}", s.problems);

    // It comes back on the same port: healthy again.
    let _app = tokio::net::TcpListener::bind(("127.0.0.1", app_port)).await.unwrap();
    wait_instances(api, "healthy again", |l| instance_healthy(l, "reviews-vm-1") == Some(true)).await;

    agent.stop().await;
    assert!(instances(api).await.items.is_empty(), "stopping deregisters");
    control.stop().await;
}

#[tokio::test]
async fn retries_until_the_control_plane_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    let api = free_port();
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg =
        config::parse("agent.yaml", &agent_yaml(api, &dir.path().join("state"), app.local_addr().unwrap().port(), ""))
            .unwrap();
    let agent = Agent::start(cfg, opts()).await.unwrap();
    // Nothing listens yet: the agent keeps trying and says why.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = agent.status();
        let r = &s.services[0].registration;
        if r.consecutive_failures >= 2 {
            assert_eq!(r.state, "registering");
            assert!(r.last_error.as_deref().is_some_and(|e| e.contains("connect")), "{r:?}");
            assert!(s.problems.iter().any(|p| p.contains("not registered")), "{:?}", s.problems);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no failed attempts recorded: {s:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let control = Control::start(control_opts(&dir.path().join("cp"), api)).await.unwrap();
    wait_instances(api, "registered once the control plane is up", |l| l.items.len() == 1).await;
    agent.stop().await;
    control.stop().await;
}

#[tokio::test]
async fn a_lost_registration_is_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(control_opts(&dir.path().join("cp"), "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let api = control.api_addr;
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg =
        config::parse("agent.yaml", &agent_yaml(api, &dir.path().join("state"), app.local_addr().unwrap().port(), ""))
            .unwrap();
    let agent = Agent::start(cfg, opts()).await.unwrap();
    wait_instances(api, "registered", |l| l.items.len() == 1).await;
    // An operator (or a lease sweep after a long partition) removes it: the next renewal finds
    // out and registers again.
    let (status, _) = http(api, http::Method::DELETE, "/v1/instances/shop/reviews-vm-1", None).await;
    assert_eq!(status, 200);
    wait_instances(api, "registered again", |l| l.items.len() == 1).await;
    agent.stop().await;
    control.stop().await;
}

#[tokio::test]
async fn registers_against_a_workload_group() {
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(control_opts(&dir.path().join("cp"), "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let api = control.api_addr;
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: { name: ratings, namespace: shop }
spec:
  metadata: { labels: { app: ratings } }
  template: { ports: { http: 9090 }, serviceAccount: ratings }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: ratings, namespace: shop }
spec:
  hosts: [ratings.shop.svc.cluster.local]
  ports: [{ number: 9080, name: http, protocol: HTTP }]
  resolution: STATIC
  workloadSelector: { labels: { app: ratings } }
"#;
    let body = serde_json::to_vec(&ApplyRequest { file: "wg.yaml".into(), yaml: yaml.into() }).unwrap();
    assert_eq!(http(api, http::Method::POST, "/v1/apply", Some(body)).await.0, 200);
    let text = format!(
        r#"
control: {{ api: "{api}" }}
host: {{ address: 127.0.0.1, name: vm-2, namespace: shop }}
workloadGroup: ratings
leaseTtl: 3s
heartbeat: 200ms
proxy: {{ enabled: false }}
status: {{ listen: "127.0.0.1:0" }}
stateDir: "{}"
"#,
        dir.path().join("state").display()
    );
    let agent = Agent::start(config::parse("agent.yaml", &text).unwrap(), opts()).await.unwrap();
    let list = wait_instances(api, "registered from the template", |l| l.items.len() == 1).await;
    let i = &list.items[0].instance;
    assert_eq!(list.items[0].name, "ratings-vm-2");
    assert_eq!((i["labels"]["app"].as_str(), i["ports"]["http"].as_u64()), (Some("ratings"), Some(9090)));
    assert_eq!(i["serviceAccount"], "ratings");
    assert!(i.get("service").is_none());
    // It joins the ServiceEntry that selects the template's labels: the endpoint is in EDS.
    let node = weft_xds::NodeInfo::from_node(&weft_xds::envoy_types::pb::envoy::config::core::v3::Node {
        id: "sidecar~127.0.0.9~client.shop~shop.svc.cluster.local".into(),
        ..Default::default()
    })
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = weft_translate::render::render_set(&control.plane.view().mesh.generate(&node));
        let eds = text
            .split("--- ")
            .find(|s| s.starts_with("EDS outbound|9080||ratings.shop.svc.cluster.local"))
            .unwrap_or_default()
            .to_string();
        if eds.contains("address: \"127.0.0.1\"") && eds.contains("PortValue 9090") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the instance is not an endpoint of the ServiceEntry:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.stop().await;
    assert!(instances(api).await.items.is_empty());
    control.stop().await;
}
