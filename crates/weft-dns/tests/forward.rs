//! Forwarding against upstreams the test plays on loopback sockets: TCP after a truncated UDP
//! answer, forged and mismatched answers ignored, a silent upstream skipped for the next, and
//! SERVFAIL when none answers.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use weft_dns::{Config, Dns};

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x5151;
    m.metadata.recursion_desired = true;
    m.queries.push(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// The answer to `req` with `n` addresses (TTL 60).
fn answer(req: &Message, n: u8, truncated: bool) -> Vec<u8> {
    let mut m = Message::response(req.metadata.id, OpCode::Query);
    m.metadata.truncation = truncated;
    m.queries = req.queries.clone();
    if !truncated {
        for i in 0..n {
            m.answers.push(Record::from_rdata(req.queries[0].name.clone(), 60, RData::A(A([192, 0, 2, i].into()))));
        }
    }
    m.to_vec().unwrap()
}

fn dns(upstreams: Vec<SocketAddr>) -> Dns {
    Dns::new(Config { upstreams, upstream_timeout: Duration::from_millis(500), ..Config::default() })
}

async fn ask(dns: &Dns, name: &str) -> Message {
    let out = tokio::time::timeout(Duration::from_secs(10), dns.answer(&query(name))).await.unwrap().unwrap();
    let m = Message::from_vec(&out).unwrap();
    assert_eq!((m.metadata.id, m.metadata.message_type), (0x5151, MessageType::Response));
    m
}

#[tokio::test]
async fn a_truncated_udp_answer_is_asked_again_over_tcp() {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
        let req = Message::from_vec(&buf[..n]).unwrap();
        udp.send_to(&answer(&req, 0, true), peer).await.unwrap();
    });
    tokio::spawn(async move {
        let (mut s, _) = tcp.accept().await.unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.unwrap();
        let req = Message::from_vec(&body).unwrap();
        let resp = answer(&req, 40, false);
        s.write_all(&(resp.len() as u16).to_be_bytes()).await.unwrap();
        s.write_all(&resp).await.unwrap();
    });
    let d = dns(vec![addr]);
    let m = ask(&d, "big.example.").await;
    assert_eq!(m.answers.len(), 40, "the full answer came over TCP");
    assert!(!m.metadata.truncation);
    // And it is cached: no upstream is left to ask.
    assert_eq!(ask(&d, "big.example.").await.answers.len(), 40);
    assert_eq!(d.metrics().cache_hits.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn forged_answers_are_ignored_and_a_silent_upstream_is_skipped() {
    // The first upstream answers with a wrong id and a wrong question, then falls silent.
    let bad = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let bad_addr = bad.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = bad.recv_from(&mut buf).await {
            let mut req = Message::from_vec(&buf[..n]).unwrap();
            req.metadata.id = req.metadata.id.wrapping_add(1);
            let _ = bad.send_to(&answer(&req, 1, false), peer).await;
            let mut other = Message::from_vec(&buf[..n]).unwrap();
            other.queries[0].name = Name::from_ascii("elsewhere.example.").unwrap();
            let _ = bad.send_to(&answer(&other, 1, false), peer).await;
        }
    });
    let good = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let good_addr = good.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = good.recv_from(&mut buf).await {
            let req = Message::from_vec(&buf[..n]).unwrap();
            let _ = good.send_to(&answer(&req, 2, false), peer).await;
        }
    });
    let m = ask(&dns(vec![bad_addr, good_addr]), "www.example.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 2, "the second upstream's answer, not a forged one");

    // Nobody answers: SERVFAIL, counted.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let d = dns(vec![silent.local_addr().unwrap()]);
    let m = ask(&d, "www.example.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(d.metrics().upstream_failures.load(std::sync::atomic::Ordering::Relaxed), 1);
    let m = ask(&dns(vec![]), "www.example.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "no upstream configured");
}
