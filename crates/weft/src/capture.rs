//! `weft capture install|uninstall|status`: the sidecar's traffic capture rules (iptables or
//! nftables) and the VIP route, through `weft-capture`. See docs/capture.md.

use std::process::ExitCode;

use weft_capture::{Cidr, DnsCapture, InboundPorts, Mode, ModeChoice, Plan};

use crate::EXIT_USAGE;

/// `status` exits with this when nothing is installed (as LSB `status` does for "not running").
const EXIT_NOT_INSTALLED: u8 = 3;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Install (or replace) the capture rules and the VIP route; atomic and idempotent.
    Install(Box<InstallArgs>),
    /// Remove weft's capture rules, chains, tables and VIP routes, and nothing else.
    Uninstall,
    /// Show the installed rules and route; exit 3 when no capture is installed.
    Status,
}

/// Flags of `install`. Values are checked here rather than by clap so that a bad one exits 64
/// with the flag's name.
#[derive(clap::Args)]
struct InstallArgs {
    /// `iptables`, `nftables`, or `auto` (nftables when `nft` works here, else iptables).
    #[arg(long, default_value = "auto")]
    mode: String,
    /// Port the proxy's outbound capture listener (`virtualOutbound`) listens on.
    #[arg(long, default_value = "15001")]
    outbound_port: String,
    /// Port the proxy's inbound capture listener (`virtualInbound`) listens on.
    #[arg(long, default_value = "15006")]
    inbound_port: String,
    /// Uid the proxy runs as; its traffic is never captured.
    #[arg(long, default_value = "1337")]
    proxy_uid: String,
    /// Gid the proxy runs as, also exempt.
    #[arg(long)]
    proxy_gid: Option<String>,
    /// Mesh VIP ranges, captured on every port and routed locally (default 240.240.0.0/16;
    /// `none` for no VIP range). Repeatable or comma-separated.
    #[arg(long = "vip-cidr", value_delimiter = ',')]
    vip_cidrs: Vec<String>,
    /// Do not add the local route for the VIP ranges.
    #[arg(long)]
    no_vip_route: bool,
    /// More destinations to capture on every port (no route is added).
    #[arg(long = "outbound-cidr", value_delimiter = ',')]
    outbound_cidrs: Vec<String>,
    /// Destination ports captured whatever the address (Istio's includeOutboundPorts).
    #[arg(long, value_delimiter = ',')]
    outbound_ports: Vec<String>,
    /// Inbound service ports redirected to the inbound capture port, or `*` for all.
    #[arg(long, value_delimiter = ',')]
    inbound_ports: Vec<String>,
    /// Uids whose traffic passes untouched (non-mesh processes).
    #[arg(long = "exclude-uid", value_delimiter = ',')]
    exclude_uids: Vec<String>,
    /// Gids whose traffic passes untouched.
    #[arg(long = "exclude-gid", value_delimiter = ',')]
    exclude_gids: Vec<String>,
    /// Destinations never captured (the control plane, ...).
    #[arg(long = "exclude-cidr", value_delimiter = ',')]
    exclude_cidrs: Vec<String>,
    /// Destination ports never captured outbound.
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<String>,
    /// Ports never captured inbound (e.g. 22 with `--inbound-ports '*'`).
    #[arg(long, value_delimiter = ',')]
    exclude_inbound_ports: Vec<String>,
    /// Redirect DNS (UDP and TCP port 53) to `weft dns` on 127.0.0.1:--dns-port.
    #[arg(long)]
    dns: bool,
    /// Port `weft dns` listens on.
    #[arg(long, default_value = "15053", requires = "dns")]
    dns_port: String,
    /// Uids whose DNS queries pass untouched (`weft dns` itself when it does not run as the
    /// proxy uid).
    #[arg(long = "dns-exempt-uid", value_delimiter = ',', requires = "dns")]
    dns_exempt_uids: Vec<String>,
    /// Also write IPv6 rules (ip6tables, or an `inet` nftables table).
    #[arg(long)]
    ipv6: bool,
    /// Print the rules (iptables-restore input or nft script) instead of installing them.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: Args) -> ExitCode {
    match args.cmd {
        Cmd::Install(a) => install(*a),
        Cmd::Uninstall => match weft_capture::uninstall() {
            Ok(removed) if removed.is_empty() => {
                println!("capture: nothing installed");
                ExitCode::SUCCESS
            }
            Ok(removed) => {
                for t in &removed.nft_tables {
                    println!("removed: table {t} weft");
                }
                for f in &removed.iptables {
                    println!("removed: iptables chains WEFT_* ({f})");
                }
                for r in &removed.routes {
                    println!("removed: route local {r} dev lo");
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Cmd::Status => match weft_capture::status() {
            Ok(status) => {
                print!("{status}");
                if status.installed() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_NOT_INSTALLED)
                }
            }
            Err(e) => fail(e),
        },
    }
}

fn install(a: InstallArgs) -> ExitCode {
    let dry_run = a.dry_run;
    let plan = match plan(a) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("weft capture install: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if dry_run {
        let mode = match plan.mode {
            ModeChoice::Iptables => Mode::Iptables,
            ModeChoice::Nftables => Mode::Nftables,
            ModeChoice::Auto if find_on_path("nft") => Mode::Nftables,
            ModeChoice::Auto => Mode::Iptables,
        };
        return match weft_capture::render(&plan, mode) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    match weft_capture::install(&plan) {
        Ok(done) => {
            let how = if done.replaced { "replaced" } else { "installed" };
            let v6 = if done.ipv6 { ", IPv4 and IPv6" } else { ", IPv4" };
            println!("capture {how} ({}{v6})", done.mode);
            for r in &done.routes {
                println!("route: local {r} dev lo table local proto {}", weft_capture::ROUTE_PROTO);
            }
            for w in &done.warnings {
                eprintln!("weft capture install: warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Runtime failures exit 1; an invalid plan is a usage error.
fn fail(e: weft_capture::Error) -> ExitCode {
    match e {
        weft_capture::Error::InvalidPlan { field, reason } => {
            eprintln!("weft capture: {}: {reason}", flag_of(&field));
            ExitCode::from(EXIT_USAGE)
        }
        e => {
            eprintln!("weft capture: {e}");
            ExitCode::from(1)
        }
    }
}

/// The flag that sets a plan field, for error messages.
fn flag_of(field: &str) -> &str {
    match field {
        "outbound_port" => "--outbound-port",
        "inbound_port" => "--inbound-port",
        "vip_cidrs" => "--vip-cidr",
        "outbound_cidrs" => "--outbound-cidr",
        "outbound_ports" => "--outbound-ports",
        "inbound_ports" => "--inbound-ports",
        "exclude_uids" => "--exclude-uid",
        "exclude_gids" => "--exclude-gid",
        "exclude_cidrs" => "--exclude-cidr",
        "exclude_outbound_ports" => "--exclude-outbound-ports",
        "exclude_inbound_ports" => "--exclude-inbound-ports",
        "dns.port" => "--dns-port",
        "dns.exempt_uids" => "--dns-exempt-uid",
        other => other,
    }
}

fn find_on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

fn port(flag: &str, s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{flag}: {s:?} is not a port (1-65535)")),
    }
}

fn ports(flag: &str, list: &[String]) -> Result<Vec<u16>, String> {
    list.iter().filter(|s| !s.trim().is_empty()).map(|s| port(flag, s)).collect()
}

fn id(flag: &str, s: &str) -> Result<u32, String> {
    s.trim().parse::<u32>().map_err(|_| format!("{flag}: {s:?} is not a numeric id"))
}

fn ids(flag: &str, list: &[String]) -> Result<Vec<u32>, String> {
    list.iter().filter(|s| !s.trim().is_empty()).map(|s| id(flag, s)).collect()
}

fn cidrs(flag: &str, list: &[String]) -> Result<Vec<Cidr>, String> {
    list.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<Cidr>().map_err(|e| format!("{flag}: {e}")))
        .collect()
}

/// The flags as a validated plan.
fn plan(a: InstallArgs) -> Result<Plan, String> {
    let defaults = Plan::default();
    let vip_cidrs = match a.vip_cidrs.as_slice() {
        [] => defaults.vip_cidrs.clone(),
        [none] if none == "none" => Vec::new(),
        list => cidrs("--vip-cidr", list)?,
    };
    let inbound_ports = match a.inbound_ports.as_slice() {
        [all] if all.trim() == "*" => InboundPorts::All,
        list => InboundPorts::List(ports("--inbound-ports", list)?),
    };
    let plan = Plan {
        mode: a.mode.parse().map_err(|e| format!("--mode: {e}"))?,
        outbound_port: port("--outbound-port", &a.outbound_port)?,
        inbound_port: port("--inbound-port", &a.inbound_port)?,
        proxy_uid: id("--proxy-uid", &a.proxy_uid)?,
        proxy_gid: a.proxy_gid.as_deref().map(|g| id("--proxy-gid", g)).transpose()?,
        vip_cidrs,
        vip_route: !a.no_vip_route,
        outbound_cidrs: cidrs("--outbound-cidr", &a.outbound_cidrs)?,
        outbound_ports: ports("--outbound-ports", &a.outbound_ports)?,
        inbound_ports,
        exclude_uids: ids("--exclude-uid", &a.exclude_uids)?,
        exclude_gids: ids("--exclude-gid", &a.exclude_gids)?,
        exclude_cidrs: cidrs("--exclude-cidr", &a.exclude_cidrs)?,
        exclude_outbound_ports: ports("--exclude-outbound-ports", &a.exclude_outbound_ports)?,
        exclude_inbound_ports: ports("--exclude-inbound-ports", &a.exclude_inbound_ports)?,
        dns: if a.dns {
            Some(DnsCapture {
                port: port("--dns-port", &a.dns_port)?,
                exempt_uids: ids("--dns-exempt-uid", &a.dns_exempt_uids)?,
            })
        } else {
            None
        },
        ipv6: a.ipv6,
    };
    match plan.validate() {
        Ok(()) => Ok(plan),
        Err(weft_capture::Error::InvalidPlan { field, reason }) => Err(format!("{}: {reason}", flag_of(&field))),
        Err(e) => Err(e.to_string()),
    }
}
