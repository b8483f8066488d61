//! Proxyless gRPC end to end: `weft control` serving a real gRPC xDS client (Python `grpcio` in
//! the project venv) that dials `xds:///reviews.default.svc.cluster.local:9080` with nothing but
//! a bootstrap file, and real grpcio servers, one per instance, each answering with its name.
//!
//! * Calls spread over the instances as the VirtualService weights and round robin say, the
//!   client ACKs every type (SYNCED in `weft check`, no NACK on the stream), and after
//!   `weft apply` moves all the weight to v2 the client follows; the time from the apply to the
//!   switch is printed (a measurement, not an assertion). Deleting the VirtualService brings
//!   round robin over all instances back.
//! * The short names istiod's gRPC generator accepts (`reviews:9080`, `reviews.default:9080`,
//!   `reviews.default.svc:9080`) reach the same service; an unknown name fails calls with
//!   gRPC's "does not exist".
//!
//! The helpers are the scripts in `tests/grpc_xds/`, driven over stdin/stdout with JSON lines;
//! each exits by itself after a few minutes whatever happens. Servers listen on 127.0.93.1-5
//! (ephemeral ports); everything else is on 127.0.0.1.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use weft_test::{http_get, wait_for, WeftProcess};

/// How long a helper process may live at most (it exits by itself after that).
const HELPER_LIFETIME_SECS: &str = "240";
/// How long one helper command may take before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
const HOST: &str = "reviews.default.svc.cluster.local";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc_xds").join(name)
}

/// A Python helper driven by lines on stdin that answers one JSON line per command.
struct Helper {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Helper {
    fn spawn(what: &str, script_name: &str, args: &[&str], envs: &[(&str, &str)]) -> Helper {
        let dir = tempfile::tempdir().expect("helper directory");
        let stderr = dir.path().join("stderr");
        let mut child = Command::new(weft_test::tools::venv_python())
            .arg(script(script_name))
            .args(args)
            .args(["--lifetime", HELPER_LIFETIME_SECS])
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("helper stderr file"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("helper stdout")).lines();
        Helper { what: what.to_string(), child, stdin, lines, stderr, _dir: dir }
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    /// The next JSON line, or a failure that shows the helper's stderr.
    async fn next(&mut self, timeout: Duration) -> Value {
        let line = match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let status = self.child.try_wait().ok().flatten();
                panic!("{} ended ({status:?}):\n{}", self.what, self.stderr_tail())
            }
            Ok(Err(e)) => panic!("{}: reading its output: {e}\n{}", self.what, self.stderr_tail()),
            Err(_) => panic!("{} said nothing for {timeout:?}:\n{}", self.what, self.stderr_tail()),
        };
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.what))
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("helper stdin is open");
        let sent = async {
            stdin.write_all(format!("{line}\n").as_bytes()).await?;
            stdin.flush().await
        };
        match tokio::time::timeout(Duration::from_secs(10), sent).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{}: writing {line:?}: {e}\n{}", self.what, self.stderr_tail()),
            Err(_) => panic!("{}: writing {line:?} timed out", self.what),
        }
    }

    async fn command(&mut self, line: &str) -> Value {
        self.send(line).await;
        self.next(COMMAND_TIMEOUT).await
    }
}

