//! Upstream clusters at run time: hosts with their health, the balancer over them, per-worker
//! connection pools, circuit-breaker counters, outlier ejection, active health checks and DNS.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use weft_config::{Cluster, Discovery, EndpointAddress, EndpointHealth, HealthCheckKind, Labels, LbPolicy};

use crate::body::ProxyBody;
use crate::h1client::{H1Conn, Idle};
use crate::worker;

/// Why an upstream connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {0} failed: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("handshake with {0} failed: {1}")]
    Handshake(SocketAddr, hyper::Error),
    #[error("cluster connection limit reached")]
    Overflow,
}

/// Why a dynamic forward proxy cluster found no address for a request's authority.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("{0:?} is not a host name or IP address")]
    InvalidHost(String),
    #[error("resolving {0:?} timed out")]
    Timeout(String),
    #[error("resolving {0:?} failed: {1}")]
    Failed(String, String),
    #[error("{0:?} has no address")]
    NoAddress(String),
}

/// A resolved name: when, and its addresses.
type Resolved = (Instant, Arc<[SocketAddr]>);

/// How long one system-resolver lookup may take (Envoy's DNS query timeout).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Result of one attempt, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    ConnectFailure,
    Reset,
    Timeout,
    /// Refused locally (circuit breaker): says nothing about the host.
    LocalOverflow,
    /// The client's request failed (its body broke): says nothing about the host.
    Downstream,
}

#[derive(Default)]
pub struct HostOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    times_ejected: AtomicU32,
    ejected: AtomicBool,
    /// Ejection end, as milliseconds since the cluster's epoch.
    ejected_until_ms: AtomicU64,
}

pub struct Host {
    pub addr: SocketAddr,
    pub weight: u32,
    pub priority: u32,
    pub locality: u32,
    pub metadata: Labels,
    pub eds_health: EndpointHealth,
    pub active_requests: AtomicU32,
    pub hc_failed: AtomicBool,
    hc_fails: AtomicU32,
    hc_oks: AtomicU32,
    pub outlier: HostOutlier,
    pub rq_total: AtomicU64,
    pub rq_error: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pools: Box<[Mutex<Pool>]>,
    /// Serialises HTTP/2 connection set-up per worker (see `connection`).
    h2_connecting: Box<[tokio::sync::Mutex<()>]>,
}

