//! The admin port of `weft dns`: `/ready` (200 once a name table is known, or at once without a
//! control plane), `/stats/prometheus`, and `/nametable` (the table and the subscription, JSON).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::ads::AdsStatus;
use crate::server::Dns;
use crate::stopped;

/// Admin connections at once.
const MAX_CONNECTIONS: usize = 64;

/// What the admin pages read.
#[derive(Clone)]
pub struct Admin {
    pub dns: Dns,
    /// The subscription, when there is a control plane.
    pub ads: Option<Arc<AdsStatus>>,
}

impl Admin {
    /// Ready when mesh names can be answered: a table is loaded, or no control plane is used.
    pub fn ready(&self) -> bool {
        self.ads.is_none() || self.dns.table().is_some()
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&http::Method::GET, "/ready") => {
                if self.ready() {
                    text(StatusCode::OK, "ready\n".into())
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no name table yet\n".into())
                }
            }
            (&http::Method::GET, "/stats/prometheus") | (&http::Method::GET, "/metrics") => {
                let mut body = self.dns.prometheus();
                if let Some(a) = &self.ads {
                    body.push_str(&a.prometheus());
                }
                text(StatusCode::OK, body)
            }
            (&http::Method::GET, "/nametable") => {
                let table = self.dns.table();
                let names: BTreeMap<&str, serde_json::Value> = table
                    .as_ref()
                    .map(|t| {
                        t.names()
                            .into_iter()
                            .map(|(n, e)| {
                                let ips: Vec<String> =
                                    e.v4.iter()
                                        .map(|a| a.to_string())
                                        .chain(e.v6.iter().map(|a| a.to_string()))
                                        .collect();
                                (n, serde_json::json!({ "host": e.host, "ips": ips }))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let body = serde_json::json!({
                    "loaded": table.is_some(),
                    "hosts": table.as_ref().map_or(0, |t| t.hosts()),
                    "names": names,
                    "xds": self.ads.as_ref().map(|a| a.snapshot()),
                });
                let mut r = text(StatusCode::OK, format!("{body:#}\n"));
                r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                r
            }
            _ => text(StatusCode::NOT_FOUND, "not found: /ready, /stats/prometheus, /nametable\n".into()),
        }
    }

    /// Serves until `stop` says true.
    pub async fn serve(self, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopped(&mut stop) => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
            let me = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let r = me.handle(&req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
                drop(slot);
            });
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
