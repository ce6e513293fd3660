//! Connections from the waypoint to endpoints, and HTTP over them.
//!
//! Mesh endpoints (protocol HBONE) are reached through an HBONE tunnel to
//! their node proxy (`ip:15008`, expecting the workload's identity, CONNECT
//! `ip:targetPort`), with the waypoint's own certificate. Plain (TCP)
//! endpoints get a direct TCP connection. TLS connections are pooled by
//! `hbone::Pool`; on top of the tunnels, HTTP connections are pooled per
//! endpoint and caller address: one multiplexed HTTP/2 connection, or a stack
//! of idle HTTP/1.1 keep-alive connections. The caller is part of the key
//! because a tunnel's CONNECT carries the caller's address (`forwarded`),
//! which the endpoint's node proxy checks L4 policy on and connects to the
//! pod from: a connection opened for one caller must not carry another's
//! requests.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ahash::AHashMap;
use hbone::{ConnectRequest, GoAwaySignal, H2Stream, Identity, Pool, PoolKey};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use trellis_api::config::{Protocol, Workload};
use trellis_core::certs::CertManager;

use crate::body::ReplayBody;
use trellis_core::WorkloadIdentity;

mod group;

/// Upper bound for reaching an endpoint (TCP + TLS + CONNECT); a silently
/// dropped SYN would otherwise hang for minutes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_H1: usize = 64;

/// Where an attempt goes.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Workload address and target port.
    pub addr: SocketAddr,
    pub workload: Arc<Workload>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Http1,
    Http2,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: refused, unreachable, TLS/identity failure, CONNECT refused.
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("connecting to {addr} timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { addr: SocketAddr },
    /// The connection or stream ended before a response head arrived.
    #[error("upstream {addr} reset the request before answering: {reason}")]
    Reset { addr: SocketAddr, reason: String },
}

impl UpstreamError {
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. }
        )
    }
}

type H1Sender = http1::SendRequest<ReplayBody>;
type H2Sender = http2::SendRequest<ReplayBody>;

/// A pooled HTTP connection: its sender, and the GOAWAY signal of the HBONE
/// connection its tunnel rides on (none for plain TCP endpoints).
struct Pooled<S> {
    id: u64,
    sender: S,
    goaway: Option<GoAwaySignal>,
}

impl<S: Clone> Clone for Pooled<S> {
    fn clone(&self) -> Self {
        Pooled {
            id: self.id,
            sender: self.sender.clone(),
            goaway: self.goaway.clone(),
        }
    }
}

impl<S> Pooled<S> {
    /// False once the endpoint's node proxy is draining: no new requests go here.
    fn reusable(&self) -> bool {
        !self.goaway.as_ref().is_some_and(|g| g.is_set())
    }
}

