//! Supervision of the host's `weft proxy` and `weft dns`: start, log every exit, restart with
//! exponential backoff (reset once a child has run for a stable period), and on stop forward
//! SIGTERM and wait for the child to drain (SIGKILL after a grace period).
//!
//! Children run in their own process group (a Ctrl-C at the agent's terminal reaches the agent
//! only, which deregisters before it stops them) and get SIGTERM if the agent dies: a host whose
//! agent is gone has no proxy serving stale registrations.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::status::{now_unix_ms, Shared};

/// First restart delay after a crash.
pub const RESTART_INITIAL: Duration = Duration::from_millis(500);
/// Longest restart delay.
pub const RESTART_MAX: Duration = Duration::from_secs(30);
/// A child that ran this long is stable: its next crash restarts it after `RESTART_INITIAL`.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long a child may drain after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub struct ChildSpec {
    /// `proxy` or `dns`.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Run as this uid (and the same gid); None: as the agent.
    pub uid: Option<u32>,
}

impl ChildSpec {
    pub fn command_line(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// Runs `spec` until `stop`, keeping the status entry `index` current.
pub async fn run(spec: ChildSpec, status: Shared, index: usize, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(RESTART_INITIAL, RESTART_MAX);
    let mut first = true;
    loop {
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args).stdin(Stdio::null()).kill_on_drop(true).process_group(0);
        if let Some(uid) = spec.uid {
            cmd.uid(uid).gid(uid);
        }
        sys::exit_with_parent(&mut cmd);
        let spawned = cmd.spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::error!(child = %spec.name, error = %e, retry_ms = delay.as_millis() as u64, "cannot start");
                status.update(|s| {
                    if let Some(c) = s.children.get_mut(index) {
                        c.running = false;
                        c.pid = None;
                        c.last_error = Some(format!("cannot start {}: {e}", spec.program.display()));
                    }
                });
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = crate::stopped(&mut stop) => return,
                }
            }
        };
        let pid = child.id();
        let started = Instant::now();
        tracing::info!(child = %spec.name, pid, restart = !first, "started");
        status.update(|s| {
            if let Some(c) = s.children.get_mut(index) {
                c.pid = pid;
                c.running = true;
                c.started_unix_ms = Some(now_unix_ms());
                if !first {
                    c.restarts += 1;
                }
                c.last_error = None;
            }
        });
        first = false;
        let exit = tokio::select! {
            exit = child.wait() => Some(exit),
            _ = crate::stopped(&mut stop) => None,
        };
        let Some(exit) = exit else {
            if let Some(pid) = pid {
                sys::terminate(pid);
            }
            let how = match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(Ok(s)) => describe_exit(&s),
                Ok(Err(e)) => format!("wait failed: {e}"),
                Err(_) => {
                    let _ = child.kill().await;
                    format!("killed after {}s without exiting on SIGTERM", STOP_GRACE.as_secs())
                }
            };
            tracing::info!(child = %spec.name, pid, exit = %how, "stopped");
            status.update(|s| {
                if let Some(c) = s.children.get_mut(index) {
                    c.running = false;
                    c.pid = None;
                    c.last_exit = Some(how.clone());
                }
            });
            return;
        };
        let uptime = started.elapsed();
        let how = match &exit {
            Ok(s) => describe_exit(s),
            Err(e) => format!("wait failed: {e}"),
        };
        if uptime >= STABLE_AFTER {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(child = %spec.name, pid, exit = %how, uptime_ms = uptime.as_millis() as u64, restart_in_ms = delay.as_millis() as u64, "exited; restarting");
        status.update(|s| {
            if let Some(c) = s.children.get_mut(index) {
                c.running = false;
                c.pid = None;
                c.last_exit = Some(how.clone());
            }
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = crate::stopped(&mut stop) => return,
        }
    }
}

fn describe_exit(s: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// The two system calls the supervisor needs beyond what std offers.
#[allow(unsafe_code)]
mod sys {
    /// The child gets SIGTERM when the agent's thread that started it dies (the runtime's worker
    /// threads live as long as the agent).
    pub fn exit_with_parent(cmd: &mut tokio::process::Command) {
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// SIGTERM to a child we have not reaped yet (so its pid cannot have been reused).
    pub fn terminate(pid: u32) {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}
