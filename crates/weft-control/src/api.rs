//! The operator API (HTTP/1.1 + JSON) used by `weft apply/get/delete/check/proxy-config`.
//! Shapes are in [`crate::wire`].

// Helpers return the finished error reply as their `Err`; it is built at most once per request.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use weft_istio::Kind;
use weft_store::ObjKey;

use crate::plane::{now_unix_ms, FailureKind, Plane, StoreFailure};
use crate::wire::*;

/// Largest request body the API reads (a big multi-document apply fits easily).
const MAX_BODY: usize = 16 << 20;

pub async fn serve(listener: tokio::net::TcpListener, plane: Arc<Plane>, mut stop: watch::Receiver<bool>) {
    // Connections are tracked so that stopping ends them too (and releases the store).
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "api: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = crate::stopped(&mut stop) => break,
        };
        let plane = plane.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let plane = plane.clone();
                async move { Ok::<_, Infallible>(handle(&plane, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(Duration::from_secs(600), conn).await;
        });
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

type Reply = Response<Full<Bytes>>;

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Reply {
    let body = serde_json::to_vec_pretty(v).unwrap_or_else(|e| format!("{{\"errors\":[\"{e}\"]}}").into_bytes());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, errors: Vec<String>) -> Reply {
    json(status, &ErrorResponse { errors })
}

/// A store call that failed: 503 while the store cannot be reached (etcd down: retry later; the
/// mesh keeps being served), 422 for input the store refuses, 500 for anything else.
fn store_error(e: StoreFailure) -> Reply {
    let status = match e.kind {
        FailureKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        FailureKind::BadInput => StatusCode::UNPROCESSABLE_ENTITY,
        FailureKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, vec![e.message])
}

fn query<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Reply> {
    let body =
        match tokio::time::timeout(Duration::from_secs(60), Limited::new(req.into_body(), MAX_BODY).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => return Err(error(StatusCode::PAYLOAD_TOO_LARGE, vec![format!("request body: {e}")])),
            Err(_) => return Err(error(StatusCode::REQUEST_TIMEOUT, vec!["request body: timed out".into()])),
        };
    serde_json::from_slice(&body).map_err(|e| error(StatusCode::BAD_REQUEST, vec![format!("request body: {e}")]))
}

async fn handle(plane: &Arc<Plane>, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method().clone(), segs.as_slice()) {
        (Method::GET, ["healthz"]) => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (Method::POST, ["v1", "apply"]) => {
            let dry_run = matches!(query(&req, "dry_run"), Some("1" | "true"));
            match read_json::<ApplyRequest>(req).await {
                Ok(r) => apply(plane, r, dry_run).await,
                Err(e) => e,
            }
        }
        (Method::POST, ["v1", "delete"]) => match read_json::<ApplyRequest>(req).await {
            Ok(r) => delete_file(plane, r).await,
            Err(e) => e,
        },
        (Method::GET, ["v1", "resources"]) => {
            let kind = match query(&req, "kind").map(parse_kind).transpose() {
                Ok(k) => k,
                Err(e) => return e,
            };
            list(plane, kind).await
        }
        (Method::GET, ["v1", "resources", kind, ns, name]) => match parse_kind(kind) {
            Ok(kind) => get_one(plane, kind, ns, name).await,
            Err(e) => e,
        },
        (Method::DELETE, ["v1", "resources", kind, ns, name]) => match parse_kind(kind) {
            Ok(kind) => {
                let key = ObjKey { kind: kind.as_str().to_string(), namespace: ns.to_string(), name: name.to_string() };
                delete_keys(plane, vec![key]).await
            }
            Err(e) => e,
        },
        (Method::GET, ["v1", "check"]) => check(plane).await,
        (Method::GET, ["v1", "proxies", node, "config"]) => {
            let ty = query(&req, "type").unwrap_or("clusters").to_string();
            proxy_config(plane, &percent_decode(node), &ty)
        }
        (Method::GET, ["v1", "proxies"]) => json(StatusCode::OK, &plane.ads().status()),
        (Method::GET, ["v1", "instances"]) => list_instances(plane).await,
        (Method::PUT, ["v1", "instances", ns, name]) => {
            let (ns, name) = (ns.to_string(), name.to_string());
            match read_json::<InstanceRequest>(req).await {
                Ok(r) => put_instance(plane, ns, name, r).await,
                Err(e) => e,
            }
        }
        (Method::POST, ["v1", "instances", ns, name, "renew"]) => {
            let (ns, name) = (ns.to_string(), name.to_string());
            match read_json::<RenewRequest>(req).await {
                Ok(r) => renew(plane, ns, name, r).await,
                Err(e) => e,
            }
        }
        (Method::DELETE, ["v1", "instances", ns, name]) => {
            let key = instance_key(ns, name);
            match plane.blocking(move |s| s.remove_instance(&key)).await {
                Ok(true) => json(StatusCode::OK, &serde_json::json!({"deleted": true})),
                Ok(false) => error(StatusCode::NOT_FOUND, vec![format!("instance {ns}/{name} not found")]),
                Err(e) => store_error(e),
            }
        }
        _ => error(StatusCode::NOT_FOUND, vec![format!("no such API: {} {}", req.method(), path)]),
    }
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_kind(s: &str) -> Result<Kind, Reply> {
    Kind::parse(s).ok_or_else(|| error(StatusCode::BAD_REQUEST, vec![format!("unknown kind {s:?}")]))
}

fn instance_key(ns: &str, name: &str) -> ObjKey {
    ObjKey { kind: "Instance".to_string(), namespace: ns.to_string(), name: name.to_string() }
}

/// Validates the whole file, then stores all of it in one durable transaction (or nothing).
async fn apply(plane: &Arc<Plane>, req: ApplyRequest, dry_run: bool) -> Reply {
    let resources = match weft_istio::parse_yaml(&req.file, &req.yaml) {
        Ok(r) => r,
        Err(errs) => {
            return error(StatusCode::UNPROCESSABLE_ENTITY, errs.to_string().lines().map(String::from).collect())
        }
    };
    if resources.is_empty() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, vec![format!("{}: no resources found", req.file)]);
    }
    let mut objs = Vec::with_capacity(resources.len());
    let mut not_applied = Vec::with_capacity(resources.len());
    for r in &resources {
        let key = r.key();
        let mut body = r.raw.clone();
        if let Some(meta) = body.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.insert("namespace".into(), serde_json::Value::String(key.namespace.clone()));
            // Server-set fields are the store's, never the client's.
            meta.remove("creationTimestamp");
            meta.remove("resourceVersion");
        }
        objs.push((
            ObjKey { kind: key.kind.as_str().to_string(), namespace: key.namespace.clone(), name: key.name.clone() },
            r.tenant().to_string(),
            body,
        ));
        not_applied.push(r.not_applied.clone());
    }
    if dry_run {
        let results = objs
            .iter()
            .zip(not_applied)
            .map(|((k, _, _), na)| ApplyResult {
                kind: k.kind.clone(),
                namespace: k.namespace.clone(),
                name: k.name.clone(),
                action: "validated".into(),
                revision: 0,
                not_applied: na,
            })
            .collect();
        return json(StatusCode::OK, &ApplyResponse { results, dry_run: true });
    }
    match plane.blocking(move |s| s.apply(objs)).await {
        Ok(applied) => {
            let results = applied
                .into_iter()
                .zip(not_applied)
                .map(|(a, na)| ApplyResult {
                    kind: a.key.kind.clone(),
                    namespace: a.key.namespace.clone(),
                    name: a.key.name.clone(),
                    action: if a.created {
                        "created"
                    } else if a.unchanged {
                        "unchanged"
                    } else {
                        "configured"
                    }
                    .into(),
                    revision: a.revision,
                    not_applied: na,
                })
                .collect();
            json(StatusCode::OK, &ApplyResponse { results, dry_run: false })
        }
        Err(e) => store_error(e),
    }
}

