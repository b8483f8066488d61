//! The ADS stream to the control plane: connect, run the [`Session`], apply assembled configs
//! to the proxy, ACK or NACK, and reconnect with jittered exponential backoff when the stream
//! ends. The last applied config keeps serving while the control plane is away.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};
use weft_config::ProxyConfig;

use crate::cache;
use crate::session::{Handled, Protocol, Request, Response, Session};
use crate::status::Status;
use crate::store::{Kind, Store};
use crate::Error;

/// Requests queued for the stream (a handful per response at most).
const REQUEST_QUEUE: usize = 64;
/// How long queuing a request may take before the stream is considered stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted (a state-of-the-world CDS for a big mesh is large).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// How to reach the control plane and what to tell it.
#[derive(Clone, Debug)]
pub struct Options {
    /// `HOST:PORT` or `http://HOST:PORT`.
    pub server: String,
    pub node: Node,
    pub protocol: Protocol,
    /// Static resources of the bootstrap file, part of every config.
    pub base: Arc<ProxyConfig>,
    /// How long a missing resource (a cluster's endpoints, a listener's routes, the first
    /// cluster or listener response) may hold back a config before it is applied without it
    /// (Envoy's `initial_fetch_timeout`).
    pub initial_fetch_timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Persist each applied config in this directory and serve the persisted one at start
    /// ([`crate::cache`]).
    pub cache_dir: Option<PathBuf>,
}

impl Options {
    pub fn new(server: &str, node: Node, base: Arc<ProxyConfig>) -> Options {
        Options {
            server: server.to_string(),
            node,
            protocol: Protocol::Delta,
            base,
            initial_fetch_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            cache_dir: None,
        }
    }
}

/// The proxy could not apply a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// A listener could not be put in place (its address could not be bound).
    Listener {
        name: String,
        message: String,
    },
    Other(String),
    /// The proxy is shutting down: the client stops.
    Stopped,
}

/// `HOST:PORT` → `http://HOST:PORT`; TLS to the control plane is not supported yet.
pub fn server_uri(server: &str) -> Result<String, Error> {
    let uri = if server.contains("://") { server.to_string() } else { format!("http://{server}") };
    let parsed: http::Uri = uri.parse().map_err(|_| Error::Address(server.to_string()))?;
    if parsed.scheme_str() != Some("http") || parsed.host().is_none() || parsed.port_u16().is_none() {
        return Err(Error::Address(server.to_string()));
    }
    Ok(uri)
}

/// Exponential backoff with jitter: each delay is drawn from [max(min, d/2), d], and d doubles
/// up to `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff { min, max, next: min }
    }

    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        let lo = (d / 2).max(self.min).min(d);
        if lo == d {
            d
        } else {
            rng.gen_range(lo..=d)
        }
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

enum Outcome {
    /// The stream ended or failed; `responded` says whether it got anywhere.
    Ended { responded: bool, reason: String },
    /// The server does not implement the delta protocol.
    Unimplemented,
    /// The proxy is gone.
    Stopped,
}

struct Client<A> {
    opts: Options,
    status: Arc<Status>,
    store: Store,
    session: Session,
    apply: A,
    /// Since when each missing resource has been waited for.
    waiting: HashMap<(Kind, String), Instant>,
    /// Fingerprint of the config last applied.
    applied: Option<String>,
    /// The latest encoded config for the cache writer (`--xds-cache`).
    cache_tx: Option<watch::Sender<Option<Arc<Vec<u8>>>>>,
    /// A persisted config was applied at start: it is complete, so updates need not wait for
    /// the server's first cluster and listener responses (it may have nothing new to send).
    from_cache: bool,
}

