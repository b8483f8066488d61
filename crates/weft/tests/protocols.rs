//! Protocols through `weft proxy`: HTTP/1.1 keep-alive, pipelining, chunked bodies and
//! `Expect: 100-continue` (curl and raw sockets), h2c and HTTP/1.1 on one port, an h2load smoke
//! run, gRPC (status codes, trailers, unavailable clusters, `grpc-timeout`, faults), WebSocket and
//! plain TCP with half-close.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_test::tools::require_tool;
use weft_test::{
    ws_echo, GrpcBackend, GrpcClient, HttpBackend, HttpConn, HttpResponse, HttpVersion, WeftProcess, WsBackend,
};

struct Setup {
    http: HttpBackend,
    grpc: GrpcBackend,
    ws: WsBackend,
    weft: WeftProcess,
}

/// A TCP server that reads until the client half-closes, then answers `echo:<what it read>` and
/// closes: it only ever replies if the half-close reached it.
async fn start_tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                if s.read_to_end(&mut got).await.is_err() {
                    return;
                }
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&got);
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

async fn setup() -> Setup {
    let http = HttpBackend::start("h").await;
    let grpc = GrpcBackend::start("g").await;
    let ws = WsBackend::start().await;
    let tcp_echo = start_tcp_echo().await;
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    http:
      virtual_hosts:
        - name: unhealthy
          domains: ["unhealthy.grpc"]
          routes: [{{ match: {{ prefix: / }}, route: {{ cluster: unhealthy }} }}]
        - name: refused
          domains: ["refused.grpc"]
          routes: [{{ match: {{ prefix: / }}, route: {{ cluster: refused }} }}]
        - name: abort
          domains: ["abort.grpc"]
          routes:
            - match: {{ prefix: / }}
              route: {{ cluster: grpc }}
              fault: {{ abort: {{ grpc_status: 8, percent: 100 }} }}
        - name: all
          domains: ["*"]
          routes:
            - {{ match: {{ prefix: /weft.test.Echo/ }}, route: {{ cluster: grpc }} }}
            - {{ match: {{ prefix: /ws }}, route: {{ cluster: ws }} }}
            - {{ match: {{ prefix: / }}, route: {{ cluster: http }} }}
  - name: tcp
    address: "127.0.0.1:0"
    tcp: {{ cluster: tcp_echo }}
  - name: tcp_dead
    address: "127.0.0.1:0"
    tcp: {{ cluster: refused }}
clusters:
  - {{ name: http, endpoints: [{http}] }}
  - {{ name: grpc, endpoints: [{grpc}], protocol: http2 }}
  - {{ name: ws, endpoints: [{ws}] }}
  - {{ name: tcp_echo, endpoints: [{tcp}] }}
  - name: unhealthy
    endpoints: [{{ address: {grpc}, health: unhealthy }}]
    protocol: http2
    panic_threshold: 0
  - {{ name: refused, endpoints: [{dead}], protocol: http2 }}
"#,
        http = q(http.addr()),
        grpc = q(grpc.addr()),
        ws = q(ws.addr()),
        tcp = q(tcp_echo),
        dead = q(dead_addr()),
    );
    let weft = start_weft(&yaml).await;
    Setup { http, grpc, ws, weft }
}

fn url(s: &Setup, path: &str) -> String {
    format!("http://{}{path}", s.weft.listener("main"))
}

fn curl() -> Command {
    let mut cmd = Command::new(require_tool("curl"));
    cmd.args(["--silent", "--show-error", "--max-time", "20"]);
    cmd
}

// ---- HTTP/1.1 ---------------------------------------------------------------------------------

