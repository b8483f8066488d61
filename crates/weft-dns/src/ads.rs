//! The name table subscription: a state-of-the-world ADS stream to the control plane that asks
//! for the `NameTable` type only, applies each table it can read (and saves it to the state
//! directory), ACKs it, NACKs one it cannot read (the last good table keeps answering), and
//! reconnects with jittered exponential backoff when the stream ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc;
use prost::Message;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tonic::transport::Endpoint;
use weft_xds::nds;
use weft_xds::type_url::NAME_TABLE;
use weft_xds_client::client::{server_uri, Backoff};

use crate::server::Dns;
use crate::state::StateDir;
use crate::stopped;
use crate::table::NameTable;
use crate::DnsError;

/// Largest response accepted (a name table of a very large mesh).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// How long queuing an ACK may take before the stream is considered stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the control plane is and who this node is.
#[derive(Clone, Debug)]
pub struct AdsOptions {
    /// `HOST:PORT` or `http://HOST:PORT`.
    pub server: String,
    pub node: Node,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl AdsOptions {
    pub fn new(server: &str, node: Node) -> Result<AdsOptions, DnsError> {
        server_uri(server).map_err(|e| DnsError::Address(e.to_string()))?;
        Ok(AdsOptions {
            server: server.to_string(),
            node,
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        })
    }
}

/// The subscription's state, for `/nametable`, metrics and logs.
#[derive(Debug, Default)]
pub struct AdsStatus {
    connected: AtomicBool,
    updates: AtomicU64,
    rejected: AtomicU64,
    version: Mutex<String>,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`AdsStatus`].
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct AdsSnapshot {
    pub connected: bool,
    /// Tables applied (each is ACKed).
    pub updates: u64,
    /// Tables rejected (each is NACKed).
    pub rejected: u64,
    /// The `version_info` of the table applied last.
    pub version: String,
    pub last_error: Option<String>,
}

impl AdsStatus {
    pub fn snapshot(&self) -> AdsSnapshot {
        AdsSnapshot {
            connected: self.connected.load(Relaxed),
            updates: self.updates.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            version: self.version.lock().map(|v| v.clone()).unwrap_or_default(),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    fn error(&self, e: &str) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.to_string());
        }
    }

    /// Metrics in Prometheus text format.
    pub fn prometheus(&self) -> String {
        let s = self.snapshot();
        format!(
            "# HELP weft_dns_xds_connected Whether the name table stream is open.\n# TYPE weft_dns_xds_connected gauge\n\
             weft_dns_xds_connected {}\n\
             # HELP weft_dns_table_updates_total Name tables applied (ACKed).\n# TYPE weft_dns_table_updates_total counter\n\
             weft_dns_table_updates_total {}\n\
             # HELP weft_dns_table_rejected_total Name tables rejected (NACKed).\n# TYPE weft_dns_table_rejected_total counter\n\
             weft_dns_table_rejected_total {}\n",
            u8::from(s.connected),
            s.updates,
            s.rejected
        )
    }
}

/// Reads a response's resources into one validated table.
pub fn read_response(resp: &DiscoveryResponse) -> Result<NameTable, DnsError> {
    let mut tables = Vec::with_capacity(resp.resources.len());
    for (i, any) in resp.resources.iter().enumerate() {
        if any.type_url != NAME_TABLE {
            return Err(DnsError::Decode(format!("resources[{i}]: type {} is not a NameTable", any.type_url)));
        }
        tables.push(
            nds::NameTable::decode(any.value.as_slice())
                .map_err(|e| DnsError::Decode(format!("resources[{i}]: {e}")))?,
        );
    }
    NameTable::from_proto(NameTable::merge(tables))
}

