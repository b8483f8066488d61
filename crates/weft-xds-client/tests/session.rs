//! The ADS session as a pure state machine: the requests that open a stream, what responses do to
//! the store, the subscriptions that follow, and the exact ACKs and NACKs.

use envoy_types::pb::envoy::config::cluster::v3 as cl;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource as PbResource,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use weft_xds::type_url::{CLUSTER, ENDPOINT, LISTENER};
use weft_xds_client::session::{Protocol, Request, Response, Session};
use weft_xds_client::store::{Kind, Store};

fn any<M: Message + Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

fn eds_cluster(name: &str) -> cl::Cluster {
    cl::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(cl::cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cl::cluster::EdsClusterConfig {
            eds_config: Some(core::ConfigSource {
                config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(Default::default())),
                ..Default::default()
            }),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

fn node() -> core::Node {
    core::Node { id: "sidecar~127.0.0.1~a.default~default.svc.cluster.local".into(), ..Default::default() }
}

fn delta(r: &Request) -> &envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
    match r {
        Request::Delta(d) => d,
        Request::Sotw(_) => panic!("expected a delta request"),
    }
}

fn sotw(r: &Request) -> &envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
    match r {
        Request::Sotw(d) => d,
        Request::Delta(_) => panic!("expected a state-of-the-world request"),
    }
}

#[test]
fn a_delta_stream_opens_with_wildcards_then_follows_clusters_with_eds_subscriptions() {
    let mut store = Store::new(Default::default());
    let mut s = Session::new(Protocol::Delta, node());
    let open = s.open(&store);
    assert_eq!(open.iter().map(|r| r.type_url()).collect::<Vec<_>>(), [CLUSTER, LISTENER]);
    assert!(delta(&open[0]).node.is_some() && delta(&open[1]).node.is_none());
    assert!(open.iter().all(|r| delta(r).resource_names_subscribe.is_empty()));

    let resp = DeltaDiscoveryResponse {
        type_url: CLUSTER.into(),
        nonce: "n1".into(),
        resources: vec![
            PbResource {
                name: "c".into(),
                version: "v1".into(),
                resource: Some(any(&eds_cluster("c"))),
                ..Default::default()
            },
            PbResource {
                name: "bad".into(),
                version: "v1".into(),
                resource: Some(any(&cl::Cluster {
                    transport_socket: Some(core::TransportSocket { name: "tls".into(), config_type: None }),
                    ..eds_cluster("bad")
                })),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let h = s.handle(Response::Delta(resp), &mut store);
    assert_eq!((h.kind, h.changed, h.accepted), (Some(Kind::Cluster), true, 1));
    assert_eq!(h.errors, [r#"Cluster "bad": transport_socket: not supported"#]);

    let subs = s.resubscribe(&mut store);
    assert_eq!(subs.len(), 1);
    assert_eq!(delta(&subs[0]).type_url, ENDPOINT);
    assert_eq!(delta(&subs[0]).resource_names_subscribe, ["c"]);
    // Nothing new to subscribe: no request.
    assert!(s.resubscribe(&mut store).is_empty());

    let nack = s.ack(&h, &[]).unwrap();
    let nack = delta(&nack);
    assert_eq!(nack.response_nonce, "n1");
    let detail = nack.error_detail.as_ref().expect("a NACK");
    assert_eq!((detail.code, detail.message.as_str()), (3, r#"Cluster "bad": transport_socket: not supported"#));

    // The cluster goes away: its endpoints are unsubscribed.
    let gone = DeltaDiscoveryResponse {
        type_url: CLUSTER.into(),
        nonce: "n2".into(),
        removed_resources: vec!["c".into()],
        ..Default::default()
    };
    let h = s.handle(Response::Delta(gone), &mut store);
    assert!(h.changed && h.errors.is_empty());
    let subs = s.resubscribe(&mut store);
    assert_eq!(delta(&subs[0]).resource_names_unsubscribe, ["c"]);
    assert!(delta(&s.ack(&h, &[]).unwrap()).error_detail.is_none());

    // On a new stream the versions held are listed.
    let mut store2 = Store::new(Default::default());
    let mut s2 = Session::new(Protocol::Delta, node());
    let resp = DeltaDiscoveryResponse {
        type_url: CLUSTER.into(),
        nonce: "1".into(),
        resources: vec![PbResource {
            name: "c".into(),
            version: "v7".into(),
            resource: Some(any(&eds_cluster("c"))),
            ..Default::default()
        }],
        ..Default::default()
    };
    s2.handle(Response::Delta(resp), &mut store2);
    let reopen = s2.open(&store2);
    let eds = reopen.iter().find(|r| r.type_url() == ENDPOINT).expect("EDS reopened");
    assert_eq!(delta(eds).resource_names_subscribe, ["c"]);
    assert_eq!(delta(&reopen[0]).initial_resource_versions.get("c").map(String::as_str), Some("v7"));
}

#[test]
fn state_of_the_world_acks_versions_removes_what_is_absent_and_keeps_it_when_unsure() {
    let mut store = Store::new(Default::default());
    let mut s = Session::new(Protocol::Sotw, node());
    s.open(&store);
    let first = DiscoveryResponse {
        version_info: "v1".into(),
        type_url: CLUSTER.into(),
        nonce: "1".into(),
        resources: vec![any(&eds_cluster("a")), any(&eds_cluster("b"))],
        ..Default::default()
    };
    let h = s.handle(Response::Sotw(first), &mut store);
    let ack = s.ack(&h, &[]).unwrap();
    assert_eq!((sotw(&ack).version_info.as_str(), sotw(&ack).response_nonce.as_str()), ("v1", "1"));
    assert_eq!(store.names(Kind::Cluster), ["a", "b"]);

    // "b" is absent but an unreadable resource came along: nothing is removed, the NACK keeps v1.
    let unsure = DiscoveryResponse {
        version_info: "v2".into(),
        type_url: CLUSTER.into(),
        nonce: "2".into(),
        resources: vec![any(&eds_cluster("a")), Any { type_url: "type.googleapis.com/other".into(), value: vec![] }],
        ..Default::default()
    };
    let h = s.handle(Response::Sotw(unsure), &mut store);
    assert_eq!(store.names(Kind::Cluster), ["a", "b"]);
    let nack = s.ack(&h, &[]).unwrap();
    assert_eq!(sotw(&nack).version_info, "v1");
    assert!(sotw(&nack).error_detail.is_some());

    // A clean response without "b" removes it.
    let clean = DiscoveryResponse {
        version_info: "v3".into(),
        type_url: CLUSTER.into(),
        nonce: "3".into(),
        resources: vec![any(&eds_cluster("a"))],
        ..Default::default()
    };
    let h = s.handle(Response::Sotw(clean), &mut store);
    assert!(h.changed);
    assert_eq!(store.names(Kind::Cluster), ["a"]);
    assert_eq!(sotw(&s.ack(&h, &[]).unwrap()).version_info, "v3");

    // EDS requests name their resources and carry the last EDS version and nonce.
    let subs = s.resubscribe(&mut store);
    assert_eq!(sotw(&subs[0]).resource_names, ["a"]);
    assert_eq!(sotw(&subs[0]).type_url, ENDPOINT);
}

#[test]
fn late_nacks_need_a_response_to_answer() {
    let mut s = Session::new(Protocol::Delta, node());
    assert!(s.late_nack(Kind::Listener, &["x".into()]).is_none());
}
