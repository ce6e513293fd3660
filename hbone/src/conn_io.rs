//! The I/O wrapper under every HBONE HTTP/2 connection.
//!
//! It does two things about the transport's end of life:
//!
//! Lingering close. When h2 closes a connection it shuts down the write side
//! and then drops the socket. If the peer sent anything we have not read by then (a
//! WINDOW_UPDATE, a PING), the kernel answers the close with a TCP RST, which
//! also throws away data still queued in our send buffer: the tail of the last
//! tunnel is lost and the peer sees "connection reset". Draining reads until
//! the peer closes too (bounded by a timeout) makes the close orderly.
//!
//! Remembering TLS failures. h2 keeps only the kind and text of I/O errors,
//! so a TLS alert (say, the peer rejecting our certificate) would reach the
//! caller as anonymous I/O. The first rustls error seen here is recorded,
//! classified, for the connection's error mapping to use.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::error::HboneError;
use crate::flood::SettingsGuard;
use crate::goaway::{FrameScan, GoAway};

/// The first TLS failure seen on a connection, shared with its error mapping.
pub(crate) type TlsFailure = Arc<OnceLock<HboneError>>;

/// How long to wait for the peer to close after our shutdown; a peer that
/// never does only costs us this much.
const LINGER_TIMEOUT: Duration = Duration::from_secs(5);

/// Wraps a connection's transport: lingering close and TLS failure capture.
pub(crate) struct ConnIo<IO> {
    inner: IO,
    tls_failure: TlsFailure,
    /// Set once our side is shut down and we are draining.
    draining: Option<Pin<Box<Sleep>>>,
    done: bool,
    /// Client connections only: watches the peer's frames for GOAWAY.
    scan: Option<FrameScan>,
    /// Server connections only: bounds the peer's SETTINGS frames.
    settings: Option<SettingsGuard>,
}

impl<IO> ConnIo<IO> {
    /// Wraps `inner`; its TLS failures are recorded in the returned slot.
    pub(crate) fn new(inner: IO) -> (ConnIo<IO>, TlsFailure) {
        let tls_failure = TlsFailure::default();
        let io = ConnIo {
            inner,
            tls_failure: tls_failure.clone(),
            draining: None,
            done: false,
            scan: None,
            settings: None,
        };
        (io, tls_failure)
    }

    /// Like [`new`](Self::new), for a server: a peer that floods SETTINGS
    /// frames gets a read error, which ends the connection.
    pub(crate) fn server(inner: IO) -> (ConnIo<IO>, TlsFailure) {
        let (mut io, tls_failure) = ConnIo::new(inner);
        io.settings = Some(SettingsGuard::new());
        (io, tls_failure)
    }

    /// Like [`new`](Self::new), and fires `goaway` when the peer sends GOAWAY.
    pub(crate) fn with_goaway(inner: IO, goaway: Arc<GoAway>) -> (ConnIo<IO>, TlsFailure) {
        let (mut io, tls_failure) = ConnIo::new(inner);
        io.scan = Some(FrameScan::new(goaway));
        (io, tls_failure)
    }

    /// Records the error if it comes from rustls, then passes it on unchanged.
    fn note<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &r {
            if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                let classified = HboneError::from_rustls(tls);
                tracing::debug!(error = %classified, "tls failure on hbone connection");
                let _ = self.tls_failure.set(classified);
            }
        }
        r
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ConnIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(scan) = self.scan.as_mut() {
            scan.feed(&buf.filled()[before..]);
        }
        if let Some(guard) = self.settings.as_mut() {
            if let Err(flood) = guard.feed(&buf.filled()[before..]) {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, flood)));
            }
        }
        self.note(r)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ConnIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(Ok(()));
        }
        if this.draining.is_none() {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.draining = Some(Box::pin(tokio::time::sleep(LINGER_TIMEOUT)));
        }
        let mut scratch = [0u8; 4096];
        loop {
            if let Some(deadline) = this.draining.as_mut() {
                if deadline.as_mut().poll(cx).is_ready() {
                    tracing::debug!(
                        "peer did not close the hbone connection in time; closing anyway"
                    );
                    this.done = true;
                    return Poll::Ready(Ok(()));
                }
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                // More bytes from the peer (control frames): discard and keep waiting.
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                // EOF or an error: the peer is gone, closing now cannot lose data.
                Poll::Ready(_) => {
                    this.done = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn shutdown_waits_for_peer_close_and_discards_late_bytes() {
        let (a, mut b) = tokio::io::duplex(64);
        let (mut a, _) = ConnIo::new(a);
        a.write_all(b"last words").await.expect("write");
        let shutdown = tokio::spawn(async move { a.shutdown().await });
        let mut got = [0u8; 10];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"last words");
        b.write_all(b"window update")
            .await
            .expect("peer still writes");
        assert!(!shutdown.is_finished());
        drop(b);
        let done = tokio::time::timeout(Duration::from_secs(5), shutdown).await;
        done.expect("shutdown finishes once the peer closes")
            .expect("join")
            .expect("shutdown ok");
    }
}