impl Host {
    fn new(
        addr: SocketAddr,
        weight: u32,
        priority: u32,
        locality: u32,
        metadata: Labels,
        eds_health: EndpointHealth,
    ) -> Host {
        Host {
            addr,
            weight,
            priority,
            locality,
            metadata,
            eds_health,
            active_requests: AtomicU32::new(0),
            hc_failed: AtomicBool::new(false),
            hc_fails: AtomicU32::new(0),
            hc_oks: AtomicU32::new(0),
            outlier: HostOutlier::default(),
            rq_total: AtomicU64::new(0),
            rq_error: AtomicU64::new(0),
            cx_connect_fail: AtomicU64::new(0),
            pools: (0..worker::pool_slots()).map(|_| Mutex::new(Pool::default())).collect(),
            h2_connecting: (0..worker::pool_slots()).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    pub fn healthy(&self) -> bool {
        self.eds_health == EndpointHealth::Healthy
            && !self.hc_failed.load(Relaxed)
            && !self.outlier.ejected.load(Relaxed)
    }

    pub fn ejected(&self) -> bool {
        self.outlier.ejected.load(Relaxed)
    }

    fn pool(&self) -> &Mutex<Pool> {
        &self.pools[worker::current() % self.pools.len()]
    }

    /// Closes idle pooled connections (config change, or the host left the cluster).
    fn clear_pools(&self) {
        for p in self.pools.iter() {
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            p.idle_h1.clear();
            p.h2 = None;
        }
    }
}

#[derive(Default)]
struct Pool {
    idle_h1: Vec<Idle>,
    h2: Option<http2::SendRequest<ProxyBody>>,
}

/// A connection checked out of the pool for one request.
pub enum Conn {
    H1(H1Conn),
    H2(http2::SendRequest<ProxyBody>),
}

/// The hosts of a cluster and the balancer built over their current health.
pub struct HostSet {
    pub hosts: Vec<Arc<Host>>,
    pub balancer: weft_lb::Balancer,
}

#[derive(Default)]
pub struct ClusterStats {
    pub rq_total: AtomicU64,
    pub rq_active: AtomicU32,
    pub rq_pending_active: AtomicU32,
    pub rq_retry: AtomicU64,
    pub rq_retry_overflow: AtomicU64,
    pub rq_retry_success: AtomicU64,
    pub rq_timeout: AtomicU64,
    pub rq_overflow: AtomicU64,
    pub retries_active: AtomicU32,
    pub cx_active: AtomicU32,
    pub cx_total: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub cx_overflow: AtomicU64,
    pub ejections_total: AtomicU64,
    pub ejections_active: AtomicU32,
    pub ejections_overflow: AtomicU64,
    pub hc_failures: AtomicU64,
    pub membership_healthy: AtomicU32,
    pub membership_total: AtomicU32,
}

pub struct ClusterRt {
    pub cfg: Arc<Cluster>,
    pub set: ArcSwap<HostSet>,
    pub stats: Arc<ClusterStats>,
    /// Metric handles per label set (see metrics.rs).
    pub metrics: crate::metrics::Cache,
    epoch: Instant,
    rebuild_lock: Mutex<()>,
    /// Hosts made on demand for ORIGINAL_DST and dynamic forward proxy clusters.
    original_dst: Mutex<HashMap<SocketAddr, Arc<Host>>>,
    /// Dynamic forward proxy: (host name, port) → when resolved and the addresses.
    dns_cache: Mutex<HashMap<(String, u16), Resolved>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for ClusterRt {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
    }
}

fn lb_config(c: &Cluster) -> weft_lb::BalancerConfig {
    let policy = match &c.lb_policy {
        LbPolicy::RoundRobin => weft_lb::Policy::RoundRobin,
        LbPolicy::LeastRequest { choice_count } => weft_lb::Policy::LeastRequest { choice_count: *choice_count },
        LbPolicy::Random => weft_lb::Policy::Random,
        LbPolicy::RingHash { min_ring_size, max_ring_size } => {
            weft_lb::Policy::RingHash { min_ring_size: *min_ring_size, max_ring_size: *max_ring_size }
        }
        LbPolicy::Maglev { table_size } => weft_lb::Policy::Maglev { table_size: *table_size },
    };
    weft_lb::BalancerConfig { policy, panic_threshold_percent: c.panic_threshold_percent, overprovisioning_factor: 140 }
}

/// Addresses the config names directly (DNS endpoints are resolved separately).
fn static_hosts(
    c: &Cluster,
    resolved: &HashMap<(String, u16), Vec<SocketAddr>>,
) -> Vec<(SocketAddr, u32, u32, u32, Labels, EndpointHealth)> {
    let mut out = Vec::new();
    // LOGICAL_DNS connects to the first address only and leaves balancing to DNS.
    let per_name = if matches!(c.discovery, Discovery::LogicalDns { .. }) { 1 } else { usize::MAX };
    for (li, l) in c.localities.iter().enumerate() {
        for e in &l.endpoints {
            match &e.address {
                EndpointAddress::Socket(a) => {
                    out.push((*a, e.weight, l.priority, li as u32, e.metadata.clone(), e.health))
                }
                EndpointAddress::Dns { host, port } => {
                    for a in resolved.get(&(host.clone(), *port)).into_iter().flatten().take(per_name) {
                        out.push((*a, e.weight, l.priority, li as u32, e.metadata.clone(), e.health));
                    }
                }
            }
        }
    }
    out
}

impl ClusterRt {
    /// Builds the run-time cluster, keeping hosts (their pools, health and ejection state) of
    /// `previous` whose address and attributes are unchanged.
    pub fn new(
        cfg: Arc<Cluster>,
        previous: Option<&ClusterRt>,
        resolved: &HashMap<(String, u16), Vec<SocketAddr>>,
    ) -> Arc<ClusterRt> {
        let rt = ClusterRt {
            set: ArcSwap::from_pointee(HostSet {
                hosts: vec![],
                balancer: weft_lb::Balancer::build(&lb_config(&cfg), &[], &[]),
            }),
            cfg,
            stats: previous.map(|p| p.stats.clone()).unwrap_or_default(),
            metrics: Default::default(),
            epoch: previous.map(|p| p.epoch).unwrap_or_else(Instant::now),
            rebuild_lock: Mutex::new(()),
            original_dst: Mutex::new(HashMap::new()),
            dns_cache: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
        };
        let prev_hosts: Vec<Arc<Host>> = previous.map(|p| p.set.load().hosts.clone()).unwrap_or_default();
        rt.set_hosts(static_hosts(&rt.cfg, resolved), &prev_hosts);
        Arc::new(rt)
    }

    fn set_hosts(&self, specs: Vec<(SocketAddr, u32, u32, u32, Labels, EndpointHealth)>, prev: &[Arc<Host>]) {
        let hosts: Vec<Arc<Host>> = specs
            .into_iter()
            .map(|(addr, w, p, l, md, h)| {
                match prev.iter().find(|o| {
                    o.addr == addr
                        && o.weight == w
                        && o.priority == p
                        && o.locality == l
                        && o.metadata == md
                        && o.eds_health == h
                }) {
                    Some(o) => o.clone(),
                    None => Arc::new(Host::new(addr, w, p, l, md, h)),
                }
            })
            .collect();
        for old in prev {
            if !hosts.iter().any(|h| Arc::ptr_eq(h, old)) {
                old.clear_pools();
            }
        }
        self.rebuild_with(hosts);
    }

    /// Rebuilds the balancer after a health change.
    pub fn rebuild(&self) {
        let hosts = self.set.load().hosts.clone();
        self.rebuild_with(hosts);
    }

    fn rebuild_with(&self, hosts: Vec<Arc<Host>>) {
        let _g = self.rebuild_lock.lock().unwrap_or_else(|e| e.into_inner());
        let infos: Vec<weft_lb::HostInfo> = hosts
            .iter()
            .map(|h| weft_lb::HostInfo {
                weight: h.weight,
                priority: h.priority,
                locality: h.locality,
                healthy: h.healthy(),
                key: h.addr.to_string(),
            })
            .collect();
        let localities: Vec<weft_lb::LocalityInfo> =
            self.cfg.localities.iter().map(|l| weft_lb::LocalityInfo { weight: l.weight }).collect();
        let balancer = weft_lb::Balancer::build(&lb_config(&self.cfg), &infos, &localities);
        self.stats.membership_total.store(hosts.len() as u32, Relaxed);
        self.stats.membership_healthy.store(infos.iter().filter(|i| i.healthy).count() as u32, Relaxed);
        self.set.store(Arc::new(HostSet { hosts, balancer }));
    }

    /// Chooses a host for an attempt, avoiding hosts already tried when possible.
    pub fn pick(&self, hash: Option<u64>, tried: &[SocketAddr]) -> Option<Arc<Host>> {
        let set = self.set.load();
        let exclude: Vec<usize> = if tried.is_empty() {
            Vec::new()
        } else {
            set.hosts.iter().enumerate().filter(|(_, h)| tried.contains(&h.addr)).map(|(i, _)| i).collect()
        };
        let hosts = &set.hosts;
        let active = |i: usize| hosts.get(i).map(|h| h.active_requests.load(Relaxed)).unwrap_or(0);
        let i = worker::with_rng(|rng| set.balancer.pick(hash, &active, &exclude, rng))?;
        hosts.get(i).cloned()
    }

    /// The host for an ORIGINAL_DST cluster: the connection's own destination.
    pub fn original_dst_host(&self, addr: SocketAddr) -> Arc<Host> {
        let mut m = self.original_dst.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() > 4096 {
            m.retain(|_, h| h.active_requests.load(Relaxed) > 0);
        }
        m.entry(addr)
            .or_insert_with(|| Arc::new(Host::new(addr, 1, 0, 0, Labels::new(), EndpointHealth::Healthy)))
            .clone()
    }

    pub fn is_original_dst(&self) -> bool {
        matches!(self.cfg.discovery, Discovery::OriginalDst)
    }

    pub fn is_forward_proxy(&self) -> bool {
        matches!(self.cfg.discovery, Discovery::DynamicForwardProxy { .. })
    }

    /// The hosts of a dynamic forward proxy cluster for `host:port` (a request's authority): an
    /// IP literal as is, a name through the system resolver (at most 5 s), its answer cached for
    /// the cluster's `refresh`. Failed lookups are not cached.
    pub async fn forward_proxy_hosts(&self, host: &str, port: u16) -> Result<Vec<Arc<Host>>, ResolveError> {
        let Discovery::DynamicForwardProxy { refresh, max_hosts } = self.cfg.discovery else {
            return Err(ResolveError::InvalidHost(host.to_string()));
        };
        let name = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let addrs: Arc<[SocketAddr]> = if let Ok(ip) = name.parse::<std::net::IpAddr>() {
            Arc::from([SocketAddr::new(ip, port)])
        } else {
            if !valid_host_name(name) {
                return Err(ResolveError::InvalidHost(host.to_string()));
            }
            let key = (name.to_ascii_lowercase(), port);
            let cached = {
                let cache = self.dns_cache.lock().unwrap_or_else(|e| e.into_inner());
                cache.get(&key).filter(|(at, _)| at.elapsed() < refresh).map(|(_, a)| a.clone())
            };
            match cached {
                Some(a) => a,
                None => {
                    let found = match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port))).await
                    {
                        Err(_) => return Err(ResolveError::Timeout(name.to_string())),
                        Ok(Err(e)) => return Err(ResolveError::Failed(name.to_string(), e.to_string())),
                        Ok(Ok(it)) => {
                            let mut v: Vec<SocketAddr> = Vec::new();
                            for a in it {
                                if !v.contains(&a) {
                                    v.push(a);
                                }
                            }
                            v
                        }
                    };
                    if found.is_empty() {
                        return Err(ResolveError::NoAddress(name.to_string()));
                    }
                    let found: Arc<[SocketAddr]> = Arc::from(found);
                    let mut cache = self.dns_cache.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() >= max_hosts as usize && !cache.contains_key(&key) {
                        cache.retain(|_, (at, _)| at.elapsed() < refresh);
                        if cache.len() >= max_hosts as usize {
                            let oldest = cache.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone());
                            if let Some(k) = oldest {
                                cache.remove(&k);
                            }
                        }
                    }
                    cache.insert(key, (Instant::now(), found.clone()));
                    found
                }
            }
        };
        Ok(addrs.iter().map(|a| self.original_dst_host(*a)).collect())
    }

    // ----- connections -------------------------------------------------------------------------

    /// Takes an idle pooled connection or opens a new one. `h2` selects the upstream protocol.
    pub async fn connection(self: &Arc<Self>, host: &Arc<Host>, h2: bool) -> Result<Conn, ConnectError> {
        if h2 {
            let existing = host.pool().lock().unwrap_or_else(|e| e.into_inner()).h2.clone();
            if let Some(tx) = existing {
                if !tx.is_closed() {
                    return Ok(Conn::H2(tx));
                }
            }
            // One connect at a time per host and worker: requests that arrive while it is under
            // way wait for it and share the connection instead of each opening their own.
            let slot = &host.h2_connecting[worker::current() % host.h2_connecting.len()];
            let _connecting = match tokio::time::timeout(self.cfg.connect_timeout, slot.lock()).await {
                Ok(g) => g,
                Err(_) => return Err(ConnectError::Timeout(host.addr)),
            };
            let existing = host.pool().lock().unwrap_or_else(|e| e.into_inner()).h2.clone();
            if let Some(tx) = existing {
                if !tx.is_closed() {
                    return Ok(Conn::H2(tx));
                }
            }
            let tx = self.connect_h2(host).await?;
            host.pool().lock().unwrap_or_else(|e| e.into_inner()).h2 = Some(tx.clone());
            return Ok(Conn::H2(tx));
        }
        loop {
            let idle = {
                let mut p = host.pool().lock().unwrap_or_else(|e| e.into_inner());
                p.idle_h1.pop()
            };
            let Some(idle) = idle else { break };
            // The newest idle connection is taken first; one the upstream closed (or wrote to
            // unasked) while it waited is dropped.
            if idle.since.elapsed() <= self.cfg.pool.idle_timeout && idle.conn.is_reusable() {
                return Ok(Conn::H1(idle.conn));
            }
        }
        let (stream, guard) = self.tcp(host).await?;
        Ok(Conn::H1(H1Conn::new(stream, Some(guard))))
    }

    /// Returns an HTTP/1 connection whose response was read whole.
    pub fn release_h1(&self, host: &Host, conn: H1Conn) {
        if let Some(max) = self.cfg.pool.max_requests_per_connection {
            if conn.uses >= max {
                return;
            }
        }
        let now = Instant::now();
        let mut p = host.pool().lock().unwrap_or_else(|e| e.into_inner());
        // Connections are pushed in time order, so the expired ones are at the front: close them
        // now rather than holding their sockets until a request happens to reach them.
        let expired = p.idle_h1.iter().take_while(|c| now.duration_since(c.since) > self.cfg.pool.idle_timeout).count();
        p.idle_h1.drain(..expired);
        if p.idle_h1.len() < self.cfg.pool.max_idle_per_endpoint {
            p.idle_h1.push(Idle { conn, since: now });
        }
    }

    async fn tcp(self: &Arc<Self>, host: &Host) -> Result<(TcpStream, CxGuard), ConnectError> {
        let cb = &self.cfg.circuit_breakers;
        if self.stats.cx_active.load(Relaxed) >= cb.max_connections {
            self.stats.cx_overflow.fetch_add(1, Relaxed);
            return Err(ConnectError::Overflow);
        }
        let guard = CxGuard::new(self.stats.clone());
        let connect = async {
            match self.cfg.source_address {
                None => TcpStream::connect(host.addr).await,
                Some(ip) => {
                    let sock = if host.addr.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    sock.bind(SocketAddr::new(ip, 0))?;
                    sock.connect(host.addr).await
                }
            }
        };
        match tokio::time::timeout(self.cfg.connect_timeout, connect).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok((s, guard))
            }
            Ok(Err(e)) => {
                self.stats.cx_connect_fail.fetch_add(1, Relaxed);
                host.cx_connect_fail.fetch_add(1, Relaxed);
                Err(ConnectError::Io(host.addr, e))
            }
            Err(_) => {
                self.stats.cx_connect_fail.fetch_add(1, Relaxed);
                host.cx_connect_fail.fetch_add(1, Relaxed);
                Err(ConnectError::Timeout(host.addr))
            }
        }
    }

    /// A raw TCP connection to the host (TCP proxy), counted against the cluster's limit.
    pub async fn connect_tcp(self: &Arc<Self>, host: &Host) -> Result<(TcpStream, CxGuard), ConnectError> {
        self.tcp(host).await
    }

    /// A dedicated hyper HTTP/1 connection for a WebSocket upgrade (its bytes become a tunnel
    /// after the 101).
    pub async fn connect_upgradable(
        self: &Arc<Self>,
        host: &Host,
    ) -> Result<http1::SendRequest<ProxyBody>, ConnectError> {
        let (stream, guard) = self.tcp(host).await?;
        let (tx, conn) = http1::Builder::new()
            .max_buf_size(1 << 20)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Handshake(host.addr, e))?;
        tokio::spawn(async move {
            let _guard = guard;
            let _ = conn.with_upgrades().await;
        });
        Ok(tx)
    }

    async fn connect_h2(self: &Arc<Self>, host: &Host) -> Result<http2::SendRequest<ProxyBody>, ConnectError> {
        let (stream, guard) = self.tcp(host).await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Handshake(host.addr, e))?;
        tokio::spawn(async move {
            let _guard = guard;
            let _ = conn.await;
        });
        Ok(tx)
    }

    // ----- outlier detection -------------------------------------------------------------------

    /// Feeds one attempt's outcome to passive outlier detection.
    pub fn report(self: &Arc<Self>, host: &Arc<Host>, outcome: Outcome) {
        let Some(od) = &self.cfg.outlier_detection else { return };
        if matches!(outcome, Outcome::LocalOverflow | Outcome::Downstream) {
            return;
        }
        let o = &host.outlier;
        let (is_5xx, is_gateway, is_local) = match outcome {
            Outcome::Status(s) if s >= 500 => (true, matches!(s, 502..=504), false),
            Outcome::Status(_) | Outcome::LocalOverflow | Outcome::Downstream => (false, false, false),
            // Without split local/external errors Envoy counts these as a 503 (a gateway error).
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout => (true, true, true),
        };
        if !is_5xx {
            o.consecutive_5xx.store(0, Relaxed);
            o.consecutive_gateway.store(0, Relaxed);
            o.consecutive_local.store(0, Relaxed);
            return;
        }
        let c5 = o.consecutive_5xx.fetch_add(1, Relaxed) + 1;
        let cg = if is_gateway { o.consecutive_gateway.fetch_add(1, Relaxed) + 1 } else { 0 };
        if !is_gateway {
            o.consecutive_gateway.store(0, Relaxed);
        }
        let _cl = if is_local { o.consecutive_local.fetch_add(1, Relaxed) + 1 } else { 0 };
        let trip = (od.consecutive_5xx > 0 && c5 >= od.consecutive_5xx)
            || (od.consecutive_gateway_failure > 0 && cg >= od.consecutive_gateway_failure);
        if trip {
            self.eject(host);
        }
    }

    fn eject(self: &Arc<Self>, host: &Arc<Host>) {
        let Some(od) = &self.cfg.outlier_detection else { return };
        if host.outlier.ejected.load(Relaxed) {
            return;
        }
        let set = self.set.load();
        let total = set.hosts.len().max(1) as u32;
        let ejected = set.hosts.iter().filter(|h| h.ejected()).count() as u32;
        // Envoy always allows ejecting one host, then enforces the percentage.
        let allowed = ((total * od.max_ejection_percent) / 100).max(1);
        if ejected >= allowed || od.max_ejection_percent == 0 {
            self.stats.ejections_overflow.fetch_add(1, Relaxed);
            return;
        }
        if host.outlier.ejected.swap(true, Relaxed) {
            return;
        }
        let times = host.outlier.times_ejected.fetch_add(1, Relaxed) + 1;
        let dur = (od.base_ejection_time * times).min(od.max_ejection_time.max(od.base_ejection_time));
        let until = self.epoch.elapsed() + dur;
        host.outlier.ejected_until_ms.store(until.as_millis() as u64, Relaxed);
        host.outlier.consecutive_5xx.store(0, Relaxed);
        host.outlier.consecutive_gateway.store(0, Relaxed);
        self.stats.ejections_total.fetch_add(1, Relaxed);
        self.stats.ejections_active.fetch_add(1, Relaxed);
        tracing::info!(cluster = %self.cfg.name, upstream = %host.addr, ejection_ms = dur.as_millis() as u64, "outlier ejected");
        self.rebuild();
        let weak = Arc::downgrade(self);
        let host = host.clone();
        let task = worker::spawn_control(async move {
            tokio::time::sleep(dur).await;
            if let Some(c) = weak.upgrade() {
                c.uneject(&host);
            }
        });
        self.track(task);
    }

    fn uneject(&self, host: &Host) {
        if host.outlier.ejected.swap(false, Relaxed) {
            self.stats.ejections_active.fetch_sub(1, Relaxed);
            tracing::info!(cluster = %self.cfg.name, upstream = %host.addr, "outlier ejection ended");
            self.rebuild();
        }
    }

    fn track(&self, t: tokio::task::JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(t);
    }

    // ----- background: health checks and DNS -----------------------------------------------

    /// Starts active health checking and DNS refresh for this cluster (on the control runtime).
    pub fn start_background(self: &Arc<Self>) {
        // Hosts carried over from the previous generation may still be ejected: this cluster
        // owns their return now (the old one's timers die with it).
        for h in self.set.load().hosts.iter().filter(|h| h.ejected()) {
            let until = Duration::from_millis(h.outlier.ejected_until_ms.load(Relaxed));
            let left = until.saturating_sub(self.epoch.elapsed());
            let weak = Arc::downgrade(self);
            let host = h.clone();
            let task = worker::spawn_control(async move {
                tokio::time::sleep(left).await;
                if let Some(c) = weak.upgrade() {
                    c.uneject(&host);
                }
            });
            self.track(task);
        }
        for (i, _) in self.cfg.health_checks.iter().enumerate() {
            let weak = Arc::downgrade(self);
            let t = worker::spawn_control(health_loop(weak, i));
            self.track(t);
        }
        if let Discovery::StrictDns { refresh } | Discovery::LogicalDns { refresh } = self.cfg.discovery {
            let weak = Arc::downgrade(self);
            let t = worker::spawn_control(dns_loop(weak, refresh));
            self.track(t);
        }
    }

    fn hc_result(&self, host: &Host, ok: bool, unhealthy_threshold: u32, healthy_threshold: u32) {
        if ok {
            host.hc_fails.store(0, Relaxed);
            let oks = host.hc_oks.fetch_add(1, Relaxed) + 1;
            if host.hc_failed.load(Relaxed) && oks >= healthy_threshold {
                host.hc_failed.store(false, Relaxed);
                tracing::info!(cluster = %self.cfg.name, upstream = %host.addr, "health check passing");
                self.rebuild();
            }
        } else {
            self.stats.hc_failures.fetch_add(1, Relaxed);
            host.hc_oks.store(0, Relaxed);
            let fails = host.hc_fails.fetch_add(1, Relaxed) + 1;
            if !host.hc_failed.load(Relaxed) && fails >= unhealthy_threshold {
                host.hc_failed.store(true, Relaxed);
                tracing::warn!(cluster = %self.cfg.name, upstream = %host.addr, "health check failing");
                self.rebuild();
            }
        }
    }
}

