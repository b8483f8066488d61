//! State-of-the-world ADS (`StreamAggregatedResources`): every response carries the complete
//! view of one type; a response is ACKed or NACKed by its nonce, and requests answering an older
//! nonce are stale and ignored.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use weft_xds::ResourceSet;

use crate::stream::{self, Close, Ctx, Opened};
use crate::subscription::Subscription;
use crate::view;
use crate::{Inner, Nack, Protocol, ResponseStream, Sent};

pub fn spawn(
    inner: Arc<Inner>,
    opened: Opened<DiscoveryRequest, DiscoveryResponse>,
) -> ResponseStream<DiscoveryResponse> {
    let Opened { slot, mut requests, peer, tx, end, responses } = opened;
    tokio::spawn(async move {
        match stream::open(&inner, &mut requests, peer, Protocol::Sotw).await {
            Err(close) => stream::finish(&inner, &end, None, close),
            Ok((conn, registration, first)) => {
                let node = conn.node.id.clone();
                let mut sotw = Sotw { ctx: Ctx::new(inner.clone(), conn, tx.clone()) };
                let close = sotw.run(&mut requests, first).await;
                drop(sotw);
                drop(registration);
                stream::finish(&inner, &end, Some(&node), close);
            }
        }
        // The response half ends once this last sender goes, after `end` is set.
        drop(tx);
        drop(slot);
    });
    responses
}

struct Sotw {
    ctx: Ctx<DiscoveryResponse>,
}

impl Sotw {
    async fn run(&mut self, requests: &mut tonic::Streaming<DiscoveryRequest>, first: DiscoveryRequest) -> Close {
        let mut next = Some(first);
        loop {
            let req = match next.take() {
                Some(r) => r,
                None => match stream::next_event(requests, &mut self.ctx).await {
                    stream::Event::Request(r) => r,
                    stream::Event::Close(c) => return c,
                    stream::Event::Published => {
                        if let Err(c) = self.push(&BTreeSet::new()).await {
                            return c;
                        }
                        continue;
                    }
                },
            };
            let (batch, ended) = stream::batch(requests, req);
            let mut dirty = BTreeSet::new();
            for req in batch {
                match self.handle(req) {
                    Ok(Some(t)) => {
                        dirty.insert(t);
                    }
                    Ok(None) => {}
                    Err(c) => return c,
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

    /// Applies one request: its ACK or NACK, then its subscription. Returns the type when it
    /// needs a response.
    fn handle(&self, req: DiscoveryRequest) -> Result<Option<String>, Close> {
        let mut st = self.ctx.conn.lock();
        self.ctx.check_limits(&st, &req.type_url, req.resource_names.len())?;
        let first = !st.types.contains_key(&req.type_url);
        let ts = st.types.entry(req.type_url.clone()).or_default();
        if !req.response_nonce.is_empty() {
            if let Some(sent) = &ts.sent {
                if sent.nonce != req.response_nonce {
                    // Answers a response that a newer one replaced; the proxy answers that one too.
                    tracing::debug!(node = %self.ctx.conn.node.id, r#type = %req.type_url, nonce = %req.response_nonce, "stale request ignored");
                    return Ok(None);
                }
                let version = sent.version.clone();
                match req.error_detail {
                    Some(err) => {
                        let nack = Nack {
                            version,
                            nonce: req.response_nonce.clone(),
                            message: err.message,
                            code: err.code,
                            resources: ts.known.iter().map(|r| r.name.clone()).collect(),
                            at: SystemTime::now(),
                        };
                        self.ctx.nack(&req.type_url, ts, nack);
                    }
                    None => {
                        let known = ts.known.clone();
                        self.ctx.ack(ts, version, known);
                    }
                }
            }
        }
        let sub = Subscription::sotw(if first { None } else { Some(&ts.sub) }, &req.type_url, &req.resource_names);
        // A request without a nonce asks afresh (first request, or a client starting over).
        let respond = first || sub != ts.sub || req.response_nonce.is_empty();
        ts.sub = sub;
        Ok(respond.then_some(req.type_url))
    }

    /// Regenerates and sends, in push order, every subscribed type whose view changed, and the
    /// `forced` types whatever their view.
    async fn push(&mut self, forced: &BTreeSet<String>) -> Result<(), Close> {
        let (seq, set) = self.ctx.generate().await?;
        let types = push_order_of(&self.ctx);
        for t in types {
            let Some(resources) = self.view_to_send(&set, &t, forced.contains(&t)) else { continue };
            let version = view::version(&resources);
            let nonce = self.ctx.inner.nonce();
            let resp = DiscoveryResponse {
                version_info: version.clone(),
                resources: resources.iter().map(|r| r.body.clone()).collect(),
                type_url: t.clone(),
                nonce: nonce.clone(),
                control_plane: self.ctx.control_plane(),
                ..Default::default()
            };
            self.ctx.send(resp).await?;
            self.ctx.sent(resources.len() as u64, 0);
            let mut st = self.ctx.conn.lock();
            if let Some(ts) = st.types.get_mut(&t) {
                ts.sent = Some(Sent { version, nonce, resources: resources.len(), at: SystemTime::now() });
                ts.known = resources.into();
            }
        }
        self.ctx.conn.lock().generation = seq;
        Ok(())
    }

    fn view_to_send(&self, set: &ResourceSet, type_url: &str, forced: bool) -> Option<Vec<Arc<weft_xds::Resource>>> {
        let mut st = self.ctx.conn.lock();
        let ts = st.types.get_mut(type_url)?;
        if ts.sub.is_empty() {
            // Nothing asked for (an RDS or EDS list emptied): nothing owed.
            ts.known = view::empty();
            return None;
        }
        let resources = view::select(set.of_type(type_url), &ts.sub);
        if !forced && view::same(&resources, &ts.known) {
            return None;
        }
        Some(resources)
    }
}

fn push_order_of<R>(ctx: &Ctx<R>) -> Vec<String> {
    let st = ctx.conn.lock();
    stream::push_order(st.types.keys())
}
