//! The DNS server: UDP and TCP on one address. Mesh names and cached answers are answered on
//! the receiving task; questions that must go upstream run in their own tasks, at most
//! `max_inflight` at once (beyond that: SERVFAIL at once). TCP connections are bounded in
//! number, and every read and write has a timeout. No input takes the server down: unreadable
//! packets get FORMERR or nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::DNSClass;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};

use crate::cache::{Cache, Key};
use crate::forward::Forwarder;
use crate::lookup::{self, LookupConfig, Resolution};
use crate::stopped;
use crate::table::NameTable;
use crate::wire::{self, Parsed, Query};

/// How the server answers. `Default` gives the documented defaults with no upstreams.
#[derive(Clone, Debug)]
pub struct Config {
    pub lookup: LookupConfig,
    /// TTL of mesh answers (and of their negative answers' SOA minimum).
    pub mesh_ttl: u32,
    /// Answers of forwarded questions kept at most.
    pub cache_size: usize,
    /// Upper bound on any cached TTL.
    pub max_cache_ttl: u32,
    pub upstreams: Vec<SocketAddr>,
    pub upstream_timeout: Duration,
    /// Forwarded questions at once.
    pub max_inflight: usize,
    /// TCP connections at once.
    pub max_tcp: usize,
    /// How long a TCP connection may be idle between questions.
    pub tcp_idle: Duration,
    /// Tasks reading the UDP socket.
    pub udp_readers: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            lookup: LookupConfig { search: Vec::new(), mesh_domains: vec!["cluster.local".into()] },
            mesh_ttl: 30,
            cache_size: 10_000,
            max_cache_ttl: 86_400,
            upstreams: Vec::new(),
            upstream_timeout: Duration::from_secs(2),
            max_inflight: 1024,
            max_tcp: 256,
            tcp_idle: Duration::from_secs(10),
            udp_readers: 2,
        }
    }
}

/// Counters since start.
#[derive(Debug, Default)]
pub struct Metrics {
    pub queries_udp: AtomicU64,
    pub queries_tcp: AtomicU64,
    /// Mesh names answered with addresses.
    pub mesh_answers: AtomicU64,
    /// Mesh names answered without addresses of the asked type.
    pub mesh_nodata: AtomicU64,
    /// Unknown names of a mesh domain.
    pub mesh_nxdomain: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Questions sent upstream that got an answer.
    pub forwarded: AtomicU64,
    pub upstream_failures: AtomicU64,
    /// SERVFAIL because `max_inflight` questions were already upstream.
    pub overloaded: AtomicU64,
    /// SERVFAIL for mesh-domain names before the first table.
    pub not_ready: AtomicU64,
    /// Packets that were not readable questions (answered FORMERR/NOTIMP or dropped).
    pub malformed: AtomicU64,
    pub tcp_rejected: AtomicU64,
    pub tcp_timeouts: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

struct Inner {
    cfg: Config,
    table: ArcSwapOption<NameTable>,
    cache: Cache,
    forwarder: Forwarder,
    inflight: Arc<Semaphore>,
    tcp_slots: Arc<Semaphore>,
    metrics: Metrics,
}

/// What to do with one packet after the local lookup.
pub enum Step {
    /// Send this; over UDP cut to `udp_limit`.
    Reply {
        answer: Vec<u8>,
        udp_limit: usize,
    },
    /// Ask upstream.
    Forward(Query),
    Drop,
}

/// The server's state, shared by its tasks. Cloning shares it.
#[derive(Clone)]
pub struct Dns {
    inner: Arc<Inner>,
}

impl Dns {
    pub fn new(cfg: Config) -> Dns {
        let forwarder = Forwarder { servers: cfg.upstreams.clone(), timeout: cfg.upstream_timeout };
        Dns {
            inner: Arc::new(Inner {
                cache: Cache::new(cfg.cache_size),
                inflight: Arc::new(Semaphore::new(cfg.max_inflight)),
                tcp_slots: Arc::new(Semaphore::new(cfg.max_tcp)),
                forwarder,
                table: ArcSwapOption::empty(),
                metrics: Metrics::default(),
                cfg,
            }),
        }
    }

    /// Makes `table` the one mesh names are answered from.
    pub fn set_table(&self, table: NameTable) {
        self.inner.table.store(Some(Arc::new(table)));
    }

