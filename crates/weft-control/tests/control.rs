//! The control plane in-process with real sockets: config applied through the API reaches a
//! real xDS client, survives a restart, and a bad file stores nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use weft_ads::sim::{sidecar_node, SimClient, SimConfig};
use weft_ads::Protocol;
use weft_control::wire::{ApplyRequest, ApplyResponse, CheckResponse, ErrorResponse, ListResponse};
use weft_control::{Control, Options};
use weft_xds::type_url;

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews.shop.svc.cluster.local]
  addresses: [10.99.0.10]
  ports: [{ number: 9080, name: http, protocol: HTTP }]
  resolution: STATIC
  endpoints:
    - { address: 127.0.0.11, labels: { version: v1 } }
    - { address: 127.0.0.12, labels: { version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews, namespace: shop }
spec:
  host: reviews.shop.svc.cluster.local
  subsets:
    - { name: v1, labels: { version: v1 } }
    - { name: v2, labels: { version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews.shop.svc.cluster.local]
  http:
    - route:
        - { destination: { host: reviews.shop.svc.cluster.local, subset: v1 }, weight: 90 }
        - { destination: { host: reviews.shop.svc.cluster.local, subset: v2 }, weight: 10 }
"#;

fn opts(dir: &std::path::Path) -> Options {
    Options {
        data_dir: dir.to_path_buf(),
        xds_listen: "127.0.0.1:0".parse().unwrap(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        debounce: Duration::from_millis(20),
        ..Default::default()
    }
}

async fn call(api: SocketAddr, method: http::Method, path: &str, body: Option<Vec<u8>>) -> (u16, Bytes) {
    let stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(api)).await.unwrap().unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), tx.send_request(req)).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

async fn apply(api: SocketAddr, file: &str, yaml: &str) -> (u16, Bytes) {
    let body = serde_json::to_vec(&ApplyRequest { file: file.into(), yaml: yaml.into() }).unwrap();
    call(api, http::Method::POST, "/v1/apply", Some(body)).await
}

fn node() -> envoy_types::pb::envoy::config::core::v3::Node {
    let labels = BTreeMap::from([("app".to_string(), "frontend".to_string())]);
    sidecar_node("127.0.0.2".parse().unwrap(), "frontend-1", "shop", &labels)
}

#[tokio::test]
async fn applied_config_reaches_a_proxy_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(opts(dir.path())).await.unwrap();
    let (status, body) = apply(control.api_addr, "mesh.yaml", MESH).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let applied: ApplyResponse = serde_json::from_slice(&body).unwrap();
    let actions: Vec<&str> = applied.results.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["created", "created", "created"]);

    let endpoint = format!("http://{}", control.xds_addr);
    let client = SimClient::connect(&endpoint, node(), SimConfig::wildcard(Protocol::Delta)).await.unwrap();
    let want = "outbound|9080|v2|reviews.shop.svc.cluster.local";
    let state = client
        .wait_until(Duration::from_secs(10), "subset cluster", |s| s.names(type_url::CLUSTER).contains(&want))
        .await
        .unwrap();
    assert!(state.names(type_url::ROUTE).contains(&"9080"), "{:?}", state.names(type_url::ROUTE));

    // The server's view of the proxy: synced, and its acknowledged clusters are listed.
    let check = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, body) = call(control.api_addr, http::Method::GET, "/v1/check", None).await;
            let c: CheckResponse = serde_json::from_slice(&body).unwrap();
            let synced = c
                .proxies
                .as_array()
                .is_some_and(|l| l.iter().any(|p| p["types"][type_url::CLUSTER]["in_sync"].as_bool() == Some(true)));
            if synced {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the proxy shows as synced");
    assert_eq!(check.mesh_revision, check.store_revision);
    let node_id = client.node_id().to_string();
    let (status, body) =
        call(control.api_addr, http::Method::GET, &format!("/v1/proxies/{node_id}/config?type=clusters"), None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains(want));
    drop(client);
    control.stop().await;

    // Restart on the same directory: everything acknowledged is served again.
    let control = Control::start(opts(dir.path())).await.unwrap();
    let (_, body) = call(control.api_addr, http::Method::GET, "/v1/resources", None).await;
    let list: ListResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.items.len(), 3);
    let endpoint = format!("http://{}", control.xds_addr);
    let client = SimClient::connect(&endpoint, node(), SimConfig::wildcard(Protocol::Sotw)).await.unwrap();
    client
        .wait_until(Duration::from_secs(10), "subset cluster after restart", |s| {
            s.names(type_url::CLUSTER).contains(&want)
        })
        .await
        .unwrap();
    control.stop().await;
}

#[tokio::test]
async fn a_file_with_one_bad_resource_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(opts(dir.path())).await.unwrap();
    let bad = MESH.replace("weight: 10", "weight: 20");
    let (status, body) = apply(control.api_addr, "mesh.yaml", &bad).await;
    assert_eq!(status, 422);
    let err: ErrorResponse = serde_json::from_slice(&body).unwrap();
    let all = err.errors.join("\n");
    assert!(all.contains("mesh.yaml") && all.contains("VirtualService shop/reviews"), "{all}");
    let (_, body) = call(control.api_addr, http::Method::GET, "/v1/resources", None).await;
    let list: ListResponse = serde_json::from_slice(&body).unwrap();
    assert!(list.items.is_empty(), "nothing from the bad file is stored");
    control.stop().await;
}