/// A DNS name as a forward-proxy request may carry it: labels of letters, digits, `-` and `_`,
/// at most 253 bytes. Anything else never reaches the resolver.
fn valid_host_name(name: &str) -> bool {
    let n = name.strip_suffix('.').unwrap_or(name);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Resolves every DNS endpoint of a cluster; used at load and on each refresh.
pub async fn resolve_cluster(c: &Cluster) -> HashMap<(String, u16), Vec<SocketAddr>> {
    let mut out = HashMap::new();
    for l in &c.localities {
        for e in &l.endpoints {
            if let EndpointAddress::Dns { host, port } = &e.address {
                let key = (host.clone(), *port);
                if out.contains_key(&key) {
                    continue;
                }
                let lookup = tokio::net::lookup_host((host.as_str(), *port));
                match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                    Ok(Ok(addrs)) => {
                        let mut v: Vec<SocketAddr> = Vec::new();
                        for a in addrs {
                            if !v.contains(&a) {
                                v.push(a);
                            }
                        }
                        // LOGICAL_DNS uses the resolver's first answer; otherwise the order is irrelevant
                        // and sorting keeps refreshes from looking like changes.
                        if !matches!(c.discovery, Discovery::LogicalDns { .. }) {
                            v.sort();
                        }
                        out.insert(key, v);
                    }
                    Ok(Err(e)) => tracing::warn!(cluster = %c.name, host = %host, error = %e, "DNS resolution failed"),
                    Err(_) => tracing::warn!(cluster = %c.name, host = %host, "DNS resolution timed out"),
                }
            }
        }
    }
    out
}