/// Runs the client until the proxy stops. `apply` puts an assembled config in place (the same
/// path as a reload); its result decides between ACK and NACK for listeners.
pub async fn run<A, F>(opts: Options, status: Arc<Status>, apply: A)
where
    A: FnMut(Arc<ProxyConfig>) -> F,
    F: Future<Output = Result<(), ApplyError>>,
{
    let mut backoff = Backoff::new(opts.backoff_min, opts.backoff_max);
    let mut c = Client {
        store: Store::new(opts.base.clone()),
        session: Session::new(opts.protocol, opts.node.clone()),
        opts,
        status,
        apply,
        waiting: HashMap::new(),
        applied: None,
        cache_tx: None,
        from_cache: false,
    };
    if let Some(dir) = c.opts.cache_dir.clone() {
        c.store.keep_raw();
        if c.load_cache(&dir).await.is_err() {
            return;
        }
        let (tx, rx) = watch::channel(None);
        c.cache_tx = Some(tx);
        tokio::spawn(write_cache(dir, rx, c.status.clone()));
    }
    loop {
        let outcome = c.stream_once().await;
        c.status.set_connected(false);
        match outcome {
            Outcome::Stopped => return,
            Outcome::Unimplemented if c.session.protocol() == Protocol::Delta => {
                tracing::warn!(server = %c.opts.server, "the control plane does not implement delta xDS; using state of the world");
                c.session.set_protocol(Protocol::Sotw);
                c.status.set_protocol(Protocol::Sotw);
                continue;
            }
            Outcome::Unimplemented => {
                c.status.error("the control plane implements no ADS protocol");
                tracing::error!(server = %c.opts.server, "the control plane does not implement ADS");
            }
            Outcome::Ended { responded, reason } => {
                if responded {
                    backoff.reset();
                }
                c.status.error(&reason);
                tracing::warn!(server = %c.opts.server, reason = %reason, "xDS stream ended; the last config keeps serving");
            }
        }
        let delay = backoff.next_delay(&mut rand::thread_rng());
        tracing::info!(server = %c.opts.server, delay_ms = delay.as_millis() as u64, "reconnecting to the control plane");
        if !c.idle(delay).await {
            return;
        }
    }
}

/// The responses of either protocol, as one stream.
enum Responses {
    Delta(Streaming<DeltaDiscoveryResponse>),
    Sotw(Streaming<DiscoveryResponse>),
}

impl Responses {
    async fn next(&mut self) -> Result<Option<Response>, tonic::Status> {
        Ok(match self {
            Responses::Delta(s) => s.message().await?.map(Response::Delta),
            Responses::Sotw(s) => s.message().await?.map(Response::Sotw),
        })
    }
}

