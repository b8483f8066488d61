//! A real etcd server for tests: one member on loopback ports, a data dir in a temporary
//! directory, killed when dropped. The binary is Debian's `etcd-server` (installed by
//! `scripts/test.sh`); a missing one fails the test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tempfile::TempDir;

use crate::tools::require_tool;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 5;

/// One etcd member serving clients on `127.0.0.1:PORT`.
pub struct EtcdServer {
    bin: PathBuf,
    dir: TempDir,
    client: SocketAddr,
    peer: SocketAddr,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts etcd on free loopback ports and waits until it answers `/health`. Fails the test
    /// when the `etcd` binary is missing.
    pub fn start() -> anyhow::Result<EtcdServer> {
        let bin = require_tool("etcd");
        let dir = tempfile::Builder::new().prefix("weft-etcd-").tempdir().context("temp dir for etcd")?;
        let mut last = None;
        let mut dir = dir;
        for _ in 0..START_ATTEMPTS {
            let (client, peer) = (free_port()?, free_port()?);
            let mut server = EtcdServer { bin: bin.clone(), dir, client, peer, child: None };
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(e) => {
                    // Most likely a port taken between choosing it and etcd binding it.
                    last = Some(e);
                    dir = tempfile::Builder::new().prefix("weft-etcd-").tempdir().context("temp dir for etcd")?;
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    /// `127.0.0.1:PORT`, the client endpoint.
    pub fn endpoint(&self) -> String {
        self.client.to_string()
    }

    /// `etcd://127.0.0.1:PORT/PREFIX`, as `weft control --store` takes it.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.client)
    }

    /// Kills the server with SIGKILL (its data stays) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and data dir (after [`EtcdServer::kill`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                // The old process's ports may linger for a moment.
                Err(e) if Instant::now() < deadline => {
                    tracing_note(&e);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The server's output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).context("etcd log file")?;
        let client = format!("http://{}", self.client);
        let peer = format!("http://{}", self.peer);
        let child = Command::new(&self.bin)
            .arg("--name=weft-test")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=weft-test={peer}"))
            .args(["--logger=zap", "--log-outputs=stderr", "--log-level=warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("etcd log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                bail!("etcd exited with {status} before it was ready; its log:\n{}", self.log());
            }
            if healthy(self.client) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("etcd was not healthy within {READY_TIMEOUT:?}; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tracing_note(e: &anyhow::Error) {
    eprintln!("etcd restart: retrying after: {e:#}");
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind a free loopback port")?;
    Ok(l.local_addr()?)
}

/// `GET /health` answers `{"health":"true"}` once the member has a leader and serves.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = s.take(64 * 1024).read_to_string(&mut reply);
    reply.contains("\"health\":\"true\"")
}
