//! Network namespaces standing for hosts, for tests that need root: rules, routes and addresses
//! are only ever changed inside namespaces a test creates, never on the real host.
//!
//! ```no_run
//! let a = weft_test::netns::Netns::new("capture-a");
//! let b = weft_test::netns::Netns::new("capture-b");
//! weft_test::netns::link(&a, "10.77.0.1/24", &b, "10.77.0.2/24");
//! let out = a.run(&["ping", "-c1", "-W1", "10.77.0.2"]);
//! assert!(out.success(), "{}", out.stderr);
//! ```
//!
//! Dropping a [`Netns`] (also when the test panics) kills every process still running inside it,
//! deletes the namespace and its `/etc/netns/NAME` directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// No helper command may run longer.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Runs `cmd` to the end with output in files (a chatty command never blocks on a pipe); panics
/// if it is still running after `timeout` (after killing it).
pub fn run_command(mut cmd: Command, timeout: Duration) -> Output {
    let dir = tempfile::tempdir().expect("temporary directory for command output");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {timeout:?}\nstdout: {}\nstderr: {}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Runs `args` (program first) and panics with its output unless it succeeds.
fn must(args: &[&str]) -> Output {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let out = run_command(cmd, COMMAND_TIMEOUT);
    assert!(out.success(), "`{}` failed ({}):\n{}{}", args.join(" "), out.status, out.stdout, out.stderr);
    out
}

/// A network namespace owned by the test.
pub struct Netns {
    name: String,
    /// `ip`, resolved once: commands may run with a PATH of the test's making.
    ip: PathBuf,
}

impl Netns {
    /// Creates `w-TAG-PID-N` with its loopback up. `TAG` names the test, so a leftover namespace
    /// says where it came from; the pid and a counter keep concurrent tests apart.
    pub fn new(tag: &str) -> Netns {
        let ip = crate::tools::require_tool("ip");
        let name = format!("w-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        must(&["ip", "netns", "add", &name]);
        let ns = Netns { name, ip };
        ns.must(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command running `program` inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// The `ip netns exec NAME` prefix, for launchers that take a program and arguments.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec!["netns".into(), "exec".into(), self.name.clone()]
    }

    /// Runs `args` (program first) inside the namespace.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args[0]);
        cmd.args(&args[1..]);
        run_command(cmd, COMMAND_TIMEOUT)
    }

    /// Runs `args` inside the namespace and panics with its output unless it succeeds.
    pub fn must(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.success(),
            "`{}` in netns {} failed ({}):\n{}{}",
            args.join(" "),
            self.name,
            out.status,
            out.stdout,
            out.stderr
        );
        out
    }

    /// `/etc/netns/NAME/FILE` (e.g. `resolv.conf`), which `ip netns exec` bind-mounts over
    /// `/etc/FILE` for processes in the namespace; removed with the namespace.
    pub fn etc_file(&self, file: &str, contents: &str) -> PathBuf {
        let dir = PathBuf::from("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join(file);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Starts `args` (program first) inside the namespace in the background, with no input and
    /// output discarded; it is killed when the returned guard drops.
    pub fn spawn(&self, args: &[&str]) -> Background {
        self.spawn_with_stderr(args, Stdio::null())
    }

    /// [`Netns::spawn`] with stderr going where the caller says (a log file, say).
    pub fn spawn_with_stderr(&self, args: &[&str], stderr: Stdio) -> Background {
        let mut cmd = self.command(args[0]);
        cmd.args(&args[1..]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        Background(cmd.spawn().unwrap_or_else(|e| panic!("spawn {args:?} in {}: {e}", self.name)))
    }

    /// The namespace's packet rules and routes as text, for before/after comparisons:
    /// `iptables-save`, `nft list ruleset` (each when installed) and the IPv4 routes of every
    /// table; with `ipv6`, also `ip6tables-save` and the IPv6 routes. Comment lines and packet
    /// counters, which change with traffic and time, are left out.
    pub fn rules_and_routes(&self, ipv6: bool) -> String {
        let mut cmds: Vec<&[&str]> = Vec::new();
        if crate::tools::find_on_path("iptables-save").is_some() {
            cmds.push(&["iptables-save"]);
        }
        if ipv6 && crate::tools::find_on_path("ip6tables-save").is_some() {
            cmds.push(&["ip6tables-save"]);
        }
        if crate::tools::find_on_path("nft").is_some() {
            cmds.push(&["nft", "list", "ruleset"]);
        }
        cmds.push(&["ip", "-4", "route", "show", "table", "all"]);
        if ipv6 {
            cmds.push(&["ip", "-6", "route", "show", "table", "all"]);
        }
        let mut s = String::new();
        for args in cmds {
            let out = self.must(args);
            s.push_str(&format!("==== {}\n{}", args.join(" "), without_counters(&out.stdout)));
        }
        s
    }

    /// One HTTP exchange by `curl -i` inside the namespace (as `uid` when given, through
    /// `setpriv`), with a 5 s limit; `extra` goes before the URL.
    pub fn curl(&self, uid: Option<&str>, url: &str, extra: &[&str]) -> CurlReply {
        let mut cmd = match uid {
            Some(uid) => {
                let mut c = self.command("setpriv");
                c.args([&format!("--reuid={uid}"), &format!("--regid={uid}"), "--clear-groups", "curl"]);
                c
            }
            None => self.command("curl"),
        };
        cmd.args(["-sS", "-i", "-m", "5", "--connect-timeout", "3"]).args(extra).arg(url);
        let out = run_command(cmd, Duration::from_secs(20));
        if !out.success() {
            return CurlReply { error: out.stderr, ..Default::default() };
        }
        CurlReply::parse(&out.stdout)
    }

    /// Pids of the processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "pids", &self.name]);
        let out = run_command(cmd, COMMAND_TIMEOUT);
        out.stdout.split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Every process in here was started by the test; none may outlive its host.
        for pid in self.pids() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "del", &self.name]);
        let out = run_command(cmd, COMMAND_TIMEOUT);
        if !out.success() {
            eprintln!("weft-test: ip netns del {} failed: {}", self.name, out.stderr);
        }
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}

/// Joins two namespaces with a veth pair (`veth0` on each side) and gives each side its address
/// (`IP/LEN`); both ends up. The pair is created inside the namespaces, never on the host.
pub fn link(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) {
    link_named(a, "veth0", a_addr, b, "veth0", b_addr)
}

/// [`link`] with interface names of the caller's choosing (for a second pair).
pub fn link_named(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    must(&["ip", "link", "add", a_if, "netns", a.name(), "type", "veth", "peer", "name", b_if, "netns", b.name()]);
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        let family = if addr.contains(':') { "-6" } else { "-4" };
        let mut args = vec!["ip", family, "addr", "add", addr, "dev", ifname];
        if family == "-6" {
            // No duplicate address detection: the address is usable at once.
            args.push("nodad");
        }
        ns.must(&args);
        ns.must(&["ip", "link", "set", ifname, "up"]);
    }
}

/// Joins `hosts` on one Ethernet segment: a bridge `br0` inside `switch` (a namespace of its own,
/// standing for the network between the hosts) and a veth pair from each host (`veth0` on the
/// host's side, with its address `IP/LEN`) to a port of the bridge. Every host reaches every
/// other one directly, as machines on one LAN do. Call it once per switch namespace.
///
/// ```no_run
/// use weft_test::netns::{bridge, Netns};
/// let lan = Netns::new("hosts-lan");
/// let a = Netns::new("hosts-a");
/// let b = Netns::new("hosts-b");
/// let c = Netns::new("hosts-c");
/// bridge(&lan, &[(&a, "10.79.0.11/24"), (&b, "10.79.0.12/24"), (&c, "10.79.0.13/24")]);
/// assert!(a.run(&["ping", "-c1", "-W1", "10.79.0.13"]).success());
/// ```
pub fn bridge(switch: &Netns, hosts: &[(&Netns, &str)]) {
    switch.must(&["ip", "link", "add", "br0", "type", "bridge"]);
    switch.must(&["ip", "link", "set", "br0", "up"]);
    for (i, (host, addr)) in hosts.iter().enumerate() {
        let port = format!("port{i}");
        must(&[
            "ip",
            "link",
            "add",
            "veth0",
            "netns",
            host.name(),
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            switch.name(),
        ]);
        switch.must(&["ip", "link", "set", &port, "master", "br0"]);
        switch.must(&["ip", "link", "set", &port, "up"]);
        let family = if addr.contains(':') { "-6" } else { "-4" };
        let mut args = vec!["ip", family, "addr", "add", addr, "dev", "veth0"];
        if family == "-6" {
            args.push("nodad");
        }
        host.must(&args);
        host.must(&["ip", "link", "set", "veth0", "up"]);
    }
}

/// A process started with [`Netns::spawn`]; killed and reaped on drop.
pub struct Background(Child);

impl Background {
    pub fn child(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What [`Netns::curl`] got: status 0 and curl's message in `error` when the exchange failed.
#[derive(Clone, Debug, Default)]
pub struct CurlReply {
    pub status: u16,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: String,
    pub error: String,
}

impl CurlReply {
    fn parse(text: &str) -> CurlReply {
        let text = text.replace("\r\n", "\n");
        let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        CurlReply { status, headers, body: body.to_string(), error: String::new() }
    }

    /// A header's value, empty when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// Drops comment lines and packet/byte counters (`iptables-save`'s `:CHAIN POLICY [p:b]`,
/// nft's `counter packets P bytes B`) from rule listings.
pub fn without_counters(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let mut line = line.to_string();
        if line.starts_with(':') {
            if let Some(at) = line.find(" [") {
                line.truncate(at);
            }
        }
        while let Some(at) = line.find("counter packets ") {
            let rest = &line[at + "counter packets ".len()..];
            let words: Vec<&str> = rest.splitn(4, ' ').collect();
            let tail = if words.len() == 4 { format!(" {}", words[3]) } else { String::new() };
            line = format!("{}counter{tail}", &line[..at]);
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Polls `f` every 50 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_comments_are_dropped() {
        let text = "# Generated by iptables-save\n:OUTPUT ACCEPT [12:720]\n-A OUTPUT -j WEFT\n\
                    \t\tip daddr 240.240.0.0/16 counter packets 3 bytes 180 redirect to :15001\n";
        assert_eq!(
            without_counters(text),
            ":OUTPUT ACCEPT\n-A OUTPUT -j WEFT\n\t\tip daddr 240.240.0.0/16 counter redirect to :15001\n"
        );
    }

    #[test]
    fn a_curl_reply_is_parsed() {
        let r = CurlReply::parse("HTTP/1.1 200 OK\r\nX-Backend: b\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!((r.status, r.header("x-backend"), r.body.as_str()), (200, "b", "ok"));
        assert_eq!(CurlReply::parse("garbage").status, 0);
    }
}