#[tokio::test]
async fn curl_keeps_one_connection_alive_for_several_requests() {
    let s = setup().await;
    let mut cmd = curl();
    cmd.args(["--http1.1", "-w", "%{http_code} %{num_connects}\\n"]);
    for i in 0..3 {
        cmd.args(["-o", "/dev/null", &url(&s, &format!("/keepalive/{i}"))]);
    }
    let out = run_blocking(cmd, Duration::from_secs(30)).await;
    assert!(out.status.success(), "curl failed: {}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines, ["200 1", "200 0", "200 0"], "one connect, then reuse");
    let stats = admin_get(&s.weft, "/stats").await;
    assert_eq!(stat(&stats, "server.downstream_cx_total"), 1);
    assert_eq!(stat(&stats, "server.downstream_rq_total"), 3);
    assert_eq!(s.http.hits(), 3);
    assert_eq!(s.http.connections(), 1, "the upstream connection is pooled and reused too");
}

#[tokio::test]
async fn pipelined_requests_get_their_responses_in_order() {
    let s = setup().await;
    // The first is the slow one: its answer must still come first.
    let request = "GET /first HTTP/1.1\r\nHost: pipe.test\r\nx-backend-delay-ms: 200\r\n\r\n\
                   GET /second HTTP/1.1\r\nHost: pipe.test\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(s.weft.listener("main"), request.as_bytes()).await;
    assert!(reply.closed, "Connection: close on the last request closes the connection");
    let responses = reply.responses();
    assert_eq!(responses.len(), 2, "{}", reply.text());
    let paths: Vec<String> = responses
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200);
            let json: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
            json["path"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(paths, ["/first", "/second"]);
}

#[tokio::test]
async fn many_pipelined_requests_all_come_back_in_order() {
    let s = setup().await;
    const N: usize = 50;
    let mut request = String::new();
    for i in 0..N {
        let close = if i == N - 1 { "Connection: close\r\n" } else { "" };
        request.push_str(&format!("GET /p/{i} HTTP/1.1\r\nHost: pipe.test\r\n{close}\r\n"));
    }
    let reply = raw_exchange(s.weft.listener("main"), request.as_bytes()).await;
    assert!(reply.closed);
    let paths: Vec<String> = reply
        .responses()
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["path"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..N).map(|i| format!("/p/{i}")).collect();
    assert_eq!(paths, want);
}

#[tokio::test]
async fn a_head_response_has_no_body_and_the_connection_stays_in_sync() {
    let s = setup().await;
    let request = "HEAD /head HTTP/1.1\r\nHost: h.test\r\n\r\n\
                   GET /after-head HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(s.weft.listener("main"), request.as_bytes()).await;
    assert!(reply.closed);
    // parse_responses would take a HEAD response's Content-Length as a body: split by hand.
    let text = reply.text();
    let (head, rest) = text.split_once("\r\n\r\n").expect("a HEAD response");
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    assert!(head.to_ascii_lowercase().contains("content-length:"), "HEAD keeps the length: {head}");
    let second = parse_responses(rest.as_bytes());
    assert_eq!(second.len(), 1, "the GET's response follows the HEAD's head directly:\n{text}");
    assert!(second[0].body_text().contains("\"/after-head\""), "{text}");
    let methods: Vec<String> = s.http.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(methods, ["HEAD", "GET"]);
}

#[tokio::test]
async fn a_chunked_request_body_reaches_the_backend_whole() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let input = dir.path().join("body.bin");
    let output = dir.path().join("echo.bin");
    std::fs::write(&input, &body).unwrap();
    let mut cmd = curl();
    cmd.args(["--http1.1", "-H", "Transfer-Encoding: chunked", "-H", "x-backend-echo-body: 1"])
        .arg("--data-binary")
        .arg(format!("@{}", input.display()))
        .arg("-o")
        .arg(&output)
        .args(["-w", "%{http_code}", &url(&s, "/upload")]);
    let out = run_blocking(cmd, Duration::from_secs(30)).await;
    assert!(out.status.success(), "curl failed: {}", out.stderr);
    assert_eq!(out.stdout, "200");
    let echoed = std::fs::read(&output).unwrap();
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "the echoed body differs");

    // The same with hand-written chunks and a chunk extension on a raw socket.
    let request = "POST /raw HTTP/1.1\r\nHost: chunk.test\r\nTransfer-Encoding: chunked\r\n\
                   x-backend-echo-body: 1\r\nConnection: close\r\n\r\n\
                   5\r\nhello\r\n7;ext=1\r\n, weft!\r\n0\r\n\r\n";
    let reply = raw_exchange(s.weft.listener("main"), request.as_bytes()).await;
    let responses = reply.responses();
    assert_eq!(responses.len(), 1, "{}", reply.text());
    assert_eq!(responses[0].status, 200);
    assert_eq!(responses[0].body_text(), "hello, weft!");
}

