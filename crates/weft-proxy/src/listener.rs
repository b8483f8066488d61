//! Listeners: sockets bound by the control thread, accepted on every worker; per connection the
//! original destination, TLS inspection (SNI/ALPN), filter chain choice and the HTTP or TCP path.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use weft_config::{DownstreamCodec, Listener, Transport};

use crate::chain::{select_chain, ConnInfo};
use crate::http::{serve, ConnCtx};
use crate::snapshot::{ChainRt, HttpRt};
use crate::Shared;

/// What the control thread tells a worker.
pub enum WorkerCmd {
    Accept { name: Arc<str>, listener: std::net::TcpListener, stop: watch::Receiver<bool> },
}

struct Bound {
    addr: SocketAddr,
    local: SocketAddr,
    stop: watch::Sender<bool>,
}

/// Binds, keeps and closes listener sockets as configs come and go.
pub struct ListenerManager {
    workers: Vec<mpsc::Sender<WorkerCmd>>,
    bound: HashMap<String, Bound>,
}

#[derive(Debug, thiserror::Error)]
#[error("listener {name:?}: cannot listen on {addr}: {source}")]
pub struct BindError {
    pub name: String,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        let _ = s.set_only_v6(true);
    }
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

impl ListenerManager {
    pub fn new(workers: Vec<mpsc::Sender<WorkerCmd>>) -> ListenerManager {
        ListenerManager { workers, bound: HashMap::new() }
    }

    /// Makes the bound sockets match `listeners`: keeps unchanged addresses (so no connection is
    /// refused across a reload), binds new ones, closes removed ones. All binds happen before any
    /// change, so a failure leaves the old set untouched.
    pub async fn reconcile(&mut self, listeners: &[Arc<Listener>]) -> Result<(), BindError> {
        let unchanged = |l: &Listener, bound: &HashMap<String, Bound>| {
            bound.get(&l.name).map(|b| b.addr == l.address).unwrap_or(false)
        };
        let obsolete: Vec<String> = self
            .bound
            .iter()
            .filter(|(n, b)| !listeners.iter().any(|l| &l.name == *n && l.address == b.addr))
            .map(|(n, _)| n.clone())
            .collect();
        let held_by_obsolete = |addr: SocketAddr, bound: &HashMap<String, Bound>| {
            addr.port() != 0 && obsolete.iter().any(|n| bound[n].addr == addr)
        };
        // 1. Bind new addresses first: a failure leaves the running set untouched.
        let mut fresh: Vec<(String, SocketAddr, std::net::TcpListener)> = Vec::new();
        for l in listeners.iter().filter(|l| !unchanged(l, &self.bound) && !held_by_obsolete(l.address, &self.bound)) {
            let sock = bind(l.address).map_err(|e| BindError { name: l.name.clone(), addr: l.address, source: e })?;
            fresh.push((l.name.clone(), l.address, sock));
        }
        // 2. Close removed or moved listeners.
        for n in &obsolete {
            if let Some(b) = self.bound.remove(n) {
                let _ = b.stop.send(true);
            }
        }
        // 3. Addresses that only changed name can be bound now that the old socket is closed.
        let moved: Vec<&Arc<Listener>> = listeners
            .iter()
            .filter(|l| !self.bound.contains_key(&l.name) && !fresh.iter().any(|(n, _, _)| n == &l.name))
            .collect();
        for l in moved {
            let sock = bind(l.address).map_err(|e| BindError { name: l.name.clone(), addr: l.address, source: e })?;
            fresh.push((l.name.clone(), l.address, sock));
        }
        for (name, addr, sock) in fresh {
            let local = sock.local_addr().unwrap_or(addr);
            let (stop_tx, stop_rx) = watch::channel(false);
            let name_arc: Arc<str> = Arc::from(name.as_str());
            for w in &self.workers {
                let Ok(dup) = sock.try_clone() else { continue };
                let _ =
                    w.send(WorkerCmd::Accept { name: name_arc.clone(), listener: dup, stop: stop_rx.clone() }).await;
            }
            tracing::info!(listener = %name, address = %local, "listening");
            self.bound.insert(name, Bound { addr, local, stop: stop_tx });
        }
        Ok(())
    }

    /// Actual bound addresses (port 0 resolved), by listener name.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        let mut v: Vec<(String, SocketAddr)> = self.bound.iter().map(|(n, b)| (n.clone(), b.local)).collect();
        v.sort();
        v
    }

    /// Stops accepting on every listener (drain).
    pub fn stop_all(&mut self) {
        for (_, b) in self.bound.drain() {
            let _ = b.stop.send(true);
        }
    }
}

/// A worker's loop: runs accept loops as the control thread hands listeners over.
pub async fn worker_main(shared: Arc<Shared>, mut rx: mpsc::Receiver<WorkerCmd>) {
    // A timer that always fires within a second keeps the runtime's next timer wake near:
    // tokio interrupts its poll for events (an eventfd write and a spurious wake-up) whenever a
    // new timer expires before that wake, which every request's route timeout would otherwise
    // do. One wake-up a second instead of two system calls per request.
    let heartbeat = tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
        }
    });
    while let Some(cmd) = rx.recv().await {
        match cmd {
            WorkerCmd::Accept { name, listener, stop } => {
                let shared = shared.clone();
                tokio::spawn(accept_loop(shared, name, listener, stop));
            }
        }
    }
    heartbeat.abort();
}

