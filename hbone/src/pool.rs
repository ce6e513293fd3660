//! Connection pooling: many tunnels share few mutual-TLS HTTP/2 connections.
//!
//! Connections are keyed by (our identity, accepted peer identities, peer
//! address), so a connection authenticated for one purpose is never reused for
//! another. New tunnels go to the oldest connection with stream headroom, which
//! lets surplus connections go idle and be closed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::transport::ClientTls;
use ahash::AHashMap;
use http::HeaderMap;
use tokio::sync::watch;

use crate::client::{ClientConn, ConnShared, ConnectRequest, StreamSlot};
use crate::error::HboneError;
use crate::identity::Identity;
use crate::settings::H2Settings;
use crate::stream::H2Stream;

/// Pooled connections a `connect` may find unusable (e.g. going away) before giving up.
const MAX_ATTEMPTS: usize = 3;

/// A connection the pool can share: the h2-based [`ClientConn`] or
/// [`crate::lite::Client`]. Sealed: its methods use the crate's internals.
pub trait PoolConn: sealed::Sealed + Clone + Send + Sync + 'static {}

impl PoolConn for ClientConn {}
impl<S: Send + 'static> PoolConn for crate::lite::Client<S> where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin
{
}

// The sealed trait's methods name crate-private types on purpose: no one
// outside can call or implement them.
#[allow(private_interfaces)]
pub(crate) mod sealed {
    use std::future::Future;
    use std::sync::Arc;

    use crate::client::{ConnShared, StreamSlot};
    use crate::error::HboneError;
    use crate::settings::H2Settings;
    use crate::transport::ClientTls;

    pub trait Sealed: Sized {
        /// Starts HTTP/2 on a dialled connection.
        fn handshake(
            tls: ClientTls,
            settings: &H2Settings,
        ) -> impl Future<Output = Result<Self, HboneError>> + Send;
        /// The state its handles share (counts, GOAWAY, closed).
        fn shared(&self) -> &Arc<ConnShared>;
        /// Counts a new stream if fewer than `max` are open.
        fn try_reserve(&self, max: usize) -> Option<StreamSlot> {
            StreamSlot::reserve(self.shared(), max)
        }
    }
}

#[allow(private_interfaces)]
impl sealed::Sealed for ClientConn {
    async fn handshake(tls: ClientTls, settings: &H2Settings) -> Result<Self, HboneError> {
        ClientConn::handshake(tls, settings).await
    }

    fn shared(&self) -> &Arc<ConnShared> {
        ClientConn::shared(self)
    }

    fn try_reserve(&self, max: usize) -> Option<StreamSlot> {
        ClientConn::try_reserve(self, max)
    }
}

#[allow(private_interfaces)]
impl<S> sealed::Sealed for crate::lite::Client<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    async fn handshake(tls: ClientTls, settings: &H2Settings) -> Result<Self, HboneError> {
        crate::lite::Client::handshake(tls, settings)
    }

    fn shared(&self) -> &Arc<ConnShared> {
        crate::lite::Client::shared(self)
    }
}

/// What a pooled connection is for; tunnels only share a connection with an equal key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Our identity (the client certificate presented).
    pub src: Identity,
    /// Server identities accepted, sorted and deduplicated.
    pub expected: Vec<Identity>,
    /// The peer's HBONE address (usually node or pod IP, port 15008).
    pub dst: SocketAddr,
}

impl PoolKey {
    /// Builds a key, sorting `expected` so equal sets give equal keys.
    pub fn new(src: Identity, mut expected: Vec<Identity>, dst: SocketAddr) -> PoolKey {
        expected.sort();
        expected.dedup();
        PoolKey { src, expected, dst }
    }
}

