//! The control plane's state: the store, the mesh currently served, and the loops that keep the
//! second in step with the first.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use weft_ads::{AdsOptions, AdsServer, Source};
use weft_istio::Resource;
use weft_store::Store;
use weft_translate::{Input, Mesh};
use weft_xds::{NodeInfo, ResourceSet};

use crate::Options;

/// The mesh being served and what was learned building it.
pub struct View {
    pub revision: u64,
    pub mesh: Arc<Mesh>,
    pub resources: Vec<Arc<Resource>>,
    pub warnings: Vec<String>,
    /// Distinct service hosts per tenant, from ServiceEntries and from instances.
    pub services: usize,
}

pub struct Plane {
    store: Store,
    ads: AdsServer,
    view: ArcSwap<View>,
    opts: Options,
    rebuilds: AtomicU64,
}

struct MeshSource(Arc<Mesh>);

impl Source for MeshSource {
    fn generate(&self, node: &NodeInfo) -> Arc<ResourceSet> {
        Arc::new(self.0.generate(node))
    }

    /// The name table only for streams that subscribe to it (weft dns), and nothing else for
    /// streams that subscribe to nothing else.
    fn generate_types(&self, node: &NodeInfo, types: &[String]) -> Arc<ResourceSet> {
        Arc::new(self.0.generate_for(node, types))
    }
}

/// Why a store call made for the API failed, which decides the HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The store could not be reached: nothing was written, the call may be retried.
    Unavailable,
    /// The store refused the input.
    BadInput,
    Internal,
}

#[derive(Clone, Debug)]
pub struct StoreFailure {
    pub kind: FailureKind,
    pub message: String,
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Plane {
    pub fn new(store: Store, opts: Options) -> Plane {
        let (empty, _) = Mesh::build(Input::default());
        let empty = Arc::new(empty);
        let ads = AdsServer::new(Arc::new(MeshSource(empty.clone())), AdsOptions::default());
        Plane {
            store,
            ads,
            view: ArcSwap::from_pointee(View {
                revision: 0,
                mesh: empty,
                resources: Vec::new(),
                warnings: Vec::new(),
                services: 0,
            }),
            opts,
            rebuilds: AtomicU64::new(0),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn ads(&self) -> &AdsServer {
        &self.ads
    }

    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Relaxed)
    }

    /// Rebuilds the mesh from the store and publishes it (the work runs on the blocking pool).
    /// On failure (the store unreachable) the previous mesh keeps being served; the error is
    /// returned, and logged.
    pub async fn rebuild_now(self: &Arc<Self>) -> Result<(), String> {
        let me = self.clone();
        let started = Instant::now();
        let built = tokio::task::spawn_blocking(move || me.build()).await;
        match built {
            Ok(Ok(view)) => {
                let view = Arc::new(view);
                self.ads.publish(Arc::new(MeshSource(view.mesh.clone())));
                tracing::info!(
                    revision = view.revision,
                    resources = view.resources.len(),
                    warnings = view.warnings.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "mesh rebuilt"
                );
                self.view.store(view);
                self.rebuilds.fetch_add(1, Relaxed);
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "rebuild failed; still serving the previous mesh");
                Err(e.to_string())
            }
            Err(e) => {
                tracing::error!(error = %e, "rebuild task failed; still serving the previous mesh");
                Err(e.to_string())
            }
        }
    }

