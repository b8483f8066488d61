//! Body types on the request path: boxed bodies, a replayable request body for retries, and a
//! response body that returns its HTTP/1 connection to the pool when the response is complete.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type sent upstream and downstream.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> ProxyBody {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn boxed<B>(b: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// Ends a body with an error when no frame arrives for `idle` (stream idle timeout). The timer
/// is armed only when a poll actually waits, so bodies whose bytes are already there (most
/// small responses) never touch the timer wheel.
pub struct IdleTimeout {
    inner: ProxyBody,
    idle: std::time::Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set when the timer fired; the caller reads it to flag the stream (SI).
    pub fired: Arc<std::sync::atomic::AtomicBool>,
}

impl IdleTimeout {
    pub fn new(inner: ProxyBody, idle: std::time::Duration) -> IdleTimeout {
        IdleTimeout { inner, idle, sleep: None, fired: Arc::new(std::sync::atomic::AtomicBool::new(false)) }
    }
}

impl Body for IdleTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.sleep = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let idle = this.idle;
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.fired.store(true, std::sync::atomic::Ordering::Relaxed);
                        Poll::Ready(Some(Err("stream idle timeout".into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts the bytes of a body as they pass.
pub struct Counted {
    inner: ProxyBody,
    counter: Arc<std::sync::atomic::AtomicU64>,
}

impl Counted {
    pub fn new(inner: ProxyBody) -> (Counted, Arc<std::sync::atomic::AtomicU64>) {
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        (Counted { inner, counter: counter.clone() }, counter)
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                self.counter.fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Passes a request body through and records whether it ended in an error (the client's body
/// broke), so a failed attempt can be blamed on the client rather than the upstream.
pub struct WatchErrors {
    inner: ProxyBody,
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl WatchErrors {
    pub fn new(inner: ProxyBody) -> (WatchErrors, Arc<std::sync::atomic::AtomicBool>) {
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        (WatchErrors { inner, failed: failed.clone() }, failed)
    }
}

impl Body for WatchErrors {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &r {
            self.failed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body shared by all attempts of a request. Frames are forwarded as they arrive and
/// kept (up to `limit` bytes) so that a retry can replay them; once more than `limit` bytes have
/// passed, the copy is dropped and the body can no longer be replayed.
pub struct ReplayBody {
    shared: Arc<Mutex<ReplayState>>,
    cursor: usize,
    /// The attempt this reader belongs to: once a newer attempt starts, this one may no longer
    /// pull from the client (it would steal frames and wake-ups from the live attempt).
    generation: u64,
}

struct ReplayState {
    source: Option<ProxyBody>,
    frames: Vec<ReplayFrame>,
    /// Bytes held for replay, counting a fixed overhead per frame so that many tiny frames
    /// cannot hold far more memory than the limit says.
    buffered: usize,
    limit: usize,
    overflowed: bool,
    done: bool,
    /// The client's body failed (reset, malformed chunk): what was read is not the whole body
    /// and must never be replayed as if it were.
    failed: bool,
    /// Number of bytes that any attempt has pulled from the source (shared with the record, so
    /// logging the count does not keep the buffered frames alive).
    pulled: Arc<AtomicU64>,
    generation: u64,
    /// The task of the reader that last waited on the source, woken when a newer attempt takes
    /// over so that it notices it was superseded.
    parked: Option<Waker>,
}

/// What one held frame is charged beyond its payload.
const FRAME_OVERHEAD: usize = 64;

#[derive(Clone)]
enum ReplayFrame {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl ReplayBody {
    pub fn new(source: ProxyBody, limit: usize) -> ReplayBody {
        let done = source.is_end_stream();
        ReplayBody {
            shared: Arc::new(Mutex::new(ReplayState {
                source: Some(source),
                frames: Vec::new(),
                buffered: 0,
                limit,
                overflowed: false,
                done,
                failed: false,
                pulled: Arc::new(AtomicU64::new(0)),
                generation: 0,
                parked: None,
            })),
            cursor: 0,
            generation: 0,
        }
    }

    /// A reader for the next attempt, or None when the body can no longer be replayed. Readers
    /// of earlier attempts stop pulling from the client: they fail once they reach what is held.
    pub fn next_attempt(&self) -> Option<ReplayBody> {
        let mut st = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if st.overflowed || st.failed {
            return None;
        }
        st.generation += 1;
        let generation = st.generation;
        if let Some(w) = st.parked.take() {
            w.wake();
        }
        Some(ReplayBody { shared: self.shared.clone(), cursor: 0, generation })
    }

    /// A reader of the complete body (a mirror), or None unless all of it is held.
    pub fn complete_copy(&self) -> Option<ReplayBody> {
        let st = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if !st.done || st.overflowed || st.failed {
            return None;
        }
        Some(ReplayBody { shared: self.shared.clone(), cursor: 0, generation: st.generation })
    }

    /// The count of bytes read from the client, readable after the body is gone.
    pub fn received_counter(&self) -> Arc<AtomicU64> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).pulled.clone()
    }

    /// True when reading the client's body failed.
    pub fn failed(&self) -> bool {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).failed
    }

    /// True when nothing has been read from the client yet, or everything read is still held.
    pub fn can_replay(&self) -> bool {
        let st = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        !st.failed && (!st.overflowed || st.pulled.load(Relaxed) == 0)
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut st = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        if this.cursor < st.frames.len() {
            let f = st.frames[this.cursor].clone();
            this.cursor += 1;
            return Poll::Ready(Some(Ok(match f {
                ReplayFrame::Data(d) => Frame::data(d),
                ReplayFrame::Trailers(t) => Frame::trailers(t),
            })));
        }
        if st.overflowed && this.cursor != usize::MAX {
            // Another reader overflowed the copy after this one started: its bytes are gone.
            return Poll::Ready(Some(Err("request body too large to replay".into())));
        }
        if st.failed {
            // Another reader saw the client's body fail: the bytes held are not the whole body.
            return Poll::Ready(Some(Err("request body failed".into())));
        }
        if st.done {
            return Poll::Ready(None);
        }
        if this.generation != st.generation {
            // A retry took over the client's body; this attempt is abandoned.
            return Poll::Ready(Some(Err("request body taken over by a retry".into())));
        }
        let Some(src) = st.source.as_mut() else { return Poll::Ready(None) };
        match Pin::new(src).poll_frame(cx) {
            Poll::Pending => {
                match &st.parked {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => st.parked = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                st.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                st.done = true;
                st.failed = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map(|d| d.len()).unwrap_or(0);
                st.pulled.fetch_add(len as u64, Relaxed);
                if !st.overflowed {
                    if st.buffered + len + FRAME_OVERHEAD > st.limit {
                        st.overflowed = true;
                        st.frames.clear();
                        st.buffered = 0;
                    } else if let Some(d) = frame.data_ref() {
                        st.frames.push(ReplayFrame::Data(d.clone()));
                        st.buffered += len + FRAME_OVERHEAD;
                    } else if let Some(t) = frame.trailers_ref() {
                        st.frames.push(ReplayFrame::Trailers(t.clone()));
                        st.buffered += FRAME_OVERHEAD;
                    }
                }
                // Keep this reader's cursor past what it has seen (buffered or not).
                this.cursor = if st.overflowed { usize::MAX } else { st.frames.len() };
                if st.source.as_ref().map(|s| s.is_end_stream()).unwrap_or(true) {
                    st.done = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let st = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        st.done && !st.failed && (self.cursor >= st.frames.len())
    }

    fn size_hint(&self) -> SizeHint {
        let st = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if st.done && !st.overflowed {
            let rest: usize = st
                .frames
                .iter()
                .skip(self.cursor)
                .map(|f| if let ReplayFrame::Data(d) = f { d.len() } else { 0 })
                .sum();
            return SizeHint::with_exact(rest as u64);
        }
        match st.source.as_ref() {
            Some(s) if self.cursor == 0 && st.pulled.load(Relaxed) == 0 => s.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    fn stream(chunks: &[&'static str]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            chunks.iter().map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))).collect();
        boxed(StreamBody::new(futures_util::stream::iter(frames)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_ends_after_the_idle_timeout() {
        // A body that yields one frame, then never another.
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![Ok(Frame::data(Bytes::from_static(b"a")))];
        let stalled = futures_util::stream::iter(frames).chain(futures_util::stream::pending());
        let mut body = IdleTimeout::new(boxed(StreamBody::new(stalled)), std::time::Duration::from_secs(30));
        let fired = body.fired.clone();
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "a");
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "stream idle timeout");
        assert!(fired.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_body_never_times_out() {
        let mut body = IdleTimeout::new(stream(&["ab", "cd"]), std::time::Duration::from_millis(1));
        assert_eq!(BodyExt::collect(&mut body).await.unwrap().to_bytes(), "abcd");
        assert!(!body.fired.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_small_body_replays_for_every_attempt() {
        let body = ReplayBody::new(stream(&["ab", "cd"]), 1000);
        let first = body.next_attempt().unwrap();
        assert_eq!(first.collect().await.unwrap().to_bytes(), "abcd");
        let second = body.next_attempt().unwrap();
        assert_eq!(second.collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(body.received_counter().load(Relaxed), 4);
    }

    #[tokio::test]
    async fn a_retry_during_the_first_attempt_sees_the_whole_body() {
        let body = ReplayBody::new(stream(&["ab", "cd", "ef"]), 1000);
        let mut first = body.next_attempt().unwrap();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        let second = body.next_attempt().unwrap();
        assert_eq!(second.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn a_body_that_failed_is_never_replayed_as_a_shorter_one() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(Bytes::from_static(b"hello"))), Err("malformed chunk".into())];
        let body = ReplayBody::new(boxed(StreamBody::new(futures_util::stream::iter(frames))), 1000);
        let first = body.next_attempt().unwrap();
        assert!(first.collect().await.is_err());
        assert!(body.failed());
        assert!(body.next_attempt().is_none(), "no new attempt may start from a failed body");
        assert!(!body.can_replay() && body.complete_copy().is_none());
    }

    #[tokio::test]
    async fn watch_errors_records_a_failed_body() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(Bytes::from_static(b"x"))), Err("reset".into())];
        let (ok, ok_failed) = WatchErrors::new(stream(&["a", "b"]));
        let (bad, bad_failed) = WatchErrors::new(boxed(StreamBody::new(futures_util::stream::iter(frames))));
        assert!(ok.collect().await.is_ok() && bad.collect().await.is_err());
        assert!(!ok_failed.load(std::sync::atomic::Ordering::Relaxed));
        assert!(bad_failed.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_large_body_streams_once_and_cannot_replay() {
        let body = ReplayBody::new(stream(&["abc", "def"]), 4 + FRAME_OVERHEAD);
        let first = body.next_attempt().unwrap();
        assert_eq!(first.collect().await.unwrap().to_bytes(), "abcdef");
        assert!(body.shared.lock().unwrap().overflowed);
        assert!(body.next_attempt().is_none());
        assert_eq!(body.received_counter().load(Relaxed), 6);
    }

    #[tokio::test]
    async fn many_tiny_frames_count_their_overhead() {
        let chunks = ["x"; 20];
        let body = ReplayBody::new(stream(&chunks), 10 * (1 + FRAME_OVERHEAD));
        assert_eq!(body.next_attempt().unwrap().collect().await.unwrap().to_bytes().len(), 20);
        assert!(body.next_attempt().is_none(), "20 frames of one byte exceed a 10-frame budget");
    }

    #[tokio::test]
    async fn a_superseded_attempt_stops_pulling_and_is_woken() {
        // The client sends one frame, then waits: the first attempt parks on the source.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        let body = ReplayBody::new(boxed(StreamBody::new(frames)), 1000);
        tx.send(Ok(Frame::data(Bytes::from_static(b"ab")))).await.unwrap();
        let mut first = body.next_attempt().unwrap();
        assert_eq!(first.frame().await.unwrap().unwrap().into_data().unwrap(), "ab");
        let waiting = tokio::spawn(async move { first.frame().await.map(|r| r.is_err()) });
        tokio::task::yield_now().await;
        // A retry starts: the first reader is woken and fails instead of stealing frames.
        let mut second = body.next_attempt().unwrap();
        let stale_failed = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert_eq!(stale_failed, Some(true));
        assert_eq!(second.frame().await.unwrap().unwrap().into_data().unwrap(), "ab");
        tx.send(Ok(Frame::data(Bytes::from_static(b"cd")))).await.unwrap();
        drop(tx);
        assert_eq!(second.collect().await.unwrap().to_bytes(), "cd");
    }
}