/// Pool tuning.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Most tunnels on one connection before another is opened (default 100,
    /// matching the server's default max_concurrent_streams; 0 is treated as 1).
    /// The peer's own stream limit applies too, whichever is lower.
    pub max_streams_per_conn: u32,
    /// How long a connection may have no tunnels before it is closed (default 60 s).
    ///
    /// Long enough to keep a warm connection across typical gaps between
    /// requests (health checks every 10-30 s keep it alive), short enough
    /// that connections to peers no longer talked to do not linger.
    pub idle_timeout: Duration,
    /// HTTP/2 settings for pooled connections.
    pub h2: H2Settings,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_streams_per_conn: 100,
            idle_timeout: Duration::from_secs(60),
            h2: H2Settings::default(),
        }
    }
}

/// A snapshot of pool usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Pooled connections (all keys).
    pub connections: usize,
    /// Tunnels open or being opened on pooled connections.
    pub streams: usize,
}

/// A pool of HBONE client connections; clones share it.
pub struct Pool<C: PoolConn = ClientConn> {
    inner: Arc<Inner<C>>,
}

impl<C: PoolConn> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

/// Outcome of a dial that other callers wait for; the error is shared by all of them.
type DialOutcome = Option<Result<(), Arc<HboneError>>>;

struct Inner<C> {
    settings: PoolSettings,
    state: Mutex<State<C>>,
    reaper_started: AtomicBool,
}

struct State<C> {
    conns: AHashMap<PoolKey, Vec<C>>,
    dials: AHashMap<PoolKey, watch::Receiver<DialOutcome>>,
}

enum Step<C: PoolConn> {
    Reuse(C, StreamSlot),
    Wait(watch::Receiver<DialOutcome>),
    Dial(DialGuard<C>),
}

