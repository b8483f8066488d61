//! Upstream HTTP/1.1 connections, driven by the task of the request that uses them. The request
//! head (with the first body bytes when they are already there) goes out in one write; the
//! response head is parsed in place and its body frames are slices of the read buffer; the
//! connection goes back to its pool as soon as its response has been read whole. There is no
//! connection task and no channel between a request and its connection, so a proxied exchange
//! costs one task's wake-ups instead of two tasks handing off to each other.
//!
//! Framing follows RFC 9112: a request body is sent with its `Content-Length`, its exact size,
//! or chunked (a GET, HEAD or CONNECT of unknown size sends none); a response is framed by
//! status and method (1xx skipped, 204/304/HEAD empty), then `Transfer-Encoding: chunked`, then
//! `Content-Length`, else it runs to the connection's end. Anything that could desynchronise the
//! connection (both framings, an early answer, bytes after the response) closes it after use.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::body::{BoxError, ProxyBody};
use crate::cluster::{ClusterRt, CxGuard, Host};
use crate::h1codec::{
    content_length, decode_chunked, final_coding_is_chunked, has_token, push_decimal, push_field, push_hex, Chunk,
    Decoded,
};

/// Most header fields in a response head or trailer section (hyper's and Envoy's default).
pub const MAX_HEADERS: usize = 100;
/// Largest response head: status line and header fields.
pub const MAX_HEAD_BYTES: usize = 1 << 20;
/// Free space kept in the read buffer before each read.
const READ_RESERVE: usize = 8 * 1024;

/// Why an exchange produced no (complete) response.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The upstream closed the connection before a complete response head.
    #[error("upstream closed the connection before a response")]
    Closed,
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    /// The upstream sent something that is not a valid HTTP/1 response.
    #[error("invalid response from upstream: {0}")]
    Invalid(&'static str),
    /// Reading the client's request body failed.
    #[error("request body: {0}")]
    RequestBody(BoxError),
    /// The request body did not match its declared length.
    #[error("request body length does not match its content-length")]
    RequestLength,
}

impl H1Error {
    /// The upstream broke the protocol (a 502 with UPE, not a reset).
    pub fn is_protocol(&self) -> bool {
        matches!(self, H1Error::Invalid(_))
    }
}

/// One upstream HTTP/1.1 connection with its buffers. Idle in a pool, or owned by the exchange
/// that uses it.
pub struct H1Conn {
    io: TcpStream,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// Requests sent on it so far.
    pub uses: u32,
    _guard: Option<CxGuard>,
}

impl H1Conn {
    /// Wraps a connected socket; `guard` counts it against its cluster while it lives.
    pub fn new(io: TcpStream, guard: Option<CxGuard>) -> H1Conn {
        H1Conn { io, rbuf: BytesMut::new(), wbuf: Vec::with_capacity(512), uses: 0, _guard: guard }
    }

