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
use hbone::{ConnectRequest, H2Stream, Identity, Pool, PoolKey};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use trellis_api::config::{Protocol, Workload};
use trellis_core::certs::CertManager;

use crate::body::ReplayBody;
use trellis_core::WorkloadIdentity;

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

/// What a pooled HTTP connection is for: the endpoint, and the caller's
/// address its tunnel was opened with.
type ConnKey = (SocketAddr, Option<IpAddr>);

#[derive(Default)]
struct Conns {
    h2: AHashMap<ConnKey, H2Sender>,
    h1: AHashMap<ConnKey, Vec<H1Sender>>,
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
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner(ep, forwarded_for)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::ConnectTimeout { addr: ep.addr }),
        }
    }

    async fn connect_inner(
        &self,
        ep: &Endpoint,
        forwarded_for: Option<SocketAddr>,
    ) -> Result<Box<dyn Io>, UpstreamError> {
        let addr = ep.addr;
        let fail = |reason: String| UpstreamError::Connect { addr, reason };
        match ep.workload.protocol {
            Protocol::Tcp => {
                let tcp = TcpStream::connect(addr)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let _ = tcp.set_nodelay(true);
                Ok(Box::new(tcp))
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
                Ok(Box::new(stream))
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
                Some(s) if !s.is_closed() => Some(s.clone()),
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
        let io = self.connect(ep, forwarded_for).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
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
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream http/2 connection ended");
            }
            forget_closed(&conns, key);
        });
        self.lock().h2.insert(key, sender.clone());
        Ok(sender)
    }

    /// A new HTTP/1.1 connection to `ep`.
    async fn new_h1(
        &self,
        ep: &Endpoint,
        key: ConnKey,
        forwarded_for: Option<SocketAddr>,
    ) -> Result<H1Sender, UpstreamError> {
        let addr = ep.addr;
        let io = self.connect(ep, forwarded_for).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, ReplayBody>(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Connect {
                addr,
                reason: format!("http/1.1 handshake: {e}"),
            })?;
        let conns = self.conns.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream http/1.1 connection ended");
            }
            forget_closed(&conns, key);
        });
        Ok(sender)
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
                while let Some(s) = idle.pop() {
                    if s.is_ready() {
                        found = Some(s);
                        break;
                    }
                }
                if idle.is_empty() {
                    conns.h1.remove(&key);
                }
            }
            found
        };
        let mut sender = match pooled {
            Some(s) => s,
            None => Box::pin(self.new_h1(ep, key, forwarded_for)).await?,
        };
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Reset {
                addr,
                reason: e.to_string(),
            })?;
        let lease = Lease(Some(Lent {
            sender,
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
    sender: H1Sender,
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
            mut sender,
            key,
            conns,
        }) = self.0.take()
        else {
            return;
        };
        if sender.is_ready() {
            park_idle(&conns, key, sender);
        } else if !sender.is_closed() {
            // Outside a runtime (shutdown) the connection is simply dropped.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if sender.ready().await.is_ok() {
                        park_idle(&conns, key, sender);
                    }
                });
            }
        }
    }
}

/// Keeps an idle HTTP/1.1 connection for the next request to `key`.
fn park_idle(conns: &Mutex<Conns>, key: ConnKey, sender: H1Sender) {
    let mut c = lock(conns);
    let idle = c.h1.entry(key).or_default();
    if idle.len() < MAX_IDLE_H1 {
        idle.push(sender);
    }
}

fn lock(conns: &Mutex<Conns>) -> std::sync::MutexGuard<'_, Conns> {
    conns.lock().unwrap_or_else(|p| p.into_inner())
}

/// Drops closed connections of `key` from the pools once one of them ends,
/// so callers that went away leave no entries behind.
fn forget_closed(conns: &Mutex<Conns>, key: ConnKey) {
    let mut c = lock(conns);
    if c.h2.get(&key).is_some_and(|s| s.is_closed()) {
        c.h2.remove(&key);
    }
    if let Some(idle) = c.h1.get_mut(&key) {
        idle.retain(|s| !s.is_closed());
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