async fn dns_loop(weak: Weak<ClusterRt>, refresh: Duration) {
    loop {
        tokio::time::sleep(refresh).await;
        let Some(c) = weak.upgrade() else { return };
        let cfg = c.cfg.clone();
        drop(c);
        let resolved = resolve_cluster(&cfg).await;
        let Some(c) = weak.upgrade() else { return };
        let specs = static_hosts(&c.cfg, &resolved);
        let current = c.set.load();
        let same =
            specs.len() == current.hosts.len() && specs.iter().zip(current.hosts.iter()).all(|(s, h)| s.0 == h.addr);
        // A failed lookup keeps the last known hosts rather than emptying the cluster.
        if !same && !resolved.is_empty() {
            let prev = current.hosts.clone();
            c.set_hosts(specs, &prev);
        }
    }
}

async fn health_loop(weak: Weak<ClusterRt>, index: usize) {
    // The first round runs at once so a dead host is found before the first interval.
    loop {
        let Some(c) = weak.upgrade() else { return };
        let hc = c.cfg.health_checks[index].clone();
        let hosts = c.set.load().hosts.clone();
        let mut checks = Vec::with_capacity(hosts.len());
        for h in hosts {
            let kind = hc.kind.clone();
            let timeout = hc.timeout;
            checks.push(async move {
                let ok = tokio::time::timeout(timeout, check_once(h.addr, &kind)).await.unwrap_or(false);
                (h, ok)
            });
        }
        drop(c);
        let results = futures_util::future::join_all(checks).await;
        let Some(c) = weak.upgrade() else { return };
        for (h, ok) in results {
            c.hc_result(&h, ok, hc.unhealthy_threshold, hc.healthy_threshold);
        }
        drop(c);
        tokio::time::sleep(hc.interval).await;
    }
}

