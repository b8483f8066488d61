//! Shared helpers for the end-to-end tests: starting `weft proxy` on a config, reading its admin
//! endpoints, raw HTTP/1.1 over TCP, and running external tools with a deadline.
//!
//! Each test file compiles this module separately and uses a different subset of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_test::{http_get, http_request, HttpResponse, HttpVersion, WeftProcess};

/// The binary under test.
pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// The config file's name inside the process's directory (rewritten by reload tests).
pub const CONFIG_NAME: &str = "weft.yaml";

/// How long a raw exchange waits for the proxy to close the connection.
pub const RAW_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Start `weft proxy` on `yaml` (written to the process's temporary directory) with two workers
/// and wait until it is ready.
pub async fn start_weft(yaml: &str) -> WeftProcess {
    let builder = WeftProcess::builder(WEFT);
    let config = builder.write_file(CONFIG_NAME, yaml);
    builder.arg("proxy").arg("--config").arg(&config).arg("--concurrency").arg("2").start().await
}

/// The path of the config file a process started with [`start_weft`] reads.
pub fn config_path(weft: &WeftProcess) -> PathBuf {
    weft.dir().join(CONFIG_NAME)
}

/// `"127.0.0.1:PORT"`, quoted for YAML.
pub fn q(addr: SocketAddr) -> String {
    format!("\"{addr}\"")
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a throwaway port");
    l.local_addr().expect("throwaway port address")
}

// ---- admin ------------------------------------------------------------------------------------

/// `GET path` on the admin port; panics unless it answers 200.
pub async fn admin_get(weft: &WeftProcess, path: &str) -> String {
    let resp = http_get(weft.admin(), path, &[]).await.unwrap_or_else(|e| panic!("admin GET {path}: {e:#}"));
    assert_eq!(resp.status, 200, "admin GET {path}: {}", resp.text());
    resp.text()
}

/// `POST path` on the admin port.
pub async fn admin_post(weft: &WeftProcess, path: &str) -> HttpResponse {
    http_request(weft.admin(), HttpVersion::Http1, http::Method::POST, path, &[], "")
        .await
        .unwrap_or_else(|e| panic!("admin POST {path}: {e:#}"))
}

/// The value of `name` in `/stats` text (`name: value` lines); panics if it is missing.
pub fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no stat {name} in /stats:\n{stats}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("stat {name} is not a number ({e}):\n{stats}"))
}

/// `/stats` value `name`, read now.
pub async fn stat_now(weft: &WeftProcess, name: &str) -> u64 {
    stat(&admin_get(weft, "/stats").await, name)
}

/// Sum of the Prometheus samples of `metric` whose label set contains every `label="value"` pair.
pub fn prom_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(metric)?;
            let (label_part, value) = if let Some(rest) = rest.strip_prefix('{') {
                let (labels, value) = rest.rsplit_once('}')?;
                (labels, value)
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                return None;
            };
            let all = labels.iter().all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Host entry of `/clusters?format=json` for `addr` in `cluster`.
pub async fn cluster_host(weft: &WeftProcess, cluster: &str, addr: SocketAddr) -> serde_json::Value {
    let text = admin_get(weft, "/clusters?format=json").await;
    let json: serde_json::Value = serde_json::from_str(&text).expect("/clusters?format=json is JSON");
    let clusters = json["clusters"].as_array().expect("clusters array");
    let c = clusters
        .iter()
        .find(|c| c["name"] == cluster)
        .unwrap_or_else(|| panic!("no cluster {cluster} in /clusters: {text}"));
    c["hosts"]
        .as_array()
        .expect("hosts array")
        .iter()
        .find(|h| h["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("no host {addr} in cluster {cluster}: {text}"))
        .clone()
}

/// Poll (every 20 ms, at most `timeout`) until the host's health flags contain `flag`.
pub async fn wait_for_health_flag(
    weft: &WeftProcess,
    cluster: &str,
    addr: SocketAddr,
    flag: &str,
    timeout: Duration,
) -> bool {
    weft_test::wait_for(timeout, || async {
        cluster_host(weft, cluster, addr).await["health_flags"].as_str().unwrap_or("").contains(flag)
    })
    .await
}

// ---- responses --------------------------------------------------------------------------------

/// The `x-backend` header of a proxied response (which backend answered).
pub fn backend_of(resp: &HttpResponse) -> String {
    resp.header("x-backend").unwrap_or("").to_string()
}

/// The response flags the proxy reported (`-` when none).
pub fn flags_of(resp: &HttpResponse) -> String {
    resp.header("x-weft-response-flags").unwrap_or("-").to_string()
}

// ---- raw HTTP/1.1 -----------------------------------------------------------------------------

/// What came back on a raw connection.
pub struct RawReply {
    pub bytes: Vec<u8>,
    /// The proxy closed (or reset) the connection within [`RAW_READ_TIMEOUT`].
    pub closed: bool,
}

impl RawReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The responses in the bytes, in order (a trailing incomplete one is dropped).
    pub fn responses(&self) -> Vec<RawResponse> {
        parse_responses(&self.bytes)
    }

    /// Status codes of the responses, in order.
    pub fn statuses(&self) -> Vec<u16> {
        self.responses().iter().map(|r| r.status).collect()
    }
}

/// Connect to `addr`, write `request` in one write, then read until the peer closes or
/// [`RAW_READ_TIMEOUT`] passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawReply {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect to the proxy");
    s.write_all(request).await.expect("write the raw request");
    read_until_close(&mut s, RAW_READ_TIMEOUT).await
}