/// Runs the subscription until `stop` says true.
pub async fn run(
    opts: AdsOptions,
    dns: Dns,
    state: Option<StateDir>,
    status: Arc<AdsStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(opts.backoff_min, opts.backoff_max);
    let mut accepted = String::new();
    loop {
        let (responded, reason) = tokio::select! {
            r = stream_once(&opts, &dns, state.as_ref(), &status, &mut accepted) => r,
            _ = stopped(&mut stop) => return,
        };
        status.connected.store(false, Relaxed);
        status.error(&reason);
        if responded {
            backoff.reset();
        }
        let delay = backoff.next_delay(&mut rand::thread_rng());
        tracing::warn!(server = %opts.server, reason = %reason, delay_ms = delay.as_millis() as u64,
            "name table stream ended; answering from the last table, reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// One stream: returns whether it got any response, and why it ended.
async fn stream_once(
    opts: &AdsOptions,
    dns: &Dns,
    state: Option<&StateDir>,
    status: &AdsStatus,
    accepted: &mut String,
) -> (bool, String) {
    let uri = match server_uri(&opts.server) {
        Ok(u) => u,
        Err(e) => return (false, e.to_string()),
    };
    let endpoint = match Endpoint::from_shared(uri) {
        Ok(e) => e
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true),
        Err(e) => return (false, e.to_string()),
    };
    let channel = match tokio::time::timeout(opts.connect_timeout + Duration::from_secs(1), endpoint.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return (false, format!("connect: {e}")),
        Err(_) => return (false, "connect: timed out".into()),
    };
    let mut grpc = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(8);
    let first = DiscoveryRequest {
        node: Some(opts.node.clone()),
        type_url: NAME_TABLE.to_string(),
        version_info: accepted.clone(),
        ..Default::default()
    };
    if tx.try_send(first).is_err() {
        return (false, "request queue full".into());
    }
    let requests = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    // The call returns once the server answers with headers; keepalive bounds a silent server.
    let mut responses = match grpc.stream_aggregated_resources(requests).await {
        Ok(r) => r.into_inner(),
        Err(s) => return (false, format!("open stream: {s}")),
    };
    status.connected.store(true, Relaxed);
    tracing::info!(server = %opts.server, "name table stream open");
    let mut responded = false;
    loop {
        let resp = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return (responded, "the server closed the stream".into()),
            Err(s) => return (responded, format!("stream: {s}")),
        };
        responded = true;
        if resp.type_url != NAME_TABLE {
            tracing::debug!(r#type = %resp.type_url, "response of a type not asked for ignored");
            continue;
        }
        let reply = match read_response(&resp) {
            Ok(table) => {
                let names = table.len();
                if let Some(state) = state {
                    let (state, proto) = (state.clone(), table.proto().clone());
                    match tokio::task::spawn_blocking(move || state.save(&proto)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "name table not saved; it still applies"),
                        Err(e) => tracing::warn!(error = %e, "name table save task failed"),
                    }
                }
                dns.set_table(table);
                status.updates.fetch_add(1, Relaxed);
                if let Ok(mut v) = status.version.lock() {
                    v.clone_from(&resp.version_info);
                }
                accepted.clone_from(&resp.version_info);
                tracing::info!(version = %resp.version_info, names, "name table applied");
                DiscoveryRequest {
                    type_url: NAME_TABLE.to_string(),
                    version_info: resp.version_info.clone(),
                    response_nonce: resp.nonce.clone(),
                    ..Default::default()
                }
            }
            Err(e) => {
                status.rejected.fetch_add(1, Relaxed);
                status.error(&e.to_string());
                tracing::warn!(version = %resp.version_info, error = %e, "name table rejected (NACK); the last good one keeps answering");
                DiscoveryRequest {
                    type_url: NAME_TABLE.to_string(),
                    version_info: accepted.clone(),
                    response_nonce: resp.nonce.clone(),
                    error_detail: Some(rpc::Status { code: 3, message: e.to_string(), details: vec![] }),
                    ..Default::default()
                }
            }
        };
        match tokio::time::timeout(SEND_TIMEOUT, tx.send(reply)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return (responded, "the stream's request side closed".into()),
            Err(_) => return (responded, "sending an ACK timed out".into()),
        }
    }
}
