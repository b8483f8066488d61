//! Running the system tools (`iptables-restore`, `nft`, `ip`, ...) with a deadline, and the
//! privilege check made before any of them is asked to change something.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// No tool call may take longer (iptables-restore waits at most 5 s for the xtables lock).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(15);
/// Output kept from a tool, per stream.
const MAX_OUTPUT: u64 = 4 << 20;

/// A tool found on `PATH`.
#[derive(Clone, Debug)]
pub struct Tool {
    pub name: &'static str,
    pub path: PathBuf,
}

/// What a finished tool printed.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

/// `name` on `PATH` (executable files only).
pub fn find(name: &'static str) -> Option<Tool> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p)).map(|path| Tool { name, path })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// `name` on `PATH`, or an error saying which package provides it.
pub fn require(name: &'static str, package: &'static str) -> Result<Tool, Error> {
    find(name).ok_or(Error::ToolMissing { tool: name, package })
}

impl Tool {
    /// Runs the tool to the end (or kills it at [`TOOL_TIMEOUT`]).
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output, Error> {
        let spawn_err = |e: std::io::Error| Error::Spawn { tool: self.name.to_string(), reason: e.to_string() };
        let mut child = Command::new(&self.path)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        // Readers and the writer run on their own threads so a full pipe never blocks the wait.
        let reader = |s: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(s) = s {
                    let _ = s.take(MAX_OUTPUT).read_to_end(&mut buf);
                }
                String::from_utf8_lossy(&buf).into_owned()
            })
        };
        let out = reader(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
        let err = reader(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
        let writer = match (child.stdin.take(), stdin) {
            (Some(mut pipe), Some(text)) => {
                let text = text.to_string();
                Some(std::thread::spawn(move || {
                    let _ = pipe.write_all(text.as_bytes());
                }))
            }
            _ => None,
        };
        let deadline = Instant::now() + TOOL_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Timeout { tool: self.name.to_string(), timeout: TOOL_TIMEOUT });
                }
                Err(e) => return Err(spawn_err(e)),
            }
        };
        if let Some(w) = writer {
            let _ = w.join();
        }
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        Ok(Output { success: status.success(), status: status.to_string(), stdout, stderr })
    }

    /// Runs the tool and requires success; the error carries what it printed.
    pub fn check(&self, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
        let out = self.run(args, stdin)?;
        if out.success {
            Ok(out.stdout)
        } else {
            Err(Error::ToolFailed {
                tool: self.name.to_string(),
                args: args.join(" "),
                status: out.status,
                stderr: out.stderr.trim().to_string(),
            })
        }
    }
}

/// Whether this process may change the network configuration (CAP_NET_ADMIN in its effective
/// set), read from `/proc/self/status`.
pub fn has_net_admin() -> Result<bool, Error> {
    const CAP_NET_ADMIN: u32 = 12;
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::Spawn { tool: "/proc/self/status".into(), reason: e.to_string() })?;
    Ok(parse_cap_eff(&status).is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0))
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// Fails with a clear message unless this process holds CAP_NET_ADMIN.
pub fn require_net_admin() -> Result<(), Error> {
    if has_net_admin()? {
        Ok(())
    } else {
        Err(Error::Permission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_capabilities_are_read() {
        let root = "Name:\tweft\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let user = "Name:\tweft\nCapEff:\t0000000000000000\n";
        let net_admin_only = "CapEff:\t0000000000001000\n";
        assert_eq!(parse_cap_eff(root), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff(user), Some(0));
        assert_eq!(parse_cap_eff(net_admin_only).map(|c| c & (1 << 12) != 0), Some(true));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
    }

    #[test]
    fn tools_run_with_stdin_and_report_failure() {
        let cat = find("cat").expect("cat on PATH");
        assert_eq!(cat.check(&[], Some("rules\n")).unwrap(), "rules\n");
        let sh = find("sh").expect("sh on PATH");
        match sh.check(&["-c", "echo broken >&2; exit 3"], None) {
            Err(Error::ToolFailed { stderr, status, .. }) => {
                assert_eq!(stderr, "broken");
                assert!(status.contains('3'), "{status}");
            }
            other => panic!("{other:?}"),
        }
        assert!(find("weft-capture-no-such-tool").is_none());
    }
}