/// Tells pooled connections apart, so the one a GOAWAY hit is the one removed.
static NEXT_CONN_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn next_conn_id() -> u64 {
    NEXT_CONN_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What a pooled HTTP connection is for: the endpoint, and the caller's
/// address its tunnel was opened with.
type ConnKey = (SocketAddr, Option<IpAddr>);

#[derive(Default)]
struct Conns {
    h2: AHashMap<ConnKey, Pooled<H2Sender>>,
    h1: AHashMap<ConnKey, Vec<Pooled<H1Sender>>>,
}

/// The waypoint's client side. Cheap to share; all state is inside.
pub struct Upstream {
    identity: Identity,
    certs: Arc<CertManager>,
    tunnels: Pool,
    conns: Arc<Mutex<Conns>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(identity: Identity, certs: Arc<CertManager>) -> Upstream {
        Upstream {
            identity,
            certs,
            tunnels: Pool::new(hbone::PoolSettings::default()),
            conns: Arc::new(Mutex::new(Conns::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        lock(&self.conns)
    }

    /// A byte stream to the endpoint: an HBONE tunnel or plain TCP.
    pub async fn connect(
        &self,
        ep: &Endpoint,
        forwarded_for: Option<SocketAddr>,
    ) -> Result<Box<dyn Io>, UpstreamError> {
        Ok(self.connect_watched(ep, forwarded_for).await?.0)
    }

    /// Like [`connect`](Self::connect), with the tunnel's GOAWAY signal.
    async fn connect_watched(
        &self,
        ep: &Endpoint,
        forwarded_for: Option<SocketAddr>,
    ) -> Result<(Box<dyn Io>, Option<GoAwaySignal>), UpstreamError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner(ep, forwarded_for)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::ConnectTimeout { addr: ep.addr }),
        }
    }

    async fn connect_inner(
        &self,
        ep: &Endpoint,
        forwarded_for: Option<SocketAddr>,
    ) -> Result<(Box<dyn Io>, Option<GoAwaySignal>), UpstreamError> {
        let addr = ep.addr;
        let fail = |reason: String| UpstreamError::Connect { addr, reason };
        match ep.workload.protocol {
            Protocol::Tcp => {
                let tcp = TcpStream::connect(addr)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let _ = tcp.set_nodelay(true);
                Ok((Box::new(tcp), None))
            }
            Protocol::Hbone => {
                let expected = ep.workload.identity();
                let tunnel = SocketAddr::new(addr.ip(), hbone_port());
                let key = PoolKey::new(self.identity.clone(), vec![expected.clone()], tunnel);
                let mut req = ConnectRequest::new(addr);
                req.forwarded_for = forwarded_for;
                let cfg = self
                    .certs
                    .client_config_ready(&self.identity, &expected)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let stream = self
                    .tunnels
                    .connect(&key, &req, || async move {
                        let tcp = TcpStream::connect(tunnel)
                            .await
                            .map_err(hbone::HboneError::Io)?;
                        hbone::tls_connect(tcp, cfg).await
                    })
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let goaway = stream.goaway();
                Ok((Box::new(stream), goaway))
            }
        }
    }

    /// Sends `req` to `ep` over a pooled HTTP connection of kind `proto`.
    /// Keep the [`Lease`] as long as the response body: dropping it gives
    /// an HTTP/1.1 connection back to the pool.
    pub async fn send(
        &self,
        ep: &Endpoint,
        proto: Proto,
        req: Request<ReplayBody>,
        forwarded_for: Option<SocketAddr>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        match proto {
            Proto::Http2 => Ok((self.send_h2(ep, req, forwarded_for).await?, Lease::none())),
            Proto::Http1 => self.send_h1(ep, req, forwarded_for).await,
        }
    }

    async fn send_h2(
        &self,
        ep: &Endpoint,
        req: Request<ReplayBody>,
        forwarded_for: Option<SocketAddr>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let addr = ep.addr;
        let key = (addr, forwarded_for.map(|a| a.ip()));
        let pooled = {
            let mut conns = self.lock();
            match conns.h2.get(&key) {
                Some(p) if !p.sender.is_closed() && p.reusable() => Some(p.sender.clone()),
                Some(_) => {
                    conns.h2.remove(&key);
                    None
                }
                None => None,
            }
        };
        let mut sender = match pooled {
            Some(s) => s,
            // Boxed: dialing holds TLS and HTTP/2 handshake state, which
            // would otherwise sit inline in every request's future.
            None => Box::pin(self.new_h2(ep, key, forwarded_for)).await?,
        };
        sender.ready().await.map_err(|e| UpstreamError::Reset {
            addr,
            reason: e.to_string(),
        })?;
        sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Reset {
                addr,
                reason: e.to_string(),
            })
    }

    /// A new multiplexed HTTP/2 connection to `ep`, registered in the pool.
    async fn new_h2(
        &self,
        ep: &Endpoint,
        key: ConnKey,
        forwarded_for: Option<SocketAddr>,
    ) -> Result<H2Sender, UpstreamError> {
        let addr = ep.addr;
        let (io, goaway) = self.connect_watched(ep, forwarded_for).await?;
        // One task for the connection and all hyper spawns for it: see group.rs.
        let (exec, group) = group::Group::new();
        let (sender, conn) = http2::Builder::new(exec)
            .timer(hyper_util::rt::TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .keep_alive_interval(Duration::from_secs(30))
            .handshake::<_, ReplayBody>(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Connect {
                addr,
                reason: format!("http/2 handshake: {e}"),
            })?;
        let conns = self.conns.clone();
        let id = next_conn_id();
        let signal = goaway.clone();
        tokio::spawn(group.run(async move {
            if let Err(e) = until_goaway(conn, signal, || forget(&conns, key, id)).await {
                tracing::debug!(%addr, error = %e, "upstream http/2 connection ended");
            }
            forget_closed(&conns, key);
        }));
        self.lock().h2.insert(
            key,
            Pooled {
                id,
                sender: sender.clone(),
                goaway,
            },
        );
        Ok(sender)
    }

    /// A new HTTP/1.1 connection to `ep`.
    async fn new_h1(
        &self,
        ep: &Endpoint,
        key: ConnKey,
        forwarded_for: Option<SocketAddr>,
    ) -> Result<Pooled<H1Sender>, UpstreamError> {
        let addr = ep.addr;
        let (io, goaway) = self.connect_watched(ep, forwarded_for).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, ReplayBody>(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Connect {
                addr,
                reason: format!("http/1.1 handshake: {e}"),
            })?;
        let conns = self.conns.clone();
        let id = next_conn_id();
        let signal = goaway.clone();
        tokio::spawn(async move {
            let conn = conn.with_upgrades();
            if let Err(e) = until_goaway(conn, signal, || forget(&conns, key, id)).await {
                tracing::debug!(%addr, error = %e, "upstream http/1.1 connection ended");
            }
            forget_closed(&conns, key);
        });
        Ok(Pooled { id, sender, goaway })
    }

    async fn send_h1(
        &self,
        ep: &Endpoint,
        req: Request<ReplayBody>,
        forwarded_for: Option<SocketAddr>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        let addr = ep.addr;
        let key = (addr, forwarded_for.map(|a| a.ip()));
        let pooled = {
            let mut conns = self.lock();
            let mut found = None;
            if let Some(idle) = conns.h1.get_mut(&key) {
                while let Some(p) = idle.pop() {
                    if p.sender.is_ready() && p.reusable() {
                        found = Some(p);
                        break;
                    }
                }
                if idle.is_empty() {
                    conns.h1.remove(&key);
                }
            }
            found
        };
        let mut pooled = match pooled {
            Some(p) => p,
            None => Box::pin(self.new_h1(ep, key, forwarded_for)).await?,
        };
        let resp = pooled
            .sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Reset {
                addr,
                reason: e.to_string(),
            })?;
        let lease = Lease(Some(Lent {
            conn: pooled,
            key,
            conns: self.conns.clone(),
        }));
        Ok((resp, lease))
    }
}