    /// Whether an idle connection can carry another request: the peer has not closed it (nor
    /// reset it). Read from the readiness the reactor recorded, without a system call: the
    /// readable flag is usually left over from reading the last response, but a close sets
    /// `read_closed` whenever it arrived. (Bytes an upstream sends unasked without closing are
    /// found by the next response's parser and fail that exchange.)
    pub fn is_reusable(&self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        use futures_util::FutureExt;
        match self.io.ready(tokio::io::Interest::READABLE).now_or_never() {
            None => true,
            Some(Ok(r)) => !(r.is_read_closed() || r.is_error()),
            Some(Err(_)) => false,
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_RESERVE / 4 {
            self.rbuf.reserve(READ_RESERVE);
        }
        loop {
            match self.io.try_read_buf(&mut self.rbuf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(self.io.poll_read_ready(cx))?,
                r => return Poll::Ready(r),
            }
        }
    }
}

/// Where a finished connection goes: back to its host's pool.
pub struct PoolReturn {
    pub cluster: Arc<ClusterRt>,
    pub host: Arc<Host>,
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqFraming {
    /// No body is sent.
    None,
    Length(u64),
    Chunked,
}

/// How the response body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RespFraming {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A parsed response head: the response without its body, how the body is framed, and whether
/// the connection may carry another request afterwards.
#[derive(Debug)]
pub struct ParsedHead {
    pub response: Response<()>,
    pub framing: RespFraming,
    pub keep_alive: bool,
}

/// Parses a response head at the start of `buf`, skipping informational (1xx) responses. On
/// success the head's bytes are taken from `buf` (header values share them, no copy). None: the
/// head is not complete yet.
pub fn parse_head(buf: &mut BytesMut, request_method: &Method) -> Result<Option<ParsedHead>, H1Error> {
    loop {
        // Neither array is initialised up front: a response has a handful of fields, the
        // arrays room for a hundred.
        let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut storage);
        let len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD_BYTES {
                    return Err(H1Error::Invalid("response head too large"));
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(H1Error::Invalid("too many response headers")),
            Err(_) => return Err(H1Error::Invalid("malformed response head")),
        };
        if len > MAX_HEAD_BYTES {
            return Err(H1Error::Invalid("response head too large"));
        }
        let code = res.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("invalid status code"))?;
        let version = if res.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
        // Positions of names and values, so the head's bytes can be frozen and shared.
        let count = res.headers.len();
        let mut small = [[0u32; 4]; 16];
        let mut large = Vec::new();
        let spans: &mut [[u32; 4]] = if count <= small.len() {
            &mut small[..count]
        } else {
            large.resize(count, [0u32; 4]);
            &mut large
        };
        let base = buf.as_ptr() as usize;
        for (span, h) in spans.iter_mut().zip(res.headers.iter()) {
            let n = (h.name.as_ptr() as usize - base) as u32;
            let v = (h.value.as_ptr() as usize - base) as u32;
            *span = [n, n + h.name.len() as u32, v, v + h.value.len() as u32];
        }
        let head = buf.split_to(len).freeze();
        if status.is_informational() {
            if code == 101 {
                // Upgrades take their own path (WebSocket); here a 101 is a broken answer.
                return Err(H1Error::Invalid("unexpected 101 Switching Protocols"));
            }
            continue;
        }
        let mut headers = HeaderMap::with_capacity(count);
        let mut close = version == Version::HTTP_10;
        let mut saw_close = false;
        for &[ns, ne, vs, ve] in spans.iter() {
            let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
            let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| H1Error::Invalid("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                .map_err(|_| H1Error::Invalid("invalid header value"))?;
            if name == header::CONNECTION {
                if has_token(&value, "close") {
                    saw_close = true;
                } else if version == Version::HTTP_10 && has_token(&value, "keep-alive") {
                    close = false;
                }
            }
            headers.append(name, value);
        }
        let (framing, ambiguous) = response_framing(status, request_method, version, &mut headers)?;
        let keep_alive = !(close || saw_close || ambiguous);
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some(ParsedHead { response, framing, keep_alive }));
    }
}

/// The response body's framing (RFC 9112 §6.3) and whether the connection must close after it
/// because the framing was ambiguous. Removes a `Content-Length` that chunked coding overrides.
fn response_framing(
    status: StatusCode,
    method: &Method,
    version: Version,
    headers: &mut HeaderMap,
) -> Result<(RespFraming, bool), H1Error> {
    if matches!(status.as_u16(), 204 | 304) || method == Method::HEAD {
        return Ok((RespFraming::Empty, false));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(H1Error::Invalid("transfer-encoding in an HTTP/1.0 response"));
        }
        if !final_coding_is_chunked(headers) {
            return Ok((RespFraming::Close, true));
        }
        // Both framings: the signature of smuggling. Chunked wins, and the connection is not
        // trusted with another request.
        let both = headers.remove(header::CONTENT_LENGTH).is_some();
        return Ok((RespFraming::Chunked, both));
    }
    match content_length(headers) {
        Ok(Some(n)) => Ok((RespFraming::Length(n), false)),
        Ok(None) => Ok((RespFraming::Close, true)),
        Err(()) => Err(H1Error::Invalid("invalid content-length")),
    }
}