#[tokio::test]
async fn expect_100_continue_is_answered_and_the_body_forwarded() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("body.bin");
    let output = dir.path().join("echo.bin");
    std::fs::write(&input, vec![b'z'; 4096]).unwrap();
    let mut cmd = curl();
    // A long expect timeout: the body must follow the proxy's 100, not curl giving up waiting.
    cmd.args(["--http1.1", "--verbose", "--expect100-timeout", "15"])
        .args(["-H", "Expect: 100-continue", "-H", "x-backend-echo-body: 1"])
        .arg("--data-binary")
        .arg(format!("@{}", input.display()))
        .arg("-o")
        .arg(&output)
        .args(["-w", "%{http_code}", &url(&s, "/expect")]);
    let out = run_blocking(cmd, Duration::from_secs(30)).await;
    assert!(out.status.success(), "curl failed: {}", out.stderr);
    assert!(out.stderr.contains("HTTP/1.1 100 Continue"), "no 100 Continue:\n{}", out.stderr);
    assert_eq!(out.stdout, "200");
    assert_eq!(std::fs::read(&output).unwrap(), vec![b'z'; 4096]);
    let seen = s.http.last_request().unwrap();
    assert_eq!(seen.header("expect"), None, "the proxy answers 100-continue itself");
}

// ---- HTTP/2 -----------------------------------------------------------------------------------

#[tokio::test]
async fn curl_h2c_prior_knowledge_and_http1_share_one_port() {
    let s = setup().await;
    let mut results = Vec::new();
    for flag in ["--http2-prior-knowledge", "--http1.1"] {
        let mut cmd = curl();
        cmd.args([flag, "-o", "/dev/null", "-w", "%{http_code} %{http_version}", &url(&s, "/both")]);
        let out = run_blocking(cmd, Duration::from_secs(30)).await;
        assert!(out.status.success(), "curl {flag} failed: {}", out.stderr);
        results.push(out.stdout);
    }
    assert_eq!(results, ["200 2", "200 1.1"]);
    assert_eq!(s.http.hits(), 2);
}

#[tokio::test]
async fn large_bodies_stream_both_ways_over_http1_and_h2c() {
    let s = setup().await;
    let addr = s.weft.listener("main");
    let upload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    for version in [HttpVersion::Http1, HttpVersion::H2c] {
        let mut conn = HttpConn::connect(addr, version).await.unwrap();
        let resp = conn.request(Method::GET, "/download", &[("x-backend-body-size", "2000000")], "").await.unwrap();
        assert_eq!(resp.status, 200, "{version:?}");
        assert_eq!(resp.body.len(), 2_000_000, "{version:?}");
        assert!(resp.body.iter().all(|b| *b == b'x'), "{version:?}");

        let resp =
            conn.request(Method::POST, "/upload", &[("x-backend-echo-body", "1")], upload.clone()).await.unwrap();
        assert_eq!(resp.status, 200, "{version:?}");
        assert!(resp.body == upload, "{version:?}: the echoed upload differs ({} bytes)", resp.body.len());
    }
}