/// An HTTP/1.1 connection lent to one request. Dropped with the response
/// body, it goes back to the idle pool. By then the connection has
/// normally read the whole response and is ready, so the common case costs
/// a lock and a push; a task waits only for a connection still busy (a body
/// the client abandoned, a slow end). An upgraded connection never returns.
pub struct Lease(Option<Lent>);

struct Lent {
    conn: Pooled<H1Sender>,
    key: ConnKey,
    conns: Arc<Mutex<Conns>>,
}

impl Lease {
    /// Nothing to give back (HTTP/2: the connection stays shared in the pool).
    pub fn none() -> Lease {
        Lease(None)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(Lent {
            mut conn,
            key,
            conns,
        }) = self.0.take()
        else {
            return;
        };
        // A connection whose tunnel got GOAWAY is dropped here instead of
        // parked: idle, it would hold the draining node proxy open.
        if !conn.reusable() {
            return;
        }
        if conn.sender.is_ready() {
            park_idle(&conns, key, conn);
        } else if !conn.sender.is_closed() {
            // Outside a runtime (shutdown) the connection is simply dropped.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if conn.sender.ready().await.is_ok() && conn.reusable() {
                        park_idle(&conns, key, conn);
                    }
                });
            }
        }
    }
}

/// Keeps an idle HTTP/1.1 connection for the next request to `key`.
fn park_idle(conns: &Mutex<Conns>, key: ConnKey, conn: Pooled<H1Sender>) {
    let mut c = lock(conns);
    let idle = c.h1.entry(key).or_default();
    if idle.len() < MAX_IDLE_H1 {
        idle.push(conn);
    }
}

/// Drives an upstream HTTP connection; when its tunnel's HBONE connection
/// gets GOAWAY, calls `on_goaway` once (which takes it out of the pool) and
/// keeps driving it, so requests in flight finish. Out of the pool and with
/// no request, hyper ends the connection, which ends the tunnel: the
/// draining node proxy is not held open by an idle keep-alive.
async fn until_goaway<F, E>(
    conn: F,
    goaway: Option<GoAwaySignal>,
    on_goaway: impl FnOnce(),
) -> Result<(), E>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    let Some(goaway) = goaway else {
        return conn.await;
    };
    tokio::select! {
        biased;
        r = conn.as_mut() => return r,
        () = hbone::quiet(goaway.wait()) => {}
    }
    tracing::debug!("upstream tunnel got goaway; retiring its http connection");
    on_goaway();
    conn.await
}

/// Removes connection `id` of `key` from the pools (its tunnel is going away).
fn forget(conns: &Mutex<Conns>, key: ConnKey, id: u64) {
    let dropped = {
        let mut c = lock(conns);
        let h2 = match c.h2.get(&key) {
            Some(p) if p.id == id => c.h2.remove(&key),
            _ => None,
        };
        let mut h1 = Vec::new();
        if let Some(idle) = c.h1.get_mut(&key) {
            let (gone, keep): (Vec<_>, Vec<_>) = idle.drain(..).partition(|p| p.id == id);
            *idle = keep;
            h1 = gone;
            if idle.is_empty() {
                c.h1.remove(&key);
            }
        }
        (h2, h1)
    };
    // The senders are dropped outside the lock.
    drop(dropped);
}

fn lock(conns: &Mutex<Conns>) -> std::sync::MutexGuard<'_, Conns> {
    conns.lock().unwrap_or_else(|p| p.into_inner())
}

/// Drops closed connections of `key` from the pools once one of them ends,
/// so callers that went away leave no entries behind.
fn forget_closed(conns: &Mutex<Conns>, key: ConnKey) {
    let mut c = lock(conns);
    if c.h2.get(&key).is_some_and(|p| p.sender.is_closed()) {
        c.h2.remove(&key);
    }
    if let Some(idle) = c.h1.get_mut(&key) {
        idle.retain(|p| !p.sender.is_closed());
        if idle.is_empty() {
            c.h1.remove(&key);
        }
    }
}

/// The HBONE port of node proxies.
fn hbone_port() -> u16 {
    15008
}

/// A byte stream to an endpoint.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl Io for TcpStream {}
impl Io for H2Stream {}
