//! A read-side watcher for HTTP/1 connections that finds requests carrying both
//! `Content-Length` and `Transfer-Encoding`. hyper frames such a request by Transfer-Encoding
//! and drops the Content-Length (RFC 9112 allows it, then closes); we answer 400 instead, as
//! Envoy does, because the conflict is the signature of a smuggling attempt.
//!
//! It follows message framing (head, then a Content-Length or chunked body) over the bytes hyper
//! reads, counting request heads; when a head conflicts it records that request's index and
//! stops watching (hyper closes the connection after that request). Anything it cannot follow
//! (HTTP/2, upgrades, heads hyper will reject anyway) also stops the watch: hyper's own parser
//! remains the authority on validity.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared between the watcher and the request handler.
#[derive(Default)]
pub struct Verdicts {
    /// Index (0-based) of the first request whose head had both framing headers, plus one.
    conflict_plus_one: AtomicU64,
    /// Requests the handler has seen on this connection.
    seen: AtomicU64,
}

impl Verdicts {
    /// Called once per request, in order; true when this request's head was conflicting.
    pub fn next_request_conflicts(&self) -> bool {
        let i = self.seen.fetch_add(1, Relaxed);
        self.conflict_plus_one.load(Relaxed) == i + 1
    }
}

enum State {
    Head,
    Fixed(u64),
    Chunk(Chunk),
    Off,
}

#[derive(Clone, Copy)]
enum Chunk {
    /// Reading the hex size (and ignoring extensions until LF).
    Size {
        size: u64,
        digits: u32,
        ext: bool,
    },
    Data(u64),
    /// CRLF after a chunk's data.
    DataEnd {
        cr: bool,
    },
    /// Trailer lines after the last chunk; `len` is the current line's length.
    Trailer {
        len: usize,
    },
}

struct Framing {
    state: State,
    head: Vec<u8>,
    max_head: usize,
    requests: u64,
    verdicts: Arc<Verdicts>,
}

impl Framing {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Fixed(n) => {
                    let take = (*n).min(data.len() as u64) as usize;
                    *n -= take as u64;
                    data = &data[take..];
                    if *n == 0 {
                        self.state = State::Head;
                    }
                }
                State::Head => {
                    // Leading CRLFs between messages are allowed (RFC 9112 §2.2).
                    if self.head.is_empty() {
                        let skip = data.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                        // Usually a whole head arrives in one read: read it where it is.
                        match parse_head(data) {
                            Parsed::Complete(len, head) => {
                                data = &data[len..];
                                self.on_head(head);
                                continue;
                            }
                            Parsed::Invalid => {
                                self.on_head(None);
                                return;
                            }
                            Parsed::Partial => {}
                        }
                    }
                    let before = self.head.len();
                    let want = self.max_head.saturating_sub(before);
                    let chunk = &data[..data.len().min(want.max(1))];
                    self.head.extend_from_slice(chunk);
                    let search_from = before.saturating_sub(3);
                    match find_end(&self.head[search_from..]) {
                        Some(end) => {
                            let head_len = search_from + end;
                            let consumed = head_len - before;
                            data = &data[consumed..];
                            let head = match parse_head(&self.head[..head_len]) {
                                Parsed::Complete(_, head) => head,
                                _ => None,
                            };
                            self.on_head(head);
                            self.head.clear();
                        }
                        None if self.head.len() >= self.max_head => {
                            self.state = State::Off; // hyper answers 431
                            return;
                        }
                        None => data = &data[chunk.len()..],
                    }
                }
                State::Chunk(c) => {
                    let (used, next) = step_chunk(*c, data);
                    data = &data[used..];
                    self.state = match next {
                        Some(c) => State::Chunk(c),
                        None => State::Head,
                    };
                }
            }
        }
    }

    /// Counts a request head and sets what follows it; None: a head the watcher does not
    /// follow (unparsable, HTTP/2 preface, CONNECT), which ends the watch.
    fn on_head(&mut self, head: Option<HeadInfo>) {
        let index = self.requests;
        self.requests += 1;
        let Some(head) = head else {
            self.state = State::Off;
            return;
        };
        if head.te && head.cl.is_some() {
            self.verdicts.conflict_plus_one.store(index + 1, Relaxed);
            self.state = State::Off;
            return;
        }
        self.state = if head.upgrade {
            State::Off
        } else if head.te {
            State::Chunk(Chunk::Size { size: 0, digits: 0, ext: false })
        } else {
            match head.cl {
                Some(0) | None => State::Head,
                Some(n) => State::Fixed(n),
            }
        };
    }
}