#[tokio::test]
async fn h2load_smoke_run_succeeds_completely() {
    let s = setup().await;
    let mut cmd = Command::new(require_tool("h2load"));
    cmd.args(["-n", "2000", "-c", "4", "-m", "10", &url(&s, "/load")]);
    let out = run_blocking(cmd, Duration::from_secs(60)).await;
    assert!(out.status.success(), "h2load failed: {}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx"), "{}", out.stdout);
    assert_eq!(s.http.hits(), 2000);
}

// ---- gRPC -------------------------------------------------------------------------------------

#[tokio::test]
async fn a_grpc_unary_and_streaming_call_pass_through_with_trailers() {
    let s = setup().await;
    let mut client = GrpcClient::connect(s.weft.listener("main")).await.unwrap();
    let resp = client.say("hello", &[]).await.unwrap_or_else(|e| panic!("Say failed: {e:?}"));
    assert_eq!(resp.metadata().get("x-backend").unwrap(), "g");
    let reply = resp.into_inner();
    assert_eq!((reply.message.as_str(), reply.backend.as_str()), ("hello", "g"));

    // A stream ends with grpc-status in the trailers; without them the client reports an error.
    let replies = client.say_stream("tick", &[("x-stream-count", "5")]).await.unwrap();
    let messages: Vec<String> = replies.into_iter().map(|r| r.message).collect();
    assert_eq!(messages, ["tick #0", "tick #1", "tick #2", "tick #3", "tick #4"]);
    assert_eq!(s.grpc.hits(), 2);
}

#[tokio::test]
async fn concurrent_first_calls_share_one_upstream_h2_connection_per_worker() {
    let s = setup().await;
    // 32 calls on one client connection, all in flight before any upstream connection exists.
    let client = GrpcClient::connect(s.weft.listener("main")).await.unwrap();
    let calls: Vec<_> = (0..32)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move { c.say(&format!("m{i}"), &[("x-delay-ms", "50")]).await.map(|_| ()) })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(s.grpc.hits(), 32);
    // One downstream connection is served by one worker: one upstream connection, not 32.
    assert_eq!(s.grpc.connections(), 1, "concurrent requests waited for the connection being set up");
}

#[tokio::test]
async fn a_grpc_status_from_the_backend_reaches_the_client() {
    let s = setup().await;
    let mut client = GrpcClient::connect(s.weft.listener("main")).await.unwrap();
    for (code, want) in [("14", 14), ("7", 7)] {
        let err = client.say("x", &[("x-grpc-status", code)]).await.expect_err("the backend fails the call");
        assert_eq!(i32::from(err.code()), want, "{err:?}");
        assert!(err.message().contains("injected by backend g"), "the backend's message is kept: {err:?}");
    }
}

/// A gRPC `Say` request over h2c, built by hand so the test controls every header.
async fn raw_grpc_say(addr: SocketAddr, authority: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let msg = b"raw";
    let mut body = vec![0u8, 0, 0, 0, (msg.len() + 2) as u8, 0x0a, msg.len() as u8];
    body.extend_from_slice(msg);
    let mut headers = vec![("host", authority), ("content-type", "application/grpc"), ("te", "trailers")];
    headers.extend_from_slice(extra);
    let mut conn = HttpConn::connect(addr, HttpVersion::H2c).await.unwrap();
    conn.request(Method::POST, weft_test::GRPC_SAY_PATH, &headers, body).await.unwrap()
}

#[tokio::test]
async fn a_grpc_call_with_no_healthy_endpoint_gets_unavailable_not_an_http_error() {
    let s = setup().await;
    let addr = s.weft.listener("main");
    for (authority, flag) in [("unhealthy.grpc", "UH"), ("refused.grpc", "UF")] {
        let resp = raw_grpc_say(addr, authority, &[]).await;
        assert_eq!(resp.status, 200, "{authority}: gRPC errors travel as HTTP 200 + grpc-status");
        assert_eq!(resp.header("grpc-status"), Some("14"), "{authority}: {:?}", resp.headers);
        assert!(resp.header("content-type").unwrap_or("").starts_with("application/grpc"), "{authority}");
        assert!(flags_of(&resp).split(',').any(|f| f == flag), "{authority}: flags {}", flags_of(&resp));

        let mut client = GrpcClient::connect_with_authority(addr, Some(authority)).await.unwrap();
        let err = client.say("x", &[]).await.expect_err("no endpoint can answer");
        assert_eq!(i32::from(err.code()), 14, "{authority}: UNAVAILABLE: {err:?}");
    }
    assert_eq!(s.grpc.hits(), 0);
}

