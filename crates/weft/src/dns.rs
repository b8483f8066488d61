//! `weft dns`: Mesh-DNS. Mesh names from the control plane's name table (over ADS, saved in the
//! state directory), everything else forwarded to the host's resolvers. docs/dns.md.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use weft_dns::admin::Admin;
use weft_dns::ads::{AdsOptions, AdsStatus};
use weft_dns::lookup::LookupConfig;
use weft_dns::resolv;
use weft_dns::state::StateDir;
use weft_dns::{Config, Dns};

use crate::EXIT_USAGE;

#[derive(clap::Args)]
pub struct Args {
    /// Address to answer DNS on, UDP and TCP.
    #[arg(long, default_value = "127.0.0.1:15053")]
    listen: SocketAddr,
    /// Admin address: /ready, /stats/prometheus, /nametable.
    #[arg(long, default_value = "127.0.0.1:15054")]
    admin: SocketAddr,
    /// Take the name table from this ADS server (`HOST:PORT`), e.g. `weft control` on 127.0.0.1:15010.
    #[arg(long, value_name = "ADDR", requires = "node_id")]
    xds: Option<String>,
    /// The xDS node id, Istio style: `sidecar~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local`
    /// (the same as the host's proxy: short names follow its namespace).
    #[arg(long, requires = "xds")]
    node_id: Option<String>,
    /// Namespace of this node (node metadata NAMESPACE; default: from the node id).
    #[arg(long, requires = "xds")]
    namespace: Option<String>,
    /// Tenant of this node (node metadata TENANT; default: `default`).
    #[arg(long, requires = "xds")]
    tenant: Option<String>,
    /// Labels `k=v,k=v` (node metadata LABELS; they select the node's Sidecar).
    #[arg(long, value_delimiter = ',', requires = "xds")]
    labels: Vec<String>,
    /// Directory where the name table is saved, and read from at start (created when missing).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Upstream resolvers `IP[:PORT],...` (default: the nameservers of --resolv-conf).
    #[arg(long, value_delimiter = ',')]
    upstream: Vec<String>,
    /// Search domains of the host's clients `d1,d2` (default: the search line of --resolv-conf;
    /// an empty value for none).
    #[arg(long, value_delimiter = ',')]
    search: Option<Vec<String>>,
    /// Where the host's resolver settings are read from.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Domains the mesh owns: unknown names in them are NXDOMAIN, not forwarded.
    #[arg(long, value_delimiter = ',', default_value = "cluster.local")]
    mesh_domain: Vec<String>,
    /// TTL of mesh answers, in seconds.
    #[arg(long, default_value_t = 30)]
    mesh_ttl: u32,
    /// Answers of forwarded questions kept in the cache at most (0: no cache).
    #[arg(long, default_value_t = 10_000)]
    cache_size: usize,
    /// How long one upstream may take to answer (e.g. `2s`).
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    upstream_timeout: Duration,
    /// Questions being forwarded at once; more get SERVFAIL at once.
    #[arg(long, default_value_t = 1024)]
    max_inflight: usize,
    /// TCP connections at once; more are closed at once.
    #[arg(long, default_value_t = 256)]
    max_tcp: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Write `{"admin":..., "listeners":{"dns":...}}` here (atomically) once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

/// The checked settings.
struct Setup {
    cfg: Config,
    ads: Option<AdsOptions>,
}

fn setup(a: &Args) -> Result<Setup, String> {
    if a.threads == 0 || a.threads > 64 {
        return Err("--threads must be between 1 and 64".into());
    }
    if a.cache_size > 10_000_000 {
        return Err("--cache-size must be at most 10000000".into());
    }
    if a.max_inflight == 0 || a.max_tcp == 0 {
        return Err("--max-inflight and --max-tcp must be at least 1".into());
    }
    if a.upstream_timeout.is_zero() {
        return Err("--upstream-timeout must be more than 0".into());
    }
    let conf = match std::fs::read_to_string(&a.resolv_conf) {
        Ok(text) => resolv::parse(&text),
        Err(e) if a.upstream.is_empty() || a.search.is_none() => {
            tracing::warn!(file = %a.resolv_conf.display(), error = %e, "resolver settings not read");
            resolv::ResolvConf::default()
        }
        Err(_) => resolv::ResolvConf::default(),
    };
    let upstreams = if a.upstream.is_empty() {
        conf.nameservers.clone()
    } else {
        let mut out = Vec::new();
        for u in a.upstream.iter().filter(|u| !u.trim().is_empty()) {
            out.push(resolv::parse_upstream(u).map_err(|e| format!("--upstream: {e}"))?);
        }
        out
    };
    for u in &upstreams {
        let same_port = u.port() == a.listen.port();
        let same_ip = u.ip() == a.listen.ip() || (a.listen.ip().is_unspecified() && u.ip().is_loopback());
        if same_port && same_ip {
            return Err(format!("--upstream {u} is weft dns itself (--listen {}): queries would loop", a.listen));
        }
    }
    if upstreams.is_empty() {
        tracing::warn!("no upstream resolver (--upstream, or nameserver lines in --resolv-conf): names outside the mesh get SERVFAIL");
    }
    let domains = |list: &[String], flag: &str| -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for d in list.iter().map(|d| d.trim().trim_matches('.')).filter(|d| !d.is_empty()) {
            out.push(weft_dns::table::normalize(d).map_err(|e| format!("{flag}: {e}"))?);
        }
        Ok(out)
    };
    let search = match &a.search {
        Some(list) => domains(list, "--search")?,
        None => conf.search.clone(),
    };
    let mesh_domains = domains(&a.mesh_domain, "--mesh-domain")?;
    let cfg = Config {
        lookup: LookupConfig { search, mesh_domains },
        mesh_ttl: a.mesh_ttl,
        cache_size: a.cache_size,
        upstreams,
        upstream_timeout: a.upstream_timeout,
        max_inflight: a.max_inflight,
        max_tcp: a.max_tcp,
        udp_readers: a.threads,
        ..Config::default()
    };
    let ads = match &a.xds {
        None => None,
        Some(server) => {
            let Some(id) = a.node_id.as_deref() else { return Err("--xds needs --node-id".into()) };
            let mut labels = BTreeMap::new();
            for kv in a.labels.iter().filter(|s| !s.is_empty()) {
                match kv.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => {
                        labels.insert(k.trim().to_string(), v.trim().to_string());
                    }
                    _ => return Err(format!("--labels: {kv:?} is not KEY=VALUE")),
                }
            }
            let ips: Vec<IpAddr> = Vec::new();
            let node = weft_xds_client::node(id, a.namespace.as_deref(), &labels, &ips, a.tenant.as_deref())
                .map_err(|e| format!("--node-id: {e}"))?;
            Some(AdsOptions::new(server, node).map_err(|e| format!("--xds: {e}"))?)
        }
    };
    Ok(Setup { cfg, ads })
}

