//! Store bench: `weft apply` latency on the embedded store beside etcd, in one run, and the time
//! from an apply on one control plane to the push from another sharing the etcd store.
//!
//! ```sh
//! cargo bench -p weft --bench store_ha -- [--applies 200] [--pushes 100] [--debounce 100ms]
//! bench/store/run.sh            # both debounce settings, recorded in docs/performance.md
//! ```
//!
//! Three real `weft control` processes: one on a redb file, two (`A`, `B`) on one real etcd
//! (Debian's etcd-server, one member, its data dir on the same disk). Reported (one JSON line on
//! stdout, a summary on stderr):
//! - `apply_redb_*`, `apply_etcd_*`: one small VirtualService applied through the control API
//!   (`POST /v1/apply`, as `weft apply` does: validated, committed durably, answered), p50/p99/max
//!   over `--applies` applies to each store, alternating which goes first;
//! - `push_cross_*`: apply on A until a simulated proxy (a real delta-xDS client) connected to B
//!   has ACKed the new routes: B learns of the change through its etcd watch;
//! - `push_local_*`: the same with the apply on B itself, and `push_redb_*` on the redb control
//!   plane, as baselines. Each push includes the control plane's debounce.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_ads::sim::{sidecar_node, SimClient, SimConfig};
use weft_ads::Protocol;
use weft_xds::type_url;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const WAIT: Duration = Duration::from_secs(20);

struct Args {
    applies: usize,
    pushes: usize,
    debounce: String,
}

fn parse_args() -> Args {
    let mut a = Args { applies: 200, pushes: 100, debounce: "100ms".into() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--applies" => a.applies = value().parse().expect("--applies: a number"),
            "--pushes" => a.pushes = value().parse().expect("--pushes: a number"),
            "--debounce" => a.debounce = value(),
            // cargo bench passes `--bench`.
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

struct Control {
    child: Child,
    api: SocketAddr,
    xds: SocketAddr,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_control(dir: &Path, name: &str, store: &[&str], debounce: &str) -> Control {
    let ready = dir.join(format!("{name}.ready"));
    let child = Command::new(WEFT)
        .arg("control")
        .args(store)
        .args(["--xds-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--debounce", debounce])
        .arg("--ready-file")
        .arg(&ready)
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .expect("start weft control");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "weft control {name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let addr = |n: &str| v["listeners"][n].as_str().unwrap().parse().unwrap();
    Control { api: addr("api"), xds: addr("xds"), child }
}

const SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews.shop.svc.cluster.local]
  ports: [{ number: 9080, name: http }]
  resolution: STATIC
  endpoints: [{ address: 127.0.0.1, ports: { http: 9 } }]
"#;

/// A small VirtualService whose route timeout is `ms`: each value is a real change.
fn virtual_service(ms: usize) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews, namespace: shop }}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  http:
    - timeout: {ms}ms
      route: [{{ destination: {{ host: reviews.shop.svc.cluster.local }} }}]
"#
    )
}

async fn apply(api: SocketAddr, yaml: &str) -> Duration {
    let body = serde_json::json!({ "file": "bench.yaml", "yaml": yaml }).to_string();
    let started = Instant::now();
    let out = weft_test::http_request(
        api,
        weft_test::HttpVersion::Http1,
        http::Method::POST,
        "/v1/apply",
        &[("content-type", "application/json")],
        body,
    )
    .await
    .expect("control API");
    let took = started.elapsed();
    assert_eq!(out.status, 200, "apply: {}", out.text());
    took
}

async fn sim(xds: SocketAddr, name: &str) -> SimClient {
    let node = sidecar_node("127.0.0.9".parse().unwrap(), name, "shop", &BTreeMap::new());
    let client = SimClient::connect(&format!("http://{xds}"), node, SimConfig::wildcard(Protocol::Delta))
        .await
        .expect("connect a simulated proxy");
    client
        .wait_until(WAIT, "initial routes", |s| !s.names(type_url::ROUTE).is_empty())
        .await
        .expect("the simulated proxy gets routes");
    client
}