/// grpcio servers, one per `(name, ip)`, on ephemeral ports.
async fn start_servers(servers: &[(&str, &str)]) -> (Helper, BTreeMap<String, SocketAddr>) {
    let mut args = Vec::new();
    for (name, ip) in servers {
        args.push("--listen".to_string());
        args.push(format!("{name}={ip}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut helper = Helper::spawn("grpc servers", "server.py", &args, &[]);
    let mut addrs = BTreeMap::new();
    loop {
        let line = helper.next(Duration::from_secs(30)).await;
        if line["ready"] == true {
            break;
        }
        let name = line["name"].as_str().expect("server name").to_string();
        let addr = line["address"].as_str().and_then(|a| a.parse().ok()).expect("server address");
        addrs.insert(name, addr);
    }
    (helper, addrs)
}

async fn start_control(data_dir: &Path) -> WeftProcess {
    WeftProcess::builder(WEFT)
        .arg("control")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--xds-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--debounce", "20ms"])
        .start()
        .await
}

fn weft_cli(control: &WeftProcess, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(WEFT);
    cmd.args(args).env("WEFT_SERVER", control.listener("api").to_string());
    cmd
}

async fn apply(control: &WeftProcess, yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = run_blocking(weft_cli(control, &["apply", "-f", file.to_str().unwrap()]), Duration::from_secs(30)).await;
    assert!(out.status.success(), "weft apply failed:\n{}\n{}", out.stdout, out.stderr);
}

/// The service, one WorkloadEntry per server (its version is the name up to the first `-`) and
/// the subsets.
fn service_yaml(servers: &BTreeMap<String, SocketAddr>) -> String {
    let mut out = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: reviews, namespace: default }}
spec:
  hosts: [{HOST}]
  ports: [{{ number: 9080, name: grpc, protocol: GRPC }}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {{ labels: {{ app: reviews }} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: reviews, namespace: default }}
spec:
  host: {HOST}
  subsets:
    - {{ name: v1, labels: {{ version: v1 }} }}
    - {{ name: v2, labels: {{ version: v2 }} }}
"#
    );
    for (name, addr) in servers {
        let version = name.split('-').next().unwrap_or(name);
        out.push_str(&format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{ name: reviews-{name}, namespace: default }}
spec:
  address: {ip}
  ports: {{ grpc: {port} }}
  labels: {{ app: reviews, version: {version} }}
"#,
            ip = addr.ip(),
            port = addr.port(),
        ));
    }
    out
}

fn split_yaml(v1: u32, v2: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews, namespace: default }}
spec:
  hosts: [{HOST}]
  http:
    - route:
        - {{ destination: {{ host: {HOST}, subset: v1 }}, weight: {v1} }}
        - {{ destination: {{ host: {HOST}, subset: v2 }}, weight: {v2} }}
"#
    )
}

/// An Istio-style node id for a gRPC client pod in `default`.
fn node_id(pod: &str) -> String {
    format!("sidecar~127.0.0.1~{pod}.default~default.svc.cluster.local")
}

/// The bootstrap a proxyless gRPC client needs: where the control plane is and who it is.
/// docs/xds.md shows the same document.
fn bootstrap(xds: SocketAddr, node: &str) -> String {
    let doc = json!({
        "xds_servers": [{
            "server_uri": xds.to_string(),
            "channel_creds": [{ "type": "insecure" }],
            "server_features": ["xds_v3"],
        }],
        "node": {
            "id": node,
            "metadata": {
                "GENERATOR": "grpc",
                "NAMESPACE": "default",
                "INSTANCE_IPS": "127.0.0.1",
                "LABELS": { "app": "productpage" },
            },
        },
    });
    serde_json::to_string_pretty(&doc).unwrap()
}

/// A grpcio client of `target` for node `pod`, its channel ready (one call answered).
struct Client {
    helper: Helper,
    node: String,
    _dir: tempfile::TempDir,
}

impl Client {
    fn start(control: &WeftProcess, pod: &str, target: &str) -> Client {
        let dir = tempfile::tempdir().unwrap();
        let node = node_id(pod);
        let path = dir.path().join("bootstrap.json");
        std::fs::write(&path, bootstrap(control.listener("xds"), &node)).unwrap();
        let helper = Helper::spawn(
            &format!("grpc client {pod} ({target})"),
            "client.py",
            &["--target", target],
            &[
                ("GRPC_XDS_BOOTSTRAP", path.to_str().unwrap()),
                // The xDS client's log (responses, ACKs, NACKs with reasons) for failure reports.
                ("GRPC_TRACE", "xds_client,xds_resolver"),
                ("GRPC_VERBOSITY", "info"),
            ],
        );
        Client { helper, node, _dir: dir }
    }