    /// Reads everything from the store and translates it. Pure apart from VIP allocation, which
    /// is persisted so addresses stay stable across rebuilds and restarts.
    fn build(&self) -> Result<View, weft_store::StoreError> {
        let revision = self.store.revision()?;
        let mut resources = Vec::new();
        let mut warnings = Vec::new();
        for obj in self.store.list(None)? {
            let mut body = obj.body;
            // The store's creation time orders conflicting VirtualServices (Istio's rule).
            if let Some(meta) = body.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                meta.entry("creationTimestamp").or_insert_with(|| serde_json::Value::String(obj.created_at.clone()));
                meta.insert("resourceVersion".into(), serde_json::Value::String(obj.revision.to_string()));
            }
            match weft_istio::from_json("store", body) {
                Ok(r) => resources.push(Arc::new(r)),
                Err(e) => warnings.push(format!("{}: skipped, no longer valid: {e}", obj.key)),
            }
        }
        let mut instances = Vec::new();
        for inst in self.store.list_instances()? {
            match serde_json::from_value::<weft_istio::registry::Instance>(inst.body) {
                Ok(i) => instances.push(i),
                Err(e) => warnings.push(format!("instance {}: skipped: {e}", inst.key)),
            }
        }
        let wanted = Mesh::hosts_needing_vips(&resources, &instances);
        let vips = self.store.allocate_vips(&wanted)?;
        let keep: BTreeSet<(String, String)> = wanted.into_iter().collect();
        // Only from a view of the newest revision: another control plane on the same store may
        // already serve a newer change whose hosts hold addresses this view does not know.
        self.store.release_vips_at(&keep, revision)?;
        let vips = vips.into_iter().map(|(k, v)| (k, std::net::IpAddr::V4(v))).collect();
        let input = Input { resources: resources.clone(), instances, vips, options: Default::default() };
        let (mesh, mesh_warnings) = Mesh::build(input);
        warnings.extend(mesh_warnings.iter().map(|w| w.to_string()));
        let services = mesh.service_count();
        Ok(View { revision, mesh: Arc::new(mesh), resources, warnings, services })
    }

    /// Rebuilds after every store change, once the store has been quiet for `debounce` (or at
    /// most `max_debounce` after the first change of a burst). A failed rebuild (the store
    /// unreachable) is retried with a growing pause until one succeeds, so a change seen just
    /// before an outage is served once the store is back.
    pub async fn rebuild_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        const FIRST_RETRY: Duration = Duration::from_millis(250);
        let mut changes = self.store.watch();
        let mut retry: Option<Duration> = None;
        loop {
            let pause = tokio::time::sleep(retry.unwrap_or(Duration::from_secs(3600)));
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = pause, if retry.is_some() => {}
                _ = crate::stopped(&mut stop) => return,
            }
            let first = Instant::now();
            loop {
                let quiet = tokio::time::sleep(self.opts.debounce);
                let deadline = self.opts.max_debounce.saturating_sub(first.elapsed());
                tokio::select! {
                    r = changes.changed() => {
                        if r.is_err() { return }
                        if deadline.is_zero() { break }
                    }
                    _ = quiet => break,
                    _ = tokio::time::sleep(deadline) => break,
                }
            }
            changes.borrow_and_update();
            if retry.is_none() && *changes.borrow() == self.view.load().revision {
                continue;
            }
            retry = match self.rebuild_now().await {
                Ok(()) => None,
                Err(_) => Some(retry.map_or(FIRST_RETRY, |d| (d * 2).min(Duration::from_secs(5)))),
            };
        }
    }

    /// Removes instances whose lease ran out (their host stopped renewing).
    pub async fn lease_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.opts.lease_sweep);
        let mut failing = false;
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = crate::stopped(&mut stop) => return,
            }
            let store = self.store.clone();
            match tokio::task::spawn_blocking(move || store.expire_leases(now_unix_ms())).await {
                Ok(Ok(gone)) => {
                    if failing {
                        tracing::info!("lease sweep works again");
                        failing = false;
                    }
                    for key in gone {
                        tracing::info!(instance = %key, "lease expired; instance removed");
                    }
                }
                // Once per outage: a store that is away fails every sweep until it is back.
                Ok(Err(e)) if !failing => {
                    tracing::warn!(error = %e, "lease sweep failed");
                    failing = true;
                }
                Ok(Err(_)) | Err(_) => {}
            }
        }
    }

    /// Runs blocking store work off the async threads.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, weft_store::StoreError> + Send + 'static,
    ) -> Result<T, StoreFailure> {
        let store = self.store.clone();
        let failure = |kind, message| Err(StoreFailure { kind, message });
        match tokio::time::timeout(Duration::from_secs(30), tokio::task::spawn_blocking(move || f(&store))).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) if e.is_unavailable() => failure(
                FailureKind::Unavailable,
                format!("{e} (the store is unavailable: nothing was written; retry later)"),
            ),
            Ok(Ok(Err(e))) if e.is_bad_input() => failure(FailureKind::BadInput, e.to_string()),
            Ok(Ok(Err(e))) => failure(FailureKind::Internal, e.to_string()),
            Ok(Err(e)) => failure(FailureKind::Internal, format!("store task failed: {e}")),
            Err(_) => failure(FailureKind::Unavailable, "the store did not answer within 30s".to_string()),
        }
    }
}