    pub fn table(&self) -> Option<Arc<NameTable>> {
        self.inner.table.load_full()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn cache_len(&self) -> usize {
        self.inner.cache.len()
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Answers what can be answered without waiting: mesh names, cached answers, errors.
    pub fn answer_local(&self, packet: &[u8]) -> Step {
        let m = &self.inner.metrics;
        let q = match wire::parse_query(packet) {
            Parsed::Query(q) => q,
            Parsed::Reply(answer) => {
                bump(&m.malformed);
                return Step::Reply { answer, udp_limit: wire::CLASSIC_UDP };
            }
            Parsed::Drop => {
                bump(&m.malformed);
                return Step::Drop;
            }
        };
        let udp_limit = q.udp_limit();
        let cfg = &self.inner.cfg;
        let resolution = if q.qclass == DNSClass::IN {
            let table = self.inner.table.load();
            lookup::resolve(table.as_deref(), &q.qname, &cfg.lookup)
        } else {
            Resolution::Forward
        };
        let answer = match resolution {
            Resolution::Mesh { entry, alias } => {
                let zone = cfg.lookup.mesh_domains.iter().find(|d| {
                    entry.host == **d || entry.host.strip_suffix(d.as_str()).is_some_and(|s| s.ends_with('.'))
                });
                let fast = if alias { None } else { wire::mesh_answer_fast(&q, &entry, cfg.mesh_ttl) };
                let answer = fast
                    .unwrap_or_else(|| wire::mesh_answer(&q, &entry, alias, cfg.mesh_ttl, zone.map(String::as_str)));
                if lookup::addresses(&entry, u16::from(q.qtype)).is_empty() && !alias {
                    bump(&m.mesh_nodata);
                } else {
                    bump(&m.mesh_answers);
                }
                answer
            }
            Resolution::NxDomain { zone } => {
                bump(&m.mesh_nxdomain);
                wire::nxdomain(&q, &zone, cfg.mesh_ttl)
            }
            Resolution::NotReady => {
                bump(&m.not_ready);
                wire::error(&q, ResponseCode::ServFail)
            }
            Resolution::Forward => match self.inner.cache.get(&cache_key(&q)) {
                Some(hit) => {
                    bump(&m.cache_hits);
                    wire::from_stored(&hit.stored, &q, hit.elapsed)
                }
                None => {
                    bump(&m.cache_misses);
                    return Step::Forward(q);
                }
            },
        };
        Step::Reply { answer, udp_limit }
    }

    /// Asks upstream (the caller holds an in-flight permit), caches what may be cached, and
    /// returns the client's answer.
    pub async fn forward(&self, q: &Query) -> Vec<u8> {
        let m = &self.inner.metrics;
        match self.inner.forwarder.exchange(q).await {
            Ok(resp) => {
                bump(&m.forwarded);
                match wire::storable(&resp, self.inner.cfg.max_cache_ttl) {
                    Some(stored) => {
                        let stored = Arc::new(stored);
                        self.inner.cache.insert(cache_key(q), stored.clone());
                        wire::from_stored(&stored, q, 0)
                    }
                    None => wire::relay(&resp, q),
                }
            }
            Err(e) => {
                bump(&m.upstream_failures);
                tracing::debug!(name = %q.qname, error = %e, "forwarding failed");
                wire::error(q, ResponseCode::ServFail)
            }
        }
    }

    /// The whole answer to one packet (TCP and tests): `None` when it deserves none.
    pub async fn answer(&self, packet: &[u8]) -> Option<Vec<u8>> {
        match self.answer_local(packet) {
            Step::Reply { answer, .. } => Some(answer),
            Step::Drop => None,
            Step::Forward(q) => match self.inner.inflight.clone().try_acquire_owned() {
                Ok(_permit) => Some(self.forward(&q).await),
                Err(_) => {
                    bump(&self.inner.metrics.overloaded);
                    Some(wire::error(&q, ResponseCode::ServFail))
                }
            },
        }
    }

    /// Serves UDP and TCP until `shutdown` says true.
    pub async fn serve(&self, udp: UdpSocket, tcp: TcpListener, shutdown: watch::Receiver<bool>) {
        let udp = Arc::new(udp);
        let mut tasks = Vec::new();
        for _ in 0..self.inner.cfg.udp_readers.max(1) {
            let (me, udp, stop) = (self.clone(), udp.clone(), shutdown.clone());
            tasks.push(tokio::spawn(async move { me.udp_loop(udp, stop).await }));
        }
        let (me, stop) = (self.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move { me.tcp_loop(tcp, stop).await }));
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn udp_loop(&self, udp: Arc<UdpSocket>, mut stop: watch::Receiver<bool>) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let (n, peer) = tokio::select! {
                r = udp.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    // ICMP errors from earlier sends surface here on some systems; keep going.
                    Err(e) => {
                        tracing::debug!(error = %e, "udp receive");
                        continue;
                    }
                },
                _ = stopped(&mut stop) => return,
            };
            bump(&self.inner.metrics.queries_udp);
            match self.answer_local(&buf[..n]) {
                Step::Reply { answer, udp_limit } => {
                    let _ = udp.send_to(&wire::fit_udp(answer, udp_limit), peer).await;
                }
                Step::Drop => {}
                Step::Forward(q) => match self.inner.inflight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (me, udp) = (self.clone(), udp.clone());
                        tokio::spawn(async move {
                            let answer = me.forward(&q).await;
                            drop(permit);
                            let _ = udp.send_to(&wire::fit_udp(answer, q.udp_limit()), peer).await;
                        });
                    }
                    Err(_) => {
                        bump(&self.inner.metrics.overloaded);
                        let _ = udp.send_to(&wire::error(&q, ResponseCode::ServFail), peer).await;
                    }
                },
            }
        }
    }

    async fn tcp_loop(&self, tcp: TcpListener, mut stop: watch::Receiver<bool>) {
        loop {
            let (stream, _) = tokio::select! {
                r = tcp.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: wait a little instead of spinning.
                        tracing::warn!(error = %e, "tcp accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopped(&mut stop) => return,
            };
            let Ok(slot) = self.inner.tcp_slots.clone().try_acquire_owned() else {
                bump(&self.inner.metrics.tcp_rejected);
                continue;
            };
            let (me, stop) = (self.clone(), stop.clone());
            tokio::spawn(async move {
                me.tcp_conn(stream, stop).await;
                drop(slot);
            });
        }
    }

    async fn tcp_conn(&self, mut s: TcpStream, mut stop: watch::Receiver<bool>) {
        let _ = s.set_nodelay(true);
        let idle = self.inner.cfg.tcp_idle;
        loop {
            let mut len = [0u8; 2];
            let read = tokio::select! {
                r = tokio::time::timeout(idle, s.read_exact(&mut len)) => r,
                _ = stopped(&mut stop) => return,
            };
            match read {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    bump(&self.inner.metrics.tcp_timeouts);
                    return;
                }
            }
            let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
            match tokio::time::timeout(idle, s.read_exact(&mut body)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    bump(&self.inner.metrics.tcp_timeouts);
                    return;
                }
            }
            bump(&self.inner.metrics.queries_tcp);
            let Some(answer) = self.answer(&body).await else { continue };
            let Ok(n) = u16::try_from(answer.len()) else { return };
            let mut framed = Vec::with_capacity(answer.len() + 2);
            framed.extend_from_slice(&n.to_be_bytes());
            framed.extend_from_slice(&answer);
            match tokio::time::timeout(idle, s.write_all(&framed)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }

    /// The metrics in Prometheus text format.
    pub fn prometheus(&self) -> String {
        let m = &self.inner.metrics;
        let g = |c: &AtomicU64| c.load(Relaxed);
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for (labels, v) in samples {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        counter(
            "weft_dns_queries_total",
            "Questions received, by transport.",
            &[("{transport=\"udp\"}", g(&m.queries_udp)), ("{transport=\"tcp\"}", g(&m.queries_tcp))],
        );
        counter(
            "weft_dns_answers_total",
            "Answers by how they were made.",
            &[
                ("{result=\"mesh\"}", g(&m.mesh_answers)),
                ("{result=\"mesh_nodata\"}", g(&m.mesh_nodata)),
                ("{result=\"mesh_nxdomain\"}", g(&m.mesh_nxdomain)),
                ("{result=\"cache_hit\"}", g(&m.cache_hits)),
                ("{result=\"forwarded\"}", g(&m.forwarded)),
                ("{result=\"upstream_failure\"}", g(&m.upstream_failures)),
                ("{result=\"overloaded\"}", g(&m.overloaded)),
                ("{result=\"not_ready\"}", g(&m.not_ready)),
            ],
        );
        counter("weft_dns_cache_misses_total", "Forwarded questions not in the cache.", &[("", g(&m.cache_misses))]);
        counter("weft_dns_malformed_total", "Packets that were not readable questions.", &[("", g(&m.malformed))]);
        counter(
            "weft_dns_tcp_connections_rejected_total",
            "TCP connections closed at once because max_tcp were open.",
            &[("", g(&m.tcp_rejected))],
        );
        counter("weft_dns_tcp_timeouts_total", "TCP connections closed for being idle.", &[("", g(&m.tcp_timeouts))]);
        let table = self.table();
        out.push_str(&format!(
            "# HELP weft_dns_cache_entries Answers in the cache.\n# TYPE weft_dns_cache_entries gauge\nweft_dns_cache_entries {}\n",
            self.cache_len()
        ));
        out.push_str(&format!(
            "# HELP weft_dns_table_names Names in the mesh name table.\n# TYPE weft_dns_table_names gauge\nweft_dns_table_names {}\n",
            table.as_ref().map_or(0, |t| t.len())
        ));
        out
    }
}

fn cache_key(q: &Query) -> Key {
    Key { name: q.qname.clone(), qtype: u16::from(q.qtype), qclass: u16::from(q.qclass) }
}

/// Binds UDP and TCP on the same address; with port 0, both get the same free port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr).await?;
        let local = udp.local_addr()?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // Port 0 picked a UDP port whose TCP twin is taken: try another.
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port free for both UDP and TCP")))
}
