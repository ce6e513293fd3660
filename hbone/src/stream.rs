//! The tunnel stream: one HTTP/2 CONNECT stream used as a byte pipe.
//!
//! [`H2Stream`] implements tokio's `AsyncRead`/`AsyncWrite` for general use;
//! the data path should use [`copy_bidirectional`], which avoids the copies
//! and per-call capacity juggling the generic traits force.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::client::StreamSlot;
use crate::error::HboneError;
use crate::goaway::GoAwaySignal;

pub use crate::copy::copy_bidirectional;

/// Upper bound on one `poll_write`'s reservation, so a huge write does not
/// claim the whole connection window for one stream.
const MAX_WRITE: usize = 256 * 1024;

/// Send capacity asked of h2 at least, whenever a stream has too little.
/// h2 wakes the sending task each time it assigns capacity, so reserving
/// exactly each small write cost one extra poll of that task per request
/// (callgrind, 64 B ping-pong through two node proxies); a standing reserve
/// is drawn down over many small writes instead. 16 KiB per stream is small
/// against the 16 MiB connection window.
const MIN_RESERVE: usize = 16 * 1024;

/// The send capacity available for a write of `want` bytes, asking h2 for
/// more (at least [`MIN_RESERVE`], at most `max`) only when there is too little.
pub(crate) fn reserve_for(send: &mut SendStream<Bytes>, want: usize, max: usize) -> usize {
    let cap = send.capacity();
    if cap >= want {
        return cap;
    }
    send.reserve_capacity(want.max(MIN_RESERVE).min(max));
    send.capacity()
}

/// An established HBONE tunnel: bytes written go to the peer, bytes read come from it.
///
/// Dropping it before both directions finished resets the stream (CANCEL).
pub struct H2Stream {
    pub(crate) send: SendStream<Bytes>,
    pub(crate) recv: RecvStream,
    /// Received bytes not yet handed to `poll_read`.
    pub(crate) read_buf: Bytes,
    /// END_STREAM has been sent.
    pub(crate) write_closed: bool,
    /// Keeps the pool's stream count for this connection until the tunnel ends.
    pub(crate) slot: Option<StreamSlot>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id().as_u32())
            .field("write_closed", &self.write_closed)
            .finish_non_exhaustive()
    }
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        slot: Option<StreamSlot>,
    ) -> H2Stream {
        H2Stream {
            send,
            recv,
            read_buf: Bytes::new(),
            write_closed: false,
            slot,
        }
    }

    /// For a tunnel opened by a client: the signal raised when its
    /// connection gets GOAWAY (the peer is draining). Whoever keeps the
    /// tunnel idle for reuse should then end it. `None` on the server side.
    pub fn goaway(&self) -> Option<GoAwaySignal> {
        self.slot
            .as_ref()
            .map(|s| GoAwaySignal(s.shared().goaway.clone()))
    }
}

/// Converts an h2 failure into an `io::Error` whose kind reflects what happened.
pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    let kind = if e.is_reset() {
        io::ErrorKind::ConnectionReset
    } else if e.is_go_away() {
        io::ErrorKind::ConnectionAborted
    } else {
        io::ErrorKind::Other
    };
    if e.is_io() {
        if let Some(inner) = e.into_io() {
            return inner;
        }
        return io::Error::from(io::ErrorKind::BrokenPipe);
    }
    io::Error::new(kind, HboneError::from_h2(e))
}

/// The error for a send side that can no longer carry data.
pub(crate) fn poll_send_closed(send: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> HboneError {
    match send.poll_reset(cx) {
        Poll::Ready(Ok(reason)) => HboneError::StreamReset(reason),
        Poll::Ready(Err(e)) => HboneError::from_h2(e),
        Poll::Pending => HboneError::ConnectionClosed,
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        while this.read_buf.is_empty() {
            match this.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => this.read_buf = data,
                // END_STREAM: the peer finished writing.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(h2_to_io(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = buf.remaining().min(this.read_buf.len());
        buf.put_slice(&this.read_buf.split_to(n));
        // Only now is the data out of our hands, so only now may the peer send more.
        if let Err(e) = this.recv.flow_control().release_capacity(n) {
            tracing::debug!(error = %e, "releasing tunnel receive capacity failed");
        }
        Poll::Ready(Ok(()))
    }
}

impl H2Stream {
    /// Sends up to the stream's send capacity of `bufs`, gathered into one
    /// DATA frame. Gathering matters when an HTTP/2 connection runs inside
    /// the tunnel (the waypoint): its codec writes a frame's header and its
    /// payload as separate slices, and one `send_data` per slice would put
    /// each in a DATA frame (and often a TLS record and a `writev`) of its own.
    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        if want == 0 {
            return Poll::Ready(Ok(0));
        }
        // Reserving before sending bounds what h2 buffers to what the peer allows.
        let mut cap = reserve_for(&mut self.send, want, MAX_WRITE);
        loop {
            if cap > 0 {
                let data = gather(bufs, cap.min(want));
                let n = data.len();
                self.send.send_data(data, false).map_err(h2_to_io)?;
                return Poll::Ready(Ok(n));
            }
            match self.send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => {
                    cap = self.send.capacity();
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(h2_to_io(e))),
                Poll::Ready(None) => {
                    let e = poll_send_closed(&mut self.send, cx);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e)));
                }
                Poll::Pending => {
                    // Capacity may never come if the peer reset the stream.
                    if let Poll::Ready(r) = self.send.poll_reset(cx) {
                        let e = match r {
                            Ok(reason) => HboneError::StreamReset(reason),
                            Err(e) => HboneError::from_h2(e),
                        };
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, e)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The first `n` bytes of `bufs` in one buffer (one allocation, one copy).
fn gather(bufs: &[IoSlice<'_>], n: usize) -> Bytes {
    if let Some(first) = bufs.first().filter(|b| b.len() >= n) {
        return Bytes::copy_from_slice(&first[..n]);
    }
    let mut out = BytesMut::with_capacity(n);
    for b in bufs {
        let take = (n - out.len()).min(b.len());
        out.extend_from_slice(&b[..take]);
        if out.len() == n {
            break;
        }
    }
    out.freeze()
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection driver task writes frames out; nothing is held here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            this.send.reserve_capacity(0);
            this.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_takes_the_first_n_bytes_across_slices() {
        let (a, b, c) = (b"abc".as_slice(), b"".as_slice(), b"defgh".as_slice());
        // (slices, n, the bytes gathered)
        type Case<'a> = (&'a [&'a [u8]], usize, &'a [u8]);
        let cases: [Case; 6] = [
            (&[a], 3, b"abc"),
            (&[a], 2, b"ab"),
            (&[a, b, c], 8, b"abcdefgh"),
            (&[a, b, c], 5, b"abcde"),
            (&[b, c], 4, b"defg"),
            (&[a, c], 3, b"abc"),
        ];
        for (bufs, n, want) in cases {
            let slices: Vec<IoSlice<'_>> = bufs.iter().map(|s| IoSlice::new(s)).collect();
            assert_eq!(&gather(&slices, n)[..], want, "{bufs:?} n={n}");
        }
    }
}