async fn accept_loop(
    shared: Arc<Shared>,
    name: Arc<str>,
    listener: std::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    shared.metrics.downstream_cx_total.inc();
                    let guard = CxActive::new(&shared);
                    tokio::spawn(handle_connection(shared.clone(), name.clone(), stream, peer, guard));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// Counts a live downstream connection (drain waits for these to reach zero).
pub struct CxActive(Arc<Shared>);

impl CxActive {
    fn new(s: &Arc<Shared>) -> CxActive {
        s.downstream_cx_active.fetch_add(1, Relaxed);
        CxActive(s.clone())
    }
}

impl Drop for CxActive {
    fn drop(&mut self) {
        self.0.downstream_cx_active.fetch_sub(1, Relaxed);
    }
}

async fn handle_connection(shared: Arc<Shared>, name: Arc<str>, stream: TcpStream, peer: SocketAddr, guard: CxActive) {
    let snap = shared.snapshot.load_full();
    let Some(l) = snap.listeners.get(&*name).cloned() else { return };
    let local = stream.local_addr().unwrap_or(l.cfg.address);
    let destination = if l.cfg.use_original_dst { original_dst(&stream).unwrap_or(local) } else { local };

    let (sni, alpn, transport) = if l.cfg.needs_tls_inspection() {
        inspect(&stream, l.cfg.detection_timeout, l.cfg.http_inspection).await
    } else {
        (None, Vec::new(), Transport::RawBuffer)
    };
    let info = ConnInfo { destination, source: peer, server_name: sni.as_deref(), transport, alpn: &alpn };
    let chain = match select_chain(&l.cfg.filter_chains, &info) {
        Some(i) => l.chains[i].clone(),
        None => match &l.default_chain {
            Some(c) => c.clone(),
            None => {
                tracing::debug!(listener = %name, %destination, "no filter chain matched");
                return;
            }
        },
    };
    match chain {
        ChainRt::Tcp(t) => {
            crate::tcp::proxy(shared, snap, t, stream, destination, l.reporter).await;
            drop(guard);
        }
        ChainRt::Http(h) => {
            // HTTP requests look up routes and clusters in the current snapshot, so the
            // connection must not pin this one.
            drop(snap);
            serve_http(shared, h, stream, peer, local, destination, guard).await
        }
    }
}

/// What the first bytes say: server name, application protocols, transport.
type Inspected = (Option<String>, Vec<String>, Transport);

/// Peeks (never consumes) the first bytes to read a TLS ClientHello, within `timeout`; with
/// `http`, a plaintext connection that starts like HTTP gets `http/1.0`, `http/1.1` or `h2c` as
/// its application protocol (Envoy's http_inspector).
async fn inspect(stream: &TcpStream, timeout: Duration, http: bool) -> Inspected {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 4096];
    let mut backoff = Duration::from_millis(1);
    // What to answer if the bytes stop coming before the answer is certain.
    let mut fallback: Inspected = (None, vec![], Transport::RawBuffer);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return fallback,
            Ok(Ok(n)) => n,
        };
        let full = n == buf.len() && buf.len() >= weft_sniff::MAX_PEEK;
        match classify(&buf[..n], http, full) {
            Classified::Done(found) => return found,
            Classified::Partial(guess) => fallback = guess,
            Classified::NeedMore => {}
        }
        if n == buf.len() {
            buf.resize((buf.len() * 2).min(weft_sniff::MAX_PEEK), 0);
        } else {
            // Wait for more bytes before peeking again, backing off so a client that sends one
            // byte and stalls costs a few dozen wake-ups, not thousands.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }
}

enum Classified {
    Done(Inspected),
    /// Likely this, but more bytes would tell for sure.
    Partial(Inspected),
    NeedMore,
}

/// Classifies the first bytes; `full` says no more will be peeked.
fn classify(b: &[u8], http: bool, full: bool) -> Classified {
    match weft_sniff::parse_client_hello(b) {
        Ok(h) => Classified::Done((h.server_name, h.alpn, Transport::Tls)),
        Err(weft_sniff::SniffError::Incomplete) if full => Classified::Done((None, vec![], Transport::Tls)),
        Err(weft_sniff::SniffError::Incomplete) => Classified::NeedMore,
        Err(weft_sniff::SniffError::NotTls) if !http => Classified::Done((None, vec![], Transport::RawBuffer)),
        Err(weft_sniff::SniffError::NotTls) => {
            let http_as = |p: &str| (None, vec![p.to_string()], Transport::RawBuffer);
            match weft_sniff::detect(b) {
                weft_sniff::Detected::Http2Preface => Classified::Done(http_as("h2c")),
                // The request line's version decides between http/1.0 and http/1.1.
                weft_sniff::Detected::Http1 => match b.windows(2).position(|w| w == b"\r\n") {
                    Some(end) if b[..end].ends_with(b"HTTP/1.0") => Classified::Done(http_as("http/1.0")),
                    Some(_) => Classified::Done(http_as("http/1.1")),
                    None if full => Classified::Done(http_as("http/1.1")),
                    None => Classified::Partial(http_as("http/1.1")),
                },
                weft_sniff::Detected::NeedMore if !full => Classified::NeedMore,
                _ => Classified::Done((None, vec![], Transport::RawBuffer)),
            }
        }
        Err(_) => Classified::Done((None, vec![], Transport::Tls)),
    }
}

