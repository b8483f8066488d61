//! Tests of the test backends themselves.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use weft_test::{
    grpc_say, h2c_get, http_get, http_request, ws_connect_with_response, ws_echo, GrpcBackend, GrpcClient, HttpBackend,
    HttpConn, HttpVersion, Mode, WsBackend,
};

#[tokio::test]
async fn http1_default_reply_echoes_the_request() {
    let backend = HttpBackend::start("alpha").await;
    let resp = http_get(backend.addr(), "/some/path?x=1", &[("x-test", "yes")]).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-backend"), Some("alpha"));
    let json = resp.json();
    assert_eq!(json["backend"], "alpha");
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/some/path?x=1");
    assert_eq!(json["host"], backend.addr().to_string());
    assert_eq!(json["version"], "HTTP/1.1");
    assert_eq!(json["headers"]["x-test"], "yes");
    assert_eq!(json["body_len"], 0);
    assert_eq!(backend.hits(), 1);
    let last = backend.last_request().unwrap();
    assert_eq!(last.header("X-Test"), Some("yes"));
}

#[tokio::test]
async fn h2c_reply_reports_http2_and_authority() {
    let backend = HttpBackend::start("beta").await;
    let resp = h2c_get(backend.addr(), "/h2", &[("host", "svc.example")]).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.version, http::Version::HTTP_2);
    let json = resp.json();
    assert_eq!(json["version"], "HTTP/2.0");
    assert_eq!(json["host"], "svc.example");
    assert_eq!(json["path"], "/h2");
}

#[tokio::test]
async fn control_headers_shape_the_reply() {
    let backend = HttpBackend::start("ctl").await;
    let addr = backend.addr();

    let resp = http_get(addr, "/", &[("x-backend-status", "503")]).await.unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("x-backend"), Some("ctl"));

    let resp =
        http_get(addr, "/", &[("x-backend-header", "x-one=1"), ("x-backend-header", "x-two = 2")]).await.unwrap();
    assert_eq!(resp.header("x-one"), Some("1"));
    assert_eq!(resp.header("x-two"), Some("2"));

    let resp = http_get(addr, "/", &[("x-backend-body-size", "100000")]).await.unwrap();
    assert_eq!(resp.body.len(), 100_000);
    assert_eq!(resp.header("content-length"), Some("100000"));

    let resp = http_request(
        addr,
        HttpVersion::H2c,
        Method::POST,
        "/echo",
        &[("x-backend-echo-body", "1")],
        Bytes::from_static(b"hello body"),
    )
    .await
    .unwrap();
    assert_eq!(&resp.body[..], b"hello body");

    let resp = http_request(addr, HttpVersion::Http1, Method::POST, "/len", &[], vec![7u8; 1234]).await.unwrap();
    assert_eq!(resp.json()["body_len"], 1234);

    let start = Instant::now();
    let resp = http_get(addr, "/", &[("x-backend-delay-ms", "150")]).await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn reset_drops_the_request() {
    let backend = HttpBackend::start("reset").await;
    let addr = backend.addr();
    let err = http_get(addr, "/", &[("x-backend-reset", "1")]).await.unwrap_err();
    eprintln!("h1 reset: {err:#}");
    let err = h2c_get(addr, "/", &[("x-backend-reset", "1")]).await.unwrap_err();
    eprintln!("h2 reset: {err:#}");
    // The h2 connection survives a stream reset.
    let mut conn = HttpConn::connect(addr, HttpVersion::H2c).await.unwrap();
    assert!(conn.request(Method::GET, "/", &[("x-backend-reset", "1")], Bytes::new()).await.is_err());
    let ok = conn.request(Method::GET, "/", &[], Bytes::new()).await.unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(backend.hits(), 4);
}

#[test]
fn garbage_writes_raw_bytes_and_closes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(HttpBackend::start("garbage"));
    let mut sock = TcpStream::connect(backend.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sock.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nx-backend-garbage: 1\r\n\r\n").unwrap();
    let mut got = Vec::new();
    sock.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"NOT-HTTP garbage\r\n\r\n");
}

