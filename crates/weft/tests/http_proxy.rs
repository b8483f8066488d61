//! HTTP-proxy mode from a static config: a listener that accepts absolute-form requests
//! (`curl -x`, `http_proxy=`) and CONNECT (`curl -p`), routes by the requested authority to mesh
//! services, tunnels CONNECT to TCP services, forwards other destinations through a dynamic
//! forward proxy cluster (names resolved with the system resolver), and answers bad proxy
//! requests with 400 without the connection going out of step.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_test::tools::require_tool;
use weft_test::{wait_for, HttpBackend, WeftProcess};

struct Setup {
    reviews: HttpBackend,
    /// Not in the mesh: reached only through the forward proxy cluster.
    outside: HttpBackend,
    weft: WeftProcess,
    log: std::path::PathBuf,
}

/// A TCP server that reads until the client half-closes, then answers `echo:<what it read>` and
/// closes: it only replies if the half-close went through the tunnel.
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

/// A TCP server that answers `echo:<line>` to the first line and closes.
async fn start_line_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut line = b"echo:".to_vec();
                let mut b = [0u8; 1];
                while let Ok(1) = s.read(&mut b).await {
                    line.push(b[0]);
                    if b[0] == b'\n' {
                        break;
                    }
                }
                let _ = s.write_all(&line).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

async fn setup() -> Setup {
    let reviews = HttpBackend::start("reviews").await;
    let outside = HttpBackend::start("outside").await;
    let echo = start_tcp_echo().await;
    let lines = start_line_echo().await;
    let builder = WeftProcess::builder(WEFT);
    let log = builder.dir().join("access.log");
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
access_log: {log:?}
listeners:
  # ALLOW_ANY: what the mesh does not know goes to the forward proxy cluster.
  - name: http_proxy
    address: "127.0.0.1:0"
    http:
      connect: true
      virtual_hosts:
        - name: reviews
          domains: [reviews, "reviews:80", "reviews:9080"]
          routes:
            - {{ name: tunnel, match: {{ connect: true }}, route: {{ cluster: reviews }} }}
            - {{ name: http, match: {{ prefix: / }}, route: {{ cluster: reviews }} }}
        - name: db
          domains: ["db:5432"]
          routes: [{{ name: tunnel, match: {{ connect: true }}, route: {{ cluster: db }} }}]
        - name: lines
          domains: ["lines:7000"]
          routes: [{{ name: tunnel, match: {{ connect: true }}, route: {{ cluster: lines }} }}]
        - name: allow_any
          domains: ["*"]
          routes:
            - {{ name: allow_any_connect, match: {{ connect: true }}, route: {{ cluster: passthrough }} }}
            - {{ name: allow_any, match: {{ prefix: / }}, route: {{ cluster: passthrough }} }}
  # REGISTRY_ONLY: no catch-all, unknown destinations get 404 NR.
  - name: registry_only
    address: "127.0.0.1:0"
    http:
      connect: true
      virtual_hosts:
        - name: reviews
          domains: ["reviews:9080"]
          routes:
            - {{ match: {{ connect: true }}, route: {{ cluster: reviews }} }}
            - {{ match: {{ prefix: / }}, route: {{ cluster: reviews }} }}
clusters:
  - {{ name: reviews, endpoints: [{reviews}] }}
  - {{ name: db, endpoints: [{echo}] }}
  - {{ name: lines, endpoints: [{lines}] }}
  - {{ name: passthrough, type: dynamic_forward_proxy, connect_timeout: 2s }}
"#,
        log = log.display().to_string(),
        reviews = q(reviews.addr()),
        echo = q(echo),
        lines = q(lines),
    );
    let cfg = builder.write_file(CONFIG_NAME, yaml);
    let weft = builder.arg("proxy").arg("--config").arg(&cfg).start().await;
    Setup { reviews, outside, weft, log }
}

fn proxy_url(s: &Setup, listener: &str) -> String {
    format!("http://{}", s.weft.listener(listener))
}

/// curl with no proxy settings from the environment (the tests give their own).
fn curl() -> Command {
    let mut cmd = Command::new(require_tool("curl"));
    for v in
        ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"]
    {
        cmd.env_remove(v);
    }
    cmd.args(["--silent", "--show-error", "--max-time", "20", "-w", "\n%{http_code}"]);
    cmd
}