/// What the watcher needs from a request head.
struct HeadInfo {
    cl: Option<u64>,
    te: bool,
    upgrade: bool,
}

enum Parsed {
    /// A complete head of this many bytes; None when it is one the watcher does not follow.
    Complete(usize, Option<HeadInfo>),
    Partial,
    Invalid,
}

/// Parses the request head at the start of `b` (without initialising a header array).
fn parse_head(b: &[u8]) -> Parsed {
    let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(b, &mut storage) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    if req.method == Some("PRI") || req.method == Some("CONNECT") {
        return Parsed::Complete(len, None);
    }
    let mut head = HeadInfo { cl: None, te: false, upgrade: false };
    for h in req.headers.iter() {
        // Only names of these lengths can matter: most fields are skipped by one comparison.
        match h.name.len() {
            14 if h.name.eq_ignore_ascii_case("content-length") => {
                match std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()) {
                    Some(n) => head.cl = Some(n),
                    None => return Parsed::Complete(len, None),
                }
            }
            17 if h.name.eq_ignore_ascii_case("transfer-encoding") => head.te = true,
            7 if h.name.eq_ignore_ascii_case("upgrade") => head.upgrade = true,
            _ => {}
        }
    }
    Parsed::Complete(len, Some(head))
}

/// Offset just past the first CRLFCRLF (or LFLF), if any.
fn find_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Advances the chunked-body machine; returns bytes used and the next state (None: body done).
fn step_chunk(mut c: Chunk, data: &[u8]) -> (usize, Option<Chunk>) {
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        c = match c {
            Chunk::Size { size, digits, ext } => {
                i += 1;
                match b {
                    b'\n' if digits == 0 => return (i, None), // malformed: hyper rejects; stop tracking
                    b'\n' if size == 0 => Chunk::Trailer { len: 0 },
                    b'\n' => Chunk::Data(size),
                    _ if ext => Chunk::Size { size, digits, ext },
                    b';' | b' ' | b'\t' | b'\r' => Chunk::Size { size, digits, ext: true },
                    _ => match (b as char).to_digit(16) {
                        Some(d) if digits < 16 => Chunk::Size { size: size * 16 + d as u64, digits: digits + 1, ext },
                        _ => return (i, None),
                    },
                }
            }
            Chunk::Data(n) => {
                let take = n.min((data.len() - i) as u64);
                i += take as usize;
                if n - take == 0 {
                    Chunk::DataEnd { cr: false }
                } else {
                    Chunk::Data(n - take)
                }
            }
            Chunk::DataEnd { cr } => {
                i += 1;
                match b {
                    b'\r' if !cr => Chunk::DataEnd { cr: true },
                    b'\n' => Chunk::Size { size: 0, digits: 0, ext: false },
                    _ => return (i, None),
                }
            }
            Chunk::Trailer { len } => {
                i += 1;
                match b {
                    b'\n' if len == 0 => return (i, None), // empty line: message done
                    b'\n' => Chunk::Trailer { len: 0 },
                    b'\r' => Chunk::Trailer { len },
                    _ => Chunk::Trailer { len: len + 1 },
                }
            }
        };
    }
    (i, Some(c))
}

