//! Delta ADS (`DeltaAggregatedResources`): responses carry the resources whose version changed
//! and the names that went away; subscriptions change by subscribe/unsubscribe lists; a
//! reconnecting client says what it has (`initial_resource_versions`) so unchanged resources
//! are not sent again. Every response is ACKed or NACKed by its own nonce.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as PbResource,
};
use weft_xds::{Resource, ResourceSet};

use crate::stream::{self, Close, Ctx, Opened, Pending};
use crate::view::{self, DeltaDiff};
use crate::{Acked, Inner, Nack, Protocol, ResponseStream, Sent};

pub fn spawn(
    inner: Arc<Inner>,
    opened: Opened<DeltaDiscoveryRequest, DeltaDiscoveryResponse>,
) -> ResponseStream<DeltaDiscoveryResponse> {
    let Opened { slot, mut requests, peer, tx, end, responses } = opened;
    tokio::spawn(async move {
        match stream::open(&inner, &mut requests, peer, Protocol::Delta).await {
            Err(close) => stream::finish(&inner, &end, None, close),
            Ok((conn, registration, first)) => {
                let node = conn.node.id.clone();
                let mut delta = Delta { ctx: Ctx::new(inner.clone(), conn, tx.clone()) };
                let close = delta.run(&mut requests, first).await;
                drop(delta);
                drop(registration);
                stream::finish(&inner, &end, Some(&node), close);
            }
        }
        drop(tx);
        drop(slot);
    });
    responses
}

/// What a batch of requests changed for one type.
#[derive(Default)]
struct Dirty {
    /// The first request of the type on this stream, with the versions the client has.
    initial: Option<HashMap<String, String>>,
    /// Names newly subscribed: each gets an answer, the resource or its removal.
    added: Vec<String>,
}

struct Delta {
    ctx: Ctx<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn run(
        &mut self,
        requests: &mut tonic::Streaming<DeltaDiscoveryRequest>,
        first: DeltaDiscoveryRequest,
    ) -> Close {
        let mut next = Some(first);
        loop {
            let req = match next.take() {
                Some(r) => r,
                None => match stream::next_event(requests, &mut self.ctx).await {
                    stream::Event::Request(r) => r,
                    stream::Event::Close(c) => return c,
                    stream::Event::Published => {
                        if let Err(c) = self.push(&BTreeMap::new()).await {
                            return c;
                        }
                        continue;
                    }
                },
            };
            let (batch, ended) = stream::batch(requests, req);
            let mut dirty: BTreeMap<String, Dirty> = BTreeMap::new();
            for req in batch {
                if let Err(c) = self.handle(req, &mut dirty) {
                    return c;
                }
            }
            if !dirty.is_empty() {
                if let Err(c) = self.push(&dirty).await {
                    return c;
                }
            }
            if let Some(c) = ended {
                return c;
            }
        }
    }

