//! Traffic capture for the sidecar: redirect a host's outbound TCP to mesh destinations to the
//! proxy's `virtualOutbound` port (15001), inbound TCP to the host's service ports to
//! `virtualInbound` (15006), and optionally DNS to `weft dns` — with iptables or nftables, in
//! weft's own chains or table only.
//!
//! ```no_run
//! use weft_capture::{InboundPorts, Plan};
//!
//! let plan = Plan { inbound_ports: InboundPorts::List(vec![9080]), ..Plan::default() };
//! let installed = weft_capture::install(&plan)?;   // idempotent, atomic
//! println!("capture installed with {}", installed.mode);
//! print!("{}", weft_capture::status()?);            // what is there now
//! weft_capture::uninstall()?;                       // removes weft's rules and route, nothing else
//! # Ok::<(), weft_capture::Error>(())
//! ```
//!
//! The plan ([`Plan`]) is validated first; [`render`] turns it into the exact text handed to
//! `iptables-restore --noflush` or `nft -f` (pure, table-tested). All calls block on short-lived
//! child processes (each bounded by [`TOOL_TIMEOUT`]); async callers use `spawn_blocking`.
//! Installing and removing need CAP_NET_ADMIN. The behaviour is described in `docs/capture.md`.

#![forbid(unsafe_code)]

mod exec;
mod iptables;
mod nft;
mod plan;
mod route;
mod system;

use std::fmt;
use std::time::Duration;

pub use exec::TOOL_TIMEOUT;
pub use plan::{
    Cidr, DnsCapture, InboundPorts, ModeChoice, Plan, DEFAULT_DNS_PORT, DEFAULT_INBOUND_PORT, DEFAULT_OUTBOUND_PORT,
    DEFAULT_PROXY_UID, DEFAULT_VIP_CIDR, MAX_LIST,
};
pub use route::PROTO as ROUTE_PROTO;
pub use system::{install, status, uninstall, Installed, Removed, RuleSet, Status};

/// How the rules are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `iptables-restore` (and `ip6tables-restore` with IPv6) into weft's chains of `nat`.
    Iptables,
    /// `nft -f` into weft's own table.
    Nftables,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        })
    }
}

/// The text a plan becomes in `mode`, for a host where weft has installed nothing yet: what
/// `weft capture install --dry-run` prints. IPv4 `iptables-restore` input first, then the IPv6
/// one with `plan.ipv6`; or the `nft -f` script.
pub fn render(plan: &Plan, mode: Mode) -> Result<String, Error> {
    plan.validate()?;
    let n = plan.normal();
    Ok(match mode {
        Mode::Nftables => nft::install_script(&n, plan.ipv6),
        Mode::Iptables => {
            let empty = iptables::SavedNat::default();
            let mut s = format!(
                "# iptables-restore --noflush\n{}",
                iptables::install_input(&n, iptables::Family::V4, &empty, None)
            );
            if plan.ipv6 {
                s.push_str(&format!(
                    "# ip6tables-restore --noflush\n{}",
                    iptables::install_input(&n, iptables::Family::V6, &empty, None)
                ));
            }
            s
        }
    })
}

/// Everything that can go wrong; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid capture plan: {field}: {reason}")]
    InvalidPlan { field: String, reason: String },
    #[error("{tool} not found on PATH (install the {package} package); nothing was changed")]
    ToolMissing { tool: &'static str, package: &'static str },
    #[error(
        "neither nft nor iptables-restore is usable here (install the nftables or iptables package); \
         nothing was changed"
    )]
    NoMode,
    #[error("changing capture rules needs CAP_NET_ADMIN (run as root); nothing was changed")]
    Permission,
    #[error("{tool} {args} failed ({status}): {stderr}")]
    ToolFailed { tool: String, args: String, status: String, stderr: String },
    #[error("{tool}: no answer within {timeout:?}")]
    Timeout { tool: String, timeout: Duration },
    #[error("cannot run {tool}: {reason}")]
    Spawn { tool: String, reason: String },
    #[error("capture was not installed: {cause}; {undo}")]
    NotInstalled { cause: Box<Error>, undo: String },
    #[error("uninstall incomplete: {0}")]
    Uninstall(String),
}
