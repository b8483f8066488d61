//! The control plane's operator API as the agent uses it: put, renew and delete instances, read
//! a WorkloadGroup. One short-lived HTTP/1.1 connection per call, every step under a timeout.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use weft_control::wire::{ErrorResponse, InstanceRequest, InstanceResponse, RenewRequest, StoredResource};

use crate::Error;

/// Connecting to the API.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One whole request, answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read.
const MAX_ANSWER: usize = 4 << 20;

#[derive(Clone, Debug)]
pub struct Api {
    addr: String,
}

impl Api {
    /// `addr` is `HOST:PORT`.
    pub fn new(addr: impl Into<String>) -> Api {
        Api { addr: addr.into() }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Registers (or replaces) an instance under a lease of `ttl`.
    pub async fn put_instance(
        &self,
        namespace: &str,
        name: &str,
        instance: &weft_istio::registry::Instance,
        ttl: Duration,
    ) -> Result<InstanceResponse, Error> {
        let body = InstanceRequest {
            instance: serde_json::to_value(instance).map_err(|e| self.err(format!("encode instance: {e}")))?,
            ttl_seconds: Some(ttl.as_secs().max(1)),
        };
        let (status, answer) =
            self.call(Method::PUT, &format!("/v1/instances/{namespace}/{name}"), Some(&body)).await?;
        self.expect_ok(status, &answer)?;
        serde_json::from_slice(&answer).map_err(|e| self.err(format!("answer to PUT: {e}")))
    }

    /// Renews a lease; `None` when the instance is unknown (its lease ran out, or it was removed).
    pub async fn renew(&self, namespace: &str, name: &str, ttl: Duration) -> Result<Option<InstanceResponse>, Error> {
        let body = RenewRequest { ttl_seconds: ttl.as_secs().max(1) };
        let path = format!("/v1/instances/{namespace}/{name}/renew");
        let (status, answer) = self.call(Method::POST, &path, Some(&body)).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.expect_ok(status, &answer)?;
        serde_json::from_slice(&answer).map(Some).map_err(|e| self.err(format!("answer to renew: {e}")))
    }

    /// Deregisters; `false` when there was nothing to remove.
    pub async fn delete_instance(&self, namespace: &str, name: &str) -> Result<bool, Error> {
        let (status, answer) =
            self.call::<()>(Method::DELETE, &format!("/v1/instances/{namespace}/{name}"), None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        self.expect_ok(status, &answer)?;
        Ok(true)
    }

    /// A stored resource, `None` when there is none of that kind and name.
    pub async fn get_resource(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<StoredResource>, Error> {
        let (status, answer) =
            self.call::<()>(Method::GET, &format!("/v1/resources/{kind}/{namespace}/{name}"), None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.expect_ok(status, &answer)?;
        serde_json::from_slice(&answer).map(Some).map_err(|e| self.err(format!("answer to GET {kind}: {e}")))
    }

    fn err(&self, message: String) -> Error {
        Error::Api { addr: self.addr.clone(), message }
    }

    fn expect_ok(&self, status: StatusCode, answer: &[u8]) -> Result<(), Error> {
        if status.is_success() {
            return Ok(());
        }
        let detail = match serde_json::from_slice::<ErrorResponse>(answer) {
            Ok(e) => e.errors.join("; "),
            Err(_) => String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned(),
        };
        Err(self.err(format!("{status}: {detail}")))
    }

    async fn call<T: serde::Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&T>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let body = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| self.err(format!("encode request: {e}")))?,
            None => Vec::new(),
        };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(self.err(format!("connect: {e}"))),
            Err(_) => return Err(self.err(format!("connect: no answer within {CONNECT_TIMEOUT:?}"))),
        };
        let _ = stream.set_nodelay(true);
        let exchange = async {
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| self.err(format!("handshake: {e}")))?;
            let conn = tokio::spawn(conn);
            let req = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(http::header::HOST, self.addr.as_str())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| self.err(format!("request: {e}")))?;
            let resp = tx.send_request(req).await.map_err(|e| self.err(format!("{method} {path}: {e}")))?;
            let status = resp.status();
            let answer = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| self.err(format!("{method} {path}: reading the answer: {e}")))?
                .to_bytes();
            conn.abort();
            Ok((status, answer))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(r) => r,
            Err(_) => Err(self.err(format!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}"))),
        }
    }
}
