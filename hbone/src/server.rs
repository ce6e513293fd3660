//! The HBONE server: accepts CONNECT streams on an established TLS connection.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, Response, StatusCode};
use rustls::server::Acceptor;
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::batch::Batch;
use crate::conn_io::ConnIo;
use crate::error::HboneError;
use crate::quiet::quiet;
use crate::request::{ConnectRequest, RequestError};
use crate::settings::H2Settings;
use crate::stream::H2Stream;
use crate::tls::ALPN_H2;
use crate::transport::{transport, ServerTls, SEND_BUFFER};

/// Runs the server TLS handshake on an accepted socket (client certificate required).
///
/// A client that does not offer ALPN `h2` is refused in the handshake with a
/// `no_application_protocol` alert: rustls alone would complete the handshake
/// for a client that offers no ALPN at all, and the mismatch would only show
/// later as an HTTP/2 protocol error that names neither side's mistake.
///
/// Use [`crate::tls::peer_identity`] on `stream.get_ref().1` to learn who connected.
/// Sets TCP_NODELAY. Has no timeout of its own: wrap it in `tokio::time::timeout`
/// so a client that stalls mid-handshake cannot hold the task forever.
pub async fn tls_accept(
    tcp: TcpStream,
    cfg: Arc<rustls::ServerConfig>,
) -> Result<ServerTls, HboneError> {
    let peer = tcp.peer_addr().ok();
    crate::client::set_nodelay(&tcp);
    let fail = |e: HboneError| {
        tracing::debug!(peer = ?peer, error = %e, "hbone tls accept failed");
        e
    };
    let mut start = LazyConfigAcceptor::new(Acceptor::default(), transport(tcp))
        .await
        .map_err(|e| fail(HboneError::from_tls_io(e)))?;
    if let Some(offered) = alpn_refusal(start.client_hello().alpn()) {
        // Best effort: the client is refused whether or not it hears why.
        let _ = start.io.write_all(&NO_APPLICATION_PROTOCOL_ALERT).await;
        let _ = start.io.shutdown().await;
        return Err(fail(HboneError::AlpnNotH2 { offered }));
    }
    let mut tls = start
        .into_stream(cfg)
        .await
        .map_err(|e| fail(HboneError::from_tls_io(e)))?;
    tls.get_mut().1.set_buffer_limit(Some(SEND_BUFFER));
    Ok(tls)
}

/// A fatal `no_application_protocol` (120) alert as a plaintext TLS record;
/// before the ServerHello, alerts are not encrypted.
const NO_APPLICATION_PROTOCOL_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 120];

/// `None` if the offered ALPN list contains `h2`; otherwise what was offered,
/// for the error message.
fn alpn_refusal<'a>(offered: Option<impl Iterator<Item = &'a [u8]>>) -> Option<String> {
    let Some(offered) = offered else {
        return Some("none".to_string());
    };
    let offered: Vec<&[u8]> = offered.collect();
    if offered.contains(&ALPN_H2) {
        return None;
    }
    if offered.is_empty() {
        return Some("none".to_string());
    }
    Some(
        offered
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// One CONNECT request from the peer; answer it with [`accept`](Self::accept) or [`reject`](Self::reject).
///
/// Dropping it without answering resets the stream.
pub struct IncomingRequest {
    /// The parsed request, or why it is invalid.
    pub parsed: Result<ConnectRequest, RequestError>,
    body: RecvStream,
    respond: SendResponse<Bytes>,
}

impl std::fmt::Debug for IncomingRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingRequest")
            .field("parsed", &self.parsed)
            .finish_non_exhaustive()
    }
}

impl IncomingRequest {
    /// True if the peer has already reset this stream (RST_STREAM), so it
    /// is not worth answering: a client that opens and at once cancels
    /// streams (the HTTP/2 "rapid reset" attack) would otherwise make the
    /// server do each stream's work, such as connecting to a pod, for
    /// nothing. Never waits; a reset that has not been read yet is missed.
    pub fn reset_by_peer(&mut self) -> bool {
        peer_reset(&mut self.respond)
    }

    /// Answers 200 and returns the tunnel.
    ///
    /// An invalid request (`parsed` is `Err`) is never tunnelled: it is answered
    /// with its error's status and the error is returned.
    pub fn accept(self) -> Result<H2Stream, HboneError> {
        self.accept_with_headers(HeaderMap::new())
    }

    /// Like [`accept`](Self::accept), sending `headers` on the 200 (ztunnel
    /// answers with its workload's `baggage`). The values are opaque here.
    pub fn accept_with_headers(mut self, headers: HeaderMap) -> Result<H2Stream, HboneError> {
        if let Err(e) = &self.parsed {
            let e = e.clone();
            self.reject(e.status());
            return Err(HboneError::InvalidRequest(e));
        }
        let mut response = Response::new(());
        *response.headers_mut() = headers;
        let send = self
            .respond
            .send_response(response, false)
            .map_err(HboneError::from_h2)?;
        Ok(H2Stream::new(send, self.body, None))
    }

    /// Answers with `status` (meant to be non-2xx) and ends the stream.
    pub fn reject(mut self, status: StatusCode) {
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        if let Err(e) = self.respond.send_response(resp, true) {
            // The peer is gone or reset the stream; nobody is left to tell.
            tracing::debug!(error = %e, %status, "could not send hbone rejection");
        }
    }
}

