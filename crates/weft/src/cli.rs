//! The operator CLI (`weft apply/get/delete/check/proxy-config`), in kubectl's and istioctl's
//! habits, talking to `weft control`'s API (see `weft_control::wire`).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use weft_control::wire::*;

#[derive(clap::Args, Clone)]
pub struct ServerArg {
    /// Address of `weft control`'s API.
    #[arg(long, global = true, env = "WEFT_SERVER", default_value = "127.0.0.1:15014")]
    pub server: String,
}

#[derive(clap::Args)]
pub struct ApplyArgs {
    /// File, directory (every .yaml/.yml/.json in it) or `-` for standard input. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// Validate on the server without storing anything.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(clap::Args)]
pub struct GetArgs {
    /// Kind: virtualservice (vs), destinationrule (dr), serviceentry (se), workloadentry (we), sidecar, gateway (gw), ...
    pub kind: String,
    pub name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output: table (default), yaml or json.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "yaml", "json"])]
    pub output: String,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(clap::Args)]
pub struct DeleteArgs {
    pub kind: Option<String>,
    pub name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Delete the resources named in these files.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Validate these files offline (no server needed). Without `-f`: the server's sync status.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(clap::Args)]
pub struct ProxyConfigArgs {
    /// listeners, routes, clusters or endpoints.
    #[arg(value_parser = ["listeners", "listener", "routes", "route", "clusters", "cluster", "endpoints", "endpoint"])]
    pub what: String,
    /// The proxy's node id (as `weft check` lists it).
    pub node: String,
    /// Output: table (default), detail (whole resources) or json.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "detail", "json"])]
    pub output: String,
    #[command(flatten)]
    pub server: ServerArg,
}

/// One request to the API; returns the status and the JSON body.
async fn call(server: &str, method: http::Method, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<(u16, Bytes)> {
    let authority = server.trim_start_matches("http://").trim_end_matches('/').to_string();
    let connect = tokio::net::TcpStream::connect(&authority);
    let stream = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| {
            anyhow!("{authority}: connect timed out (is `weft control` running? set --server or WEFT_SERVER)")
        })?
        .with_context(|| {
            format!("{authority}: cannot connect (is `weft control` running? set --server or WEFT_SERVER)")
        })?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let work = async {
        let resp = tx.send_request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, bytes))
    };
    tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .map_err(|_| anyhow!("{authority}: no answer within 60s"))?
}

fn api_error(status: u16, body: &[u8]) -> anyhow::Error {
    match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(e) => anyhow!("{}", e.errors.join("\n")),
        Err(_) => anyhow!("server answered {status}: {}", String::from_utf8_lossy(body)),
    }
}

/// Reads `-f` arguments into (display name, text) pairs, directories expanded in name order.
fn read_inputs(specs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for spec in specs {
        if spec == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
            out.push(("<stdin>".to_string(), s));
            continue;
        }
        let path = Path::new(spec);
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("{spec}: cannot read directory"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("{spec}: no .yaml, .yml or .json files");
            }
            for f in files {
                let text = std::fs::read_to_string(&f).with_context(|| format!("{}: cannot read", f.display()))?;
                out.push((f.display().to_string(), text));
            }
        } else {
            let text = std::fs::read_to_string(path).with_context(|| format!("{spec}: cannot read"))?;
            out.push((spec.clone(), text));
        }
    }
    Ok(out)
}

fn resource_word(kind: &str, name: &str) -> String {
    let group = match kind {
        "AuthorizationPolicy" | "PeerAuthentication" => "security.istio.io",
        _ => "networking.istio.io",
    };
    format!("{}.{group}/{name}", kind.to_ascii_lowercase())
}

pub async fn apply(a: ApplyArgs) -> anyhow::Result<()> {
    let inputs = read_inputs(&a.files)?;
    // Every file is validated before any is stored, so a bad file in a directory stores nothing.
    for (file, yaml) in &inputs {
        let body = serde_json::to_vec(&ApplyRequest { file: file.clone(), yaml: yaml.clone() })?;
        let (status, resp) = call(&a.server.server, http::Method::POST, "/v1/apply?dry_run=1", Some(body)).await?;
        if status != 200 {
            return Err(api_error(status, &resp));
        }
    }
    for (file, yaml) in inputs {
        let body = serde_json::to_vec(&ApplyRequest { file, yaml })?;
        let path = if a.dry_run { "/v1/apply?dry_run=1" } else { "/v1/apply" };
        let (status, resp) = call(&a.server.server, http::Method::POST, path, Some(body)).await?;
        if status != 200 {
            return Err(api_error(status, &resp));
        }
        let resp: ApplyResponse = serde_json::from_slice(&resp)?;
        for r in resp.results {
            let word = if a.dry_run { "valid (dry run)".to_string() } else { r.action.clone() };
            println!("{} {word}", resource_word(&r.kind, &r.name));
            for f in &r.not_applied {
                eprintln!("  warning: {f}: accepted, not applied yet");
            }
        }
    }
    Ok(())
}

