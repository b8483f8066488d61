//! `weft`: the one binary. Subcommands stay thin; the work lives in the library crates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing_subscriber::{reload, EnvFilter};

mod agent;
mod capture;
mod cli;
mod demo;
mod dns;
mod xds;

/// EX_USAGE from sysexits.h: bad configuration or arguments.
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "Weft service mesh: data plane, control plane, node agent and CLI",
    propagate_version = true
)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `weft_proxy=debug`.
    #[arg(long, global = true, env = "WEFT_LOG", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the sidecar/gateway proxy.
    Proxy(ProxyArgs),
    /// Validate a proxy config file and print what it contains (exit 64 when invalid).
    Validate {
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Run the control plane: Istio resources in (through the API), xDS out.
    Control(ControlArgs),
    /// Create or update resources from files (`-f FILE|DIR|-`), like `kubectl apply`.
    Apply(cli::ApplyArgs),
    /// List or show resources, like `kubectl get`.
    Get(cli::GetArgs),
    /// Delete resources by kind and name, or those named in files.
    Delete(cli::DeleteArgs),
    /// Validate files offline (`-f`), or show the proxies' sync status and NACKs, like `istioctl proxy-status`.
    Check(cli::CheckArgs),
    /// Show the config a proxy last acknowledged, like `istioctl proxy-config`.
    ProxyConfig(cli::ProxyConfigArgs),
    /// Run the node agent (VMs, bare metal): register this host's services, health-check them,
    /// supervise the proxy and DNS; `weft agent status` shows what is registered.
    Agent(agent::Args),
    /// Run Mesh-DNS: mesh names to service VIPs from the control plane, everything else forwarded.
    Dns(dns::Args),
    /// Install, remove or show traffic capture rules (iptables/nftables) for the sidecar.
    Capture(capture::Args),
    /// Run a local mesh: control plane, HTTP and gRPC services behind weft sidecars, live traffic.
    Demo(demo::DemoArgs),
    /// Built-in HTTP or gRPC backend used by the demo, tests and benchmarks.
    #[command(hide = true)]
    DemoBackend(demo::backend::BackendArgs),
}

