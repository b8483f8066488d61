//! Install, uninstall and status against the running system: the pure renderers' text handed to
//! the tools, in an order that never leaves a half-installed capture behind.

use std::fmt;

use crate::exec::{self, Tool};
use crate::iptables::{self, Created, Family, SavedNat};
use crate::nft;
use crate::plan::{Cidr, ModeChoice, Plan};
use crate::route;
use crate::{Error, Mode};

const RESTORE_ARGS: [&str; 3] = ["-w", "5", "--noflush"];

/// What [`install`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub mode: Mode,
    /// IPv6 rules were written too.
    pub ipv6: bool,
    /// The VIP routes now in place.
    pub routes: Vec<Cidr>,
    /// A previous install was there and has been replaced.
    pub replaced: bool,
    /// Leftovers that could not be cleaned up (the capture itself is installed).
    pub warnings: Vec<String>,
}

/// What [`uninstall`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// `table FAMILY weft` removed.
    pub nft_tables: Vec<String>,
    /// iptables families (`IPv4`, `IPv6`) whose weft chains were removed.
    pub iptables: Vec<&'static str>,
    pub routes: Vec<Cidr>,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.nft_tables.is_empty() && self.iptables.is_empty() && self.routes.is_empty()
    }
}

/// Weft's rules in one place: an nftables table, or the weft chains of one iptables family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    /// `table ip weft`, or `iptables nat (IPv4)`.
    pub name: String,
    /// The jumps into weft's chains from built-in chains (iptables only).
    pub jumps: Vec<String>,
    /// Chains and their rules, as the tool lists them.
    pub chains: Vec<(String, Vec<String>)>,
}

/// What is installed now ([`status`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub nftables: Vec<RuleSet>,
    pub iptables: Vec<RuleSet>,
    /// Weft's VIP routes.
    pub routes: Vec<Cidr>,
}

impl Status {
    /// Whether capture rules are in place (in either mode).
    pub fn installed(&self) -> bool {
        !self.nftables.is_empty() || !self.iptables.is_empty()
    }

