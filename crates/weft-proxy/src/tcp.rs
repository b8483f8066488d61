//! Plain TCP proxying: bytes both ways, half-close passed on, idle timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_config::{ClusterSpecifier, TcpProxy};

use crate::cluster::Outcome;
use crate::snapshot::Snapshot;
use crate::{worker, Shared};

/// Copies bytes both ways until both directions end or nothing moves for `idle`. When one side
/// finishes sending, the other side's write half is shut down (half-close), and the opposite
/// direction keeps flowing. Returns (bytes a→b, bytes b→a, how it ended); the counts are
/// kept even when the tunnel ends with an error or the idle timeout.
pub async fn splice<A, B>(a: A, b: B, idle: Duration) -> (u64, u64, std::io::Result<()>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let sent_ab = AtomicU64::new(0);
    let sent_ba = AtomicU64::new(0);
    let touch = || last.store(start.elapsed().as_millis() as u64, Relaxed);
    let ab = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = ar.read(&mut buf).await?;
            if n == 0 {
                let _ = bw.shutdown().await;
                return Ok::<(), std::io::Error>(());
            }
            bw.write_all(&buf[..n]).await?;
            sent_ab.fetch_add(n as u64, Relaxed);
            touch();
        }
    };
    let ba = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = br.read(&mut buf).await?;
            if n == 0 {
                let _ = aw.shutdown().await;
                return Ok::<(), std::io::Error>(());
            }
            aw.write_all(&buf[..n]).await?;
            sent_ba.fetch_add(n as u64, Relaxed);
            touch();
        }
    };
    let watchdog = async {
        loop {
            tokio::time::sleep(idle).await;
            let quiet = start.elapsed().saturating_sub(Duration::from_millis(last.load(Relaxed)));
            if quiet >= idle {
                return;
            }
        }
    };
    let end = tokio::select! {
        r = async { tokio::try_join!(ab, ba) } => r.map(|_| ()),
        _ = watchdog => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle timeout")),
    };
    (sent_ab.load(Relaxed), sent_ba.load(Relaxed), end)
}

/// Proxies one downstream TCP connection to the chain's cluster.
pub async fn proxy(
    shared: Arc<Shared>,
    snap: Arc<Snapshot>,
    tcp: Arc<TcpProxy>,
    stream: TcpStream,
    destination: SocketAddr,
    reporter: &'static str,
) {
    let name = match &tcp.cluster {
        ClusterSpecifier::Single(n) => n.clone(),
        ClusterSpecifier::Weighted(ws) => {
            let total = weft_route::total_weight(ws);
            let r = worker::with_rng(|rng| rng.gen_range(0..total.max(1)));
            weft_route::pick_weighted(ws, r).name.clone()
        }
    };
    let Some(cluster) = snap.clusters.get(&name).cloned() else {
        tracing::debug!(cluster = %name, "tcp: cluster not found");
        return;
    };
    let labels = shared.metrics.tcp_labels(reporter, Some(&cluster));
    let host =
        if cluster.is_original_dst() { Some(cluster.original_dst_host(destination)) } else { cluster.pick(None, &[]) };
    let Some(host) = host else {
        tracing::debug!(cluster = %name, "tcp: no healthy upstream");
        return;
    };
    let (up, _guard) = match cluster.connect_tcp(&host).await {
        Ok(s) => s,
        Err(e) => {
            cluster.report(&host, Outcome::ConnectFailure);
            tracing::debug!(cluster = %name, error = %e, "tcp: upstream connect failed");
            return;
        }
    };
    shared.metrics.tcp_opened(&labels);
    host.active_requests.fetch_add(1, Relaxed);
    let idle = tcp.idle_timeout.unwrap_or(Duration::from_secs(24 * 3600));
    let (sent_up, sent_down, end) = splice(stream, up, idle).await;
    if let Err(e) = end {
        tracing::debug!(cluster = %name, error = %e, "tcp: tunnel ended");
    }
    host.active_requests.fetch_sub(1, Relaxed);
    shared.metrics.tcp_closed(&labels, sent_down, sent_up);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn half_close_passes_through_and_the_other_direction_keeps_flowing() {
        let (client, proxy_a) = duplex(1024);
        let (proxy_b, server) = duplex(1024);
        let task = tokio::spawn(splice(proxy_a, proxy_b, Duration::from_secs(60)));
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut sr, mut sw) = tokio::io::split(server);
        cw.write_all(b"ping").await.unwrap();
        cw.shutdown().await.unwrap();
        let mut got = Vec::new();
        sr.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping", "server sees the data then EOF");
        sw.write_all(b"pong after half-close").await.unwrap();
        sw.shutdown().await.unwrap();
        let mut back = Vec::new();
        cr.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong after half-close");
        let (ab, ba, end) = task.await.unwrap();
        assert_eq!((ab, ba), (4, 21));
        assert!(end.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_is_closed() {
        let (_client, a) = duplex(64);
        let (b, _server) = duplex(64);
        let (_, _, end) = splice(a, b, Duration::from_secs(30)).await;
        assert_eq!(end.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    }
}