/// Runs curl; returns (status, body).
async fn run_curl(cmd: Command) -> (u16, String) {
    let out = run_blocking(cmd, Duration::from_secs(30)).await;
    assert!(out.status.success(), "curl failed: {}\n{}", out.stderr, out.stdout);
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", out.stdout.as_str()));
    (code.trim().parse().unwrap_or_else(|_| panic!("no status in {:?}", out.stdout)), body.to_string())
}

#[tokio::test]
async fn curl_reaches_a_mesh_http_service_by_name_through_the_proxy_port() {
    let s = setup().await;
    let mut cmd = curl();
    cmd.args(["-x", &proxy_url(&s, "http_proxy"), "http://reviews:9080/reviews/1?x=y"]);
    let (status, body) = run_curl(cmd).await;
    assert_eq!(status, 200, "{body}");
    let req = s.reviews.last_request().expect("reviews got the request");
    assert_eq!(req.path, "/reviews/1?x=y", "absolute-form becomes origin-form upstream");
    assert_eq!(req.host.as_deref(), Some("reviews:9080"));

    // The same through the environment, as applications configured with `http_proxy` do; a
    // URL without a port is port 80.
    let mut cmd = curl();
    cmd.env("http_proxy", proxy_url(&s, "http_proxy")).arg("http://reviews/env");
    let (status, _) = run_curl(cmd).await;
    assert_eq!(status, 200);
    assert_eq!(s.reviews.last_request().unwrap().path, "/env");
    assert_eq!(s.reviews.hits(), 2);
}