impl<A, F> Client<A>
where
    A: FnMut(Arc<ProxyConfig>) -> F,
    F: Future<Output = Result<(), ApplyError>>,
{
    /// Waits `delay` while disconnected, still applying a held-back config when its wait ends.
    /// Returns false when the proxy stopped.
    async fn idle(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            let warm = self.warm_deadline().filter(|d| *d < until);
            match warm {
                None => {
                    tokio::time::sleep_until(until).await;
                    return true;
                }
                Some(d) => {
                    tokio::time::sleep_until(d).await;
                    match self.try_apply().await {
                        Ok(errors) if !errors.is_empty() => self.status.rejected_late(Kind::Listener, errors.len()),
                        Ok(_) => {}
                        Err(()) => return false,
                    }
                }
            }
        }
    }

    async fn connect(&self) -> Result<Channel, String> {
        let uri = server_uri(&self.opts.server).map_err(|e| e.to_string())?;
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| e.to_string())?
            .connect_timeout(self.opts.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        match tokio::time::timeout(self.opts.connect_timeout + Duration::from_secs(1), endpoint.connect()).await {
            Ok(Ok(ch)) => Ok(ch),
            Ok(Err(e)) => Err(format!("connect: {e}")),
            Err(_) => Err("connect: timed out".to_string()),
        }
    }

    async fn stream_once(&mut self) -> Outcome {
        let channel = match self.connect().await {
            Ok(ch) => ch,
            Err(reason) => return Outcome::Ended { responded: false, reason },
        };
        let mut grpc = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        let (tx, rx) = mpsc::channel::<Request>(REQUEST_QUEUE);
        for r in self.session.open(&self.store) {
            // The queue is empty and larger than the opening requests.
            if tx.try_send(r).is_err() {
                return Outcome::Ended { responded: false, reason: "request queue full".into() };
            }
        }
        let protocol = self.session.protocol();
        let call = async {
            match protocol {
                Protocol::Delta => {
                    let requests = futures_util::stream::unfold(rx, |mut rx| async move {
                        match rx.recv().await {
                            Some(Request::Delta(r)) => Some((r, rx)),
                            _ => None,
                        }
                    });
                    grpc.delta_aggregated_resources(requests).await.map(|r| Responses::Delta(r.into_inner()))
                }
                Protocol::Sotw => {
                    let requests = futures_util::stream::unfold(rx, |mut rx| async move {
                        match rx.recv().await {
                            Some(Request::Sotw(r)) => Some((r, rx)),
                            _ => None,
                        }
                    });
                    grpc.stream_aggregated_resources(requests).await.map(|r| Responses::Sotw(r.into_inner()))
                }
            }
        };
        // The call returns once the server sends its response headers; the HTTP/2 keepalive
        // bounds the wait if the server is gone.
        let mut responses = match call.await {
            Ok(r) => r,
            Err(s) if s.code() == Code::Unimplemented => return Outcome::Unimplemented,
            Err(s) => return Outcome::Ended { responded: false, reason: format!("open stream: {s}") },
        };
        self.status.set_connected(true);
        tracing::info!(server = %self.opts.server, protocol = ?protocol, "xDS stream open");
        let mut responded = false;
        loop {
            let warm = self.warm_deadline();
            tokio::select! {
                msg = responses.next() => match msg {
                    Ok(Some(resp)) => {
                        responded = true;
                        if let Err(o) = self.on_response(resp, &tx).await {
                            return o;
                        }
                    }
                    Ok(None) => return Outcome::Ended { responded, reason: "the server closed the stream".into() },
                    Err(s) if s.code() == Code::Unimplemented && !responded => return Outcome::Unimplemented,
                    Err(s) => return Outcome::Ended { responded, reason: format!("stream: {s}") },
                },
                _ = sleep_until_opt(warm), if warm.is_some() => {
                    match self.try_apply().await {
                        Ok(errors) => {
                            if let Some(r) = self.session.late_nack(Kind::Listener, &errors) {
                                self.status.rejected_late(Kind::Listener, errors.len());
                                if let Err(o) = send(&tx, r).await {
                                    return o;
                                }
                            }
                            self.status.record(&self.store);
                        }
                        Err(()) => return Outcome::Stopped,
                    }
                }
            }
        }
    }

    async fn on_response(&mut self, resp: Response, tx: &mpsc::Sender<Request>) -> Result<(), Outcome> {
        let h: Handled = self.session.handle(resp, &mut self.store);
        let Some(kind) = h.kind else {
            tracing::warn!(errors = ?h.errors, "xDS response of an unsupported type ignored");
            return Ok(());
        };
        for e in &h.errors {
            tracing::warn!(r#type = kind.short(), error = %e, "xDS resource rejected; its last good version keeps serving");
        }
        self.status.response(kind, h.accepted > 0, h.errors.len());
        // Ask for the endpoints and routes that the new clusters and listeners need first, so
        // they arrive while this response is being applied.
        for r in self.session.resubscribe(&mut self.store) {
            send(tx, r).await?;
        }
        let late = self.try_apply().await.map_err(|()| Outcome::Stopped)?;
        let own: &[String] = if kind == Kind::Listener { &late } else { &[] };
        if let Some(ack) = self.session.ack(&h, own) {
            send(tx, ack).await?;
        }
        if !late.is_empty() {
            self.status.rejected_late(Kind::Listener, late.len());
            if kind != Kind::Listener {
                if let Some(r) = self.session.late_nack(Kind::Listener, &late) {
                    send(tx, r).await?;
                }
            }
        }
        self.status.record(&self.store);
        Ok(())
    }

    /// When the oldest resource still being waited for stops holding the config back.
    fn warm_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        self.waiting.values().map(|since| *since + self.opts.initial_fetch_timeout).filter(|d| *d > now).min()
    }

    /// Applies the assembled config when nothing it needs is still on its way (or the wait for
    /// it is over). Returns messages for listeners the proxy could not bind (reverted), or
    /// `Err` when the proxy stopped.
    async fn try_apply(&mut self) -> Result<Vec<String>, ()> {
        let now = Instant::now();
        let mut missing = self.store.missing();
        for kind in [Kind::Cluster, Kind::Listener] {
            if !self.session.responded(kind) && !self.from_cache {
                missing.push((kind, "*".to_string()));
            }
        }
        self.waiting.retain(|k, _| missing.contains(k));
        for m in missing {
            self.waiting.entry(m).or_insert(now);
        }
        let timeout = self.opts.initial_fetch_timeout;
        if self.waiting.values().any(|since| now < *since + timeout) {
            return Ok(Vec::new());
        }
        for (k, n) in self.waiting.keys() {
            tracing::warn!(r#type = k.short(), name = %n, "applying the config without a resource that did not arrive in time");
        }
        self.apply_now().await
    }

    /// Applies the store's config unless it is the one running; a listener the proxy cannot
    /// bind is taken back and the rest applied again. Returns the messages for those listeners,
    /// or `Err` when the proxy stopped.
    async fn apply_now(&mut self) -> Result<Vec<String>, ()> {
        let mut errors = Vec::new();
        // Each failure reverts one listener, so this ends.
        for _ in 0..=self.store.names(Kind::Listener).len() {
            let version = self.store.fingerprint();
            if self.applied.as_deref() == Some(version.as_str()) {
                break;
            }
            let cfg = Arc::new(self.store.assemble());
            let (l, r, c) = (cfg.listeners.len(), cfg.route_configs.len(), cfg.clusters.len());
            match (self.apply)(cfg).await {
                Ok(()) => {
                    tracing::info!(version = %version, listeners = l, route_configs = r, clusters = c, "xDS config applied");
                    self.store.mark_applied();
                    self.status.applied(&version);
                    self.applied = Some(version);
                    self.persist();
                    break;
                }
                Err(ApplyError::Stopped) => return Err(()),
                Err(ApplyError::Listener { name, message }) => {
                    self.status.apply_failed();
                    let msg = format!("Listener {name:?}: {message}");
                    tracing::warn!(error = %msg, "listener rejected by the proxy");
                    if !self.store.revert_listener(&name, msg.clone()) {
                        self.status.error(&msg);
                        break;
                    }
                    errors.push(msg);
                }
                Err(ApplyError::Other(message)) => {
                    self.status.apply_failed();
                    self.status.error(&message);
                    tracing::error!(error = %message, "the proxy could not apply the xDS config");
                    break;
                }
            }
        }
        Ok(errors)
    }
}