async fn delete_file(plane: &Arc<Plane>, req: ApplyRequest) -> Reply {
    let resources = match weft_istio::parse_yaml(&req.file, &req.yaml) {
        Ok(r) => r,
        Err(errs) => {
            return error(StatusCode::UNPROCESSABLE_ENTITY, errs.to_string().lines().map(String::from).collect())
        }
    };
    let keys = resources
        .iter()
        .map(|r| {
            let k = r.key();
            ObjKey { kind: k.kind.as_str().to_string(), namespace: k.namespace, name: k.name }
        })
        .collect();
    delete_keys(plane, keys).await
}

async fn delete_keys(plane: &Arc<Plane>, keys: Vec<ObjKey>) -> Reply {
    let k2 = keys.clone();
    match plane.blocking(move |s| s.delete(&k2)).await {
        Ok(done) => {
            let results: Vec<DeleteResult> = keys
                .into_iter()
                .zip(done)
                .map(|(k, deleted)| DeleteResult { kind: k.kind, namespace: k.namespace, name: k.name, deleted })
                .collect();
            let status = if results.len() == 1 && !results[0].deleted { StatusCode::NOT_FOUND } else { StatusCode::OK };
            json(status, &DeleteResponse { results })
        }
        Err(e) => store_error(e),
    }
}

fn stored(o: weft_store::Object) -> StoredResource {
    StoredResource {
        kind: o.key.kind,
        namespace: o.key.namespace,
        name: o.key.name,
        tenant: o.tenant,
        revision: o.revision,
        created_at: o.created_at,
        body: o.body,
    }
}

async fn list(plane: &Arc<Plane>, kind: Option<Kind>) -> Reply {
    let kind = kind.map(|k| k.as_str().to_string());
    match plane.blocking(move |s| s.list(kind.as_deref())).await {
        Ok(objs) => json(StatusCode::OK, &ListResponse { items: objs.into_iter().map(stored).collect() }),
        Err(e) => store_error(e),
    }
}

async fn get_one(plane: &Arc<Plane>, kind: Kind, ns: &str, name: &str) -> Reply {
    let key = ObjKey { kind: kind.as_str().to_string(), namespace: ns.to_string(), name: name.to_string() };
    let k2 = key.clone();
    match plane.blocking(move |s| s.get(&k2)).await {
        Ok(Some(o)) => json(StatusCode::OK, &stored(o)),
        Ok(None) => error(StatusCode::NOT_FOUND, vec![format!("{key} not found")]),
        Err(e) => store_error(e),
    }
}