#[derive(clap::Args)]
struct ControlArgs {
    /// Directory of the embedded store (created when missing).
    #[arg(long, default_value = "weft-data")]
    data_dir: PathBuf,
    /// Keep the store in etcd instead of --data-dir, shared by every control plane given the same
    /// URL (high availability): `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`, prefix `weft` by default.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// ADS (gRPC) listen address for proxies, Envoy and proxyless gRPC clients.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_listen: std::net::SocketAddr,
    /// Operator API listen address (used by `weft apply/get/delete/check/proxy-config`).
    #[arg(long, default_value = "127.0.0.1:15014")]
    api_listen: std::net::SocketAddr,
    /// Quiet time after a change before the mesh is rebuilt and pushed (e.g. `100ms`).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    debounce: std::time::Duration,
    /// Write `{"xds":..., "api":...}` here once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    weft_config::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// Static config file (YAML; see docs/proxy-config.md). Required without `--xds`; with it,
    /// optional: node, admin, access log and static resources still come from it.
    #[arg(long, short = 'c', required_unless_present = "xds")]
    config: Option<PathBuf>,
    /// Take listeners, routes, clusters and endpoints from this ADS server (`HOST:PORT`), e.g.
    /// `weft control` on 127.0.0.1:15010 (see docs/proxy.md, xDS mode).
    #[arg(long, value_name = "ADDR", requires = "node_id")]
    xds: Option<String>,
    /// xDS protocol variant: `delta` (falls back to `sotw` when the server lacks it) or `sotw`.
    #[arg(long, value_parser = ["delta", "sotw"], default_value = "delta", requires = "xds")]
    xds_protocol: String,
    /// The xDS node id, Istio style: `sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local`.
    #[arg(long, requires = "xds")]
    node_id: Option<String>,
    /// Namespace of this workload (node metadata NAMESPACE; default: from the node id).
    #[arg(long, requires = "xds")]
    namespace: Option<String>,
    /// Workload labels `k=v,k=v` (node metadata LABELS).
    #[arg(long, value_delimiter = ',', requires = "xds")]
    labels: Vec<String>,
    /// Workload addresses `IP,IP` (node metadata INSTANCE_IPS).
    #[arg(long, value_delimiter = ',', requires = "xds")]
    instance_ips: Vec<std::net::IpAddr>,
    /// Tenant of this workload (node metadata TENANT; default: `default`).
    #[arg(long, requires = "xds")]
    tenant: Option<String>,
    /// Ask for an HTTP-proxy listener on 127.0.0.1:PORT (node metadata HTTP_PROXY_PORT, Istio's
    /// proxyHttpPort, usually 15080): applications use `http_proxy=http://127.0.0.1:PORT`
    /// instead of capture rules (docs/proxy.md, HTTP-proxy mode).
    #[arg(long, value_name = "PORT", requires = "xds", value_parser = clap::value_parser!(u16).range(1..))]
    http_proxy_port: Option<u16>,
    /// Persist each config applied from the control plane in DIR and serve the persisted one at
    /// start until the control plane answers (docs/proxy.md, xDS mode).
    #[arg(long, value_name = "DIR", requires = "xds")]
    xds_cache: Option<PathBuf>,
    /// Worker threads, each with its own event loop and connection pools.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Write `{"admin":..., "listeners":{...}}` here (atomically) once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match EnvFilter::try_new(&cli.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("weft: --log-level {:?}: {e}", cli.log_level);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (filter, handle) = reload::Layer::new(filter);
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);
    if cli.log_format == "json" {
        tracing_subscriber::registry().with(filter).with(fmt.json()).init();
    } else {
        tracing_subscriber::registry().with(filter).with(fmt).init();
    }
    let log_control: weft_proxy::LogControl = Arc::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| format!("invalid level {level:?}: {e}"))?;
        handle.reload(f).map_err(|e| e.to_string())
    });

    match cli.cmd {
        Cmd::Proxy(a) => run_proxy(a, log_control),
        Cmd::Validate { config } => match weft_config::load_file(&config) {
            Ok(b) => {
                let c = &b.config;
                println!(
                    "{}: ok ({} listeners, {} route configs, {} clusters, version {})",
                    config.display(),
                    c.listeners.len(),
                    c.route_configs.len(),
                    c.clusters.len(),
                    c.version
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weft: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Cmd::Control(a) => run_control(a),
        Cmd::Apply(a) => run_cli(cli::apply(a)),
        Cmd::Get(a) => run_cli(cli::get(a)),
        Cmd::Delete(a) => run_cli(cli::delete(a)),
        Cmd::Check(a) => match block_on(cli::check(a)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Cmd::ProxyConfig(a) => run_cli(cli::proxy_config(a)),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Agent(a) => agent::run(a),
        Cmd::Dns(a) => dns::run(a),
        Cmd::Capture(a) => capture::run(a),
        Cmd::DemoBackend(a) => demo::backend::run(a),
    }
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

/// Runs a CLI command: errors go to stderr with exit status 1, like kubectl.
fn run_cli(f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    match block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_control(a: ControlArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft: {e}");
            return ExitCode::from(1);
        }
    };
    let etcd = match a.store.as_deref().map(weft_control::EtcdConfig::from_url).transpose() {
        Ok(etcd) => etcd,
        Err(e) => {
            eprintln!("weft: --store: {e}");
            return ExitCode::from(64);
        }
    };
    rt.block_on(async move {
        let opts = weft_control::Options {
            data_dir: a.data_dir,
            etcd,
            xds_listen: a.xds_listen,
            api_listen: a.api_listen,
            debounce: a.debounce,
            ..Default::default()
        };
        let control = match weft_control::Control::start(opts).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("weft: {e}");
                return ExitCode::from(1);
            }
        };
        if let Some(path) = &a.ready_file {
            // The same shape as the proxy's ready file: the API is the control plane's admin port.
            let body = format!(
                "{{\"admin\":\"{api}\",\"listeners\":{{\"xds\":\"{xds}\",\"api\":\"{api}\"}}}}\n",
                api = control.api_addr,
                xds = control.xds_addr
            );
            let tmp = path.with_extension("tmp");
            if let Err(e) = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, path)) {
                eprintln!("weft: --ready-file {}: {e}", path.display());
                return ExitCode::from(1);
            }
        }
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("weft: {e}");
                return ExitCode::from(1);
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("control plane stopping");
        control.stop().await;
        ExitCode::SUCCESS
    })
}

fn run_proxy(a: ProxyArgs, log_control: weft_proxy::LogControl) -> ExitCode {
    let boot = match &a.config {
        Some(path) => match weft_config::load_file(path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("weft: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => weft_config::Bootstrap {
            node: weft_config::Node::default(),
            admin: weft_config::AdminConfig::default(),
            access_log: weft_config::AccessLog::Off,
            config: Arc::new(weft_config::ProxyConfig::default()),
        },
    };
    if a.concurrency == 0 || a.concurrency > 256 {
        eprintln!("weft: --concurrency must be between 1 and 256");
        return ExitCode::from(EXIT_USAGE);
    }
    let (boot, dynamic, reload) = match &a.xds {
        Some(server) => match xds::setup(&a, server, boot) {
            Ok((boot, dynamic)) => (boot, Some(dynamic), None),
            Err(e) => {
                eprintln!("weft: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => {
            // Without --xds the config file is required (clap checks it).
            let Some(path) = a.config.clone() else { return ExitCode::from(EXIT_USAGE) };
            let reload: weft_proxy::Reloader =
                Box::new(move || weft_config::load_file(&path).map_err(|e| e.to_string()));
            (boot, None, Some(reload))
        }
    };
    let opts = weft_proxy::Options {
        concurrency: a.concurrency,
        ready_file: a.ready_file,
        log_control: Some(log_control),
        dynamic,
    };
    match weft_proxy::run(boot, opts, reload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e}");
            ExitCode::from(1)
        }
    }
}
