//! A WebSocket echo backend and client helpers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response as WsResponse;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::http_backend::RecordedRequest;
use crate::server::{ConnFn, ServerHandle, Stats};

/// A client-side WebSocket over plain TCP.
pub type WsClient = WebSocketStream<TcpStream>;

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RECORDED: usize = 10_000;

/// A WebSocket echo server (HTTP/1.1 Upgrade on any path).
///
/// Text and binary messages come back unchanged, pings are answered, a close
/// is answered with a close. The handshake response carries
/// `x-backend: NAME`.
pub struct WsBackend {
    name: String,
    handshakes: Arc<Mutex<VecDeque<RecordedRequest>>>,
    server: ServerHandle,
}

impl WsBackend {
    /// Start an echo server named `ws`.
    pub async fn start() -> WsBackend {
        Self::start_named("ws").await
    }

    /// Start an echo server named `name`.
    pub async fn start_named(name: &str) -> WsBackend {
        let stats = Arc::new(Stats::default());
        let handshakes = Arc::new(Mutex::new(VecDeque::new()));
        let conn_stats = stats.clone();
        let conn_log = handshakes.clone();
        let conn_name = name.to_string();
        let on_conn: ConnFn = Arc::new(move |stream, _peer| {
            Box::pin(echo(stream, conn_name.clone(), conn_stats.clone(), conn_log.clone()))
        });
        let server = ServerHandle::start(stats, on_conn);
        WsBackend { name: name.to_string(), handshakes, server }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `ws://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr())
    }

    /// Successful upgrade handshakes so far.
    pub fn hits(&self) -> u64 {
        self.server.hits()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.server.connections()
    }

    /// The upgrade requests received so far (the last 10 000).
    pub fn handshakes(&self) -> Vec<RecordedRequest> {
        self.handshakes.lock().unwrap().iter().cloned().collect()
    }

    /// Close the listener (new connects are refused) and all open
    /// connections.
    pub async fn shutdown(&mut self) {
        self.server.shutdown().await;
    }
}

async fn echo(stream: TcpStream, name: String, stats: Arc<Stats>, log: Arc<Mutex<VecDeque<RecordedRequest>>>) {
    // The callback's signature is tungstenite's; its error type is large.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| {
        let record = RecordedRequest::from_parts(req.method(), req.uri(), req.version(), req.headers());
        let mut log = log.lock().unwrap();
        if log.len() >= MAX_RECORDED {
            log.pop_front();
        }
        log.push_back(record);
        if let Ok(v) = HeaderValue::from_str(&name) {
            resp.headers_mut().insert("x-backend", v);
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    stats.hit();
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                if ws.send(msg).await.is_err() {
                    return;
                }
            }
            // Pongs and close replies are queued by tungstenite and flushed
            // on the next read.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            Message::Close(_) => {}
        }
    }
}

/// Open a WebSocket to `ws://ADDR/PATH` with extra request headers (a
/// `host` header replaces the default one). Times out after 10 s.
pub async fn ws_connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<WsClient> {
    Ok(ws_connect_with_response(addr, path, headers).await?.0)
}

/// Like [`ws_connect`], also returning the handshake response.
pub async fn ws_connect_with_response(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(WsClient, WsResponse)> {
    let url = format!("ws://{addr}{path}");
    let mut req = url.as_str().into_client_request().with_context(|| format!("build WebSocket request for {url}"))?;
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())?;
        req.headers_mut().insert(name, HeaderValue::from_str(value)?);
    }
    let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))?;
    let _ = stream.set_nodelay(true);
    let (ws, resp) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(req, stream))
        .await
        .with_context(|| format!("WebSocket handshake with {url} timed out"))?
        .with_context(|| format!("WebSocket handshake with {url}"))?;
    Ok((ws, resp))
}

/// Connect, send each message as text, read one reply per message, close.
/// Returns the replies.
pub async fn ws_echo(addr: SocketAddr, path: &str, messages: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut ws = ws_connect(addr, path, &[]).await?;
    let mut replies = Vec::with_capacity(messages.len());
    for message in messages {
        ws.send(Message::text(*message)).await?;
        loop {
            let next = tokio::time::timeout(TIMEOUT, ws.next()).await.context("no WebSocket reply within 10 s")?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    replies.push(text.to_string());
                    break;
                }
                Some(Ok(Message::Binary(bytes))) => {
                    replies.push(String::from_utf8_lossy(&bytes).into_owned());
                    break;
                }
                Some(Ok(Message::Close(frame))) => bail!("WebSocket closed by peer: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("WebSocket ended without a reply"),
            }
        }
    }
    let _ = tokio::time::timeout(TIMEOUT, ws.close(None)).await;
    Ok(replies)
}