/// Read from `s` until EOF, a reset, or `timeout`.
pub async fn read_until_close(s: &mut TcpStream, timeout: Duration) -> RawReply {
    let deadline = Instant::now() + timeout;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return RawReply { bytes, closed: false },
            Ok(Ok(0)) | Ok(Err(_)) => return RawReply { bytes, closed: true },
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// One HTTP/1.x response parsed from raw bytes.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses consecutive HTTP/1.x responses (Content-Length or chunked bodies; 1xx responses are
/// skipped). Stops at the first incomplete or unparsable one.
pub fn parse_responses(mut bytes: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while let Some(head_end) = find(bytes, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let Some(status) = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse::<u16>().ok())
        else {
            break;
        };
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut rest = &bytes[head_end + 4..];
        if (100..200).contains(&status) {
            bytes = rest;
            continue;
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if get("transfer-encoding").map(|v| v.eq_ignore_ascii_case("chunked")).unwrap_or(false) {
            let mut body = Vec::new();
            loop {
                let Some(line_end) = find(rest, b"\r\n") else { return out };
                let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
                let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16) else {
                    return out;
                };
                rest = &rest[line_end + 2..];
                if size == 0 {
                    // Trailers (none expected) end with an empty line.
                    let Some(end) = find(rest, b"\r\n") else { return out };
                    rest = &rest[end + 2..];
                    break;
                }
                if rest.len() < size + 2 {
                    return out;
                }
                body.extend_from_slice(&rest[..size]);
                rest = &rest[size + 2..];
            }
            body
        } else {
            let len: usize = get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            if rest.len() < len {
                break;
            }
            let body = rest[..len].to_vec();
            rest = &rest[len..];
            body
        };
        out.push(RawResponse { status, headers, body });
        bytes = rest;
    }
    out
}

// ---- external commands ------------------------------------------------------------------------

/// Run `cmd` to completion, killing it (and failing the test) after `timeout`; output goes to
/// files, so a chatty command cannot block on a full pipe.
pub use weft_test::netns::run_command as run_with_timeout;
/// What a finished command produced.
pub use weft_test::netns::Output as Finished;

/// Run `cmd` on a blocking thread (so the test's runtime keeps polling) with a deadline.
pub async fn run_blocking(cmd: Command, timeout: Duration) -> Finished {
    tokio::task::spawn_blocking(move || run_with_timeout(cmd, timeout)).await.expect("command thread")
}

// ---- hosts as network namespaces --------------------------------------------------------------

/// (status, `x-backend`) of one GET by curl inside `ns`; status 0 and curl's error when the
/// exchange failed.
pub fn curl_backend(ns: &weft_test::netns::Netns, url: &str) -> (u16, String) {
    let r = ns.curl(None, url, &[]);
    match r.status {
        0 => (0, r.error),
        status => (status, r.header("x-backend").to_string()),
    }
}

/// `weft demo-backend` named `name` on `listen` inside `ns`, returned once it answers as `name`.
pub fn netns_backend(ns: &weft_test::netns::Netns, listen: &str, name: &str) -> weft_test::netns::Background {
    let bg = ns.spawn(&[WEFT, "demo-backend", "--listen", listen, "--name", name]);
    let url = format!("http://{}/", listen.replace("0.0.0.0", "127.0.0.1"));
    weft_test::netns::wait_until(&format!("backend {name} in {}", ns.name()), Duration::from_secs(30), || {
        curl_backend(ns, &url) == (200, name.to_string())
    });
    bg
}