#[tokio::test]
async fn an_endpoint_change_reaches_the_proxy_as_an_eds_update() {
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(opts(dir.path())).await.unwrap();
    assert_eq!(apply(control.api_addr, "mesh.yaml", MESH).await.0, 200);
    let endpoint = format!("http://{}", control.xds_addr);
    let client = SimClient::connect(&endpoint, node(), SimConfig::wildcard(Protocol::Delta)).await.unwrap();
    let cla = "outbound|9080|v1|reviews.shop.svc.cluster.local";
    let before = client
        .wait_until(Duration::from_secs(10), "endpoints", |s| s.names(type_url::ENDPOINT).contains(&cla))
        .await
        .unwrap();
    let v_before = before.types[type_url::ENDPOINT].resources[cla].clone();
    let changed = MESH.replace("127.0.0.11", "127.0.0.21");
    assert_eq!(apply(control.api_addr, "mesh.yaml", &changed).await.0, 200);
    client
        .wait_until(Duration::from_secs(10), "new endpoint version", |s| {
            s.types.get(type_url::ENDPOINT).and_then(|t| t.resources.get(cla)).is_some_and(|v| *v != v_before)
        })
        .await
        .unwrap();
    control.stop().await;
}

/// An instance that declares its service (as `weft agent` registers one): the host gets a VIP
/// from the reserved range and a cluster with the instance as endpoint; the VIP is released when
/// the last instance goes, and the service with it.
#[tokio::test]
async fn instances_declaring_a_service_get_a_vip_until_the_last_one_goes() {
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(opts(dir.path())).await.unwrap();
    let instance = |ip: &str| {
        serde_json::to_vec(&serde_json::json!({
            "instance": {
                "address": ip,
                "labels": {"app": "ratings"},
                "service": {"host": "ratings", "ports": [{"name": "http", "number": 9080, "protocol": "HTTP"}]},
            },
            "ttl_seconds": 30,
        }))
        .unwrap()
    };
    for (name, ip) in [("ratings-vm-1", "127.0.0.31"), ("ratings-vm-2", "127.0.0.32")] {
        let path = format!("/v1/instances/shop/{name}");
        let (status, body) = call(control.api_addr, http::Method::PUT, &path, Some(instance(ip))).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let vip_of = |plane: &weft_control::Plane| {
        plane
            .store()
            .vips()
            .unwrap()
            .get(&("default".to_string(), "ratings.shop.svc.cluster.local".to_string()))
            .copied()
    };
    let allocated = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let (Some(vip), true) = (vip_of(&control.plane), control.plane.view().services == 1) {
                return vip;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a VIP is allocated for the declared host");
    assert!(weft_store::is_allocatable(allocated), "{allocated} is in the reserved range");

    let endpoint = format!("http://{}", control.xds_addr);
    let client = SimClient::connect(&endpoint, node(), SimConfig::wildcard(Protocol::Delta)).await.unwrap();
    let cluster = "outbound|9080||ratings.shop.svc.cluster.local";
    client
        .wait_until(Duration::from_secs(10), "the declared service's cluster", |s| {
            s.names(type_url::CLUSTER).contains(&cluster) && s.names(type_url::ENDPOINT).contains(&cluster)
        })
        .await
        .unwrap();

    // One instance gone: the VIP stays. Both gone: released, and the service disappears.
    let (status, _) = call(control.api_addr, http::Method::DELETE, "/v1/instances/shop/ratings-vm-1", None).await;
    assert_eq!(status, 200);
    let (status, _) = call(control.api_addr, http::Method::DELETE, "/v1/instances/shop/ratings-vm-2", None).await;
    assert_eq!(status, 200);
    client
        .wait_until(Duration::from_secs(10), "the cluster is removed", |s| {
            !s.names(type_url::CLUSTER).contains(&cluster)
        })
        .await
        .unwrap();
    assert_eq!(vip_of(&control.plane), None, "the VIP is released with the last instance");
    assert_eq!(control.plane.view().services, 0);
    control.stop().await;
}

/// Two instances declaring one host with different ports: `weft check` (GET /v1/check) shows
/// the translation warning naming the second.
#[tokio::test]
async fn conflicting_port_declarations_show_in_check() {
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(opts(dir.path())).await.unwrap();
    for (name, ip, protocol) in [("ratings-vm-1", "127.0.0.41", "HTTP"), ("ratings-vm-2", "127.0.0.42", "TCP")] {
        let body = serde_json::to_vec(&serde_json::json!({
            "instance": {
                "address": ip,
                "service": {"host": "ratings", "ports": [{"name": "api", "number": 9080, "protocol": protocol}]},
            },
            "ttl_seconds": 30,
        }))
        .unwrap();
        let (status, answer) =
            call(control.api_addr, http::Method::PUT, &format!("/v1/instances/shop/{name}"), Some(body)).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    }
    let want = "Instance shop/ratings-vm-2: declares port api 9080 (TCP) for host ratings.shop.svc.cluster.local, but Instance shop/ratings-vm-1 declared api 9080 (HTTP) first; the first declaration applies";
    let warnings = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, body) = call(control.api_addr, http::Method::GET, "/v1/check", None).await;
            let c: CheckResponse = serde_json::from_slice(&body).unwrap();
            if c.mesh_revision == c.store_revision && c.services == 1 {
                return c.warnings;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the mesh is rebuilt");
    assert_eq!(warnings, [want]);
    control.stop().await;
}
