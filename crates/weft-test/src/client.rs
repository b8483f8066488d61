//! Small HTTP clients on hyper, for tests that do not shell out to curl.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Which protocol a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.1 over plain TCP.
    Http1,
    /// HTTP/2 over plain TCP with prior knowledge.
    H2c,
}

/// A response with its whole body.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// Value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("response body is not JSON ({e}): status {}, body {:?}", self.status, self.text())
        })
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One client connection, for sending several requests over the same
/// connection (keep-alive / multiplexing tests).
pub struct HttpConn {
    addr: SocketAddr,
    sender: Sender,
}

impl HttpConn {
    /// Connect to `addr` (5 s timeout) and do the protocol handshake.
    pub async fn connect(addr: SocketAddr, version: HttpVersion) -> anyhow::Result<HttpConn> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))?
            .with_context(|| format!("connect to {addr}"))?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let sender = match version {
            HttpVersion::Http1 => {
                let (sender, conn) = http1::handshake(io).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H1(sender)
            }
            HttpVersion::H2c => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H2(sender)
            }
        };
        Ok(HttpConn { addr, sender })
    }

    /// Send one request and read the whole response (30 s timeout).
    ///
    /// `path` is the path and query. A `host` header sets the Host header
    /// (HTTP/1) or `:authority` (h2); the default is the address.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<HttpResponse> {
        let host = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| self.addr.to_string());
        let h2 = matches!(self.sender, Sender::H2(_));
        let uri = if h2 { format!("http://{host}{path}") } else { path.to_string() };
        let mut req = Request::builder()
            .method(method)
            .uri(&uri)
            .version(if h2 { Version::HTTP_2 } else { Version::HTTP_11 })
            .body(Full::new(body.into()))
            .with_context(|| format!("build request for {uri}"))?;
        if !h2 {
            req.headers_mut().insert(http::header::HOST, HeaderValue::from_str(&host)?);
        }
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("host") {
                continue;
            }
            req.headers_mut().append(HeaderName::from_bytes(name.as_bytes())?, HeaderValue::from_str(value)?);
        }
        let addr = self.addr;
        let exchange = async {
            let resp = match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
                Sender::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
            };
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>(HttpResponse {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("request to {addr}{path} timed out after 30 s"))?
            .with_context(|| format!("request to {addr}{path}"))
    }
}

/// One request on a fresh connection.
pub async fn http_request(
    addr: SocketAddr,
    version: HttpVersion,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<HttpResponse> {
    HttpConn::connect(addr, version).await?.request(method, path, headers, body).await
}

/// `GET path` over HTTP/1.1 on a fresh connection.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<HttpResponse> {
    http_request(addr, HttpVersion::Http1, Method::GET, path, headers, Bytes::new()).await
}

/// `GET path` over h2c (prior knowledge) on a fresh connection.
pub async fn h2c_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<HttpResponse> {
    http_request(addr, HttpVersion::H2c, Method::GET, path, headers, Bytes::new()).await
}