    /// Waits (20 s) for the channel to answer one call; fails with the client's xDS log if not.
    async fn ready(&mut self) {
        let r = self.helper.command("ready 20").await;
        assert_eq!(r["ready"], true, "{}: channel never ready: {r}\n{}", self.helper.what, self.helper.stderr_tail());
    }

    /// `n` calls: answers per server, failures per status code.
    async fn calls(&mut self, n: u32) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let r = self.helper.command(&format!("calls {n}")).await;
        (counts(&r["counts"]), counts(&r["errors"]))
    }
}

fn counts(v: &Value) -> BTreeMap<String, u64> {
    v.as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect()).unwrap_or_default()
}

/// The ADS server's status of `node` (from `/v1/check`), if connected.
async fn proxy_status(control: &WeftProcess, node: &str) -> Option<Value> {
    let resp = http_get(control.listener("api"), "/v1/check", &[]).await.ok()?;
    let check: Value = serde_json::from_slice(&resp.body).ok()?;
    check["proxies"].as_array()?.iter().find(|p| p["node_id"] == node).cloned()
}

/// SotW, generator grpc, and all four types ACKed at their latest version with no NACK ever.
fn synced_without_nacks(p: &Value) -> bool {
    let types = [
        weft_xds::type_url::LISTENER,
        weft_xds::type_url::ROUTE,
        weft_xds::type_url::CLUSTER,
        weft_xds::type_url::ENDPOINT,
    ];
    p["protocol"] == "sotw"
        && p["generator"] == "grpc"
        && types.iter().all(|t| p["types"][t]["in_sync"] == true && p["types"][t]["nacks"] == 0)
}

