//! Request and response bodies on the proxy path.
//!
//! [`ReplayBody`] streams the client's request body upstream while keeping a
//! copy (up to a bound) so a retry can send it again: the retry is possible
//! only if the copy never overflowed. Copies are `Bytes` clones (a refcount),
//! not memcpy. [`ResponseBody`] streams the upstream response to the client,
//! counting bytes and reading `grpc-status` from trailers, and holds the
//! request's record and permits until the last byte is out.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::metrics::RequestRecord;
use crate::upstream::Lease;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the waypoint sends downstream.
pub type RespBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A small in-memory response body.
pub fn full(b: impl Into<Bytes>) -> RespBody {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> RespBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

#[derive(Debug)]
struct Shared<B> {
    /// The rest of the client's body, not yet read by any attempt.
    incoming: Option<B>,
    /// Every frame read so far, while `recorded <= limit`.
    chunks: Vec<Bytes>,
    recorded: u64,
    limit: u64,
    /// More than `limit` was read: the beginning is lost, no replay.
    overflow: bool,
    /// The client's body ended (all of it is in `chunks` unless overflowed).
    done: bool,
    trailers: Option<HeaderMap>,
    /// Bytes read from the client in total.
    total: u64,
}

/// One attempt's view of the request body. See the module docs.
#[derive(Debug)]
pub struct ReplayBody<B = Incoming> {
    shared: Arc<Mutex<Shared<B>>>,
    /// Next recorded chunk this attempt sends.
    pos: usize,
    /// Bytes of the body this attempt has sent. Below `Shared::total` after
    /// an overflow means another attempt read bytes that are no longer kept:
    /// this attempt cannot send the body whole, so it fails instead of
    /// sending a body with a hole in it.
    offset: u64,
    trailers_sent: bool,
}

impl<B: Body> ReplayBody<B> {
    /// Wraps the client's body, keeping up to `limit` bytes for replays
    /// (0: never replay a non-empty body).
    pub fn new(incoming: B, limit: u64) -> ReplayBody<B> {
        let done = incoming.is_end_stream();
        ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                incoming: if done { None } else { Some(incoming) },
                chunks: Vec::new(),
                recorded: 0,
                limit,
                overflow: false,
                done,
                trailers: None,
                total: 0,
            })),
            pos: 0,
            offset: 0,
            trailers_sent: false,
        }
    }

    /// Whether a retry could still send the whole body: false once more than
    /// the bound was read (the beginning is no longer kept).
    pub fn can_replay(&self) -> bool {
        !self.lock().overflow
    }

    /// A fresh view from the start, for a retry; `None` if the body cannot
    /// be replayed (it overflowed the bound).
    pub fn replay(&self) -> Option<ReplayBody<B>> {
        let s = self.lock();
        if s.overflow {
            return None;
        }
        Some(ReplayBody {
            shared: self.shared.clone(),
            pos: 0,
            offset: 0,
            trailers_sent: false,
        })
    }

    /// Bytes read from the client so far.
    pub fn bytes_read(&self) -> u64 {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared<B>> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = this.shared.lock().unwrap_or_else(|p| p.into_inner());
        if !s.overflow && this.pos < s.chunks.len() {
            let chunk = s.chunks[this.pos].clone();
            this.pos += 1;
            this.offset += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.offset < s.total {
            return Poll::Ready(Some(Err(
                "the request body is larger than the retry buffer and was partly sent by an \
                 earlier attempt, so it cannot be sent again; raise retry.maxBodyBytes to retry \
                 such requests"
                    .into(),
            )));
        }
        if s.done {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = s.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        loop {
            let Some(incoming) = s.incoming.as_mut() else {
                return Poll::Ready(None);
            };
            let frame = match Pin::new(&mut *incoming).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    s.done = true;
                    s.incoming = None;
                    this.trailers_sent = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            // Known ended now: say so with this frame (END_STREAM on it)
            // rather than with an extra empty frame after it.
            let ended = incoming.is_end_stream();
            match frame.into_data() {
                // Empty DATA frames carry nothing; forwarding them would
                // spend the upstream's allowance for them (h2 servers send
                // GOAWAY after 100 on a connection; gRPC clients end every
                // call with one).
                Ok(data) if data.is_empty() => {
                    if ended {
                        s.done = true;
                        s.incoming = None;
                        this.trailers_sent = true;
                        return Poll::Ready(None);
                    }
                }
                Ok(data) => {
                    let n = data.len() as u64;
                    s.total += n;
                    this.offset += n;
                    if !s.overflow {
                        if s.recorded + n > s.limit {
                            // Keeping more would turn retries into unbounded buffering.
                            s.overflow = true;
                            s.chunks = Vec::new();
                        } else {
                            s.recorded += n;
                            s.chunks.push(data.clone());
                            this.pos = s.chunks.len();
                        }
                    }
                    if ended {
                        s.done = true;
                        s.incoming = None;
                        this.trailers_sent = true;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Err(frame) => {
                    return match frame.into_trailers() {
                        Ok(t) => {
                            s.trailers = Some(t.clone());
                            s.done = true;
                            s.incoming = None;
                            this.trailers_sent = true;
                            Poll::Ready(Some(Ok(Frame::trailers(t))))
                        }
                        // Unknown frame kinds carry nothing we forward.
                        Err(_) => Poll::Ready(None),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.lock();
        // Not ended while this attempt has bytes it did not send: polling
        // reports the lost bytes as an error instead of an early end.
        s.done && self.offset >= s.total && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.lock();
        match &s.incoming {
            Some(i) if self.pos >= s.chunks.len() => i.size_hint(),
            Some(_) => SizeHint::default(),
            None if s.overflow => SizeHint::default(),
            None => {
                let rest: u64 = s.chunks[self.pos.min(s.chunks.len())..]
                    .iter()
                    .map(|c| c.len() as u64)
                    .sum();
                SizeHint::with_exact(rest)
            }
        }
    }
}

/// Things that must live as long as the response streams (permits, load guards).
pub type Hold = Box<dyn Send + Sync>;

/// The upstream response body on its way to the client. Records the request
/// when it ends (or is dropped: the client went away).
pub struct ResponseBody {
    /// None once handed to [`drain_rest`] after an early end.
    inner: Option<Incoming>,
    /// The client expects no trailers, so the body may end as soon as the
    /// upstream's `content-length` is met (see [`ResponseBody::ends_early`]).
    early_end: bool,
    record: Option<RequestRecord>,
    hold: Vec<Hold>,
    bytes: u64,
    header_bytes: u64,
    /// When the route's timeouts run out: the response must be complete by
    /// then, body included, or the stream is cut (flag UT).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The upstream connection, given back when the body is done with.
    lease: Lease,
}

impl ResponseBody {
    pub fn new(inner: Incoming, record: RequestRecord, header_bytes: u64, hold: Vec<Hold>) -> Self {
        ResponseBody {
            inner: Some(inner),
            early_end: false,
            record: Some(record),
            hold,
            bytes: 0,
            header_bytes,
            deadline: None,
            lease: Lease::none(),
        }
    }

    /// Gives `lease` back once this body ends or is dropped.
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = lease;
        self
    }

    /// Lets the body end downstream once the upstream's `content-length`
    /// bytes are through, without waiting for the upstream's end of stream.
    ///
    /// Why: HTTP/2 servers often send the end of stream in a frame of its
    /// own after the last DATA (hyper does, for any body whose end it does
    /// not know in advance), and it then reaches the waypoint in a read of
    /// its own. Forwarding it as such costs a frame, a TLS record and a
    /// `writev` per request downstream, and holds the client's response
    /// back by one more hop. Only for clients that did not ask for trailers
    /// (`te: trailers`, which every gRPC client sends): trailers may still
    /// follow a body whose length is met, and those would be dropped.
    pub fn ends_early(mut self, allowed: bool) -> Self {
        self.early_end = allowed;
        self
    }

    /// The body's bytes are all through by the upstream's `content-length`
    /// (h2 and hyper check the length, so more cannot follow).
    fn length_met(&self) -> bool {
        self.early_end
            && self
                .inner
                .as_ref()
                .is_some_and(|i| i.size_hint().exact() == Some(0))
    }

    /// Cuts the body at `deadline` (None: no deadline). Gateway API's
    /// request and backendRequest timeouts cover the whole response, so a
    /// backend that sends a head and then stalls is timed out too.
    pub fn with_deadline(mut self, deadline: Option<std::time::Instant>) -> Self {
        self.deadline =
            deadline.map(|d| Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(d))));
        self
    }

    fn finish(&mut self) {
        if let Some(r) = self.record.as_mut() {
            r.response_bytes = self.header_bytes + self.bytes;
        }
        // Dropped in place (records the request): no move of the record.
        self.record = None;
        self.hold.clear();
        self.lease = Lease::none();
        if let Some(inner) = self.inner.take() {
            if self.early_end && !inner.is_end_stream() {
                drain_rest(inner);
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                this.deadline = None;
                if let Some(r) = this.record.as_mut() {
                    r.flags = "UT";
                }
                this.finish();
                return Poll::Ready(Some(Err(
                    "upstream response did not complete within the route's timeout".into(),
                )));
            }
        }
        if this.length_met() {
            this.finish();
            return Poll::Ready(None);
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(r) = this.record.as_mut() {
                    r.flags = "UPE";
                }
                this.finish();
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                } else if let Some(t) = frame.trailers_ref() {
                    if let (Some(r), Some(s)) = (this.record.as_mut(), grpc_status(t)) {
                        r.grpc_status = Some(s);
                    }
                    this.bytes += header_size(t);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|i| i.is_end_stream()) || self.length_met()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(i) => i.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

/// How long a response whose body ended early (its length met) may take to
/// send its end of stream upstream.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads an upstream response to its end of stream after the client got the
/// whole body. Dropping it unfinished would make h2 reset the stream
/// (CANCEL) upstream: a frame and a write of its own, and resets that an
/// upstream's rapid-reset guard counts against the connection.
fn drain_rest(mut inner: Incoming) {
    // Usually the end is already here: no task needed.
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        match Pin::new(&mut inner).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(_))) => continue,
            Poll::Ready(_) => return,
            Poll::Pending => break,
        }
    }
    // Outside a runtime (never on the proxy path) the stream is just dropped.
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let rest = async { while let Some(Ok(_)) = inner.frame().await {} };
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, rest).await;
        });
    }
}