pub fn run(a: Args) -> ExitCode {
    let Setup { cfg, ads } = match setup(&a) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weft dns: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(a.threads).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft dns: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(serve(a, cfg, ads))
}

async fn serve(a: Args, cfg: Config, ads: Option<AdsOptions>) -> ExitCode {
    let fail = |e: String| {
        eprintln!("weft dns: {e}");
        ExitCode::from(1)
    };
    let dns = Dns::new(cfg);
    let state = match &a.state_dir {
        None => None,
        Some(dir) => match StateDir::open(dir) {
            Ok(s) => Some(s),
            Err(e) => return fail(format!("--state-dir: {e}")),
        },
    };
    if let Some(s) = &state {
        match s.load() {
            Ok(Some(table)) => {
                tracing::info!(names = table.len(), file = %s.table_path().display(), "name table loaded from the state directory");
                dns.set_table(table);
            }
            Ok(None) => {}
            // A damaged file is replaced by the control plane's next table.
            Err(e) => tracing::warn!(error = %e, "saved name table not used"),
        }
    }
    if ads.is_none() && dns.table().is_none() {
        // Without a control plane the table is what it is: unknown mesh names are NXDOMAIN.
        dns.set_table(weft_dns::NameTable::default());
    }
    let (udp, tcp) = match weft_dns::server::bind(a.listen).await {
        Ok(x) => x,
        Err(e) => return fail(format!("--listen {}: {e}", a.listen)),
    };
    let admin_listener = match tokio::net::TcpListener::bind(a.admin).await {
        Ok(l) => l,
        Err(e) => return fail(format!("--admin {}: {e}", a.admin)),
    };
    let (dns_addr, admin_addr) = match (udp.local_addr(), admin_listener.local_addr()) {
        (Ok(d), Ok(ad)) => (d, ad),
        (Err(e), _) | (_, Err(e)) => return fail(e.to_string()),
    };
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let status = ads.as_ref().map(|_| Arc::new(AdsStatus::default()));
    let mut tasks = Vec::new();
    let (d, s) = (dns.clone(), stop.clone());
    tasks.push(tokio::spawn(async move { d.serve(udp, tcp, s).await }));
    let admin = Admin { dns: dns.clone(), ads: status.clone() };
    tasks.push(tokio::spawn(admin.serve(admin_listener, stop.clone())));
    if let (Some(opts), Some(status)) = (ads, status) {
        tracing::info!(server = %opts.server, node = %opts.node.id, "subscribing to the name table");
        tasks.push(tokio::spawn(weft_dns::ads::run(opts, dns.clone(), state.clone(), status, stop.clone())));
    }
    tracing::info!(dns = %dns_addr, admin = %admin_addr, upstreams = ?dns.config().upstreams,
        search = ?dns.config().lookup.search, "weft dns serving");
    if let Some(path) = &a.ready_file {
        let body = format!("{{\"admin\":\"{admin_addr}\",\"listeners\":{{\"dns\":\"{dns_addr}\"}}}}\n");
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, path)) {
            return fail(format!("--ready-file {}: {e}", path.display()));
        }
    }
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("weft dns stopping");
    let _ = stop_tx.send(true);
    for t in tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), t).await.is_err() {
            abort.abort();
        }
    }
    ExitCode::SUCCESS
}
