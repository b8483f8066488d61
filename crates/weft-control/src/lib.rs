//! `weft control`: the control plane.
//!
//! ```text
//!  weft apply ──HTTP/JSON──► api ──► weft-istio (validate) ──► weft-store (durable: redb or etcd)
//!                                                                   │ revision watch
//!                                            debounce ◄─────────────┘
//!                                               │ rebuild (blocking pool)
//!                                               ▼
//!              weft-translate::Mesh (immutable) ──► weft-ads (SotW + delta) ──► proxies
//! ```
//!
//! Config written through the API is committed to the store before the call returns; the mesh
//! is rebuilt from the store alone, so a restart serves exactly what was acknowledged.

mod api;
mod plane;
pub mod render;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use plane::Plane;
pub use weft_store::{EtcdConfig, Location as StoreLocation};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Store(#[from] weft_store::StoreError),
    #[error("{what} {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("xDS server: {0}")]
    Ads(String),
    #[error("building the first mesh from the store: {0}")]
    FirstBuild(String),
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Keep the store in etcd instead (several control planes may share it); `data_dir` is
    /// then unused.
    pub etcd: Option<EtcdConfig>,
    /// ADS (gRPC) listen address.
    pub xds_listen: SocketAddr,
    /// Operator API listen address.
    pub api_listen: SocketAddr,
    /// Quiet time after a change before the mesh is rebuilt.
    pub debounce: Duration,
    /// Longest a rebuild may be postponed by a steady stream of changes.
    pub max_debounce: Duration,
    /// How often expired instance leases are collected.
    pub lease_sweep: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            data_dir: PathBuf::from("weft-data"),
            etcd: None,
            xds_listen: SocketAddr::from(([127, 0, 0, 1], 15010)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 15014)),
            debounce: Duration::from_millis(100),
            max_debounce: Duration::from_secs(1),
            lease_sweep: Duration::from_secs(1),
        }
    }
}

impl Options {
    /// Where the store lives: etcd when configured, else the embedded file in `data_dir`.
    pub fn store_location(&self) -> StoreLocation {
        match &self.etcd {
            Some(cfg) => StoreLocation::Etcd(cfg.clone()),
            None => StoreLocation::Dir(self.data_dir.clone()),
        }
    }
}

/// Resolves once `stop` says true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A running control plane: its bound addresses and a way to stop it.
pub struct Control {
    pub xds_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub plane: Arc<Plane>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Control {
    /// Opens the store, builds the first mesh from it, binds both listeners and serves.
    pub async fn start(opts: Options) -> Result<Control, ControlError> {
        let location = opts.store_location();
        let store = tokio::task::spawn_blocking(move || weft_store::Store::open_at(&location))
            .await
            .map_err(|e| ControlError::Ads(format!("store open task: {e}")))??;
        let plane = Arc::new(Plane::new(store, opts.clone()));
        // Serving an empty mesh because the first read failed would wipe every proxy's config.
        plane.rebuild_now().await.map_err(ControlError::FirstBuild)?;

        let xds = tokio::net::TcpListener::bind(opts.xds_listen).await.map_err(|source| ControlError::Bind {
            what: "--xds-listen",
            addr: opts.xds_listen,
            source,
        })?;
        let api = tokio::net::TcpListener::bind(opts.api_listen).await.map_err(|source| ControlError::Bind {
            what: "--api-listen",
            addr: opts.api_listen,
            source,
        })?;
        let xds_addr =
            xds.local_addr().map_err(|source| ControlError::Bind { what: "xds", addr: opts.xds_listen, source })?;
        let api_addr =
            api.local_addr().map_err(|source| ControlError::Bind { what: "api", addr: opts.api_listen, source })?;
        let (shutdown, rx) = tokio::sync::watch::channel(false);

        let mut tasks = Vec::new();
        let ads = plane.ads().clone();
        let mut stop = rx.clone();
        tasks.push(tokio::spawn(async move {
            let signal = async move { stopped(&mut stop).await };
            if let Err(e) = ads.serve(xds, signal).await {
                tracing::error!(error = %e, "xDS server stopped");
            }
        }));
        tasks.push(tokio::spawn(api::serve(api, plane.clone(), rx.clone())));
        tasks.push(tokio::spawn(plane.clone().rebuild_loop(rx.clone())));
        tasks.push(tokio::spawn(plane.clone().lease_loop(rx)));
        tracing::info!(%xds_addr, %api_addr, store = %plane.store().location(), "control plane serving");
        Ok(Control { xds_addr, api_addr, plane, shutdown, tasks })
    }

    /// Stops serving and waits (bounded) for the tasks to end.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), t).await.is_err() {
                abort.abort();
            }
        }
    }
}