/// What [`HboneError::Timeout`] says when a peer does not send the HTTP/2
/// preface within [`H2Settings::handshake_timeout`].
pub const PREFACE_TIMEOUT: &str =
    "waiting for the client's http/2 preface after tls (a stalled or hostile peer)";

/// Serves CONNECT streams on `io` until the peer closes the connection.
///
/// `on_request` is called once per stream, in the connection's task; it should
/// spawn the tunnel's work instead of awaiting it.
pub async fn serve<IO, F>(io: IO, settings: &H2Settings, on_request: F) -> Result<(), HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(IncomingRequest) + Send,
{
    serve_with_shutdown(io, settings, on_request, std::future::pending()).await
}

/// Like [`serve`], but when `shutdown` resolves sends GOAWAY, stops taking new
/// streams and returns once in-flight streams have finished.
pub async fn serve_with_shutdown<IO, F, S>(
    io: IO,
    settings: &H2Settings,
    mut on_request: F,
    shutdown: S,
) -> Result<(), HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(IncomingRequest) + Send,
    S: Future<Output = ()>,
{
    let (io, batch) = Batch::new(io);
    let (io, tls_failure) = ConnIo::server(io);
    // The handshake waits for the client's preface with no deadline of its
    // own; an authenticated peer that never sends it would hold the
    // connection (and its slot under --max-connections) forever.
    let handshake = settings.server_builder()?.handshake::<_, Bytes>(io);
    let mut conn = tokio::time::timeout(settings.handshake_timeout, handshake)
        .await
        .map_err(|_| HboneError::Timeout(PREFACE_TIMEOUT))?
        .map_err(|e| HboneError::from_h2_on(e, &tls_failure))?;
    let keepalive = crate::keepalive::run(
        conn.ping_pong(),
        settings.keepalive_interval,
        settings.keepalive_timeout,
    );
    // Quiet: the connection wakes this task for every frame; the timer
    // and the shutdown signal are polled only when they fired.
    let keepalive = quiet(keepalive);
    let shutdown = quiet(shutdown);
    tokio::pin!(keepalive);
    tokio::pin!(shutdown);
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            next = std::future::poll_fn(|cx| batch.poll(|| conn.poll_accept(cx))) => match next {
                None => {
                    tracing::debug!("hbone connection closed");
                    return Ok(());
                }
                Some(Ok((request, mut respond))) => {
                    // h2 reads every frame at hand before it hands out a
                    // stream, so a HEADERS and the RST_STREAM right behind
                    // it (rapid reset) usually arrive here together: drop
                    // such a stream before anyone works on it.
                    if peer_reset(&mut respond) {
                        continue;
                    }
                    let (head, body) = request.into_parts();
                    let parsed = ConnectRequest::from_http(&head.method, &head.uri, &head.headers);
                    if let Err(e) = &parsed {
                        tracing::debug!(error = %e, "invalid hbone request");
                    }
                    on_request(IncomingRequest { parsed, body, respond });
                }
                Some(Err(e)) => {
                    // After our GOAWAY the peer may close the socket as soon as
                    // its streams are done, racing our final frames; that is
                    // the expected end of a drain, not a failure.
                    if draining && is_peer_hangup(&e) {
                        tracing::debug!(error = %e, "hbone connection closed by peer while draining");
                        return Ok(());
                    }
                    return Err(HboneError::from_h2_on(e, &tls_failure));
                }
            },
            () = &mut shutdown, if !draining => {
                tracing::debug!("hbone connection draining: sent goaway");
                conn.graceful_shutdown();
                draining = true;
            }
            e = &mut keepalive => return Err(e),
        }
    }
}

/// Whether the peer reset the stream; polls once with a waker that is never
/// woken, so it never parks the caller.
fn peer_reset(respond: &mut SendResponse<Bytes>) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // An error here means the connection itself failed; the accept loop
    // or the stream's own I/O reports that.
    matches!(respond.poll_reset(&mut cx), std::task::Poll::Ready(Ok(_)))
}

/// True for I/O errors that just mean the peer closed the socket.
fn is_peer_hangup(e: &h2::Error) -> bool {
    use std::io::ErrorKind as K;
    e.get_io().is_some_and(|io| {
        matches!(
            io.kind(),
            K::BrokenPipe
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::UnexpectedEof
                | K::NotConnected
        )
    })
}

#[cfg(test)]
mod tests {
    use super::alpn_refusal;

    #[test]
    fn alpn_refusal_by_offer() {
        type Offer<'a> = Option<&'a [&'a [u8]]>;
        let cases: &[(Offer, Option<&str>)] = &[
            (None, Some("none")),
            (Some(&[]), Some("none")),
            (Some(&[b"h2"]), None),
            (Some(&[b"http/1.1", b"h2"]), None),
            (Some(&[b"http/1.1"]), Some("http/1.1")),
            (Some(&[b"h3", b"http/1.1"]), Some("h3, http/1.1")),
        ];
        for (offered, want) in cases {
            let got = alpn_refusal(offered.map(|o| o.iter().copied()));
            assert_eq!(got.as_deref(), *want, "offered {offered:?}");
        }
    }
}
