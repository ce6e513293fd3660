//! A purpose-built HBONE engine: one task per connection moves every
//! tunnel's bytes between its socket and the mTLS connection, with no
//! general-purpose HTTP/2 stream machinery in between.
//!
//! Wire-compatible with the h2-based [`crate::client`] and
//! [`crate::server`] (and so with ztunnel): the same CONNECT heads, the
//! same SETTINGS values, HPACK through `loona-hpack`, and HTTP/2's flow
//! control, PING, GOAWAY and RST_STREAM.
//!
//! - [`frame`]: frame header and per-type checks (pure);
//! - [`conn`]: the connection's protocol state (pure, sans I/O);
//! - [`head`]: CONNECT request and response heads as header fields;
//! - [`tunnel`]: one tunnel's relay between its socket and the state;
//! - [`driver`]: the connection's task;
//! - this module: the API, [`Client`] and [`serve`].
//!
//! The tunnel's socket is handed to the connection's task, which owns it
//! until the tunnel ends; callers get the byte counts back.

mod conn;
mod driver;
mod frame;
pub mod fuzzing;
mod head;
mod tunnel;
mod wake;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use crate::client::{ConnShared, StreamSlot};
use crate::conn_io::ConnIo;
use crate::error::HboneError;
use crate::goaway::GoAway;
use crate::request::{ConnectRequest, RequestError};
use crate::settings::H2Settings;
use conn::{Conn, Limits, Role};
use driver::{Command, Driver, NewRequest, Timers};
pub use tunnel::Moved;

/// The client end of one HBONE connection. Cloning shares it.
pub struct Client<S> {
    cmds: mpsc::UnboundedSender<Command<S>>,
    shared: Arc<ConnShared>,
}

impl<S> Clone for Client<S> {
    fn clone(&self) -> Self {
        Client {
            cmds: self.cmds.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Client<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("lite::Client")
            .field("tunnels", &self.shared.active.load(Ordering::Relaxed))
            .field("going_away", &self.shared.goaway.is_set())
            .finish()
    }
}

impl<S> Client<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Starts HTTP/2 on an established (TLS) connection and spawns its
    /// task. Failures of the connection itself surface on the tunnels.
    pub fn handshake<IO>(io: IO, settings: &H2Settings) -> Result<Client<S>, HboneError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        settings.validate()?;
        let (io, tls_failure) = ConnIo::new(io);
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(ConnShared::new(
            tls_failure.clone(),
            Arc::new(GoAway::default()),
        ));
        let driver = Driver::new(
            io,
            Conn::new(Role::Client, Limits::from(settings)),
            rx,
            None,
            None,
            Timers::new(settings, false),
            shared.clone(),
            tls_failure,
        );
        tokio::spawn(async move {
            if let Err(e) = driver.run().await {
                tracing::debug!(error = %e, "hbone connection ended with an error");
            }
        });
        Ok(Client { cmds: tx, shared })
    }

    /// Opens a tunnel to `req.target` carrying `sock`, and waits for the
    /// peer's 200. The returned [`Tunnel`] resolves when the relay ends.
    pub async fn open(&self, req: &ConnectRequest, sock: S) -> Result<Tunnel, HboneError> {
        self.open_with_slot(req, sock, StreamSlot::force(&self.shared))
            .await
            .map_err(|(e, _)| e)
    }

    /// [`open`](Self::open) counted by `slot`; on failure before the
    /// stream was sent, the socket comes back with the error.
    pub(crate) async fn open_with_slot(
        &self,
        req: &ConnectRequest,
        sock: S,
        slot: StreamSlot,
    ) -> Result<Tunnel, (HboneError, Option<S>)> {
        let fields = match head::request_fields(req) {
            Ok(f) => f,
            Err(e) => return Err((e.into(), Some(sock))),
        };
        let (opened_tx, opened_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let sent = self.cmds.send(Command::Open {
            fields,
            sock,
            slot,
            opened: opened_tx,
            done: done_tx,
        });
        if let Err(mpsc::error::SendError(cmd)) = sent {
            let Command::Open { sock, .. } = cmd else {
                unreachable!("sent an Open")
            };
            return Err((HboneError::ConnectionClosed, Some(sock)));
        }
        let headers = opened_rx
            .await
            .map_err(|_| (HboneError::ConnectionClosed, None))??;
        Ok(Tunnel {
            headers,
            done: done_rx,
        })
    }

    pub(crate) fn shared(&self) -> &Arc<ConnShared> {
        &self.shared
    }

    /// Whether the connection takes no new tunnels (GOAWAY either way, or closed).
    pub fn is_going_away(&self) -> bool {
        self.shared.goaway.is_set()
    }

    /// Whether the connection's task has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Tunnels open on the connection.
    pub fn active_tunnels(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }
}

