//! `weft agent`: run the node agent from its file, or (`weft agent status`) show what a running
//! agent has registered and whether it is healthy. docs/agent.md.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::EXIT_USAGE;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    cmd: Option<AgentCmd>,
    /// The agent file (YAML; see docs/agent.md).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Validate the file, print what it registers and runs, and exit (64 when invalid).
    #[arg(long)]
    check: bool,
    /// Write `{"admin":STATUS,"listeners":{"status":STATUS},"proxy_ready_file":...}` here
    /// (atomically) once the agent runs.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum AgentCmd {
    /// Show a running agent's services, registration, health, children and capture; exit 1 when
    /// something is unhealthy, unregistered or down.
    Status {
        /// The agent's status endpoint.
        #[arg(long, env = "WEFT_AGENT", default_value = weft_agent::config::DEFAULT_STATUS_LISTEN)]
        agent: String,
        /// `text` (tables) or `json` (the whole document).
        #[arg(long, short = 'o', value_parser = ["text", "json"], default_value = "text")]
        output: String,
    },
}

pub fn run(a: Args) -> ExitCode {
    if let Some(AgentCmd::Status { agent, output }) = a.cmd {
        return status(&agent, &output);
    }
    let Some(path) = a.config else {
        eprintln!("weft agent: --config FILE is required (or `weft agent status`)");
        return ExitCode::from(EXIT_USAGE);
    };
    let config = match weft_agent::config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft agent: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if a.check {
        print_plan(&config);
        return ExitCode::SUCCESS;
    }
    let weft = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("weft agent: cannot find the weft binary: {e}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft agent: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        // Signals first, so a SIGTERM during start-up is not lost.
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("weft agent: {e}");
                return ExitCode::from(1);
            }
        };
        let agent = match weft_agent::Agent::start(config, weft_agent::Options { weft_binary: weft }).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("weft agent: {e}");
                return ExitCode::from(1);
            }
        };
        if let Some(path) = &a.ready_file {
            let body = serde_json::json!({
                "admin": agent.status_addr().to_string(),
                "listeners": { "status": agent.status_addr().to_string() },
                "proxy_ready_file": agent.proxy_ready_file(),
                "dns_ready_file": agent.dns_ready_file(),
            });
            let tmp = path.with_extension("tmp");
            if let Err(e) = std::fs::write(&tmp, format!("{body}\n")).and_then(|_| std::fs::rename(&tmp, path)) {
                eprintln!("weft agent: --ready-file {}: {e}", path.display());
                agent.stop().await;
                return ExitCode::from(1);
            }
        }
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: deregistering and stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: deregistering and stopping"),
        }
        agent.stop().await;
        ExitCode::SUCCESS
    })
}

fn print_plan(c: &weft_agent::config::AgentConfig) {
    println!("{}: ok", c.file);
    println!(
        "host {} ({}), namespace {}, tenant {}; control plane api {}, xds {}",
        c.host.name,
        c.host.address,
        c.host.namespace,
        c.host.tenant,
        c.control.api,
        c.control.xds.as_deref().unwrap_or("-")
    );
    for s in &c.services {
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|p| {
                let proto = if p.protocol.is_empty() { String::new() } else { format!("/{}", p.protocol) };
                format!("{}:{}{proto}->{}", p.name, p.number, p.target_port)
            })
            .collect();
        println!(
            "service {} as instance {}: ports {}, health {}",
            s.host(),
            weft_agent::instance::instance_name(&s.name, &c.host),
            ports.join(" "),
            weft_agent::health::describe(s.health_check.as_ref())
        );
    }
    if c.services.is_empty() && c.workload_group.is_none() {
        println!("no services: nothing is registered (the host only calls the mesh)");
    }
    if let Some(g) = &c.workload_group {
        println!(
            "WorkloadGroup {}/{g} as instance {}",
            c.host.namespace,
            weft_agent::instance::instance_name(g, &c.host)
        );
    }
    println!(
        "lease {}, heartbeat {}; proxy {}; dns {}; capture {}",
        weft_agent::config::fmt_duration(c.lease_ttl),
        weft_agent::config::fmt_duration(c.heartbeat),
        if c.proxy.enabled { c.proxy.mode.as_str() } else { "off" },
        if c.dns.enabled { c.dns.listen.to_string() } else { "off".into() },
        if c.capture.enabled { "on" } else { "off" }
    );
    if c.proxy.enabled && c.proxy.mode == weft_agent::config::ProxyMode::HttpProxy {
        for line in weft_agent::http_proxy_env(c) {
            println!("export {line}");
        }
    }
}

fn status(agent: &str, output: &str) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft agent status: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(weft_agent::status::fetch(agent)) {
        Ok(s) => {
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                print!("{}", weft_agent::status::render(&s));
            }
            if s.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("weft agent status: {e}");
            ExitCode::from(1)
        }
    }
}