async fn check_once(addr: SocketAddr, kind: &HealthCheckKind) -> bool {
    let Ok(stream) = TcpStream::connect(addr).await else { return false };
    match kind {
        HealthCheckKind::Tcp => true,
        HealthCheckKind::Http { path, host, expected_statuses } => {
            let Ok((mut tx, conn)) = http1::handshake::<_, ProxyBody>(TokioIo::new(stream)).await else { return false };
            let conn = tokio::spawn(conn);
            let req = http::Request::get(path.as_str())
                .header(http::header::HOST, host.clone().unwrap_or_else(|| addr.to_string()))
                .header(http::header::USER_AGENT, "weft-health-check")
                .header(http::header::CONNECTION, "close")
                .body(crate::body::empty());
            let Ok(req) = req else { return false };
            let ok = match tx.send_request(req).await {
                Ok(resp) => {
                    let s = resp.status().as_u16();
                    expected_statuses.iter().any(|(a, b)| (*a..=*b).contains(&s))
                }
                Err(_) => false,
            };
            conn.abort();
            ok
        }
    }
}

/// Counts an attempt waiting for a connection (`max_pending_requests`) until it is dropped.
pub struct PendingGuard(Arc<ClusterStats>);

impl PendingGuard {
    pub fn new(stats: &Arc<ClusterStats>) -> PendingGuard {
        stats.rq_pending_active.fetch_add(1, Relaxed);
        PendingGuard(stats.clone())
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.rq_pending_active.fetch_sub(1, Relaxed);
    }
}