impl<A, F> Client<A>
where
    A: FnMut(Arc<ProxyConfig>) -> F,
    F: Future<Output = Result<(), ApplyError>>,
{
    /// Loads the persisted config of `dir` into the store and applies it, before the control
    /// plane is asked for anything. A missing, damaged or foreign cache is reported and left
    /// alone; resources in it go through the same checks as the server's. `Err`: the proxy
    /// stopped.
    async fn load_cache(&mut self, dir: &std::path::Path) -> Result<(), ()> {
        let node_id = self.opts.node.id.clone();
        let d = dir.to_path_buf();
        let read = tokio::task::spawn_blocking(move || cache::read(&d, &node_id)).await;
        let items = match read {
            Ok(Ok(Some(items))) => items,
            Ok(Ok(None)) => {
                tracing::info!(dir = %dir.display(), "no persisted xDS config yet");
                return Ok(());
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "persisted xDS config ignored");
                self.status.cache_error(&e.to_string());
                return Ok(());
            }
            Err(e) => {
                self.status.cache_error(&format!("reading the cache failed: {e}"));
                return Ok(());
            }
        };
        let mut loaded = 0;
        for it in &items {
            match self.store.put_any(it.kind, &it.name, &it.version, &it.body) {
                Ok(_) => loaded += 1,
                Err(e) => tracing::warn!(error = %e, "persisted xDS resource rejected"),
            }
        }
        self.store.drop_unwanted();
        self.status.cache_loaded(loaded);
        self.status.record(&self.store);
        if loaded == 0 {
            return Ok(());
        }
        tracing::info!(dir = %dir.display(), resources = loaded, "serving the persisted xDS config until the control plane answers");
        let errors = self.apply_now().await?;
        if !errors.is_empty() {
            self.status.rejected_late(Kind::Listener, errors.len());
        }
        self.from_cache = self.applied.is_some();
        Ok(())
    }

    /// Hands the config just applied to the cache writer.
    fn persist(&self) {
        let Some(tx) = &self.cache_tx else { return };
        let bytes = cache::encode(&self.opts.node.id, &self.store.raw_resources());
        if bytes.len() > cache::MAX_BYTES {
            tracing::warn!(bytes = bytes.len(), "xDS config too large to persist");
            self.status.cache_write_failed("the config is larger than the cache limit");
            return;
        }
        let _ = tx.send(Some(Arc::new(bytes)));
    }
}

/// Writes each config the client hands over (the latest wins when writes fall behind) until the
/// client stops.
async fn write_cache(dir: PathBuf, mut rx: watch::Receiver<Option<Arc<Vec<u8>>>>, status: Arc<Status>) {
    while rx.changed().await.is_ok() {
        let Some(bytes) = rx.borrow_and_update().clone() else { continue };
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || cache::write(&d, &bytes)).await {
            Ok(Ok(())) => status.cache_written(),
            Ok(Err(e)) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot persist the xDS config");
                status.cache_write_failed(&e.to_string());
            }
            Err(e) => status.cache_write_failed(&e.to_string()),
        }
    }
}

async fn sleep_until_opt(d: Option<Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn send(tx: &mpsc::Sender<Request>, r: Request) -> Result<(), Outcome> {
    match tokio::time::timeout(SEND_TIMEOUT, tx.send(r)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Outcome::Ended { responded: true, reason: "the stream's request side closed".into() }),
        Err(_) => Err(Outcome::Ended { responded: true, reason: "sending a request timed out".into() }),
    }
}
