//! Running the `weft` binary under test.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use tempfile::TempDir;

const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);
/// Lines of output shown in failure messages.
const TAIL_LINES: usize = 200;

/// What the proxy writes to its ready file:
/// `{"admin":"127.0.0.1:PORT","listeners":{"NAME":"127.0.0.1:PORT",...}}`.
#[derive(Clone, Debug)]
pub struct ReadyInfo {
    pub admin: SocketAddr,
    pub listeners: BTreeMap<String, SocketAddr>,
    /// The whole document, for fields added later.
    pub raw: serde_json::Value,
}

impl ReadyInfo {
    pub fn parse(text: &str) -> anyhow::Result<ReadyInfo> {
        let raw: serde_json::Value = serde_json::from_str(text).context("ready file is not JSON")?;
        let admin = raw
            .get("admin")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("ready file has no \"admin\" string"))?
            .parse()
            .context("ready file: bad \"admin\" address")?;
        let mut listeners = BTreeMap::new();
        if let Some(map) = raw.get("listeners") {
            let map = map.as_object().ok_or_else(|| anyhow!("ready file: \"listeners\" is not an object"))?;
            for (name, addr) in map {
                let addr = addr
                    .as_str()
                    .ok_or_else(|| anyhow!("ready file: listener {name} is not a string"))?
                    .parse()
                    .with_context(|| format!("ready file: bad address for listener {name}"))?;
                listeners.insert(name.clone(), addr);
            }
        }
        Ok(ReadyInfo { admin, listeners, raw })
    }
}

/// Configures and starts a [`WeftProcess`]. Owns a temporary directory that
/// holds the captured output, the ready file and any file written with
/// [`WeftBuilder::write_file`]; it lives as long as the process handle.
pub struct WeftBuilder {
    bin: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    ready_timeout: Duration,
    dir: TempDir,
}

impl WeftBuilder {
    pub fn new(bin: impl Into<PathBuf>) -> WeftBuilder {
        WeftBuilder {
            bin: bin.into(),
            args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            dir: tempfile::Builder::new().prefix("weft-test-").tempdir().expect("create a temporary directory"),
        }
    }