/// The request side of an exchange: what remains to be written.
struct Sender {
    body: Option<ProxyBody>,
    framing: ReqFraming,
    /// Body bytes still allowed by a `Content-Length`.
    left: u64,
    /// A data frame being written after `wbuf`'s bytes.
    data: Bytes,
    /// Bytes of the connection's `wbuf` already written.
    wpos: usize,
    /// At least one chunk was written (its CRLF is still owed).
    chunk_open: bool,
    /// Trailer fields the request declared (`Trailer`), the only ones sent.
    trailer_names: Vec<HeaderName>,
    /// Everything is queued; done once `wbuf` and `data` are written.
    finished: bool,
}

impl Sender {
    fn done(&self, conn: &H1Conn) -> bool {
        self.finished && self.wpos >= conn.wbuf.len() && self.data.is_empty()
    }
}

/// Writes what the request still owes the connection: queued bytes first, then the next body
/// frame. Ready(Ok) once the whole request is written.
fn poll_send(s: &mut Sender, conn: &mut H1Conn, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
    loop {
        // Queue the next frame when nothing but framing bytes wait, so the head and the first
        // body bytes leave in one write when both are there.
        if !s.finished && s.data.is_empty() {
            let Some(body) = s.body.as_mut() else {
                finish_body(s, conn)?;
                continue;
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => queue_data(s, conn, data)?,
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            queue_trailers(s, conn, &trailers);
                        }
                        s.body = None;
                        finish_body(s, conn)?;
                    }
                },
                Poll::Ready(None) => {
                    s.body = None;
                    finish_body(s, conn)?;
                }
                Poll::Ready(Some(Err(e))) => {
                    s.body = None;
                    return Poll::Ready(Err(H1Error::RequestBody(e)));
                }
                Poll::Pending => {
                    if s.wpos >= conn.wbuf.len() {
                        return Poll::Pending;
                    }
                }
            }
        }
        if s.wpos >= conn.wbuf.len() && s.data.is_empty() {
            if s.finished {
                return Poll::Ready(Ok(()));
            }
            continue;
        }
        let n = {
            let bufs = [IoSlice::new(&conn.wbuf[s.wpos..]), IoSlice::new(&s.data)];
            ready!(Pin::new(&mut conn.io).poll_write_vectored(cx, &bufs))?
        };
        if n == 0 {
            return Poll::Ready(Err(H1Error::Io(io::ErrorKind::WriteZero.into())));
        }
        let from_wbuf = n.min(conn.wbuf.len() - s.wpos);
        s.wpos += from_wbuf;
        s.data.advance(n - from_wbuf);
        if s.wpos >= conn.wbuf.len() {
            conn.wbuf.clear();
            s.wpos = 0;
        }
    }
}

fn queue_data(s: &mut Sender, conn: &mut H1Conn, data: Bytes) -> Result<(), H1Error> {
    if data.is_empty() {
        return Ok(());
    }
    match s.framing {
        ReqFraming::None => {}
        ReqFraming::Length(_) => {
            if data.len() as u64 > s.left {
                return Err(H1Error::RequestLength);
            }
            s.left -= data.len() as u64;
            s.data = data;
        }
        ReqFraming::Chunked => {
            if s.chunk_open {
                conn.wbuf.extend_from_slice(b"\r\n");
            }
            push_hex(&mut conn.wbuf, data.len() as u64);
            conn.wbuf.extend_from_slice(b"\r\n");
            s.chunk_open = true;
            s.data = data;
        }
    }
    Ok(())
}

fn queue_trailers(s: &mut Sender, conn: &mut H1Conn, trailers: &HeaderMap) {
    if s.framing != ReqFraming::Chunked || s.trailer_names.is_empty() {
        return;
    }
    if s.chunk_open {
        conn.wbuf.extend_from_slice(b"\r\n");
        s.chunk_open = false;
    }
    conn.wbuf.extend_from_slice(b"0\r\n");
    for name in &s.trailer_names {
        for v in trailers.get_all(name) {
            push_field(&mut conn.wbuf, name.as_str().as_bytes(), v.as_bytes());
        }
    }
    conn.wbuf.extend_from_slice(b"\r\n");
    s.finished = true;
}

