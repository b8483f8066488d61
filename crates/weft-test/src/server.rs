//! The accept loop shared by every test server.

use std::future::Future;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::runtime;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type RespBody = UnsyncBoxBody<Bytes, BoxError>;
pub(crate) type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a backend does with one accepted connection.
pub(crate) type ConnFn = Arc<dyn Fn(TcpStream, SocketAddr) -> BoxFut<()> + Send + Sync>;

/// What an HTTP backend does with one request.
pub(crate) type Handler =
    Arc<dyn Fn(Request<Incoming>, Arc<RawConn>) -> BoxFut<Result<Response<RespBody>, BoxError>> + Send + Sync>;

/// Counters shared between a server and its handle.
#[derive(Default)]
pub(crate) struct Stats {
    pub hits: AtomicU64,
    pub connections: AtomicU64,
}

impl Stats {
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::SeqCst);
    }
}

/// A listening server running on the background runtime.
pub(crate) struct ServerHandle {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// Bind `127.0.0.1:0` and serve every accepted connection with `on_conn`.
    pub fn start(stats: Arc<Stats>, on_conn: ConnFn) -> ServerHandle {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a test server on 127.0.0.1:0");
        std_listener.set_nonblocking(true).expect("make the test listener non-blocking");
        let addr = std_listener.local_addr().expect("test listener address");
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = runtime::spawn(accept_loop(std_listener, stop_rx, stats.clone(), on_conn));
        ServerHandle { addr, stats, stop: Some(stop_tx), task: Some(task) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn hits(&self) -> u64 {
        self.stats.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Close the listener and every open connection, and wait (bounded) until
    /// that is done.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(10), task).await.is_err() {
                panic!("test server {} did not shut down within 10 s", self.addr);
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn accept_loop(
    std_listener: std::net::TcpListener,
    mut stop: oneshot::Receiver<()>,
    stats: Arc<Stats>,
    on_conn: ConnFn,
) {
    let listener = TcpListener::from_std(std_listener).expect("register the test listener");
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    stats.connections.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.set_nodelay(true);
                    conns.spawn(on_conn(stream, peer));
                }
                // Out of fds or similar: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
        while conns.try_join_next().is_some() {}
    }
    // Closing the listener makes new connects fail with ECONNREFUSED;
    // aborting the connection tasks closes the established ones.
    drop(listener);
    conns.shutdown().await;
}

/// A second handle on an accepted socket, for the failure modes that have to
/// bypass hyper (garbage bytes, abrupt close).
pub(crate) struct RawConn {
    sock: Option<std::net::TcpStream>,
}

impl RawConn {
    fn new(stream: &TcpStream) -> RawConn {
        let sock = stream.as_fd().try_clone_to_owned().ok().map(std::net::TcpStream::from);
        RawConn { sock }
    }

    /// Close both directions of the connection now. Hyper still holds the
    /// socket, but every further read or write on it fails, so the
    /// connection ends without a response.
    pub fn close(&self) {
        if let Some(sock) = &self.sock {
            let _ = sock.shutdown(Shutdown::Both);
        }
    }

    /// Write `bytes` straight to the socket, bypassing hyper, then close.
    pub fn write_raw_and_close(&self, bytes: &[u8]) {
        if let Some(mut sock) = self.sock.as_ref() {
            // The descriptor shares the non-blocking flag with tokio's copy;
            // a few bytes on a fresh send buffer go out at once, but retry a
            // little in case the buffer is momentarily full.
            let mut rest = bytes;
            let mut tries = 0;
            while !rest.is_empty() && tries < 500 {
                match sock.write(rest) {
                    Ok(0) => break,
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        self.close();
    }
}

/// Serve one connection with hyper, speaking HTTP/1.1 or h2c (prior
/// knowledge) depending on what the client sends first.
pub(crate) async fn serve_http(stream: TcpStream, handler: Handler) {
    let raw = Arc::new(RawConn::new(&stream));
    let service = HttpService { handler, raw };
    let builder = auto::Builder::new(TokioExecutor::new());
    // Errors here are the client going away or one of the injected
    // failures; neither is interesting.
    let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
}

/// The per-connection hyper service: hands each request to the handler
/// together with the connection's raw socket.
#[derive(Clone)]
struct HttpService {
    handler: Handler,
    raw: Arc<RawConn>,
}

impl hyper::service::Service<Request<Incoming>> for HttpService {
    type Response = Response<RespBody>;
    type Error = BoxError;
    type Future = BoxFut<Result<Response<RespBody>, BoxError>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        (self.handler)(req, self.raw.clone())
    }
}

/// A connection error returned from a handler on purpose: hyper then closes
/// the HTTP/1 connection without replying, or resets the h2 stream.
#[derive(Debug)]
pub(crate) struct Injected(pub &'static str);

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "injected failure: {}", self.0)
    }
}

impl std::error::Error for Injected {}