/// Waits (30 s) until the client's stream is synced without NACKs and `weft check` says SYNCED
/// for all four types; fails with both views and the client's xDS log otherwise.
async fn assert_synced(control: &WeftProcess, client: &Client) {
    let ok = wait_for(Duration::from_secs(30), || async {
        proxy_status(control, &client.node).await.is_some_and(|p| synced_without_nacks(&p))
    })
    .await;
    let check = run_blocking(weft_cli(control, &["check"]), Duration::from_secs(20)).await;
    let row = check.stdout.lines().find(|l| l.contains(&client.node)).unwrap_or("").to_string();
    assert!(
        ok && row.matches("SYNCED").count() == 4 && check.status.success(),
        "{} is not SYNCED without NACKs:\nweft check:\n{}{}\nstatus: {:#}\nclient log:\n{}",
        client.node,
        check.stdout,
        check.stderr,
        proxy_status(control, &client.node).await.unwrap_or(Value::Null),
        client.helper.stderr_tail()
    );
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[tokio::test]
async fn grpc_clients_balance_over_instances_and_follow_a_weight_change() {
    let (_servers, addrs) =
        start_servers(&[("v1-a", "127.0.93.1"), ("v1-b", "127.0.93.2"), ("v2-a", "127.0.93.3")]).await;
    let data = tempfile::tempdir().unwrap();
    let control = start_control(data.path()).await;
    apply(&control, &format!("{}---\n{}", service_yaml(&addrs), split_yaml(50, 50))).await;

    let mut client = Client::start(&control, "productpage-1", &format!("xds:///{HOST}:9080"));
    client.ready().await;
    assert_synced(&control, &client).await;

    // 50/50 between the subsets, round robin inside v1.
    let (counts, errors) = client.calls(300).await;
    assert!(errors.is_empty(), "failed calls: {errors:?} (answers {counts:?})");
    assert_eq!(counts.values().sum::<u64>(), 300, "{counts:?}");
    // Binomial(300, 1/2) for v2: 90..=210 is more than six standard deviations wide.
    assert!((90..=210).contains(&answered(&counts, "v2-a")), "v2 share off a 50/50 split: {counts:?}");
    assert!(
        answered(&counts, "v1-a") >= 40 && answered(&counts, "v1-b") >= 40,
        "v1 calls not spread over both v1 instances: {counts:?}"
    );

    // All the weight to v2: the client follows. Calls run (every 5 ms) while the apply happens;
    // the switch is the first call of 30 answers from v2 in a row.
    client.helper.send("until v2 30 6000 60 0.005").await;
    let applied_at = unix_now();
    apply(&control, &split_yaml(0, 100)).await;
    let apply_took = unix_now() - applied_at;
    let r = client.helper.next(COMMAND_TIMEOUT).await;
    assert_eq!(
        r["followed"],
        true,
        "the client did not follow the weight change: {r}\n{}",
        client.helper.stderr_tail()
    );
    let switched_at = r["switched_at"].as_f64().expect("switch time");
    println!(
        "grpc weight change: traffic followed {:.1} ms after `weft apply` started (apply itself {:.1} ms, {} calls)",
        (switched_at - applied_at).max(0.0) * 1000.0,
        apply_took * 1000.0,
        r["calls"]
    );
    let (counts, errors) = client.calls(100).await;
    assert!(errors.is_empty(), "failed calls after the change: {errors:?}");
    assert_eq!(counts, BTreeMap::from([("v2-a".to_string(), 100)]), "after 0/100 every call goes to v2");
    assert_synced(&control, &client).await;

    // Without the VirtualService the route names the service's own cluster (a new CDS name for
    // the client): round robin over all three instances.
    let out = run_blocking(weft_cli(&control, &["delete", "virtualservice", "reviews"]), Duration::from_secs(30)).await;
    assert!(
        out.status.success(),
        "weft delete failed:
{}
{}",
        out.stdout,
        out.stderr
    );
    client.helper.send("until v1 1 6000 60 0.005").await;
    let r = client.helper.next(COMMAND_TIMEOUT).await;
    assert_eq!(r["followed"], true, "v1 never answered again after the delete: {r}");
    let (counts, errors) = client.calls(90).await;
    assert!(errors.is_empty(), "failed calls without the VirtualService: {errors:?}");
    for name in ["v1-a", "v1-b", "v2-a"] {
        assert!((20..=40).contains(&answered(&counts, name)), "round robin over the three instances: {counts:?}");
    }
    assert_synced(&control, &client).await;
}

fn answered(counts: &BTreeMap<String, u64>, name: &str) -> u64 {
    counts.get(name).copied().unwrap_or(0)
}

#[tokio::test]
async fn grpc_short_names_reach_the_service_and_unknown_names_fail() {
    let (_servers, addrs) = start_servers(&[("v1-a", "127.0.93.4"), ("v2-a", "127.0.93.5")]).await;
    let data = tempfile::tempdir().unwrap();
    let control = start_control(data.path()).await;
    apply(&control, &format!("{}---\n{}", service_yaml(&addrs), split_yaml(50, 50))).await;

    for (pod, target) in [
        ("short-1", "xds:///reviews:9080"),
        ("short-2", "xds:///reviews.default:9080"),
        ("short-3", "xds:///reviews.default.svc:9080"),
    ] {
        let mut client = Client::start(&control, pod, target);
        client.ready().await;
        let (counts, errors) = client.calls(40).await;
        assert!(errors.is_empty(), "{target}: failed calls {errors:?}");
        assert_eq!(counts.keys().collect::<Vec<_>>(), ["v1-a", "v2-a"], "{target}: {counts:?}");
        assert_synced(&control, &client).await;
    }

    // A name the mesh does not have: the LDS response leaves it out, so after its does-not-exist
    // timer (15 s) the client fails calls with a reason naming the listener; nothing is NACKed.
    let mut client = Client::start(&control, "unknown-1", "xds:///ratings.default.svc.cluster.local:9080");
    let r = client.helper.command("call 40").await;
    assert_eq!(r["error"], "UNAVAILABLE", "{r}");
    let detail = r["detail"].as_str().unwrap_or("");
    assert!(detail.contains("ratings.default.svc.cluster.local:9080: does not exist"), "{r}");
    let status = proxy_status(&control, &client.node).await.expect("the client is connected");
    assert_eq!(status["types"][weft_xds::type_url::LISTENER]["nacks"], 0, "{status:#}");
}