fn finish_body(s: &mut Sender, conn: &mut H1Conn) -> Result<(), H1Error> {
    if s.finished {
        return Ok(());
    }
    match s.framing {
        ReqFraming::Length(_) if s.left > 0 => return Err(H1Error::RequestLength),
        ReqFraming::Chunked => {
            if s.chunk_open {
                conn.wbuf.extend_from_slice(b"\r\n");
            }
            conn.wbuf.extend_from_slice(b"0\r\n\r\n");
        }
        _ => {}
    }
    s.finished = true;
    Ok(())
}

/// What goes into a request head.
pub struct Head<'a> {
    pub method: &'a Method,
    /// The request target in origin form (`/path?query`).
    pub target: &'a str,
    /// Sent as `Host` instead of the one in `headers` (a rewritten authority, or one that came
    /// as HTTP/2's `:authority`).
    pub host: Option<&'a str>,
    /// The message's fields; its `Content-Length` and `Transfer-Encoding` are replaced by this
    /// connection's framing.
    pub headers: &'a HeaderMap,
    /// Fields written after `headers`, replacing any of the same name there.
    pub extra: &'a [(&'a HeaderName, &'a [u8])],
}

/// Sends a request on `conn` and waits for the response head. The response body reads from the
/// connection and returns it to `pool` when the response is complete and the connection can be
/// reused. On error the connection is closed.
pub async fn send(
    mut conn: H1Conn,
    head: Head<'_>,
    body: ProxyBody,
    pool: Option<PoolReturn>,
) -> Result<Response<H1Body>, H1Error> {
    conn.uses += 1;
    let method = head.method;
    let mut sender = encode_head(&mut conn, &head, body);
    let mut write_error: Option<H1Error> = None;
    let parsed = poll_fn(|cx| {
        if write_error.is_none() && !sender.done(&conn) {
            match poll_send(&mut sender, &mut conn, cx) {
                Poll::Ready(Err(H1Error::Io(e))) => {
                    // The upstream may have answered and closed before reading everything:
                    // read its answer before giving up.
                    sender.body = None;
                    write_error = Some(H1Error::Io(e));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                _ => {}
            }
        }
        loop {
            if !conn.rbuf.is_empty() {
                if let Some(head) = parse_head(&mut conn.rbuf, method)? {
                    return Poll::Ready(Ok(head));
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(write_error.take().unwrap_or(H1Error::Closed))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(write_error.take().unwrap_or(H1Error::Io(e)))),
            }
        }
    })
    .await?;
    let (parts, ()) = parsed.response.into_parts();
    // An answer before the whole request was written leaves the connection out of step.
    let keep_alive = parsed.keep_alive && write_error.is_none();
    let request_done = sender.done(&conn);
    let mut body = H1Body {
        conn: Some(conn),
        sender: if request_done || write_error.is_some() { None } else { Some(sender) },
        framing: parsed.framing,
        chunk: Chunk::Size,
        keep_alive,
        pool,
    };
    if parsed.framing == RespFraming::Empty || parsed.framing == RespFraming::Length(0) {
        body.framing = RespFraming::Empty;
        body.complete();
    }
    Ok(Response::from_parts(parts, body))
}

/// Writes the request head into the connection's write buffer and decides the body framing.
fn encode_head(conn: &mut H1Conn, head: &Head<'_>, body: ProxyBody) -> Sender {
    let (method, headers) = (head.method, head.headers);
    let w = &mut conn.wbuf;
    w.clear();
    w.extend_from_slice(method.as_str().as_bytes());
    w.push(b' ');
    w.extend_from_slice(head.target.as_bytes());
    w.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = head.host {
        push_field(w, b"host", host.as_bytes());
    }
    let mut trailer_names = Vec::new();
    for (name, value) in headers {
        // Framing is this connection's business; the message's own is replaced below.
        if name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
            || (name == header::HOST && head.host.is_some())
            || head.extra.iter().any(|(n, _)| *n == name)
        {
            continue;
        }
        if name == header::TRAILER {
            if let Ok(v) = value.to_str() {
                trailer_names.extend(v.split(',').filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok()));
            }
        }
        push_field(w, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in head.extra {
        push_field(w, name.as_str().as_bytes(), value);
    }
    let declared = content_length(headers).ok().flatten();
    let (framing, body) = if body.is_end_stream() {
        // An empty body keeps a declared `Content-Length: 0` (some servers want it on POST).
        if declared == Some(0) {
            push_field(w, b"content-length", b"0");
        }
        (ReqFraming::None, None)
    } else if let Some(n) = declared.or_else(|| body.size_hint().exact()) {
        w.extend_from_slice(b"content-length: ");
        push_decimal(w, n);
        w.extend_from_slice(b"\r\n");
        (ReqFraming::Length(n), Some(body))
    } else if matches!(*method, Method::GET | Method::HEAD | Method::CONNECT) {
        // Almost never a body; one of unknown size is not sent (as hyper does).
        (ReqFraming::None, None)
    } else {
        push_field(w, b"transfer-encoding", b"chunked");
        (ReqFraming::Chunked, Some(body))
    };
    w.extend_from_slice(b"\r\n");
    let left = match framing {
        ReqFraming::Length(n) => n,
        _ => 0,
    };
    Sender {
        finished: body.is_none(),
        body,
        framing,
        left,
        data: Bytes::new(),
        wpos: 0,
        chunk_open: false,
        trailer_names,
    }
}

/// A response body read from an upstream HTTP/1.1 connection. Its frames are slices of the
/// connection's read buffer; when the response is complete the connection goes back to its pool
/// (or closes when it cannot carry another request). Dropped early, the connection closes.
pub struct H1Body {
    conn: Option<H1Conn>,
    /// The rest of the request, when the answer came before it was all written.
    sender: Option<Sender>,
    framing: RespFraming,
    chunk: Chunk,
    keep_alive: bool,
    pool: Option<PoolReturn>,
}

impl H1Body {
    /// The response has been read whole: the connection goes back to its pool if it can carry
    /// another request, else it closes.
    fn complete(&mut self) {
        self.framing = RespFraming::Empty;
        let Some(conn) = self.conn.take() else { return };
        // The request must have been written whole, and no bytes may follow the response.
        let reusable = self.keep_alive && self.sender.is_none() && conn.rbuf.is_empty();
        self.sender = None;
        if !reusable {
            return;
        }
        match self.pool.take() {
            Some(p) => p.cluster.release_h1(&p.host, conn),
            None => self.conn = Some(conn),
        }
    }

    /// The connection after a complete response, when it can be reused and no pool took it.
    pub fn take_reusable(&mut self) -> Option<H1Conn> {
        if self.framing == RespFraming::Empty {
            self.conn.take()
        } else {
            None
        }
    }

    fn fail(&mut self, e: H1Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.sender = None;
        self.framing = RespFraming::Empty;
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.framing == RespFraming::Empty {
            return Poll::Ready(None);
        }
        let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
        // The rest of the request goes on while the response arrives.
        if let Some(s) = this.sender.as_mut() {
            match poll_send(s, conn, cx) {
                Poll::Ready(Ok(())) => this.sender = None,
                Poll::Ready(Err(_)) => {
                    // The request cannot be finished; the response may still be read, but the
                    // connection is out of step afterwards.
                    this.keep_alive = false;
                    this.sender = None;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let conn = this.conn.as_mut().expect("connection present while reading");
            match this.framing {
                RespFraming::Empty => return Poll::Ready(None),
                RespFraming::Length(left) => {
                    if !conn.rbuf.is_empty() {
                        let take = left.min(conn.rbuf.len() as u64) as usize;
                        let data = conn.rbuf.split_to(take).freeze();
                        if take as u64 == left {
                            this.complete();
                        } else {
                            this.framing = RespFraming::Length(left - take as u64);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                RespFraming::Chunked => {
                    if !conn.rbuf.is_empty() {
                        match decode_chunked(&mut this.chunk, &mut conn.rbuf) {
                            Err(e) => return this.fail(H1Error::Invalid(e)),
                            Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                            Ok(Decoded::Trailers(t)) => {
                                this.complete();
                                return Poll::Ready(Some(Ok(Frame::trailers(t))));
                            }
                            Ok(Decoded::End) => {
                                this.complete();
                                return Poll::Ready(None);
                            }
                            Ok(Decoded::NeedMore) => {}
                        }
                    }
                }
                RespFraming::Close => {
                    if !conn.rbuf.is_empty() {
                        let data = conn.rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == RespFraming::Close => {
                    this.conn = None;
                    this.framing = RespFraming::Empty;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(H1Error::Closed),
                Ok(_) => {}
                Err(e) => return this.fail(H1Error::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == RespFraming::Empty
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            RespFraming::Empty => SizeHint::with_exact(0),
            RespFraming::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// When a pooled connection was returned (for the pool's idle timeout).
pub struct Idle {
    pub conn: H1Conn,
    pub since: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn parse(raw: &str, method: Method) -> Result<Option<ParsedHead>, H1Error> {
        let mut buf = BytesMut::from(raw.as_bytes());
        parse_head(&mut buf, &method)
    }

    #[test]
    fn response_heads_decide_framing_and_reuse() {
        use RespFraming::*;
        let get = Method::GET;
        let cases: &[(&str, Method, u16, RespFraming, bool)] = &[
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", get.clone(), 200, Length(5), true),
            ("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n", get.clone(), 200, Length(5), true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", get.clone(), 200, Chunked, true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", get.clone(), 200, Chunked, true),
            // Both framings: chunked wins, and the connection is not trusted again.
            ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", get.clone(), 200, Chunked, false),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", get.clone(), 200, Close, false),
            ("HTTP/1.1 200 OK\r\n\r\n", get.clone(), 200, Close, false),
            ("HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", get.clone(), 204, Empty, true),
            ("HTTP/1.1 304 Not Modified\r\n\r\n", get.clone(), 304, Empty, true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", Method::HEAD, 200, Empty, true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", get.clone(), 200, Length(0), false),
            ("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n", get.clone(), 200, Length(0), false),
            ("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", get.clone(), 200, Length(1), false),
            ("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", get.clone(), 200, Length(1), true),
            // Informational responses before the real one are skipped.
            ("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", get.clone(), 201, Length(0), true),
        ];
        for (raw, method, status, framing, keep_alive) in cases {
            let head = parse(raw, method.clone()).unwrap().unwrap_or_else(|| panic!("incomplete: {raw:?}"));
            assert_eq!(head.response.status().as_u16(), *status, "{raw:?}");
            assert_eq!(head.framing, *framing, "{raw:?}");
            assert_eq!(head.keep_alive, *keep_alive, "{raw:?}");
        }
        let both = parse(cases[4].0, Method::GET).unwrap().unwrap();
        assert!(!both.response.headers().contains_key(header::CONTENT_LENGTH), "chunked overrides content-length");
    }

    #[test]
    fn broken_response_heads_are_protocol_errors() {
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("x-{i}: v\r\n")).collect();
        let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        let cases: Vec<&str> = vec![
            "garbage\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            &many,
        ];
        for raw in cases {
            let got = parse(raw, Method::GET);
            assert!(matches!(got, Err(H1Error::Invalid(_))), "{raw:?}: {got:?}");
        }
        // An incomplete head waits for more bytes, up to the limit.
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Len", Method::GET).unwrap().is_none());
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert!(matches!(parse(&huge, Method::GET), Err(H1Error::Invalid(_))));
    }

    /// A request body of unknown length, given as frames.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn frames(parts: &[&str], trailers: Option<(&str, &str)>) -> ProxyBody {
        let mut q: std::collections::VecDeque<Frame<Bytes>> =
            parts.iter().map(|p| Frame::data(Bytes::copy_from_slice(p.as_bytes()))).collect();
        if let Some((k, v)) = trailers {
            let mut t = HeaderMap::new();
            t.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            q.push_back(Frame::trailers(t));
        }
        crate::body::boxed(Frames(q))
    }

    /// An upstream on loopback that, per answer, reads one request head (and `body_len` more
    /// bytes), records what it read, then writes the answer. After the last answer it closes
    /// the connection, or with `hold` waits for the client to close it.
    async fn upstream(
        answers: Vec<(usize, &'static str)>,
        hold: bool,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = Vec::new();
            for (body_len, answer) in answers {
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let mut tmp = [0u8; 4096];
                    let n = s.read(&mut tmp).await.unwrap();
                    if n == 0 {
                        return seen;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                };
                while buf.len() < head_end + body_len {
                    let mut tmp = [0u8; 4096];
                    let n = s.read(&mut tmp).await.unwrap();
                    assert!(n > 0, "request body cut short");
                    buf.extend_from_slice(&tmp[..n]);
                }
                let msg: Vec<u8> = buf.drain(..head_end + body_len).collect();
                seen.push(String::from_utf8(msg).unwrap());
                s.write_all(answer.as_bytes()).await.unwrap();
            }
            if hold {
                let mut tmp = [0u8; 64];
                while matches!(s.read(&mut tmp).await, Ok(n) if n > 0) {}
            }
            seen
        });
        (addr, task)
    }

    async fn connect(addr: std::net::SocketAddr) -> H1Conn {
        H1Conn::new(TcpStream::connect(addr).await.unwrap(), None)
    }

    fn head<'a>(method: &'a Method, target: &'a str, headers: &'a HeaderMap) -> Head<'a> {
        Head { method, target, host: None, headers, extra: &[] }
    }

    async fn read_all(resp: Response<H1Body>) -> (u16, Vec<u8>, Option<HeaderMap>, Option<H1Conn>) {
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(f) = body.frame().await {
            let f = f.unwrap();
            match f.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        (status, data, trailers, body.take_reusable())
    }

    #[tokio::test]
    async fn requests_are_framed_and_a_connection_carries_several() {
        let (addr, server) = upstream(
            vec![
                (0, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"),
                (5, "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nsecond\r\n0\r\nx-t: 1\r\n\r\n"),
                (30, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
                (0, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfinal"),
            ],
            false,
        )
        .await;
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("svc"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        let conn = connect(addr).await;
        // 1. GET without a body; Host replaced, an extra field added, the message's framing dropped.
        let attempt = HeaderName::from_static("x-attempt");
        let h = Head {
            method: &Method::GET,
            target: "/a?b=c",
            host: Some("other"),
            headers: &headers,
            extra: &[(&attempt, b"2")],
        };
        let resp = send(conn, h, crate::body::empty(), None).await.unwrap();
        let (status, data, _, conn) = read_all(resp).await;
        assert_eq!((status, &data[..]), (200, &b"first"[..]));
        let conn = conn.expect("reusable after a complete response");
        // 2. POST with a body of known size.
        let mut post = HeaderMap::new();
        post.insert(header::HOST, HeaderValue::from_static("svc"));
        let resp = send(conn, head(&Method::POST, "/p", &post), crate::body::full("hello"), None).await.unwrap();
        let (status, data, trailers, conn) = read_all(resp).await;
        assert_eq!((status, &data[..]), (201, &b"second"[..]));
        assert_eq!(trailers.unwrap().get("x-t").unwrap(), "1");
        let conn = conn.expect("reusable after chunked response");
        // 3. A body of unknown size goes chunked, with its declared trailer.
        let mut chunked = post.clone();
        chunked.insert(header::TRAILER, HeaderValue::from_static("x-sum"));
        let body = frames(&["ab", "", "cde"], Some(("x-sum", "5")));
        let resp = send(conn, head(&Method::PUT, "/c", &chunked), body, None).await.unwrap();
        let (_, _, _, conn) = read_all(resp).await;
        let conn = conn.expect("reusable");
        assert_eq!(conn.uses, 3);
        // 4. `Connection: close` ends the connection's use.
        let resp = send(conn, head(&Method::GET, "/", &post), crate::body::empty(), None).await.unwrap();
        let (_, data, _, conn) = read_all(resp).await;
        assert_eq!(data, b"final");
        assert!(conn.is_none(), "Connection: close is not pooled");
        let seen = server.await.unwrap();
        assert_eq!(seen[0], "GET /a?b=c HTTP/1.1\r\nhost: other\r\nx-attempt: 2\r\n\r\n");
        assert_eq!(seen[1], "POST /p HTTP/1.1\r\nhost: svc\r\ncontent-length: 5\r\n\r\nhello");
        assert_eq!(
            seen[2],
            "PUT /c HTTP/1.1\r\nhost: svc\r\ntrailer: x-sum\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\nx-sum: 5\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_get_with_a_body_of_unknown_size_sends_none() {
        let (addr, server) = upstream(vec![(0, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")], false).await;
        let h = HeaderMap::new();
        let resp = send(connect(addr).await, head(&Method::GET, "/", &h), frames(&["x"], None), None).await.unwrap();
        let (_, _, _, conn) = read_all(resp).await;
        assert!(conn.is_some());
        assert_eq!(server.await.unwrap()[0], "GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_response_until_close_is_read_whole_and_the_connection_not_reused() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\npart one, ").await.unwrap();
            s.write_all(b"part two").await.unwrap();
        });
        let h = HeaderMap::new();
        let resp = send(connect(addr).await, head(&Method::GET, "/", &h), crate::body::empty(), None).await.unwrap();
        let (_, data, _, conn) = read_all(resp).await;
        assert_eq!(data, b"part one, part two");
        assert!(conn.is_none());
    }

    #[tokio::test]
    async fn upstream_failures_before_the_head_are_errors() {
        // (what the upstream writes before closing, the expected error)
        let cases: &[(&[u8], &str)] =
            &[(b"", "closed"), (b"HTTP/1.1 200 OK\r\nContent-", "closed"), (b"SSH-2.0-OpenSSH\r\n\r\n", "invalid")];
        for (written, want) in cases {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let bytes = written.to_vec();
            tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                s.write_all(&bytes).await.unwrap();
            });
            let h = HeaderMap::new();
            let got = send(connect(addr).await, head(&Method::GET, "/", &h), crate::body::empty(), None).await;
            let kind = match got {
                Err(H1Error::Closed) | Err(H1Error::Io(_)) => "closed",
                Err(H1Error::Invalid(_)) => "invalid",
                other => panic!("{written:?}: {:?}", other.map(|r| r.status())),
            };
            assert_eq!(kind, *want, "{:?}", String::from_utf8_lossy(written));
        }
    }

    #[tokio::test]
    async fn a_response_cut_short_fails_the_body_and_bytes_after_it_prevent_reuse() {
        let (addr, _server) = upstream(vec![(0, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")], false).await;
        let h = HeaderMap::new();
        let resp = send(connect(addr).await, head(&Method::GET, "/", &h), crate::body::empty(), None).await.unwrap();
        // The server task ends after its answer, closing the socket mid-body.
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "short");
        assert!(body.frame().await.unwrap().is_err(), "a body cut short is an error, not an end");

        let (addr, _server) = upstream(vec![(0, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")], true).await;
        let resp = send(connect(addr).await, head(&Method::GET, "/", &h), crate::body::empty(), None).await.unwrap();
        let (_, data, _, conn) = read_all(resp).await;
        assert_eq!(data, b"ok");
        assert!(conn.is_none(), "unasked bytes after a response leave the connection out of step");
    }

    #[tokio::test]
    async fn an_answer_before_the_request_body_ends_is_passed_on_and_the_connection_closed() {
        let (addr, _server) =
            upstream(vec![(0, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")], true).await;
        // A body that never ends: the upstream answers after the head alone.
        struct Endless;
        impl Body for Endless {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                Poll::Pending
            }
        }
        let h = HeaderMap::new();
        let resp =
            send(connect(addr).await, head(&Method::POST, "/", &h), crate::body::boxed(Endless), None).await.unwrap();
        let (status, _, _, conn) = read_all(resp).await;
        assert_eq!(status, 413);
        assert!(conn.is_none(), "the request was not written whole");
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_not_reusable() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.unwrap();
            let _ = close_rx.await;
        });
        let h = HeaderMap::new();
        let resp = send(connect(addr).await, head(&Method::GET, "/", &h), crate::body::empty(), None).await.unwrap();
        let (_, _, _, conn) = read_all(resp).await;
        let conn = conn.unwrap();
        assert!(conn.is_reusable());
        close_tx.send(()).unwrap();
        server.await.unwrap();
        // The reactor learns of the close within a few turns.
        let mut closed = false;
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            if !conn.is_reusable() {
                closed = true;
                break;
            }
        }
        assert!(closed, "a closed connection must not look reusable");
    }
}