impl<C: PoolConn> Pool<C> {
    /// Creates an empty pool; its idle reaper starts with the first `connect`.
    pub fn new(settings: PoolSettings) -> Pool<C> {
        Pool {
            inner: Arc::new(Inner {
                settings,
                state: Mutex::new(State {
                    conns: AHashMap::new(),
                    dials: AHashMap::new(),
                }),
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    /// A connection for `key` with a stream counted on it: a pooled one
    /// with headroom, the one another caller is dialling, or a new one from
    /// `dial` (taken from the option; `ConnectionClosed` once used).
    async fn checkout<F, Fut>(
        &self,
        key: &PoolKey,
        dial: &mut Option<F>,
    ) -> Result<(C, StreamSlot), HboneError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ClientTls, HboneError>>,
    {
        self.ensure_reaper();
        loop {
            match self.inner.next_step(key) {
                Step::Reuse(conn, slot) => return Ok((conn, slot)),
                Step::Wait(mut rx) => {
                    let outcome = rx.wait_for(Option::is_some).await.map(|v| v.clone());
                    if let Ok(Some(Err(e))) = outcome {
                        return Err(e.duplicate());
                    }
                }
                Step::Dial(guard) => {
                    let Some(dial) = dial.take() else {
                        return Err(HboneError::ConnectionClosed);
                    };
                    let conn = match dial().await {
                        Ok(tls) => C::handshake(tls, &self.inner.settings.h2).await,
                        Err(e) => Err(e),
                    };
                    return match conn {
                        Ok(conn) => {
                            tracing::debug!(dst = %key.dst, src = %key.src, "new pooled hbone connection");
                            let slot = guard.succeed(conn.clone());
                            Ok((conn, slot))
                        }
                        Err(e) => {
                            guard.fail(Arc::new(e.duplicate()));
                            Err(e)
                        }
                    };
                }
            }
        }
    }

    /// Drops `conn` from the pool after it proved unusable.
    fn discard(&self, key: &PoolKey, conn: &C, e: &HboneError) {
        tracing::debug!(error = %e, dst = %key.dst, "pooled hbone connection unusable");
        self.inner.remove(key, conn);
    }
}

impl Pool<ClientConn> {
    /// Opens a tunnel to `req.target` over a pooled connection for `key`.
    ///
    /// Reuses a live connection with stream headroom; otherwise calls `dial`
    /// (which makes the socket and does TLS) and starts HTTP/2 on the result.
    /// Callers arriving while a dial for the same key is in flight wait for it
    /// instead of dialing too, and get its error if it fails.
    pub async fn connect<F, Fut>(
        &self,
        key: &PoolKey,
        req: &ConnectRequest,
        dial: F,
    ) -> Result<H2Stream, HboneError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ClientTls, HboneError>>,
    {
        let (stream, _) = self.connect_with_response(key, req, dial).await?;
        Ok(stream)
    }

    /// Like [`connect`](Self::connect), and also returns the headers of the
    /// peer's 200 response.
    pub async fn connect_with_response<F, Fut>(
        &self,
        key: &PoolKey,
        req: &ConnectRequest,
        dial: F,
    ) -> Result<(H2Stream, HeaderMap), HboneError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ClientTls, HboneError>>,
    {
        let mut dial = Some(dial);
        let mut failures = 0;
        // Waiting on someone else's dial does not count as an attempt: each wait
        // ends with a finished dial, so the loop always makes progress.
        loop {
            let had_dial = dial.is_some();
            let (conn, slot) = self.checkout(key, &mut dial).await?;
            let dialled = had_dial && dial.is_none();
            match conn.connect_with_slot(req, slot).await {
                Ok(tunnel) => return Ok(tunnel),
                // Typically a GOAWAY from a draining peer: stop using it, try
                // again. A connection we just dialled failing is final.
                Err(e) if !dialled && is_conn_unusable(&e) => {
                    self.discard(key, &conn, &e);
                    failures += 1;
                    if failures >= MAX_ATTEMPTS {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl<S> Pool<crate::lite::Client<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    /// Opens a tunnel carrying `sock` to `req.target` over a pooled
    /// [`crate::lite`] connection for `key`, dialling as
    /// [`connect`](Pool::connect) does; resolves once the peer answered 200.
    pub async fn open<F, Fut>(
        &self,
        key: &PoolKey,
        req: &ConnectRequest,
        sock: S,
        dial: F,
    ) -> Result<crate::lite::Tunnel, HboneError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ClientTls, HboneError>>,
    {
        let mut dial = Some(dial);
        let mut sock = sock;
        let mut failures = 0;
        loop {
            let had_dial = dial.is_some();
            let (conn, slot) = self.checkout(key, &mut dial).await?;
            let dialled = had_dial && dial.is_none();
            match conn.open_with_slot(req, sock, slot).await {
                Ok(tunnel) => return Ok(tunnel),
                // Refused before the stream was sent (GOAWAY, closed): the
                // socket came back, so another connection can carry it.
                Err((e, Some(back))) if !dialled && is_conn_unusable(&e) => {
                    self.discard(key, &conn, &e);
                    failures += 1;
                    if failures >= MAX_ATTEMPTS {
                        return Err(e);
                    }
                    sock = back;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
}

impl<C: PoolConn> Pool<C> {
    /// Current number of pooled connections and tunnels on them.
    pub fn stats(&self) -> PoolStats {
        let state = self.inner.lock();
        let mut stats = PoolStats::default();
        for conn in state.conns.values().flatten() {
            stats.connections += 1;
            stats.streams += conn.shared().active.load(Ordering::Acquire);
        }
        stats
    }

    /// Starts the task that evicts idle and closed connections, once, on the current runtime.
    fn ensure_reaper(&self) {
        if self.inner.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Inner<C>> = Arc::downgrade(&self.inner);
        let period = (self.inner.settings.idle_timeout / 2)
            .clamp(Duration::from_millis(10), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Holding only a Weak lets the task end once every Pool clone is gone.
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                inner.sweep();
            }
        });
    }
}

impl<C: PoolConn> Inner<C> {
    fn lock(&self) -> MutexGuard<'_, State<C>> {
        // The state stays consistent even if a holder panicked: every update is a single map edit.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_step(self: &Arc<Self>, key: &PoolKey) -> Step<C> {
        let max = self.settings.max_streams_per_conn.max(1) as usize;
        let mut state = self.lock();
        if let Some(list) = state.conns.get_mut(key) {
            // A connection whose peer sent GOAWAY leaves the pool at once: it
            // ends when its open tunnels do, and new tunnels go to a new one.
            list.retain(|c| usable(c.shared()));
            for conn in list.iter() {
                if let Some(slot) = conn.try_reserve(max) {
                    return Step::Reuse(conn.clone(), slot);
                }
            }
            if list.is_empty() {
                state.conns.remove(key);
            }
        }
        if let Some(rx) = state.dials.get(key) {
            return Step::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        state.dials.insert(key.clone(), rx);
        Step::Dial(DialGuard {
            inner: self.clone(),
            key: key.clone(),
            tx,
            finished: false,
        })
    }

    fn remove(&self, key: &PoolKey, conn: &C) {
        let mut state = self.lock();
        if let Some(list) = state.conns.get_mut(key) {
            list.retain(|c| !Arc::ptr_eq(c.shared(), conn.shared()));
            if list.is_empty() {
                state.conns.remove(key);
            }
        }
    }

    fn sweep(&self) {
        let now = Instant::now();
        let idle_timeout = self.settings.idle_timeout;
        let mut evicted = Vec::new();
        {
            let mut state = self.lock();
            state.conns.retain(|key, list| {
                list.retain(|c| {
                    let idle = c.shared().idle_for(now).is_some_and(|d| d >= idle_timeout);
                    let keep = usable(c.shared()) && !idle;
                    if !keep {
                        tracing::debug!(dst = %key.dst, idle, "evicting pooled hbone connection");
                        evicted.push(c.clone());
                    }
                    keep
                });
                !list.is_empty()
            });
        }
        // Dropping the last handle lets h2 send GOAWAY and close the socket;
        // done outside the lock since it touches h2's own lock.
        drop(evicted);
    }
}

/// The right to dial for a key; waiters are released when it finishes or is dropped.
struct DialGuard<C: PoolConn> {
    inner: Arc<Inner<C>>,
    key: PoolKey,
    tx: watch::Sender<DialOutcome>,
    finished: bool,
}

impl<C: PoolConn> DialGuard<C> {
    /// Publishes the new connection and takes the first stream slot on it for the dialer.
    fn succeed(mut self, conn: C) -> StreamSlot {
        let max = self.inner.settings.max_streams_per_conn.max(1) as usize;
        let slot = conn.try_reserve(max);
        {
            let mut state = self.inner.lock();
            state
                .conns
                .entry(self.key.clone())
                .or_default()
                .push(conn.clone());
            state.dials.remove(&self.key);
        }
        self.finished = true;
        self.tx.send_replace(Some(Ok(())));
        // A fresh connection always has headroom unless the peer allows zero streams;
        // then opening the stream fails with the peer's refusal, which is the truth.
        slot.unwrap_or_else(|| StreamSlot::force(conn.shared()))
    }

    fn fail(mut self, e: Arc<HboneError>) {
        self.inner.lock().dials.remove(&self.key);
        self.finished = true;
        self.tx.send_replace(Some(Err(e)));
    }
}

impl<C: PoolConn> Drop for DialGuard<C> {
    fn drop(&mut self) {
        if !self.finished {
            // The dialing caller was cancelled: free the slot so a waiter can dial.
            let mut state = self.inner.lock();
            if state
                .dials
                .get(&self.key)
                .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
            {
                state.dials.remove(&self.key);
            }
        }
    }
}

/// Errors after which the connection must not get new tunnels.
/// Whether a pooled connection may take new tunnels.
fn usable(shared: &ConnShared) -> bool {
    !shared.closed.load(Ordering::Acquire) && !shared.goaway.is_set()
}

fn is_conn_unusable(e: &HboneError) -> bool {
    match e {
        HboneError::H2(e) => e.is_go_away(),
        HboneError::Io(_) | HboneError::ConnectionClosed => true,
        _ => false,
    }
}