async fn check(plane: &Arc<Plane>) -> Reply {
    let view = plane.view();
    let mut warnings = view.warnings.clone();
    let store_revision = match plane.blocking(|s| s.revision()).await {
        Ok(r) => r,
        // The proxies' status is still worth showing: with the newest revision this control
        // plane has seen, and the outage among the warnings.
        Err(e) if e.kind == FailureKind::Unavailable => {
            warnings.insert(0, format!("{}; serving the mesh built at revision {}", e.message, view.revision));
            *plane.store().watch().borrow()
        }
        Err(e) => return store_error(e),
    };
    let not_applied = view
        .resources
        .iter()
        .filter(|r| !r.not_applied.is_empty())
        .map(|r| NotApplied { resource: r.key().to_string(), fields: r.not_applied.clone() })
        .collect();
    let proxies = serde_json::to_value(plane.ads().status()).unwrap_or(serde_json::Value::Null);
    json(
        StatusCode::OK,
        &CheckResponse {
            mesh_revision: view.revision,
            store_revision,
            rebuilds: plane.rebuilds(),
            services: view.services,
            warnings,
            not_applied,
            proxies,
        },
    )
}

fn proxy_config(plane: &Arc<Plane>, node: &str, ty: &str) -> Reply {
    let type_url = match ty {
        "listeners" | "listener" | "lds" => weft_xds::type_url::LISTENER,
        "routes" | "route" | "rds" => weft_xds::type_url::ROUTE,
        "clusters" | "cluster" | "cds" => weft_xds::type_url::CLUSTER,
        "endpoints" | "endpoint" | "eds" => weft_xds::type_url::ENDPOINT,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                vec![format!("type {other:?}: want listeners, routes, clusters or endpoints")],
            )
        }
    };
    let Some(set) = plane.ads().acked(node) else {
        return error(StatusCode::NOT_FOUND, vec![format!("proxy {node:?} is not connected")]);
    };
    let resources =
        set.of_type(type_url).map(|m| m.values().map(|r| crate::render::render(r)).collect()).unwrap_or_default();
    json(StatusCode::OK, &ProxyConfigResponse { node: node.to_string(), type_url: type_url.to_string(), resources })
}

async fn list_instances(plane: &Arc<Plane>) -> Reply {
    match plane.blocking(|s| s.list_instances()).await {
        Ok(list) => json(
            StatusCode::OK,
            &InstanceList {
                items: list
                    .into_iter()
                    .map(|i| InstanceEntry {
                        namespace: i.key.namespace,
                        name: i.key.name,
                        tenant: i.tenant,
                        lease_expires_unix_ms: i.lease_expires_unix_ms,
                        instance: i.body,
                    })
                    .collect(),
            },
        ),
        Err(e) => store_error(e),
    }
}

async fn put_instance(plane: &Arc<Plane>, ns: String, name: String, req: InstanceRequest) -> Reply {
    let mut body = req.instance;
    if let Some(o) = body.as_object_mut() {
        o.insert("name".into(), serde_json::Value::String(name.clone()));
        o.insert("namespace".into(), serde_json::Value::String(ns.clone()));
    }
    let inst: weft_istio::registry::Instance = match serde_json::from_value(body.clone()) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, vec![format!("instance {ns}/{name}: {e}")]),
    };
    if let Err(e) = inst.validate(&format!("instance {ns}/{name}")) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string().lines().map(String::from).collect());
    }
    let tenant = inst.tenant.clone();
    let expires = req.ttl_seconds.map(|t| now_unix_ms() + t.saturating_mul(1000));
    let key = instance_key(&ns, &name);
    match plane.blocking(move |s| s.put_instance(key, &tenant, body, expires)).await {
        Ok(revision) => {
            json(StatusCode::OK, &InstanceResponse { namespace: ns, name, revision, lease_expires_unix_ms: expires })
        }
        Err(e) => store_error(e),
    }
}

async fn renew(plane: &Arc<Plane>, ns: String, name: String, req: RenewRequest) -> Reply {
    let expires = now_unix_ms() + req.ttl_seconds.saturating_mul(1000);
    let key = instance_key(&ns, &name);
    match plane.blocking(move |s| s.renew_lease(&key, expires)).await {
        Ok(true) => json(
            StatusCode::OK,
            &InstanceResponse { namespace: ns, name, revision: 0, lease_expires_unix_ms: Some(expires) },
        ),
        Ok(false) => error(StatusCode::NOT_FOUND, vec![format!("instance {ns}/{name} not found (lease expired?)")]),
        Err(e) => store_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn node_ids_in_paths_are_percent_decoded() {
        assert_eq!(
            percent_decode("sidecar~10.0.0.1~a.b~b.svc.cluster.local"),
            "sidecar~10.0.0.1~a.b~b.svc.cluster.local"
        );
        assert_eq!(percent_decode("a%7Eb%2Fc"), "a~b/c");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
    }
}