#[tokio::test]
async fn grpc_timeout_shorter_than_the_backend_gives_deadline_exceeded() {
    let s = setup().await;
    // Sent by hand: tonic's client would enforce grpc-timeout itself and race the proxy.
    let resp =
        raw_grpc_say(s.weft.listener("main"), "grpc.test", &[("grpc-timeout", "200m"), ("x-delay-ms", "5000")]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("grpc-status"), Some("4"), "DEADLINE_EXCEEDED from the proxy: {:?}", resp.headers);
    assert!(flags_of(&resp).split(',').any(|f| f == "UT"), "flags {}", flags_of(&resp));

    // A generous grpc-timeout lets the same delayed call through.
    let resp =
        raw_grpc_say(s.weft.listener("main"), "grpc.test", &[("grpc-timeout", "20S"), ("x-delay-ms", "50")]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("grpc-status"), None, "not trailers-only: the status comes in the trailers");
    assert_eq!(resp.header("x-backend"), Some("g"));
}

#[tokio::test]
async fn a_grpc_fault_abort_answers_with_its_grpc_status_and_fi() {
    let s = setup().await;
    let resp = raw_grpc_say(s.weft.listener("main"), "abort.grpc", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("grpc-status"), Some("8"));
    assert!(flags_of(&resp).split(',').any(|f| f == "FI"), "flags {}", flags_of(&resp));

    let mut client = GrpcClient::connect_with_authority(s.weft.listener("main"), Some("abort.grpc")).await.unwrap();
    let err = client.say("x", &[]).await.expect_err("aborted");
    assert_eq!(i32::from(err.code()), 8, "RESOURCE_EXHAUSTED: {err:?}");
    assert_eq!(s.grpc.hits(), 0);
}

// ---- WebSocket and TCP ------------------------------------------------------------------------

#[tokio::test]
async fn a_websocket_echoes_through_the_proxy() {
    let s = setup().await;
    let replies = ws_echo(s.weft.listener("main"), "/ws/chat", &["hello", "through weft", "bye"]).await.unwrap();
    assert_eq!(replies, ["hello", "through weft", "bye"]);
    assert_eq!(s.ws.hits(), 1);
    assert_eq!(s.ws.handshakes()[0].path, "/ws/chat");
}

#[tokio::test]
async fn a_tcp_listener_proxies_bytes_and_passes_half_close_on() {
    let s = setup().await;
    let mut c = TcpStream::connect(s.weft.listener("tcp")).await.unwrap();
    c.write_all(b"ping over tcp").await.unwrap();
    c.shutdown().await.unwrap(); // half-close: no more writes, still reading
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut reply))
        .await
        .expect("no reply: the half-close did not reach the server, or its reply did not come back")
        .unwrap();
    assert_eq!(reply, b"echo:ping over tcp");
}

#[tokio::test]
async fn a_tcp_connection_to_an_unreachable_cluster_is_closed() {
    let s = setup().await;
    let mut c = TcpStream::connect(s.weft.listener("tcp_dead")).await.unwrap();
    let _ = c.write_all(b"anyone there?").await;
    let reply = read_until_close(&mut c, Duration::from_secs(10)).await;
    assert!(reply.closed, "the proxy must close a connection it cannot forward");
    assert!(reply.bytes.is_empty(), "{:?}", reply.text());
}