/// Applies `yaml` on `api` and returns the time until `client` ACKed a new route version.
async fn push(api: SocketAddr, client: &SimClient, yaml: &str) -> Duration {
    let before = client.inspect(|s| s.version(type_url::ROUTE).unwrap_or_default().to_string());
    let started = Instant::now();
    apply(api, yaml).await;
    let acked = client
        .wait_ack_time(WAIT, |s| s.version(type_url::ROUTE).is_some_and(|v| v != before))
        .await
        .flatten()
        .expect("the change reached the simulated proxy");
    acked.saturating_duration_since(started)
}

fn stats(name: &str, mut samples: Vec<Duration>, out: &mut serde_json::Map<String, serde_json::Value>) {
    samples.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let at = |p: usize| ms(samples[((samples.len() - 1) * p) / 100]);
    let (p50, p99, max) = (at(50), at(99), ms(*samples.last().unwrap()));
    eprintln!("{name:>12}: p50 {p50:>8.3} ms  p99 {p99:>8.3} ms  max {max:>8.3} ms  ({} samples)", samples.len());
    out.insert(format!("{name}_p50_ms"), p50.into());
    out.insert(format!("{name}_p99_ms"), p99.into());
    out.insert(format!("{name}_max_ms"), max.into());
}

fn main() {
    let a = parse_args();
    let dir = tempfile::tempdir().unwrap();
    let etcd = weft_test::EtcdServer::start().expect("start etcd");
    let url = etcd.url("bench");
    let redb_dir = dir.path().join("store").display().to_string();
    let redb = start_control(dir.path(), "redb", &["--data-dir", &redb_dir], &a.debounce);
    let ctl_a = start_control(dir.path(), "etcd-a", &["--store", &url], &a.debounce);
    let ctl_b = start_control(dir.path(), "etcd-b", &["--store", &url], &a.debounce);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut report = serde_json::Map::new();
    report.insert("applies".into(), a.applies.into());
    report.insert("pushes".into(), a.pushes.into());
    report.insert("debounce".into(), a.debounce.clone().into());
    rt.block_on(async {
        for api in [redb.api, ctl_a.api] {
            apply(api, SERVICE).await;
            apply(api, &virtual_service(1)).await;
        }
        // Apply latency, alternating which store goes first.
        let (mut on_redb, mut on_etcd) = (Vec::new(), Vec::new());
        for i in 0..a.applies {
            let yaml = virtual_service(10 + i);
            if i % 2 == 0 {
                on_redb.push(apply(redb.api, &yaml).await);
                on_etcd.push(apply(ctl_a.api, &yaml).await);
            } else {
                on_etcd.push(apply(ctl_a.api, &yaml).await);
                on_redb.push(apply(redb.api, &yaml).await);
            }
        }
        stats("apply_redb", on_redb, &mut report);
        stats("apply_etcd", on_etcd, &mut report);

        // Apply to push: A → B through etcd, B → B and redb → redb as baselines, interleaved.
        let on_b = sim(ctl_b.xds, "bench-b").await;
        let on_redb_cp = sim(redb.xds, "bench-redb").await;
        let (mut cross, mut local, mut single) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..a.pushes {
            let base = 100_000 + 3 * i;
            cross.push(push(ctl_a.api, &on_b, &virtual_service(base)).await);
            local.push(push(ctl_b.api, &on_b, &virtual_service(base + 1)).await);
            single.push(push(redb.api, &on_redb_cp, &virtual_service(base + 2)).await);
        }
        stats("push_cross", cross, &mut report);
        stats("push_local", local, &mut report);
        stats("push_redb", single, &mut report);
    });
    println!("{}", serde_json::Value::Object(report));
    drop((redb, ctl_a, ctl_b, etcd));
}