    /// Applies one request: the ACK or NACK of its nonce, then its subscription changes.
    fn handle(&self, req: DeltaDiscoveryRequest, dirty: &mut BTreeMap<String, Dirty>) -> Result<(), Close> {
        let mut st = self.ctx.conn.lock();
        let names = st.types.get(&req.type_url).map_or(0, |ts| ts.sub.names.len()) + req.resource_names_subscribe.len();
        self.ctx.check_limits(&st, &req.type_url, names)?;
        let first = !st.types.contains_key(&req.type_url);
        let ts = st.types.entry(req.type_url.clone()).or_default();

        if !req.response_nonce.is_empty() {
            match ts.pending.iter().position(|p| p.nonce == req.response_nonce) {
                // Responses are answered in order: older ones still waiting were not answered
                // and are dropped with it.
                Some(i) => {
                    let p = ts.pending.drain(..=i).next_back().expect("position is within the queue");
                    match req.error_detail {
                        Some(err) => {
                            let mut resources: Vec<String> = p.upserts.iter().map(|r| r.name.clone()).collect();
                            resources.extend(p.removed.iter().cloned());
                            let nack = Nack {
                                version: p.version,
                                nonce: p.nonce,
                                message: err.message,
                                code: err.code,
                                resources,
                                at: SystemTime::now(),
                            };
                            self.ctx.nack(&req.type_url, ts, nack);
                        }
                        None => {
                            let mut acked = view::apply(&ts.acked_res, &p.upserts, &p.removed);
                            acked.retain(|r| ts.sub.covers(&r.name));
                            // Share the list with `known` when they agree (the usual case).
                            let acked = if view::same(&acked, &ts.known) { ts.known.clone() } else { acked.into() };
                            self.ctx.ack(ts, p.version, acked);
                        }
                    }
                }
                None => {
                    tracing::debug!(node = %self.ctx.conn.node.id, r#type = %req.type_url, nonce = %req.response_nonce, "answer to an unknown or expired nonce");
                }
            }
        }

        let (added, changed) =
            ts.sub.delta(first, &req.type_url, &req.resource_names_subscribe, &req.resource_names_unsubscribe);
        if !req.resource_names_unsubscribe.is_empty() {
            // The client forgets what it unsubscribed from; so do we.
            let sub = &ts.sub;
            let keep = |res: &view::Res| -> view::Res {
                res.iter().filter(|r| sub.covers(&r.name)).cloned().collect::<Vec<_>>().into()
            };
            let (known, acked) = (keep(&ts.known), keep(&ts.acked_res));
            ts.known = known;
            ts.acked_res = acked;
        }
        if first || changed {
            let d = dirty.entry(req.type_url).or_default();
            if first {
                d.initial = Some(req.initial_resource_versions);
            }
            d.added.extend(added);
        }
        Ok(())
    }

    /// Regenerates and sends, in push order, what changed for each subscribed type, plus the
    /// answers `dirty` requests are owed.
    async fn push(&mut self, dirty: &BTreeMap<String, Dirty>) -> Result<(), Close> {
        let (seq, set) = self.ctx.generate().await?;
        let types = {
            let st = self.ctx.conn.lock();
            stream::push_order(st.types.keys())
        };
        for t in types {
            let Some((resources, diff)) = self.diff_to_send(&set, &t, dirty.get(&t)) else { continue };
            let version = view::version(&resources);
            let nonce = self.ctx.inner.nonce();
            let resp = DeltaDiscoveryResponse {
                system_version_info: version.clone(),
                resources: diff.upserts.iter().map(|r| to_pb(r)).collect(),
                type_url: t.clone(),
                removed_resources: diff.removed.clone(),
                nonce: nonce.clone(),
                control_plane: self.ctx.control_plane(),
                ..Default::default()
            };
            self.ctx.send(resp).await?;
            self.ctx.sent(diff.upserts.len() as u64, diff.removed.len() as u64);
            let mut st = self.ctx.conn.lock();
            if let Some(ts) = st.types.get_mut(&t) {
                ts.sent = Some(Sent {
                    version: version.clone(),
                    nonce: nonce.clone(),
                    resources: resources.len(),
                    at: SystemTime::now(),
                });
                ts.known = resources.into();
                ts.remember_pending(Pending { nonce, version, upserts: diff.upserts, removed: diff.removed });
            }
        }
        self.ctx.conn.lock().generation = seq;
        Ok(())
    }

    fn diff_to_send(
        &self,
        set: &ResourceSet,
        type_url: &str,
        dirty: Option<&Dirty>,
    ) -> Option<(Vec<Arc<Resource>>, DeltaDiff)> {
        let mut st = self.ctx.conn.lock();
        let ts = st.types.get_mut(type_url)?;
        if ts.sub.is_empty() {
            return None;
        }
        let resources = view::select(set.of_type(type_url), &ts.sub);
        let mut removed = Vec::new();
        let mut owed = false;
        if let Some(d) = dirty {
            match &d.initial {
                // A fresh client waits for a first answer, even an empty one.
                Some(initial) if initial.is_empty() => owed = true,
                Some(initial) => {
                    let (known, gone) = view::from_client_versions(initial, &resources, &ts.sub);
                    // What the client kept from an earlier stream counts as applied.
                    ts.known = known.into();
                    ts.acked_res = ts.known.clone();
                    ts.acked = Some(Acked {
                        version: view::version(&ts.known),
                        resources: ts.known.len(),
                        at: SystemTime::now(),
                    });
                    removed = gone;
                }
                None => {}
            }
            for name in &d.added {
                if view::find(&resources, name).is_none() && view::find(&ts.known, name).is_none() {
                    removed.push(name.clone());
                }
            }
        }
        let mut diff = view::delta_diff(&ts.known, &resources);
        diff.removed.extend(removed);
        diff.removed.sort();
        diff.removed.dedup();
        if diff.is_empty() && !owed {
            return None;
        }
        Some((resources, diff))
    }
}

fn to_pb(r: &Resource) -> PbResource {
    PbResource {
        name: r.name.clone(),
        version: r.version.clone(),
        resource: Some(r.body.clone()),
        ..Default::default()
    }
}