/// The connection's IO with the watcher on its read side.
pub struct Guarded<IO> {
    io: IO,
    framing: Framing,
}

impl<IO> Guarded<IO> {
    pub fn new(io: IO, max_head: usize) -> (Guarded<IO>, Arc<Verdicts>) {
        let verdicts = Arc::new(Verdicts::default());
        let framing =
            Framing { state: State::Head, head: Vec::new(), max_head, requests: 0, verdicts: verdicts.clone() };
        (Guarded { io, framing }, verdicts)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let this = &mut *self;
            if !matches!(this.framing.state, State::Off) {
                this.framing.feed(&buf.filled()[before..]);
            }
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, b)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, b)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (Arc<Verdicts>, u64) {
        let verdicts = Arc::new(Verdicts::default());
        let mut f =
            Framing { state: State::Head, head: Vec::new(), max_head: 8192, requests: 0, verdicts: verdicts.clone() };
        for c in chunks {
            f.feed(c);
        }
        (verdicts, f.requests)
    }

    fn conflict_index(v: &Verdicts) -> Option<u64> {
        v.conflict_plus_one.load(Relaxed).checked_sub(1)
    }

    #[test]
    fn framing_is_followed_across_bodies_and_split_reads() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
        // Whole, and split at every offset: the conflict is always the 4th request (index 3).
        let (v, n) = run(&[stream]);
        assert_eq!((conflict_index(&v), n), (Some(3), 4));
        for cut in 1..stream.len() {
            let (v, _) = run(&[&stream[..cut], &stream[cut..]]);
            assert_eq!(conflict_index(&v), Some(3), "cut at {cut}");
        }
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(conflict_index(&run(&bytewise).0), Some(3));
    }

    #[test]
    fn body_bytes_that_look_like_headers_are_not_heads() {
        let body: &[u8] = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
        let stream = [head.as_bytes(), body].concat();
        let (v, n) = run(&[&stream]);
        assert_eq!(conflict_index(&v), None, "the conflicting text is body, not a request");
        assert_eq!(n, 1);
    }

    #[test]
    fn verdicts_are_read_in_request_order() {
        let v = Verdicts::default();
        v.conflict_plus_one.store(2, Relaxed); // request index 1
        assert!(!v.next_request_conflicts());
        assert!(v.next_request_conflicts());
        assert!(!v.next_request_conflicts());
    }

    #[test]
    fn garbage_and_h2_stop_the_watch_without_panicking() {
        for input in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"\x16\x03\x01garbage\r\n\r\n",
            b"\r\n\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let (v, _) = run(&[input]);
            assert_eq!(conflict_index(&v), None);
        }
    }
}

#[cfg(test)]
mod random_input {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Arbitrary bytes in arbitrary read sizes never panic the watcher, and it never reports a
    /// request it did not count.
    #[test]
    fn random_streams_never_panic() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let alphabet: &[&[u8]] = &[
            b"\r\n",
            b"\r\n\r\n",
            b"GET / HTTP/1.1",
            b"Content-Length: 3",
            b"Transfer-Encoding: chunked",
            b"0",
            b"5",
            b"ff;x",
            b":",
            b"x",
        ];
        for _ in 0..5_000 {
            let mut stream = Vec::new();
            for _ in 0..rng.gen_range(0..40) {
                if rng.gen_bool(0.8) {
                    stream.extend_from_slice(alphabet[rng.gen_range(0..alphabet.len())]);
                } else {
                    stream.push(rng.gen());
                }
            }
            let verdicts = Arc::new(Verdicts::default());
            let mut f =
                Framing { state: State::Head, head: Vec::new(), max_head: 64, requests: 0, verdicts: verdicts.clone() };
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = rng.gen_range(1..=rest.len());
                f.feed(&rest[..n]);
                rest = &rest[n..];
            }
            assert!(verdicts.conflict_plus_one.load(Relaxed) <= f.requests);
        }
    }
}