fn kind_path(kind: &str) -> anyhow::Result<&'static str> {
    weft_istio::Kind::parse(kind).map(|k| k.as_str()).ok_or_else(|| anyhow!("unknown kind {kind:?}"))
}

pub async fn get(a: GetArgs) -> anyhow::Result<()> {
    let kind = kind_path(&a.kind)?;
    let items = match &a.name {
        Some(name) => {
            let (status, body) = call(
                &a.server.server,
                http::Method::GET,
                &format!("/v1/resources/{kind}/{}/{name}", a.namespace),
                None,
            )
            .await?;
            if status != 200 {
                return Err(api_error(status, &body));
            }
            vec![serde_json::from_slice::<StoredResource>(&body)?]
        }
        None => {
            let (status, body) =
                call(&a.server.server, http::Method::GET, &format!("/v1/resources?kind={kind}"), None).await?;
            if status != 200 {
                return Err(api_error(status, &body));
            }
            let list: ListResponse = serde_json::from_slice(&body)?;
            list.items.into_iter().filter(|i| a.all_namespaces || i.namespace == a.namespace).collect()
        }
    };
    match a.output.as_str() {
        "json" => {
            let bodies: Vec<&serde_json::Value> = items.iter().map(|i| &i.body).collect();
            if a.name.is_some() {
                println!("{}", serde_json::to_string_pretty(bodies[0])?);
            } else {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"kind": "List", "items": bodies}))?);
            }
        }
        "yaml" => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", serde_yaml::to_string(&item.body)?);
            }
        }
        _ => {
            if items.is_empty() {
                eprintln!("No resources found in {} namespace.", if a.all_namespaces { "any" } else { &a.namespace });
                return Ok(());
            }
            let mut rows = vec![vec!["NAMESPACE".into(), "NAME".into(), "REVISION".into(), "CREATED".into()]];
            for i in &items {
                rows.push(vec![i.namespace.clone(), i.name.clone(), i.revision.to_string(), i.created_at.clone()]);
            }
            print_table(&rows);
        }
    }
    Ok(())
}

pub async fn delete(a: DeleteArgs) -> anyhow::Result<()> {
    let mut results = Vec::new();
    if !a.files.is_empty() {
        for (file, yaml) in read_inputs(&a.files)? {
            let body = serde_json::to_vec(&ApplyRequest { file, yaml })?;
            let (status, resp) = call(&a.server.server, http::Method::POST, "/v1/delete", Some(body)).await?;
            if status != 200 {
                return Err(api_error(status, &resp));
            }
            results.extend(serde_json::from_slice::<DeleteResponse>(&resp)?.results);
        }
    } else {
        let (Some(kind), Some(name)) = (&a.kind, &a.name) else { bail!("give KIND NAME or -f FILE") };
        let kind = kind_path(kind)?;
        let path = format!("/v1/resources/{kind}/{}/{name}", a.namespace);
        let (status, resp) = call(&a.server.server, http::Method::DELETE, &path, None).await?;
        if status == 404 {
            bail!("{} \"{name}\" not found in namespace {}", kind.to_ascii_lowercase(), a.namespace);
        }
        if status != 200 {
            return Err(api_error(status, &resp));
        }
        results.extend(serde_json::from_slice::<DeleteResponse>(&resp)?.results);
    }
    for r in results {
        let word = if r.deleted { "deleted" } else { "not found" };
        println!("{} {word}", resource_word(&r.kind, &r.name));
    }
    Ok(())
}

pub async fn check(a: CheckArgs) -> anyhow::Result<bool> {
    if !a.files.is_empty() {
        let mut ok = true;
        for (file, yaml) in read_inputs(&a.files)? {
            match weft_istio::parse_yaml(&file, &yaml) {
                Ok(rs) => {
                    println!("{file}: {} resources valid", rs.len());
                    for r in rs {
                        for f in &r.not_applied {
                            println!("  {}: {f}: accepted, not applied yet", r.key());
                        }
                    }
                }
                Err(e) => {
                    ok = false;
                    eprintln!("{e}");
                }
            }
        }
        return Ok(ok);
    }
    let (status, body) = call(&a.server.server, http::Method::GET, "/v1/check", None).await?;
    if status != 200 {
        return Err(api_error(status, &body));
    }
    let c: CheckResponse = serde_json::from_slice(&body)?;
    let synced = c.mesh_revision == c.store_revision;
    println!(
        "control plane: store revision {}, serving revision {}{}, {} services",
        c.store_revision,
        c.mesh_revision,
        if synced { "" } else { " (rebuild pending)" },
        c.services
    );
    print_proxies(&c.proxies);
    let mut ok = true;
    for w in &c.warnings {
        println!("warning: {w}");
    }
    for n in &c.not_applied {
        for f in &n.fields {
            println!("not applied: {}: {f}", n.resource);
        }
    }
    if proxies_have_nacks(&c.proxies) {
        ok = false;
    }
    Ok(ok)
}