#[tokio::test]
async fn connect_tunnels_reach_mesh_services_and_the_tunnel_is_logged_when_it_ends() {
    let s = setup().await;
    // curl -p: CONNECT reviews:9080, then HTTP inside the tunnel.
    let mut cmd = curl();
    cmd.args(["-p", "-x", &proxy_url(&s, "http_proxy"), "http://reviews:9080/tunnelled"]);
    let (status, _) = run_curl(cmd).await;
    assert_eq!(status, 200);
    let req = s.reviews.last_request().unwrap();
    assert_eq!(req.path, "/tunnelled");
    assert!(req.header("x-request-id").is_none(), "bytes in a tunnel are not touched by the proxy");

    // curl -p to a TCP service: curl tunnels its standard input.
    let mut cmd = curl();
    cmd.args(["-p", "-x", &proxy_url(&s, "http_proxy"), "telnet://lines:7000"]);
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::write(&input, "select 2\n").unwrap();
    cmd.stdin(std::fs::File::open(&input).unwrap());
    let out = run_with_stdin(cmd).await;
    assert!(out.starts_with("echo:select 2\n"), "{out:?}");

    // A TCP service: bytes both ways, the client's half-close passed on.
    let mut c = TcpStream::connect(s.weft.listener("http_proxy")).await.unwrap();
    c.write_all(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n").await.unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("content-length"), "no body framing on a 2xx CONNECT: {head}");
    c.write_all(b"select 1").await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut back)).await.unwrap().unwrap();
    assert_eq!(back, b"echo:select 1");

    let read = || std::fs::read_to_string(&s.log).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(10), || async {
            // The tunnel's line is written when it ends, after the client saw its bytes.
            read().lines().filter(|l| l.contains("CONNECT")).count() >= 2
                && read().lines().any(|l| l.contains("\"db:5432\""))
        })
        .await,
        "access log: {}",
        read()
    );
    let db: serde_json::Value = read()
        .lines()
        .filter(|l| l.contains("\"db:5432\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .next()
        .expect("a line for the db tunnel");
    assert_eq!(db["method"], "CONNECT");
    assert_eq!(db["response_code"], 200);
    assert_eq!(db["upstream_cluster"], "db");
    assert_eq!(db["bytes_received"], 8, "{db}");
    assert_eq!(db["bytes_sent"], 13, "{db}");
    let metrics = admin_get(&s.weft, "/stats/prometheus").await;
    assert!(
        prom_sum(&metrics, "istio_requests_total", &[("response_code", "200")]) >= 2.0,
        "tunnels count as requests: {metrics}"
    );
}

/// Runs curl with the stdin it was given (the common helpers feed /dev/null); the output with
/// the `-w` status line removed.
async fn run_with_stdin(mut cmd: Command) -> String {
    let out = tokio::task::spawn_blocking(move || {
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let child = cmd.spawn().expect("curl starts");
        child.wait_with_output().expect("curl runs")
    });
    let out = tokio::time::timeout(Duration::from_secs(30), out).await.expect("curl finished in time").unwrap();
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn read_head(c: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut b)).await.expect("response head").unwrap();
        assert_eq!(n, 1, "connection closed after {:?}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn destinations_outside_the_mesh_are_forwarded_when_allowed_and_refused_otherwise() {
    let s = setup().await;
    let port = s.outside.addr().port();
    // A name the system resolver knows (the hosts file), plain and tunnelled.
    let mut cmd = curl();
    cmd.args(["-x", &proxy_url(&s, "http_proxy"), &format!("http://localhost:{port}/plain")]);
    let (status, _) = run_curl(cmd).await;
    assert_eq!(status, 200);
    assert_eq!(s.outside.last_request().unwrap().host, Some(format!("localhost:{port}")));
    let mut cmd = curl();
    cmd.args(["-p", "-x", &proxy_url(&s, "http_proxy"), &format!("http://127.0.0.1:{port}/tunnel")]);
    assert_eq!(run_curl(cmd).await.0, 200);
    assert_eq!(s.outside.last_request().unwrap().path, "/tunnel");
    assert_eq!(s.outside.hits(), 2);

    // Without a catch-all: 404 NR, for plain requests and tunnels alike.
    let mut cmd = curl();
    cmd.args(["-i", "-x", &proxy_url(&s, "registry_only"), &format!("http://localhost:{port}/blocked")]);
    let (status, text) = run_curl(cmd).await;
    assert_eq!(status, 404);
    assert!(text.to_ascii_lowercase().contains("x-weft-response-flags: nr"), "{text}");
    let reply = raw_exchange(
        s.weft.listener("registry_only"),
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(reply.statuses(), [404], "{}", reply.text());
    assert!(reply.closed, "a refused CONNECT closes the connection");
    assert_eq!(s.outside.hits(), 2, "nothing reached the outside service");

    // The forward proxy never connects back to the proxy's own listener.
    let me = s.weft.listener("http_proxy");
    let reply = raw_exchange(me, format!("GET http://{me}/loop HTTP/1.1\r\nHost: {me}\r\n\r\n").as_bytes()).await;
    assert_eq!(reply.statuses(), [403], "{}", reply.text());
}

#[tokio::test]
async fn bad_proxy_requests_get_400_and_nothing_after_them_is_forwarded() {
    let s = setup().await;
    let addr = s.weft.listener("http_proxy");
    let follow = "GET http://reviews:9080/after HTTP/1.1\r\nHost: reviews:9080\r\n\r\n";
    let bad = [
        ("CONNECT without a port", "CONNECT reviews HTTP/1.1\r\nHost: reviews\r\n\r\n"),
        ("CONNECT with port 0", "CONNECT reviews:0 HTTP/1.1\r\nHost: reviews:0\r\n\r\n"),
        ("absolute-form with a bad URI", "GET http://[::1/x HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("absolute-form without a host", "GET http:///x HTTP/1.1\r\nHost: reviews:9080\r\n\r\n"),
        ("a scheme that is not http", "GET ftp://reviews:9080/x HTTP/1.1\r\nHost: reviews:9080\r\n\r\n"),
        ("user info", "GET http://user:pw@reviews:9080/x HTTP/1.1\r\nHost: reviews:9080\r\n\r\n"),
        ("CONNECT with user info", "CONNECT user@db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n"),
    ];
    for (what, request) in bad {
        let reply = raw_exchange(addr, format!("{request}{follow}").as_bytes()).await;
        assert_eq!(reply.statuses(), [400], "{what}: {}", reply.text());
        assert!(reply.closed, "{what}: the connection closes after the 400");
    }
    assert_eq!(s.reviews.hits(), 0, "no request after a bad one was forwarded");

    // Good absolute-form requests keep the connection alive and in order.
    let two = "GET http://reviews:9080/one HTTP/1.1\r\nHost: ignored\r\n\r\n\
               GET http://reviews/two HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(addr, two.as_bytes()).await;
    assert_eq!(reply.statuses(), [200, 200], "{}", reply.text());
    let paths: Vec<String> = s.reviews.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/one", "/two"]);
    assert_eq!(
        s.reviews.requests()[0].host.as_deref(),
        Some("reviews:9080"),
        "the request target's authority wins over Host"
    );
}