/// Counts a live upstream connection against the cluster's limit for as long as it exists.
/// Holds only the counters, so a pooled connection never keeps its cluster alive.
pub struct CxGuard(Arc<ClusterStats>);

impl CxGuard {
    pub(crate) fn new(stats: Arc<ClusterStats>) -> CxGuard {
        stats.cx_active.fetch_add(1, Relaxed);
        stats.cx_total.fetch_add(1, Relaxed);
        CxGuard(stats)
    }
}

impl Drop for CxGuard {
    fn drop(&mut self) {
        self.0.cx_active.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_proxy_host_names_are_checked_before_the_resolver_sees_them() {
        let long_label = "a".repeat(64);
        let long_name = ["abcdefghij"; 26].join(".");
        let cases: &[(&str, bool)] = &[
            ("reviews", true),
            ("api.example.com", true),
            ("api.example.com.", true),
            ("under_score-1.x", true),
            ("", false),
            (".", false),
            ("a..b", false),
            (".a", false),
            ("a b", false),
            ("a/b", false),
            ("user@host", false),
            ("%41", false),
            (&long_label, false),
            (&long_name, false),
        ];
        for (name, ok) in cases {
            assert_eq!(valid_host_name(name), *ok, "{name:?}");
        }
    }

    fn forward_proxy(max_hosts: u32) -> Arc<ClusterRt> {
        let cfg = Cluster {
            name: "fwd".into(),
            discovery: Discovery::DynamicForwardProxy { refresh: Duration::from_secs(60), max_hosts },
            lb_policy: LbPolicy::RoundRobin,
            localities: vec![],
            connect_timeout: Duration::from_secs(1),
            protocol: Default::default(),
            pool: Default::default(),
            circuit_breakers: Default::default(),
            outlier_detection: None,
            health_checks: vec![],
            panic_threshold_percent: 50.0,
            metadata: Default::default(),
            source_address: None,
        };
        ClusterRt::new(Arc::new(cfg), None, &HashMap::new())
    }

    #[tokio::test]
    async fn forward_proxy_hosts_come_from_the_authority() {
        let c = forward_proxy(1);
        let ip = c.forward_proxy_hosts("127.0.0.7", 8080).await.unwrap();
        assert_eq!(ip.iter().map(|h| h.addr).collect::<Vec<_>>(), vec!["127.0.0.7:8080".parse().unwrap()]);
        let v6 = c.forward_proxy_hosts("[::1]", 443).await.unwrap();
        assert_eq!(v6[0].addr, "[::1]:443".parse().unwrap());
        // The same address is the same host (pools, active counts).
        assert!(Arc::ptr_eq(&ip[0], &c.forward_proxy_hosts("127.0.0.7", 8080).await.unwrap()[0]));
        // `localhost` resolves through the system resolver (the hosts file) to loopback.
        let named = c.forward_proxy_hosts("localhost", 9).await.unwrap();
        assert!(!named.is_empty() && named.iter().all(|h| h.addr.ip().is_loopback() && h.addr.port() == 9));
        // At most `max_hosts` names are cached.
        let _ = c.forward_proxy_hosts("LocalHost", 10).await.unwrap();
        assert_eq!(c.dns_cache.lock().unwrap().len(), 1);
        for bad in ["a b", "x@y", ""] {
            let got = c.forward_proxy_hosts(bad, 80).await.err();
            assert_eq!(got, Some(ResolveError::InvalidHost(bad.into())), "{bad:?}");
        }
    }
}