/// An established tunnel (the peer answered 200).
#[derive(Debug)]
pub struct Tunnel {
    headers: HeaderMap,
    done: oneshot::Receiver<tunnel::Outcome>,
}

impl Tunnel {
    /// The headers of the peer's 200 (ztunnel sends its workload's `baggage`).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Waits for the relay to end: bytes (to the peer, from the peer).
    /// The 200's headers are dropped first: a tunnel can wait for hours.
    pub fn finish(self) -> impl Future<Output = Result<Moved, HboneError>> + Send {
        let done = self.done;
        async move { done.await.map_err(|_| HboneError::ConnectionClosed)? }
    }
}

/// A CONNECT request a server received; answer it with
/// [`accept`](Request::accept) or [`reject`](Request::reject). Dropping it
/// unanswered resets the stream.
pub struct Request<S> {
    /// The request, or why it cannot be served (answered with its status by `accept`).
    pub parsed: Result<ConnectRequest, RequestError>,
    stream: u32,
    cmds: Option<mpsc::UnboundedSender<Command<S>>>,
    reset: Arc<std::sync::atomic::AtomicBool>,
}

impl<S> std::fmt::Debug for Request<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("lite::Request")
            .field("stream", &self.stream)
            .field("parsed", &self.parsed)
            .finish()
    }
}

impl<S> Request<S> {
    /// True if the peer has already reset this stream (RST_STREAM), so it
    /// is not worth answering: a client that opens and at once cancels
    /// streams (HTTP/2 "rapid reset") would otherwise make us do each
    /// stream's work, such as connecting to a pod, for nothing. Never waits.
    pub fn reset_by_peer(&mut self) -> bool {
        self.reset.load(Ordering::Acquire)
    }

    /// Answers 200 with `headers` and relays the tunnel through `sock`
    /// until both sides end. An invalid request is answered with its
    /// error's status instead, and the error returned.
    pub async fn accept(mut self, sock: S, headers: HeaderMap) -> Result<Moved, HboneError> {
        let cmds = self.cmds.take().expect("answered once");
        if let Err(e) = &self.parsed {
            let e = e.clone();
            let _ = cmds.send(Command::Reject {
                stream: self.stream,
                fields: head::response_fields(e.status(), &HeaderMap::new()),
            });
            return Err(HboneError::InvalidRequest(e));
        }
        let (done_tx, done_rx) = oneshot::channel();
        cmds.send(Command::Accept {
            stream: self.stream,
            fields: head::response_fields(StatusCode::OK, &headers),
            sock,
            done: done_tx,
        })
        .map_err(|_| HboneError::ConnectionClosed)?;
        // Not held while the tunnel lasts: the request and its headers.
        drop((self, cmds, headers));
        done_rx.await.map_err(|_| HboneError::ConnectionClosed)?
    }

    /// Answers with `status` (meant to be non-2xx) and ends the stream.
    pub fn reject(mut self, status: StatusCode) {
        if let Some(cmds) = self.cmds.take() {
            let _ = cmds.send(Command::Reject {
                stream: self.stream,
                fields: head::response_fields(status, &HeaderMap::new()),
            });
        }
    }
}

impl<S> Drop for Request<S> {
    fn drop(&mut self) {
        if let Some(cmds) = self.cmds.take() {
            let _ = cmds.send(Command::Cancel {
                stream: self.stream,
            });
        }
    }
}

/// Serves CONNECT streams on `io` until the peer closes the connection or,
/// after `shutdown` resolves (GOAWAY sent), its streams are done.
///
/// `on_request` runs in the connection's task: it should spawn the work of
/// deciding and connecting, and answer the request from there.
pub async fn serve<IO, S, F, Sh>(
    io: IO,
    settings: &H2Settings,
    mut on_request: F,
    shutdown: Sh,
) -> Result<(), HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut(Request<S>) + Send + 'static,
    Sh: Future<Output = ()> + Send + 'static,
{
    settings.validate()?;
    // No SETTINGS scan: the connection state answers every SETTINGS
    // itself, and stops reading while its answers are not being read.
    let (io, tls_failure) = ConnIo::new(io);
    let (tx, rx) = mpsc::unbounded_channel();
    let callback = Box::new(move |r: NewRequest<S>| {
        on_request(Request {
            parsed: r.parsed,
            stream: r.stream,
            cmds: Some(r.cmds),
            reset: r.reset,
        })
    });
    let driver = Driver::new(
        io,
        Conn::new(Role::Server, Limits::from(settings)),
        rx,
        Some((callback, tx)),
        Some(Box::pin(shutdown)),
        Timers::new(settings, true),
        Arc::new(ConnShared::new(
            tls_failure.clone(),
            Arc::new(GoAway::default()),
        )),
        tls_failure,
    );
    driver.run().await
}