/// Serves HTTP on one connection. `guard` counts the connection as open for as long as it or a
/// tunnel made from it (WebSocket, CONNECT) lives, so a drain waits for tunnels too.
async fn serve_http(
    shared: Arc<Shared>,
    h: Arc<HttpRt>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    destination: SocketAddr,
    guard: CxActive,
) {
    let hcm = h.hcm.clone();
    // HTTP/1 framing watch (CL+TE conflicts answer 400); HTTP/2-only listeners skip it.
    let (stream, h1_verdicts) = match hcm.codec {
        DownstreamCodec::Http2 => (crate::h1guard::Guarded::new(stream, 0).0, None),
        _ => {
            let (g, v) = crate::h1guard::Guarded::new(stream, hcm.limits.max_request_headers_bytes.max(8192) + 1024);
            (g, Some(v))
        }
    };
    let peer_ip = http::HeaderValue::from_str(&peer.ip().to_string()).ok();
    let ctx = Arc::new(ConnCtx {
        shared: shared.clone(),
        http: h,
        peer,
        local,
        destination,
        h1_verdicts,
        _open: guard,
        peer_ip,
    });
    let svc = service_fn(move |req| serve(ctx.clone(), req));
    let mut drain = shared.drain_rx.clone();
    let io = TokioIo::new(stream);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper needs at least 8 KiB of read buffer; smaller header limits are enforced by count.
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(hcm.limits.max_request_headers_bytes.max(8192))
        .max_headers(hcm.limits.max_headers_count)
        .keep_alive(true)
        .half_close(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(hcm.limits.max_request_headers_bytes as u32)
        .max_concurrent_streams(1024)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20);
    let builder = match hcm.codec {
        DownstreamCodec::Auto => builder,
        DownstreamCodec::Http1 => builder.http1_only(),
        DownstreamCodec::Http2 => builder.http2_only(),
    };
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let idle = hcm.idle_timeout;
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "downstream connection error");
            }
        }
        _ = async { drain.wait_for(|d| *d).await.is_ok() } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(idle.unwrap_or(Duration::from_secs(3600)), conn).await;
        }
    }
}

/// The destination before iptables/nftables REDIRECT (SO_ORIGINAL_DST), IPv4 and IPv6.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let local = stream.local_addr().ok()?;
    // SAFETY: getsockopt writes at most `len` bytes into a zeroed, correctly sized sockaddr
    // buffer owned by this frame; the fd is valid for the lifetime of `stream`.
    unsafe {
        if local.is_ipv4() {
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let r =
                libc::getsockopt(fd, libc::SOL_IP, SO_ORIGINAL_DST, &mut addr as *mut _ as *mut libc::c_void, &mut len);
            if r != 0 {
                return None;
            }
            let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(addr.sin_port))))
        } else {
            let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            let r = libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                &mut addr as *mut _ as *mut libc::c_void,
                &mut len,
            );
            if r != 0 {
                return None;
            }
            let ip = std::net::Ipv6Addr::from(addr.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(addr.sin6_port))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(c: Classified) -> Option<Inspected> {
        match c {
            Classified::Done(i) => Some(i),
            _ => None,
        }
    }

    #[test]
    fn plaintext_http_is_recognised_only_when_inspection_is_on() {
        let raw = |alpn: &[&str]| Some((None, alpn.iter().map(|s| s.to_string()).collect(), Transport::RawBuffer));
        let cases: &[(&[u8], bool, bool, Option<Inspected>)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true, false, raw(&["http/1.1"])),
            (b"GET / HTTP/1.0\r\n\r\n", true, false, raw(&["http/1.0"])),
            (weft_sniff::HTTP2_PREFACE, true, false, raw(&["h2c"])),
            (b"\x00\x01binary protocol", true, false, raw(&[])),
            (b"GET / HTTP/1.1\r\n\r\n", false, false, raw(&[])),
            // A request line still arriving: more bytes are needed, unless no more will come.
            (b"GET /very/long", true, false, None),
            (b"GET /very/long", true, true, raw(&["http/1.1"])),
            (b"PRI * HTTP/2", true, false, None),
        ];
        for (bytes, http, full, want) in cases {
            assert_eq!(done(classify(bytes, *http, *full)), *want, "{:?}", String::from_utf8_lossy(bytes));
        }
        assert!(matches!(classify(b"GET /very/long", true, false), Classified::Partial(_)));
    }
}
