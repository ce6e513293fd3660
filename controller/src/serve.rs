//! The controller's TLS gRPC port: accepts TCP, does the TLS handshake
//! (ALPN h2) with a deadline, and hands the connections to tonic.
//!
//! tonic is built without its TLS feature, so the handshake is ours: it lets
//! a failed handshake (plaintext, a port scanner, a wrong CA) cost one log
//! line and never stop the server, and keeps one rustls config for xDS and
//! the CA.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, Router, TcpConnectInfo};
use tracing::{info, warn};

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more wait to be accepted, so a flood of
/// half-open connections cannot exhaust memory.
const MAX_HANDSHAKES: usize = 256;
/// After shutdown, how long open streams (xDS streams never end by
/// themselves) may go on before the server returns anyway.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("grpc server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// A TLS connection accepted by [`serve`], as tonic takes it.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: TcpConnectInfo,
    /// Fires when the drain deadline passes: tonic runs each connection in
    /// a task of its own that outlives the server future, so the connection
    /// itself must fail its I/O for long-lived streams (xDS) to end.
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl TlsConn {
    fn check_closed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.closed.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "controller shutting down",
            ))),
            Poll::Pending => Poll::Ready(Ok(())),
        }
    }
}

impl Connected for TlsConn {
    // TcpConnectInfo, so `Request::remote_addr()` works in the services.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Poll::Ready(Err(e)) = self.check_closed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Err(e)) = self.check_closed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Aborts the accept loop when [`serve`] returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` completes (then
/// drains for at most [`DRAIN_DEADLINE`]). `tls` should offer ALPN `h2`; if
/// it offers no `h2`, a copy that does is used, since gRPC needs HTTP/2.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let tls = if tls.alpn_protocols.iter().any(|p| p == b"h2") {
        tls
    } else {
        let mut config = (*tls).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    };
    let local = listener.local_addr().ok();
    let (tx, mut rx) = mpsc::channel::<io::Result<TlsConn>>(MAX_HANDSHAKES);
    let closed = CancellationToken::new();
    // Whichever way serve returns, every connection it accepted ends.
    let _close_all = closed.clone().drop_guard();
    let _accept = AbortOnDrop(tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(tls),
        tx,
        closed.clone(),
    )));
    let incoming = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));

    let (fired_tx, mut fired_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        info!(addr = ?local, "grpc server shutting down");
        let _ = fired_tx.send(true);
    };
    let server = router.serve_with_incoming_shutdown(incoming, signal);
    let deadline = async move {
        if fired_rx.wait_for(|fired| *fired).await.is_ok() {
            tokio::time::sleep(DRAIN_DEADLINE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result.map_err(ServeError::from),
        () = deadline => {
            info!(addr = ?local, "grpc drain deadline passed; closing open streams");
            Ok(())
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<io::Result<TlsConn>>,
    closed: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                warn!(error = %e, "grpc accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let closed = closed.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(conn) = handshake(&acceptor, tcp, peer, closed).await {
                let _ = tx.send(Ok(conn)).await;
            }
        });
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    closed: CancellationToken,
) -> Option<TlsConn> {
    let _ = tcp.set_nodelay(true);
    let info = TcpConnectInfo {
        local_addr: tcp.local_addr().ok(),
        remote_addr: Some(peer),
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(inner)) => Some(TlsConn {
            inner,
            info,
            closed: Box::pin(closed.cancelled_owned()),
        }),
        Ok(Err(e)) => {
            info!(peer.addr = %peer, error = %e, "tls handshake failed; is the client speaking TLS and trusting the mesh CA?");
            None
        }
        Err(_) => {
            info!(peer.addr = %peer, timeout = ?HANDSHAKE_TIMEOUT, "tls handshake timed out");
            None
        }
    }
}
