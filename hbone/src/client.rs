//! The HBONE client: TLS connect, HTTP/2 handshake and CONNECT streams.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, StatusCode};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::batch::Batch;
use crate::conn_io::{ConnIo, TlsFailure};
use crate::error::HboneError;
use crate::goaway::GoAway;
use crate::quiet::quiet;
use crate::settings::H2Settings;
use crate::stream::H2Stream;
use crate::transport::{transport, ClientTls, SEND_BUFFER};

pub use crate::request::ConnectRequest;

/// Runs the client TLS handshake on an already-connected socket.
///
/// The `ServerName` given to rustls is the peer's IP as a placeholder: no SNI
/// is sent and the name is not verified (see [`crate::tls`]). Sets TCP_NODELAY.
/// Has no timeout of its own: wrap it in `tokio::time::timeout`.
pub async fn tls_connect(
    tcp: TcpStream,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<ClientTls, HboneError> {
    set_nodelay(&tcp);
    let ip = tcp
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let mut tls = TlsConnector::from(cfg)
        .connect(ServerName::IpAddress(ip.into()), transport(tcp))
        .await
        .map_err(HboneError::from_tls_io)?;
    tls.get_mut().1.set_buffer_limit(Some(SEND_BUFFER));
    tracing::debug!(peer = %ip, "hbone tls handshake complete");
    Ok(tls)
}

/// Disables Nagle: h2 emits small control frames (WINDOW_UPDATE, PING, headers)
/// that would otherwise wait on delayed ACKs and stall tunnels by tens of ms.
pub(crate) fn set_nodelay(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set tcp_nodelay on hbone socket");
    }
}

/// State shared between a connection's handles, its driver task and its streams.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(crate) closed: AtomicBool,
    pub(crate) active: AtomicUsize,
    /// When `active` last dropped to zero (or the connection was created).
    idle_since: Mutex<Instant>,
    pub(crate) tls_failure: TlsFailure,
    /// Set when the peer sent GOAWAY: no new tunnels go here.
    pub(crate) goaway: Arc<GoAway>,
}

impl ConnShared {
    pub(crate) fn new(tls_failure: TlsFailure, goaway: Arc<GoAway>) -> ConnShared {
        ConnShared {
            closed: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            tls_failure,
            goaway,
        }
    }

    /// How long the connection has had no streams, or `None` if it has some.
    pub(crate) fn idle_for(&self, now: Instant) -> Option<std::time::Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        Some(now.saturating_duration_since(since))
    }
}

/// One counted stream on a connection; dropping it releases the count.
#[derive(Debug)]
pub(crate) struct StreamSlot(Arc<ConnShared>);

impl StreamSlot {
    /// Counts a new stream on `shared` regardless of limits.
    pub(crate) fn force(shared: &Arc<ConnShared>) -> StreamSlot {
        shared.active.fetch_add(1, Ordering::AcqRel);
        StreamSlot(shared.clone())
    }