    /// The process's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Write `contents` to `name` inside the temporary directory (e.g. a
    /// config file) and return its path.
    pub fn write_file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create directory in the test dir");
        }
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> WeftBuilder {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> WeftBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> WeftBuilder {
        self.envs.push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> WeftBuilder {
        self.cwd = Some(dir.into());
        self
    }

    /// How long to wait for the ready file (default 20 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> WeftBuilder {
        self.ready_timeout = timeout;
        self
    }

    /// Start the process and wait until it is ready; panics with its output
    /// if it exits or times out first.
    pub async fn start(self) -> WeftProcess {
        match self.try_start().await {
            Ok(p) => p,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Start the process and wait until it is ready.
    ///
    /// The ready file is the path after `--ready-file` in the arguments; if
    /// there is none, `--ready-file <dir>/ready.json` is appended.
    pub async fn try_start(mut self) -> anyhow::Result<WeftProcess> {
        let ready_file = match find_ready_file(&self.args) {
            Some(path) => path,
            None => {
                let path = self.dir.path().join("ready.json");
                self.args.push("--ready-file".into());
                self.args.push(path.clone().into_os_string());
                path
            }
        };
        // A stale file from an earlier run would look like readiness.
        let _ = std::fs::remove_file(&ready_file);

        let stdout_path = self.dir.path().join("stdout.log");
        let stderr_path = self.dir.path().join("stderr.log");
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr_path)?);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        let command_line = format!("{} {}", self.bin.display(), join_args(&self.args));
        let child = cmd.spawn().with_context(|| format!("spawn {command_line}"))?;

        let mut process = WeftProcess {
            child,
            command_line,
            ready_file,
            stdout_path,
            stderr_path,
            ready: None,
            exit: None,
            dir: self.dir,
        };
        let deadline = Instant::now() + self.ready_timeout;
        let mut last_parse_error = None;
        loop {
            if let Some(status) = process.try_exit_status() {
                bail!(
                    "`{}` exited with {status} before becoming ready\n{}",
                    process.command_line,
                    process.output_report()
                );
            }
            if let Ok(text) = std::fs::read_to_string(&process.ready_file) {
                match ReadyInfo::parse(&text) {
                    Ok(info) => {
                        process.ready = Some(info);
                        return Ok(process);
                    }
                    Err(e) => last_parse_error = Some(format!("{e:#}; contents: {text:?}")),
                }
            }
            if Instant::now() >= deadline {
                process.kill();
                bail!(
                    "`{}` did not become ready within {:?} (no valid ready file at {}{})\n{}",
                    process.command_line,
                    self.ready_timeout,
                    process.ready_file.display(),
                    last_parse_error.map(|e| format!("; last parse error: {e}")).unwrap_or_default(),
                    process.output_report()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn find_ready_file(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--ready-file" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(rest) = arg.to_str().and_then(|a| a.strip_prefix("--ready-file=")) {
            return Some(PathBuf::from(rest));
        }
    }
    None
}

fn join_args(args: &[OsString]) -> String {
    args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("[... {start} earlier lines ...]\n"));
    }
    for line in &all[start..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A running `weft` process. Killed (SIGKILL) when dropped; if the test is
/// panicking at that point, the end of its stderr is printed.
pub struct WeftProcess {
    child: Child,
    command_line: String,
    ready_file: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    ready: Option<ReadyInfo>,
    exit: Option<ExitStatus>,
    dir: TempDir,
}

impl WeftProcess {
    pub fn builder(bin: impl Into<PathBuf>) -> WeftBuilder {
        WeftBuilder::new(bin)
    }

    /// Start `bin` with `args` and wait (20 s) for its ready file; see
    /// [`WeftBuilder::try_start`]. Panics with the process's output on
    /// failure.
    ///
    /// In the `weft` crate's integration tests the binary is
    /// `env!("CARGO_BIN_EXE_weft")`:
    ///
    /// ```no_run
    /// # async fn f(weft_bin: &str, config: &std::path::Path) {
    /// let weft = weft_test::WeftProcess::start(
    ///     weft_bin,
    ///     ["proxy".as_ref(), "--config".as_ref(), config.as_os_str()],
    /// )
    /// .await;
    /// let addr = weft.listener("main");
    /// # }
    /// ```
    pub async fn start<I, S>(bin: impl Into<PathBuf>, args: I) -> WeftProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        WeftBuilder::new(bin).args(args).start().await
    }

    /// What the ready file said when the process became ready (or at the
    /// last [`WeftProcess::reread_ready`]).
    pub fn ready(&self) -> &ReadyInfo {
        self.ready.as_ref().expect("process is ready")
    }

    /// Address of the listener called `name`; panics listing the known ones.
    pub fn listener(&self, name: &str) -> SocketAddr {
        let ready = self.ready();
        match ready.listeners.get(name) {
            Some(addr) => *addr,
            None => panic!(
                "weft has no listener {name:?}; the ready file lists {:?}",
                ready.listeners.keys().collect::<Vec<_>>()
            ),
        }
    }

    /// Address of the admin server.
    pub fn admin(&self) -> SocketAddr {
        self.ready().admin
    }

    /// Read the ready file again (e.g. after a reload changed listeners).
    pub fn reread_ready(&mut self) -> anyhow::Result<&ReadyInfo> {
        let text =
            std::fs::read_to_string(&self.ready_file).with_context(|| format!("read {}", self.ready_file.display()))?;
        self.ready = Some(ReadyInfo::parse(&text)?);
        Ok(self.ready())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temporary directory holding the logs and ready file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ready_file(&self) -> &Path {
        &self.ready_file
    }

    /// Send `sig` (e.g. [`crate::SIGHUP`], [`crate::SIGTERM`]). Panics if
    /// the process has already been reaped.
    pub fn signal(&self, sig: i32) {
        assert!(self.exit.is_none(), "cannot signal weft: it already exited with {:?}", self.exit);
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // own unreaped child, so it cannot have been recycled.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }

    /// The exit status, if the process has exited (does not block).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Wait for the process to exit; panics with its output if it is still
    /// running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "`{}` still running {timeout:?} after wait_exit began\n{}",
                    self.command_line,
                    self.output_report()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        std::fs::read(&self.stdout_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read(&self.stderr_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Wait until stderr contains `needle`; returns whether it did within
    /// `timeout`.
    pub async fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        crate::wait_for(timeout, || async { self.stderr_text().contains(needle) }).await
    }

    /// The last lines of stdout and stderr, for failure messages.
    pub fn output_report(&self) -> String {
        format!(
            "--- weft stdout (tail) ---\n{}--- weft stderr (tail) ---\n{}--- end ---",
            tail(&self.stdout_text(), TAIL_LINES),
            tail(&self.stderr_text(), TAIL_LINES)
        )
    }

    /// SIGKILL the process and reap it.
    pub fn kill(&mut self) {
        if self.try_exit_status().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }
}

impl Drop for WeftProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "weft-test: `{}` (pid {}) at the time of the failure:\n{}",
                self.command_line,
                self.child.id(),
                self.output_report()
            );
        }
    }
}
