//! The body of the `dns_packet` fuzz target, shared with the corpus replay test: arbitrary bytes
//! as a client packet (local answers from a fixed table), and as an upstream answer to a fixed
//! question (cache storage and replay). Every answer must read back as a response to its query.

use std::sync::OnceLock;

use hickory_proto::op::{Message, MessageType};
use weft_xds::nds;

use crate::server::{Config, Dns, Step};
use crate::wire::{self, Parsed};

fn dns() -> &'static Dns {
    static DNS: OnceLock<Dns> = OnceLock::new();
    DNS.get_or_init(|| {
        let mut cfg = Config::default();
        cfg.lookup.search = vec!["corp.example".into()];
        let dns = Dns::new(cfg);
        let mut t = nds::NameTable::default();
        t.table.insert(
            "reviews.shop.svc.cluster.local".into(),
            nds::NameInfo {
                ips: vec!["240.240.0.1".into(), "fd00::1".into()],
                alt_hosts: vec!["reviews".into(), "reviews.shop".into(), "reviews.shop.svc".into()],
                ..Default::default()
            },
        );
        if let Ok(table) = crate::table::NameTable::from_proto(t) {
            dns.set_table(table);
        }
        dns
    })
}

fn check_answer(answer: &[u8], query_id: Option<u16>) {
    let m = Message::from_vec(answer).expect("every answer weft dns makes can be read back");
    assert_eq!(m.metadata.message_type, MessageType::Response);
    if let Some(id) = query_id {
        assert_eq!(m.metadata.id, id);
    }
}

/// Feeds `data` to the packet paths; panics on a broken invariant.
pub fn packet(data: &[u8]) {
    // As a client packet.
    match dns().answer_local(data) {
        Step::Reply { answer, udp_limit } => {
            let id = (data.len() >= 2).then(|| u16::from_be_bytes([data[0], data[1]]));
            check_answer(&answer, id);
            let cut = wire::fit_udp(answer, udp_limit);
            assert!(cut.len() <= udp_limit, "{} > {udp_limit}", cut.len());
        }
        Step::Forward(q) => {
            let up = wire::upstream_query(&q, 7);
            check_answer_query(&up);
        }
        Step::Drop => {}
    }
    // As an upstream answer to a fixed question.
    let Parsed::Query(q) = wire::parse_query(&fixed_query()) else { panic!("the fixed query parses") };
    if let Ok(resp) = wire::decode(data) {
        if let Some(stored) = wire::storable(&resp, 86_400) {
            assert!(stored.ttl > 0);
            let out = wire::from_stored(&stored, &q, 1);
            check_answer(&out, Some(q.id));
        }
        let relayed = wire::relay(&resp, &q);
        if relayed.len() > 12 {
            check_answer(&relayed, Some(q.id));
        }
    }
    let _ = wire::ttl_offsets(data);
}

fn check_answer_query(packet: &[u8]) {
    let m = Message::from_vec(packet).expect("upstream query reads back");
    assert_eq!(m.metadata.message_type, MessageType::Query);
    assert_eq!(m.queries.len(), 1);
}

fn fixed_query() -> Vec<u8> {
    // id 0x4242, RD, one question www.example.com A IN, with an OPT record.
    let mut p = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in ["www", "example", "com"] {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    p
}