    /// Counts a new stream if fewer than `max` are active.
    pub(crate) fn reserve(shared: &Arc<ConnShared>, max: usize) -> Option<StreamSlot> {
        shared
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot(shared.clone()))
    }

    pub(crate) fn shared(&self) -> &Arc<ConnShared> {
        &self.0
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

/// A multiplexed HBONE client connection; clones share it.
#[derive(Clone)]
pub struct ClientConn {
    send: SendRequest<Bytes>,
    shared: Arc<ConnShared>,
}

impl std::fmt::Debug for ClientConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConn")
            .field("active_streams", &self.active_streams())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl ClientConn {
    /// Starts HTTP/2 over `io` and spawns the task that drives it and sends keep-alive PINGs.
    ///
    /// Must be called within a tokio runtime; the task runs on it.
    pub async fn handshake<IO>(io: IO, settings: &H2Settings) -> Result<ClientConn, HboneError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let goaway = Arc::new(GoAway::default());
        let (io, batch) = Batch::new(io);
        let (io, tls_failure) = ConnIo::with_goaway(io, goaway.clone());
        let (send, mut conn) = settings
            .client_builder()?
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| HboneError::from_h2_on(e, &tls_failure))?;
        let shared = Arc::new(ConnShared::new(tls_failure, goaway));
        let driver_shared = shared.clone();
        let keepalive = crate::keepalive::run(
            conn.ping_pong(),
            settings.keepalive_interval,
            settings.keepalive_timeout,
        );
        // One task drives the connection and the pings: the PING future only
        // makes progress while the connection is being polled, and dropping the
        // connection when keep-alive fails closes the socket.
        tokio::spawn(async move {
            let driven = std::future::poll_fn(|cx| batch.poll(|| Pin::new(&mut conn).poll(cx)));
            // Biased and quiet: most wake-ups are for the connection, and
            // the keep-alive timer need not be re-polled for them.
            let result = tokio::select! {
                biased;
                r = driven => r.map_err(|e| HboneError::from_h2_on(e, &driver_shared.tls_failure)),
                e = quiet(keepalive) => Err(e),
            };
            driver_shared.closed.store(true, Ordering::Release);
            match result {
                Ok(()) => tracing::debug!("hbone client connection closed"),
                Err(e) => tracing::debug!(error = %e, "hbone client connection ended"),
            }
        });
        Ok(ClientConn { send, shared })
    }

    /// Opens a tunnel: sends CONNECT and waits for the peer's 200.
    ///
    /// Waits while the peer's stream limit is reached and has no timeout of
    /// its own: wrap it in `tokio::time::timeout`.
    pub async fn connect(&self, req: &ConnectRequest) -> Result<H2Stream, HboneError> {
        let (stream, _) = self.connect_with_response(req).await?;
        Ok(stream)
    }

    /// Like [`connect`](Self::connect), and also returns the headers of the
    /// peer's 200 (ztunnel answers with its workload's `baggage` there).
    /// The headers are handed over, not kept: the tunnel does not carry them.
    pub async fn connect_with_response(
        &self,
        req: &ConnectRequest,
    ) -> Result<(H2Stream, HeaderMap), HboneError> {
        self.connect_with_slot(req, self.force_reserve()).await
    }

    /// Counts a new stream regardless of limits (h2 itself waits for the peer's limit).
    pub(crate) fn force_reserve(&self) -> StreamSlot {
        StreamSlot::force(&self.shared)
    }

    /// Counts a new stream if fewer than `max` are active (the pool's admission check).
    pub(crate) fn try_reserve(&self, max: usize) -> Option<StreamSlot> {
        let max = max.min(self.send.current_max_send_streams());
        StreamSlot::reserve(&self.shared, max)
    }

    pub(crate) async fn connect_with_slot(
        &self,
        req: &ConnectRequest,
        slot: StreamSlot,
    ) -> Result<(H2Stream, HeaderMap), HboneError> {
        let head = req.to_http()?;
        let map = |e| HboneError::from_h2_on(e, &self.shared.tls_failure);
        let mut send = self.send.clone().ready().await.map_err(map)?;
        let (response, stream) = send.send_request(head, false).map_err(map)?;
        let response = response.await.map_err(map)?;
        if response.status() != StatusCode::OK {
            tracing::debug!(status = %response.status(), target = %req.target, "hbone connect refused");
            return Err(HboneError::Status(response.status()));
        }
        let (head, body) = response.into_parts();
        Ok((H2Stream::new(stream, body, Some(slot)), head.headers))
    }

    pub(crate) fn shared(&self) -> &Arc<ConnShared> {
        &self.shared
    }

    /// True if the connection is open and below the peer's stream limit.
    pub fn is_ready(&self) -> bool {
        !self.is_closed() && self.active_streams() < self.send.current_max_send_streams()
    }

    /// True once the peer has sent GOAWAY: the connection takes no new tunnels
    /// and ends when its open ones do.
    pub fn is_going_away(&self) -> bool {
        self.shared.goaway.is_set()
    }

    /// True once the connection has ended (closed, failed, or keep-alive timed out).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Tunnels currently open (or being opened) on this connection.
    pub fn active_streams(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }
}