/// Prints one row per proxy with the state of each xDS type (NDS: the DNS name table of
/// `weft dns`), like `istioctl proxy-status`:
/// SYNCED (the last response was ACKed), NACK (it was rejected), STALE (sent, not yet answered),
/// NOT SENT (never pushed).
fn print_proxies(proxies: &serde_json::Value) {
    let Some(list) = proxies.as_array() else { return };
    if list.is_empty() {
        println!("no proxies connected");
        return;
    }
    let mut rows = vec![vec![
        "NAME".to_string(),
        "TENANT".into(),
        "PROTOCOL".into(),
        "CDS".into(),
        "EDS".into(),
        "LDS".into(),
        "RDS".into(),
        "NDS".into(),
    ]];
    let mut nacks = Vec::new();
    for p in list {
        let s = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
        let mut row = vec![s("node_id"), s("tenant"), s("protocol")];
        for ty in [
            weft_xds_url::CLUSTER,
            weft_xds_url::ENDPOINT,
            weft_xds_url::LISTENER,
            weft_xds_url::ROUTE,
            weft_xds_url::NAME_TABLE,
        ] {
            let (state, nack) = type_state(p.get("types").and_then(|t| t.get(ty)));
            if let Some(m) = nack {
                nacks.push(format!("{} {}: {m}", s("node_id"), weft_xds_url::short(ty)));
            }
            row.push(state.to_string());
        }
        rows.push(row);
    }
    print_table(&rows);
    for n in nacks {
        println!("NACK {n}");
    }
}

use weft_xds::type_url as weft_xds_url;

/// The state of one type on one proxy, and the NACK message when its latest response was rejected.
fn type_state(t: Option<&serde_json::Value>) -> (&'static str, Option<String>) {
    let Some(t) = t else { return ("NOT SENT", None) };
    let version =
        |v: Option<&serde_json::Value>| v.and_then(|v| v.get("version")).and_then(|v| v.as_str()).map(String::from);
    let sent = version(t.get("sent"));
    // A delta client that reconnects with current versions is sent nothing but holds them all.
    let acked = version(t.get("acked"));
    if sent.is_none() && acked.is_none() {
        return ("NOT SENT", None);
    }
    if t.get("in_sync").and_then(|v| v.as_bool()) == Some(true) {
        return ("SYNCED", None);
    }
    match t.get("nack").filter(|n| !n.is_null()) {
        Some(n) if version(Some(n)) == sent => {
            ("NACK", Some(n.get("message").and_then(|m| m.as_str()).unwrap_or("rejected").to_string()))
        }
        _ => ("STALE", None),
    }
}

fn proxies_have_nacks(proxies: &serde_json::Value) -> bool {
    proxies.as_array().is_some_and(|l| {
        l.iter().any(|p| {
            p.get("types")
                .and_then(|t| t.as_object())
                .is_some_and(|t| t.values().any(|v| type_state(Some(v)).0 == "NACK"))
        })
    })
}

pub async fn proxy_config(a: ProxyConfigArgs) -> anyhow::Result<()> {
    let node = a.node.replace('%', "%25").replace('/', "%2F");
    let path = format!("/v1/proxies/{node}/config?type={}", a.what);
    let (status, body) = call(&a.server.server, http::Method::GET, &path, None).await?;
    if status != 200 {
        return Err(api_error(status, &body));
    }
    let resp: ProxyConfigResponse = serde_json::from_slice(&body)?;
    match a.output.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&resp)?),
        "detail" => {
            for r in &resp.resources {
                println!("# {} (version {})\n{}", r.name, r.version, r.detail);
            }
        }
        _ => {
            let Some(first) = resp.resources.first() else {
                eprintln!("{}: no {} acknowledged", resp.node, a.what);
                return Ok(());
            };
            let mut header = vec!["NAME".to_string()];
            header.extend(first.summary.iter().map(|(k, _)| k.clone()));
            let mut rows = vec![header];
            for r in &resp.resources {
                let mut row = vec![r.name.clone()];
                row.extend(r.summary.iter().map(|(_, v)| v.clone()));
                rows.push(row);
            }
            print_table(&rows);
        }
    }
    Ok(())
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r.get(c).map(|s| s.chars().count()).unwrap_or(0)).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}