/// `grpc-status` of a header or trailer block.
pub fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// Approximate wire size of a header block (names, values, ": " and CRLF),
/// as Istio's request/response size metrics count headers too.
pub fn header_size(h: &HeaderMap) -> u64 {
    h.iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>;

    fn chunks(parts: &[&'static str]) -> StreamBody<Frames> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn collect<B>(b: B) -> String
    where
        B: Body<Data = Bytes>,
        B::Error: std::fmt::Debug,
    {
        let bytes = b.collect().await.expect("body").to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf8")
    }

    #[tokio::test]
    async fn a_small_body_replays_whole() {
        let first = ReplayBody::new(chunks(&["hello ", "world"]), 1024);
        let again = first.replay().expect("replayable before reading");
        assert_eq!(collect(first).await, "hello world");
        assert_eq!(collect(again).await, "hello world");
    }

    #[tokio::test]
    async fn a_partly_read_body_replays_from_the_start() {
        let mut first = ReplayBody::new(chunks(&["a", "b", "c"]), 1024);
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "a");
        // The first attempt failed after one chunk; the retry sends everything.
        let again = first.replay().unwrap();
        drop(first);
        assert_eq!(collect(again).await, "abc");
    }

    #[tokio::test]
    async fn a_body_over_the_bound_streams_but_cannot_replay() {
        let first = ReplayBody::new(chunks(&["0123456789", "abcdef"]), 12);
        let keep = first.replay().unwrap();
        assert_eq!(collect(first).await, "0123456789abcdef");
        assert!(keep.replay().is_none(), "overflowed body must not replay");
        assert_eq!(keep.bytes_read(), 16);
    }

    #[tokio::test]
    async fn a_view_taken_before_an_overflow_fails_instead_of_sending_a_hole() {
        let first = ReplayBody::new(chunks(&["0123456789", "abcdef"]), 12);
        let again = first.replay().expect("replayable before reading");
        assert_eq!(collect(first).await, "0123456789abcdef");
        assert!(!again.can_replay());
        assert!(
            !again.is_end_stream(),
            "an early end would truncate the body"
        );
        assert!(again.collect().await.is_err());
    }

    #[tokio::test]
    async fn empty_data_frames_are_not_forwarded() {
        // gRPC clients end a call with an empty DATA frame; passing such
        // frames on spends the upstream h2 server's allowance (GOAWAY after 100).
        let mut b = ReplayBody::new(chunks(&["", "abc", "", ""]), 1024);
        let mut seen = Vec::new();
        while let Some(f) = b.frame().await {
            let data = f.unwrap().into_data().unwrap();
            seen.push(data);
        }
        assert_eq!(seen, vec![Bytes::from_static(b"abc")]);
        assert!(b.is_end_stream());
        let again = b.replay().unwrap();
        assert_eq!(collect(again).await, "abc");
    }

    #[tokio::test]
    async fn a_body_known_to_end_says_so_with_its_last_frame() {
        let mut b = ReplayBody::new(Full::new(Bytes::from_static(b"xyz")), 1024);
        let f = b.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "xyz");
        assert!(
            b.is_end_stream(),
            "END_STREAM belongs on the last DATA frame"
        );
    }

    #[tokio::test]
    async fn an_empty_body_always_replays() {
        let b = ReplayBody::new(Full::new(Bytes::new()), 0);
        assert!(b.replay().is_some());
        assert_eq!(collect(b).await, "");
    }

    #[test]
    fn grpc_status_parses_trailers() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(grpc_status(&h), Some(14));
        h.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(grpc_status(&h), None);
    }
}
