//! Pieces of the per-request path, each alone: parsing an upstream response head, the request
//! id, hop-by-hop removal, the HTTP/1 framing watch over a request, and recording a finished
//! request in the metrics. `cargo bench -p weft-proxy`.
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::header::{self, HeaderMap, HeaderValue};
use http::Method;
use tokio::io::{AsyncRead, ReadBuf};
use weft_proxy::flags::Flags;
use weft_proxy::metrics::Metrics;
use weft_proxy::record::Record;

/// What nginx answers in the sidecar benchmark: a head and a 100-byte body.
const NGINX_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 23 Nov 2026 17:00:00 GMT\r\n\
Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n\
xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// What oha sends.
const OHA_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: 127.0.0.1:18001\r\nuser-agent: oha/1.16.0\r\naccept: */*\r\n\r\n";

fn parse_response_head(c: &mut Criterion) {
    c.bench_function("h1client parse_head, nginx response (head + 100 B body in the buffer)", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(NGINX_RESPONSE);
            let head = weft_proxy::h1client::parse_head(&mut buf, &Method::GET);
            black_box((head.ok(), buf));
        })
    });
}

fn request_id(c: &mut Criterion) {
    c.bench_function("x-request-id (UUIDv4) generation", |b| b.iter(|| black_box(weft_proxy::http::new_request_id())));
}

fn hop_by_hop(c: &mut Criterion) {
    let mut plain = HeaderMap::new();
    plain.insert(header::HOST, HeaderValue::from_static("reviews:9080"));
    plain.insert(header::USER_AGENT, HeaderValue::from_static("oha/1.16.0"));
    plain.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    plain.insert("x-request-id", HeaderValue::from_static("0d6f1a2e-3b4c-4d5e-8f60-718293a4b5c6"));
    let mut with_connection = plain.clone();
    with_connection.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    c.bench_function("strip_hop_by_hop, request without hop-by-hop fields", |b| {
        b.iter_batched_ref(
            || plain.clone(),
            |h| weft_proxy::http::strip_hop_by_hop(h, false),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("strip_hop_by_hop, request with connection: keep-alive", |b| {
        b.iter_batched_ref(
            || with_connection.clone(),
            |h| weft_proxy::http::strip_hop_by_hop(h, false),
            criterion::BatchSize::SmallInput,
        )
    });
}

fn framing_watch(c: &mut Criterion) {
    c.bench_function("h1guard: one request read through the framing watch", |b| {
        let waker = futures_util::task::noop_waker_ref();
        let mut cx = Context::from_waker(waker);
        let mut out = [0u8; 512];
        b.iter(|| {
            let (mut g, v) = weft_proxy::h1guard::Guarded::new(OHA_REQUEST, 65536);
            let mut rb = ReadBuf::new(&mut out);
            let r = Pin::new(&mut g).poll_read(&mut cx, &mut rb);
            assert!(matches!(r, Poll::Ready(Ok(()))));
            black_box((rb.filled().len(), v.next_request_conflicts()));
        })
    });
}

fn metrics_observe(c: &mut Criterion) {
    let metrics = Metrics::new(&weft_config::Node::default());
    let peer = "127.0.0.1:40000".parse().unwrap();
    let mut rec = Record::new(Instant::now(), Method::GET, "", "", "http", None, peer, "source");
    rec.status = 200;
    rec.flags = Flags::EMPTY;
    rec.bytes_sent = 100;
    c.bench_function("metrics: one finished request (counter and three histograms)", |b| {
        b.iter(|| metrics.observe(black_box(&rec), black_box(0.3)))
    });
}

criterion_group!(benches, parse_response_head, request_id, hop_by_hop, framing_watch, metrics_observe);
criterion_main!(benches);