    /// The mode the rules are in (nftables when, unusually, both are there).
    pub fn mode(&self) -> Option<Mode> {
        if !self.nftables.is_empty() {
            Some(Mode::Nftables)
        } else if !self.iptables.is_empty() {
            Some(Mode::Iptables)
        } else {
            None
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.installed() {
            writeln!(f, "capture: not installed")?;
        }
        for (mode, sets) in [(Mode::Nftables, &self.nftables), (Mode::Iptables, &self.iptables)] {
            for set in sets {
                writeln!(f, "mode: {mode} ({})", set.name)?;
                for j in &set.jumps {
                    writeln!(f, "  jump: {j}")?;
                }
                for (chain, rules) in &set.chains {
                    let s = if rules.len() == 1 { "" } else { "s" };
                    writeln!(f, "  chain {chain}: {} rule{s}", rules.len())?;
                    for r in rules {
                        writeln!(f, "    {r}")?;
                    }
                }
            }
        }
        if self.routes.is_empty() {
            writeln!(f, "route: none")?;
        }
        for r in &self.routes {
            writeln!(f, "route: local {r} dev lo table local proto {}", route::PROTO)?;
        }
        Ok(())
    }
}

/// Installs `plan`'s capture: validates it, checks the privilege and every tool needed, adds the
/// VIP routes, then writes the rules in one transaction per family. A second install replaces
/// the first (and removes rules the other mode left); on failure the routes added by this call
/// are removed and the rules are as they were.
pub fn install(plan: &Plan) -> Result<Installed, Error> {
    plan.validate()?;
    exec::require_net_admin()?;
    let mode = choose_mode(plan.mode)?;
    let tools = RuleTools::require(mode, plan.ipv6)?;
    let mut vips: Vec<Cidr> = if plan.vip_route { plan.vip_cidrs.clone() } else { Vec::new() };
    vips.sort();
    vips.dedup();
    let ip = if vips.is_empty() { exec::find("ip") } else { Some(exec::require("ip", "iproute2")?) };
    let before = match &ip {
        Some(ip) => list_routes(ip)?,
        None => Vec::new(),
    };
    let was_installed = current_status_quiet().installed();

    let mut added: Vec<Cidr> = Vec::new();
    for c in vips.iter().filter(|c| !before.contains(c)) {
        let ip = ip.as_ref().expect("ip is required when routes are wanted");
        let args = route::add_args(c);
        if let Err(e) = ip.check(&as_strs(&args), None) {
            let undo = remove_routes(ip, &added);
            return Err(Error::NotInstalled { cause: Box::new(e), undo: undo_text(undo, "nothing else was changed") });
        }
        added.push(*c);
    }

    let applied = match &tools {
        RuleTools::Nft(nft) => install_nft(nft, plan),
        RuleTools::Iptables { v4, v6 } => install_iptables(v4, v6.as_ref(), plan),
    };
    if let Err(e) = applied {
        let undo = match &ip {
            Some(ip) => remove_routes(ip, &added),
            None => Ok(()),
        };
        return Err(Error::NotInstalled { cause: Box::new(e), undo: undo_text(undo, "the rules are as they were") });
    }

    // Leftovers: the other mode's rules, IPv6 chains no longer wanted, routes no longer wanted.
    let mut warnings = Vec::new();
    let leftovers = match mode {
        Mode::Nftables => [Family::V4, Family::V6].into_iter().map(uninstall_iptables).collect::<Vec<_>>(),
        Mode::Iptables if !plan.ipv6 => vec![uninstall_iptables(Family::V6), uninstall_nft().map(|t| !t.is_empty())],
        Mode::Iptables => vec![uninstall_nft().map(|t| !t.is_empty())],
    };
    warnings.extend(leftovers.into_iter().filter_map(|r| r.err()).map(|e| e.to_string()));
    if let Some(ip) = &ip {
        let stale: Vec<Cidr> = before.iter().filter(|c| !vips.contains(c)).copied().collect();
        if let Err(e) = remove_routes(ip, &stale) {
            warnings.push(e.to_string());
        }
    }
    Ok(Installed { mode, ipv6: plan.ipv6, routes: vips, replaced: was_installed, warnings })
}

/// Removes every rule, chain, table and route weft's capture installed — in either mode — and
/// nothing else. Tries every part even when one fails; succeeds (with nothing removed) when
/// nothing was installed.
pub fn uninstall() -> Result<Removed, Error> {
    exec::require_net_admin()?;
    let mut removed = Removed::default();
    let mut errors = Vec::new();
    match uninstall_nft() {
        Ok(tables) => removed.nft_tables = tables,
        Err(e) => errors.push(e.to_string()),
    }
    for (family, name) in [(Family::V4, "IPv4"), (Family::V6, "IPv6")] {
        match uninstall_iptables(family) {
            Ok(true) => removed.iptables.push(name),
            Ok(false) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    if let Some(ip) = exec::find("ip") {
        match list_routes(&ip) {
            Ok(routes) => match remove_routes(&ip, &routes) {
                Ok(()) => removed.routes = routes,
                Err(e) => errors.push(e.to_string()),
            },
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(Error::Uninstall(errors.join("; ")))
    }
}

/// What weft's capture has in place now, in either mode.
pub fn status() -> Result<Status, Error> {
    exec::require_net_admin()?;
    let mut status = Status::default();
    if let Some(nft) = usable_nft() {
        let list = nft.check(&["list", "tables"], None)?;
        for family in nft::weft_tables(&list) {
            let text = nft.check(&["list", "table", &family, nft::TABLE], None)?;
            status.nftables.push(RuleSet {
                name: format!("table {family} {}", nft::TABLE),
                jumps: Vec::new(),
                chains: nft::table_chains(&text),
            });
        }
    }
    for (family, name) in [(Family::V4, "IPv4"), (Family::V6, "IPv6")] {
        let Some(save) = exec::find(family.save_tool()) else {
            continue;
        };
        let saved = iptables::parse_save(&save.check(&[], None)?);
        if saved.installed() {
            status.iptables.push(RuleSet {
                name: format!("iptables nat, {name}"),
                jumps: saved.jumps.clone(),
                chains: saved.chains.into_iter().collect(),
            });
        }
    }
    if let Some(ip) = exec::find("ip") {
        status.routes = list_routes(&ip)?;
    }
    Ok(status)
}

/// The status, or an empty one when it cannot be read (only used to say "replaced").
fn current_status_quiet() -> Status {
    status().unwrap_or_default()
}

enum RuleTools {
    Nft(Tool),
    Iptables { v4: FamilyTools, v6: Option<FamilyTools> },
}

struct FamilyTools {
    family: Family,
    save: Tool,
    restore: Tool,
}

impl FamilyTools {
    fn require(family: Family) -> Result<FamilyTools, Error> {
        let pkg = "iptables";
        Ok(FamilyTools {
            family,
            save: exec::require(family.save_tool(), pkg)?,
            restore: exec::require(family.restore_tool(), pkg)?,
        })
    }
}

impl RuleTools {
    fn require(mode: Mode, ipv6: bool) -> Result<RuleTools, Error> {
        Ok(match mode {
            Mode::Nftables => RuleTools::Nft(exec::require("nft", "nftables")?),
            Mode::Iptables => RuleTools::Iptables {
                v4: FamilyTools::require(Family::V4)?,
                v6: if ipv6 { Some(FamilyTools::require(Family::V6)?) } else { None },
            },
        })
    }
}

/// `nft`, when it is on PATH and can talk to the kernel.
fn usable_nft() -> Option<Tool> {
    let nft = exec::find("nft")?;
    matches!(nft.run(&["list", "tables"], None), Ok(o) if o.success).then_some(nft)
}

fn choose_mode(choice: ModeChoice) -> Result<Mode, Error> {
    match choice {
        ModeChoice::Iptables => Ok(Mode::Iptables),
        ModeChoice::Nftables => Ok(Mode::Nftables),
        ModeChoice::Auto => {
            let nft = usable_nft();
            let iptables = exec::find("iptables-restore");
            match (nft, iptables) {
                // Stay with iptables when an earlier install used it.
                (Some(nft), Some(_)) => {
                    let in_nft =
                        nft.check(&["list", "tables"], None).map(|l| !nft::weft_tables(&l).is_empty()).unwrap_or(false);
                    let in_iptables = exec::find("iptables-save")
                        .and_then(|s| s.check(&[], None).ok())
                        .is_some_and(|text| iptables::parse_save(&text).installed());
                    Ok(if in_iptables && !in_nft { Mode::Iptables } else { Mode::Nftables })
                }
                (Some(_), None) => Ok(Mode::Nftables),
                (None, Some(_)) => Ok(Mode::Iptables),
                (None, None) => Err(Error::NoMode),
            }
        }
    }
}

fn install_nft(nft: &Tool, plan: &Plan) -> Result<(), Error> {
    let script = nft::install_script(&plan.normal(), plan.ipv6);
    nft.check(&["-f", "/dev/stdin"], Some(&script)).map(|_| ())
}

fn install_iptables(v4: &FamilyTools, v6: Option<&FamilyTools>, plan: &Plan) -> Result<(), Error> {
    let n = plan.normal();
    let mut done: Vec<(&FamilyTools, SavedNat)> = Vec::new();
    for tools in std::iter::once(v4).chain(v6) {
        let result = (|| {
            let saved = iptables::parse_save(&tools.save.check(&[], None)?);
            let created = if saved.installed() { None } else { detect_created(tools, &saved) };
            let input = iptables::install_input(&n, tools.family, &saved, created.as_ref());
            tools.restore.check(&RESTORE_ARGS, Some(&input))?;
            Ok::<SavedNat, Error>(saved)
        })();
        match result {
            Ok(saved) => done.push((tools, saved)),
            Err(e) => {
                // Put the families already written back as they were.
                for (tools, previous) in done.into_iter().rev() {
                    let _ = restore_family(tools, &previous);
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

fn restore_family(tools: &FamilyTools, previous: &SavedNat) -> Result<(), Error> {
    let now = iptables::parse_save(&tools.save.check(&[], None)?);
    if let Some(input) = iptables::restore_input(&now, previous) {
        tools.restore.check(&RESTORE_ARGS, Some(&input))?;
    }
    if !previous.installed() {
        if let Some(created) = &now.created {
            cleanup_created(tools.family, created);
        }
    }
    Ok(())
}

/// On a first install into an iptables-nft `nat` table, what of it does not exist yet (so that
/// uninstall can remove it again). `None` for the legacy backend or without the `nft` tool.
fn detect_created(tools: &FamilyTools, saved: &SavedNat) -> Option<Created> {
    let version = tools.save.run(&["--version"], None).ok()?;
    if !version.stdout.contains("nf_tables") {
        return None;
    }
    let nft = usable_nft()?;
    if !saved.table_exists {
        return Some(Created::Table);
    }
    let listing = nft.check(&["list", "table", tools.family.nft_family(), "nat"], None).ok()?;
    let present: Vec<String> = nft::base_chains(&listing).into_iter().map(|(name, _)| name).collect();
    let missing: Vec<String> =
        ["OUTPUT", "PREROUTING"].iter().filter(|c| !present.iter().any(|p| p == *c)).map(|c| c.to_string()).collect();
    (!missing.is_empty()).then_some(Created::Chains(missing))
}

/// Removes what the first install created in an iptables-nft `nat` table, where it is empty now.
/// The kernel refuses to delete a chain that holds rules, so nothing added since is lost.
fn cleanup_created(family: Family, created: &Created) {
    let Some(nft) = usable_nft() else { return };
    let fam = family.nft_family();
    let Ok(listing) = nft.check(&["list", "table", fam, "nat"], None) else {
        return;
    };
    for (chain, rules) in nft::table_chains(&listing) {
        let ours = match created {
            Created::Table => true,
            Created::Chains(list) => list.contains(&chain),
        };
        if ours && rules.is_empty() {
            let _ = nft.run(&["delete", "chain", fam, "nat", &chain], None);
        }
    }
    if *created == Created::Table {
        let Ok(listing) = nft.check(&["list", "table", fam, "nat"], None) else {
            return;
        };
        let empty = listing
            .lines()
            .map(str::trim)
            .all(|l| l.is_empty() || l.starts_with('#') || l.starts_with("table ") || l == "}");
        if empty {
            let _ = nft.run(&["delete", "table", fam, "nat"], None);
        }
    }
}

/// Removes weft's chains of one iptables family; whether there were any.
fn uninstall_iptables(family: Family) -> Result<bool, Error> {
    let Some(save) = exec::find(family.save_tool()) else {
        return Ok(false);
    };
    let saved = iptables::parse_save(&save.check(&[], None)?);
    let Some(input) = iptables::uninstall_input(&saved) else {
        return Ok(false);
    };
    let restore = exec::require(family.restore_tool(), "iptables")?;
    restore.check(&RESTORE_ARGS, Some(&input))?;
    if let Some(created) = &saved.created {
        cleanup_created(family, created);
    }
    Ok(true)
}

/// Removes weft's nftables tables; the families removed.
fn uninstall_nft() -> Result<Vec<String>, Error> {
    let Some(nft) = usable_nft() else {
        return Ok(Vec::new());
    };
    let tables = nft::weft_tables(&nft.check(&["list", "tables"], None)?);
    if !tables.is_empty() {
        nft.check(&["-f", "/dev/stdin"], Some(&nft::uninstall_script()))?;
    }
    Ok(tables)
}

fn list_routes(ip: &Tool) -> Result<Vec<Cidr>, Error> {
    let mut routes = route::parse_list(&ip.check(&as_strs(&route::list_args(false)), None)?);
    // A kernel without IPv6 fails the listing; it then has no IPv6 routes either.
    if let Ok(out) = ip.run(&as_strs(&route::list_args(true)), None) {
        if out.success {
            routes.extend(route::parse_list(&out.stdout));
        }
    }
    Ok(routes)
}

fn remove_routes(ip: &Tool, routes: &[Cidr]) -> Result<(), Error> {
    let mut first_error = None;
    for c in routes {
        if let Err(e) = ip.check(&as_strs(&route::del_args(c)), None) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn undo_text(undo: Result<(), Error>, ok: &str) -> String {
    match undo {
        Ok(()) => ok.to_string(),
        Err(e) => format!("removing the routes it added failed too: {e}"),
    }
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
