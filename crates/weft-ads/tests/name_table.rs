//! The DNS name table (NDS) as an extra type on the same stream: one resource named "", served
//! in SotW and delta, pushed when it changes, and asked of the source only by the streams that
//! subscribe to it.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use prost::Message;
use weft_ads::{AdsOptions, Source};
use weft_xds::nds::{NameInfo, NameTable, RESOURCE_NAME};
use weft_xds::type_url::NAME_TABLE;
use weft_xds::{NodeInfo, Resource, ResourceSet};

/// A source with one cluster and a name table mapping `reviews` to `ip`; it records the types
/// each generation was asked for.
struct Dns {
    ip: &'static str,
    asked: Arc<Mutex<Vec<Vec<String>>>>,
}

impl Dns {
    fn table(&self) -> Resource {
        let mut t = NameTable::default();
        t.table.insert("reviews".into(), NameInfo { ips: vec![self.ip.into()], ..Default::default() });
        Resource::new(RESOURCE_NAME, &t)
    }
}

impl Source for Dns {
    fn generate(&self, _node: &NodeInfo) -> Arc<ResourceSet> {
        set(vec![cluster("c1", ""), self.table()])
    }

    fn generate_types(&self, _node: &NodeInfo, types: &[String]) -> Arc<ResourceSet> {
        self.asked.lock().unwrap().push(types.to_vec());
        let mut out = vec![];
        if types.iter().any(|t| t == CLUSTER) {
            out.push(cluster("c1", ""));
        }
        if types.iter().any(|t| t == NAME_TABLE) {
            out.push(self.table());
        }
        set(out)
    }
}

fn ip_of(any: &weft_xds::envoy_types::pb::google::protobuf::Any) -> String {
    assert_eq!(any.type_url, NAME_TABLE);
    NameTable::decode(any.value.as_slice()).unwrap().table["reviews"].ips[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_serves_the_table_to_subscribers_only() {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let server =
        TestServer::start(Arc::new(Dns { ip: "240.240.0.1", asked: asked.clone() }), AdsOptions::default()).await;

    let dns_node = node("10.0.0.1", "dns-1", "shop");
    let mut dns = SotwClient::connect(&server.endpoint, vec![sotw_request(Some(&dns_node), NAME_TABLE, &[])]).await;
    let resp = dns.recv().await;
    assert_eq!(resp.type_url, NAME_TABLE);
    assert_eq!(resp.resources.len(), 1);
    assert_eq!(ip_of(&resp.resources[0]), "240.240.0.1");
    dns.ack(&resp, &[]).await;

    let proxy_node = node("10.0.0.2", "proxy-1", "shop");
    let mut proxy = SotwClient::connect(&server.endpoint, vec![sotw_request(Some(&proxy_node), CLUSTER, &[])]).await;
    let resp = proxy.recv().await;
    assert_eq!(resp.type_url, CLUSTER);
    proxy.ack(&resp, &[]).await;
    proxy.quiet("a proxy without the name table type").await;

    let p = server.wait_status(&dns_node.id, "NDS ACKed", |p| p.types.get(NAME_TABLE).is_some_and(|t| t.in_sync)).await;
    assert_eq!(p.types[NAME_TABLE].acked.as_ref().map(|a| a.resources), Some(1));
    let asked = asked.lock().unwrap().clone();
    assert!(asked.contains(&vec![NAME_TABLE.to_string()]), "{asked:?}");
    assert!(asked.contains(&vec![CLUSTER.to_string()]), "{asked:?}");
    assert!(asked.iter().all(|t| t.len() == 1), "no stream was generated a type it did not ask for: {asked:?}");

    // A new table is pushed to the DNS client.
    server.ads.publish(Arc::new(Dns { ip: "240.240.0.2", asked: Arc::default() }));
    let resp = dns.recv().await;
    assert_eq!(ip_of(&resp.resources[0]), "240.240.0.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_serves_the_table_by_its_empty_name() {
    let server =
        TestServer::start(Arc::new(Dns { ip: "240.240.0.1", asked: Arc::default() }), AdsOptions::default()).await;
    let n = node("10.0.0.3", "dns-2", "shop");
    let mut c = DeltaClient::connect(&server.endpoint, vec![delta_request(Some(&n), NAME_TABLE, &[], &[])]).await;
    let resp = c.recv().await;
    assert_eq!(resp.type_url, NAME_TABLE);
    assert_eq!(resp.resources.len(), 1);
    assert_eq!(resp.resources[0].name, RESOURCE_NAME);
    let version = resp.resources[0].version.clone();
    assert_eq!(ip_of(resp.resources[0].resource.as_ref().unwrap()), "240.240.0.1");
    c.ack(&resp).await;

    server.ads.publish(Arc::new(Dns { ip: "240.240.0.3", asked: Arc::default() }));
    let resp = c.recv().await;
    assert_eq!(ip_of(resp.resources[0].resource.as_ref().unwrap()), "240.240.0.3");
    assert!(resp.removed_resources.is_empty());
    c.ack(&resp).await;

    // Reconnecting with the current version gets nothing again.
    let current = resp.resources[0].version.clone();
    assert_ne!(current, version);
    let mut again =
        DeltaClient::connect(&server.endpoint, vec![delta_request(Some(&n), NAME_TABLE, &[], &[("", &current)])]).await;
    again.quiet("the client has the current table").await;
}