#[tokio::test]
async fn modes_apply_to_every_request() {
    let backend = HttpBackend::start("moody").await;
    let addr = backend.addr();

    backend.set_mode(Mode::Status(502));
    assert_eq!(backend.mode(), Mode::Status(502));
    assert_eq!(http_get(addr, "/", &[]).await.unwrap().status, 502);
    assert_eq!(h2c_get(addr, "/", &[]).await.unwrap().status, 502);

    backend.set_mode(Mode::Reset);
    assert!(http_get(addr, "/", &[]).await.is_err());
    assert!(h2c_get(addr, "/", &[]).await.is_err());

    backend.set_mode(Mode::Stall);
    let stalled = tokio::time::timeout(Duration::from_millis(300), http_get(addr, "/", &[])).await;
    assert!(stalled.is_err(), "a stalled backend must not answer");

    backend.set_mode(Mode::Normal);
    assert_eq!(http_get(addr, "/", &[]).await.unwrap().status, 200);
    assert_eq!(backend.hits(), 6);
}

#[tokio::test]
async fn shutdown_refuses_new_connections() {
    let mut backend = HttpBackend::start("gone").await;
    let addr = backend.addr();
    let mut conn = HttpConn::connect(addr, HttpVersion::Http1).await.unwrap();
    conn.request(Method::GET, "/", &[], Bytes::new()).await.unwrap();
    backend.shutdown().await;
    let err = TcpStream::connect(addr).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // Established connections are closed too.
    assert!(conn.request(Method::GET, "/", &[], Bytes::new()).await.is_err());
}

/// The backends run on their own runtime, so a test may block its own
/// (here: a synchronous curl inside a single-threaded tokio test).
#[tokio::test]
async fn backends_answer_while_the_test_runtime_is_blocked() {
    let curl = weft_test::tools::require_tool("curl");
    let backend = HttpBackend::start("blocking").await;
    let out = std::process::Command::new(curl)
        .args(["-sS", "--max-time", "10", "-H", "x-backend-status: 201"])
        .arg(format!("{}/via-curl", backend.url()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["path"], "/via-curl");
}

#[tokio::test]
async fn grpc_unary_status_delay_and_stream() {
    let backend = GrpcBackend::start("g1").await;
    let reply = grpc_say(backend.addr(), "hi", &[]).await.unwrap();
    assert_eq!(reply.message, "hi");
    assert_eq!(reply.backend, "g1");

    let status = grpc_say(backend.url(), "hi", &[("x-grpc-status", "14")]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);

    let mut client = GrpcClient::connect(backend.addr()).await.unwrap();
    let start = Instant::now();
    let resp = client.say("slow", &[("x-delay-ms", "100")]).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_eq!(resp.metadata().get("x-backend").unwrap(), "g1");

    let replies = client.say_stream("s", &[("x-stream-count", "4")]).await.unwrap();
    let messages: Vec<_> = replies.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages, ["s #0", "s #1", "s #2", "s #3"]);

    backend.set_mode(Mode::Status(8));
    let status = client.say("x", &[]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    backend.set_mode(Mode::Reset);
    assert!(client.say("x", &[]).await.is_err());
    backend.set_mode(Mode::Normal);
    client.say("x", &[]).await.unwrap();

    let mut with_authority = GrpcClient::connect_with_authority(backend.addr(), Some("grpc.example")).await.unwrap();
    with_authority.say("a", &[]).await.unwrap();
    let last = backend.requests().pop().unwrap();
    assert_eq!(last.host.as_deref(), Some("grpc.example"));
    assert_eq!(last.path, "/weft.test.Echo/Say");
    assert_eq!(backend.hits(), 8);
}

#[tokio::test]
async fn grpc_unknown_method_is_unimplemented() {
    let backend = GrpcBackend::start("g2").await;
    let resp = http_request(
        backend.addr(),
        HttpVersion::H2c,
        Method::POST,
        "/weft.test.Echo/Nope",
        &[("content-type", "application/grpc")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(resp.header("grpc-status"), Some("12"));
}

#[tokio::test]
async fn websocket_echo() {
    let backend = WsBackend::start().await;
    let replies = ws_echo(backend.addr(), "/chat", &["one", "two"]).await.unwrap();
    assert_eq!(replies, ["one", "two"]);
    let (_ws, resp) = ws_connect_with_response(backend.addr(), "/again", &[("x-hello", "1")]).await.unwrap();
    assert_eq!(resp.headers()["x-backend"], "ws");
    let handshakes = backend.handshakes();
    assert_eq!(handshakes.len(), 2);
    assert_eq!(handshakes[1].path, "/again");
    assert_eq!(handshakes[1].header("x-hello"), Some("1"));
}
