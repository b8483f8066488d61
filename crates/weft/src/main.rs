//! `weft`: the one binary. Subcommands stay thin; the work lives in the library crates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing_subscriber::{reload, EnvFilter};

mod demo;
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
    /// Run a local demo: a backend with two versions behind two weft sidecars, with live traffic.
    Demo(demo::DemoArgs),
    /// Built-in HTTP backend used by the demo and benchmarks (echoes the request as JSON).
    #[command(hide = true)]
    DemoBackend {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "backend")]
        name: String,
    },
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
        Cmd::Demo(a) => demo::run(a),
        Cmd::DemoBackend { listen, name } => demo::run_backend(listen, name),
    }
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
