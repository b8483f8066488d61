//! The server's own listener: HTTP/2 connections carrying the ADS service, with keepalive
//! PINGs to find vanished proxies, a bound on connections, and a shutdown that ends the streams
//! first (they never end on their own) and then drops connections that outlive the grace time.

use std::io;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::{AdsError, AdsServer, AdsService, PeerAddr};

/// Pause after an accept error that is about the process (out of descriptors, memory), not the
/// listener, before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub async fn serve(
    server: AdsServer,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AdsError> {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".to_string());
    let opts = server.inner.opts.clone();
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .keep_alive_interval(opts.keepalive_interval)
        .keep_alive_timeout(opts.keepalive_timeout)
        .max_concurrent_streams(opts.max_streams_per_connection);
    let service = server.service();
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tracing::info!(%addr, "ADS server listening");
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    if conns.len() >= opts.max_connections {
                        tracing::warn!(%peer, limit = opts.max_connections, "ADS connection refused: too many connections");
                        continue;
                    }
                    let conn = Connection { sock, peer, h2: h2.clone(), service: service.clone(), drain: drain_rx.clone() };
                    conns.spawn(conn.run());
                }
                Err(e) if transient(&e) => {
                    tracing::warn!(%addr, error = %e, "ADS accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                Err(e) => break Err(AdsError::Listener { addr: addr.clone(), source: e }),
            }
        }
    };
    drop(listener);
    server.close_streams();
    drain_tx.send_replace(true);
    let drained = tokio::time::timeout(opts.shutdown_grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(%addr, left = conns.len(), "ADS connections dropped after the shutdown grace time");
        conns.shutdown().await;
    }
    result
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::OutOfMemory
            | io::ErrorKind::WouldBlock
    ) || matches!(e.raw_os_error(), Some(code) if code == 23 || code == 24 || code == 105)
    // ENFILE, EMFILE, ENOBUFS
}

struct Connection {
    sock: TcpStream,
    peer: std::net::SocketAddr,
    h2: http2::Builder<TokioExecutor>,
    service: AggregatedDiscoveryServiceServer<AdsService>,
    drain: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self) {
        let _ = self.sock.set_nodelay(true);
        let peer = self.peer;
        let service = WithPeer { service: self.service, peer };
        let conn = self.h2.serve_connection(TokioIo::new(self.sock), service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "ADS connection ended");
                }
                return;
            }
            _ = self.drain.wait_for(|d| *d) => conn.as_mut().graceful_shutdown(),
        }
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "ADS connection ended while draining");
        }
    }
}

/// The tonic service as a hyper service, with the peer address in the request extensions.
#[derive(Clone)]
struct WithPeer {
    service: AggregatedDiscoveryServiceServer<AdsService>,
    peer: std::net::SocketAddr,
}

impl hyper::service::Service<http::Request<Incoming>> for WithPeer {
    type Response =
        <AggregatedDiscoveryServiceServer<AdsService> as tonic::codegen::Service<http::Request<Incoming>>>::Response;
    type Error =
        <AggregatedDiscoveryServiceServer<AdsService> as tonic::codegen::Service<http::Request<Incoming>>>::Error;
    type Future =
        <AggregatedDiscoveryServiceServer<AdsService> as tonic::codegen::Service<http::Request<Incoming>>>::Future;

    fn call(&self, mut req: http::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(PeerAddr(self.peer));
        // The generated server is always ready (its poll_ready returns Ready), so calling it
        // without polling readiness is what tonic's own server does too.
        let mut service = self.service.clone();
        tonic::codegen::Service::call(&mut service, req)
    }
}
