//! The data path: move bytes between a plain TCP socket and an HBONE stream.
//!
//! Both directions run in one future (no task per direction, no socket split)
//! and each holds at most one chunk:
//! - tcp → tunnel: small reads go through a stack buffer and are copied
//!   out (an idle connection holds no read buffer); once a read fills it,
//!   bulk reads go into a reusable `BytesMut` whose filled part is
//!   `split().freeze()`d and handed to h2 without copying, after waiting for
//!   send capacity so h2 never buffers beyond what the peer's window allows,
//!   one chunk per poll so that h2 writes each before the next is read;
//! - tunnel → tcp: write each received `Bytes` straight to the socket and
//!   release flow-control capacity only for what the socket accepted.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;

use crate::error::HboneError;
use crate::stream::{poll_send_closed, reserve_for, H2Stream};

/// Bytes read from TCP per chunk, and so the largest DATA frame and TLS
/// write of a bulk tunnel. As large as the TLS side's read buffer: with 128
/// KiB, perf stat of a cross-node iperf3 flow counted 10.5 `writev` and 9.8
/// `sendto` per MB against 4.1 and 4.0 for a bare TLS relay pair reading 256
/// KiB, and the kernel's cost per send and per ACK is what bulk CPU is made
/// of here (three quarters of it is kernel time).
pub(crate) const CHUNK: usize = 256 * 1024;
/// A connection starts with small (2 KiB) reads into a stack buffer and
/// switches to CHUNK once a read fills it, so idle and request/response
/// connections (most of them) hold no read buffer between reads: the
/// 2 KiB copy per small read is cheaper than keeping 2 KiB per connection.
const FIRST_CHUNK: usize = 2 * 1024;
/// Chunks one direction may move per poll before yielding, so one busy
/// tunnel cannot starve other tasks (including the h2 connection driver).
const BUDGET: usize = 16;

/// Copies both ways until both are finished; returns (tcp→tunnel, tunnel→tcp) byte counts.
///
/// Half-close is propagated: TCP EOF sends END_STREAM, and END_STREAM from the
/// peer shuts down the TCP write side; the other direction keeps running until
/// it ends too. A reset from the peer, or a TCP error, ends both directions
/// with an error and resets the stream (CANCEL).
pub async fn copy_bidirectional<T>(tcp: &mut T, stream: H2Stream) -> Result<(u64, u64), HboneError>
where
    T: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let H2Stream {
        send,
        recv,
        read_buf,
        write_closed,
        slot: _slot,
    } = stream;
    let mut up = Up {
        send,
        buf: BytesMut::new(),
        chunk: FIRST_CHUNK,
        pending: None,
        done: write_closed,
        bytes: 0,
    };
    let mut down = Down {
        recv,
        // Data already received through AsyncRead but not yet consumed.
        pending: (!read_buf.is_empty()).then_some(read_buf),
        eof: false,
        need_flush: false,
        watching: false,
        done: false,
        bytes: 0,
    };
    let result = poll_fn(|cx| {
        if !up.done {
            if let Poll::Ready(Err(e)) = up.poll(cx, tcp, down.watching) {
                return Poll::Ready(Err(e));
            }
        }
        if !down.done {
            if let Poll::Ready(Err(e)) = down.poll(cx, tcp) {
                return Poll::Ready(Err(e));
            }
        }
        if up.done && down.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await;
    match result {
        Ok(()) => {
            tracing::trace!(
                sent = up.bytes,
                received = down.bytes,
                "tunnel copy finished"
            );
            Ok((up.bytes, down.bytes))
        }
        Err(e) => {
            // Tell the peer now rather than whenever the handles are dropped.
            up.send.send_reset(Reason::CANCEL);
            tracing::debug!(error = %e, sent = up.bytes, received = down.bytes, "tunnel copy failed");
            Err(e)
        }
    }
}

/// tcp → tunnel.
struct Up {
    send: SendStream<Bytes>,
    buf: BytesMut,
    /// Current read size: FIRST_CHUNK, then CHUNK once traffic is bulk.
    chunk: usize,
    /// Read from TCP, not yet accepted by h2.
    pending: Option<Bytes>,
    done: bool,
    bytes: u64,
}

impl Up {
    /// Makes progress; `Ready(Ok)` means this direction has finished (`done` is set).
    ///
    /// `down_watching`: the other direction is parked in `poll_data`, which
    /// h2 wakes on a reset or connection error too, so this direction need
    /// not register for resets itself.
    fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        tcp: &mut T,
        down_watching: bool,
    ) -> Poll<Result<(), HboneError>>
    where
        T: AsyncRead + Unpin + ?Sized,
    {
        for _ in 0..BUDGET {
            if let Some(chunk) = self.pending.as_mut() {
                let mut cap = reserve_for(&mut self.send, chunk.len(), usize::MAX);
                if cap == 0 {
                    cap = match self.send.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(n))) => n,
                        Poll::Ready(Some(Err(e))) => {
                            return Poll::Ready(Err(HboneError::from_h2(e)))
                        }
                        Poll::Ready(None) => return self.closed_by_peer(cx),
                        Poll::Pending => return self.poll_peer_reset(cx, down_watching),
                    };
                }
                let part = chunk.split_to(cap.min(chunk.len()));
                let n = part.len();
                self.send
                    .send_data(part, false)
                    .map_err(HboneError::from_h2)?;
                self.bytes += n as u64;
                if chunk.is_empty() {
                    self.pending = None;
                    if self.chunk == CHUNK {
                        // Let the connection task encrypt and write this
                        // chunk before the next read: the chunk is still in
                        // cache, and its buffer is free again for that read.
                        // Reading on at once kept two or three chunks and
                        // their records in flight, and the copies and the
                        // AES over them missed the cache (a perf profile put
                        // `_copy_from_iter` at 2.8x a TLS relay's per GB).
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                continue;
            }
            if self.chunk == FIRST_CHUNK {
                // Uninitialised: zeroing 2 KiB on every poll was 2% of a
                // proxy's instructions per small request.
                let mut stack = [MaybeUninit::<u8>::uninit(); FIRST_CHUNK];
                let mut rb = ReadBuf::uninit(&mut stack);
                match Pin::new(&mut *tcp).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => return self.eof(),
                    Poll::Ready(Ok(())) => {
                        if rb.remaining() == 0 {
                            self.chunk = CHUNK;
                        }
                        self.pending = Some(Bytes::copy_from_slice(rb.filled()));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(HboneError::Tcp(e))),
                    Poll::Pending => return self.poll_peer_reset(cx, down_watching),
                }
                continue;
            }
            if self.buf.capacity() < self.chunk {
                // A whole chunk of room for every bulk read: a read into
                // what was left of the last chunk moved a fraction of one
                // and cost a DATA frame and a TLS write like a whole one.
                // Reuses the old allocation when h2 has released every
                // chunk of it.
                self.buf.reserve(self.chunk);
            }
            let spare = self.buf.capacity() - self.buf.len();
            match poll_read_buf(Pin::new(&mut *tcp), cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => return self.eof(),
                Poll::Ready(Ok(n)) => {
                    if n == spare {
                        self.chunk = CHUNK;
                    }
                    self.pending = Some(self.buf.split().freeze());
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(HboneError::Tcp(e))),
                Poll::Pending => return self.poll_peer_reset(cx, down_watching),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// While waiting, watch for a reset so a dead stream does not hang this direction.
    /// TCP EOF: END_STREAM to the peer; this direction is done.
    fn eof(&mut self) -> Poll<Result<(), HboneError>> {
        self.send.reserve_capacity(0);
        self.send
            .send_data(Bytes::new(), true)
            .map_err(HboneError::from_h2)?;
        self.done = true;
        Poll::Ready(Ok(()))
    }

    fn poll_peer_reset(
        &mut self,
        cx: &mut Context<'_>,
        down_watching: bool,
    ) -> Poll<Result<(), HboneError>> {
        if down_watching {
            return Poll::Pending;
        }
        match self.send.poll_reset(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => self.closed_by_peer(cx),
        }
    }

    /// The peer stopped accepting data. A NO_ERROR reset after the peer
    /// finished its own side means "done, stop sending" (RFC 9113 §8.1).
    fn closed_by_peer(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HboneError>> {
        match poll_send_closed(&mut self.send, cx) {
            HboneError::StreamReset(Reason::NO_ERROR) => {
                self.done = true;
                Poll::Ready(Ok(()))
            }
            e => Poll::Ready(Err(e)),
        }
    }
}

/// tunnel → tcp.
struct Down {
    recv: RecvStream,
    /// Received from the peer, not yet written to TCP.
    pending: Option<Bytes>,
    /// END_STREAM received; TCP write side still to be shut down.
    eof: bool,
    need_flush: bool,
    /// The last poll ended parked in `poll_data`: a reset or connection
    /// error will wake this task through it.
    watching: bool,
    done: bool,
    bytes: u64,
}

impl Down {
    /// Makes progress; `Ready(Ok)` means this direction has finished (`done` is set).
    fn poll<T>(&mut self, cx: &mut Context<'_>, tcp: &mut T) -> Poll<Result<(), HboneError>>
    where
        T: AsyncWrite + Unpin + ?Sized,
    {
        self.watching = false;
        for _ in 0..BUDGET {
            if let Some(data) = self.pending.as_mut() {
                while !data.is_empty() {
                    let n = match Pin::new(&mut *tcp).poll_write(cx, data) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(HboneError::Tcp(
                                io::ErrorKind::WriteZero.into(),
                            )))
                        }
                        Poll::Ready(Ok(n)) => n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(HboneError::Tcp(e))),
                        Poll::Pending => return Poll::Pending,
                    };
                    data.advance(n);
                    self.bytes += n as u64;
                    self.need_flush = true;
                    if let Err(e) = self.recv.flow_control().release_capacity(n) {
                        return Poll::Ready(Err(HboneError::from_h2(e)));
                    }
                }
                self.pending = None;
            }
            if self.eof {
                // poll_shutdown flushes first, then sends FIN.
                return match Pin::new(&mut *tcp).poll_shutdown(cx) {
                    Poll::Ready(Ok(())) => {
                        self.done = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(HboneError::Tcp(e))),
                    Poll::Pending => Poll::Pending,
                };
            }
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    if !data.is_empty() {
                        self.pending = Some(data);
                    }
                }
                Poll::Ready(None) => self.eof = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(HboneError::from_h2(e))),
                Poll::Pending => {
                    self.watching = true;
                    // Nothing more to write for now: push out what a buffering
                    // writer (e.g. a TLS stream) may be holding.
                    if self.need_flush {
                        match Pin::new(&mut *tcp).poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.need_flush = false,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(HboneError::Tcp(e))),
                            Poll::Pending => {}
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::future::Future;

    use super::*;

    /// The TCP side of a tunnel: serves scripted read sizes, records the
    /// room each read was offered, and swallows writes.
    struct Scripted {
        reads: VecDeque<usize>,
        offered: Vec<usize>,
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.offered.push(buf.remaining());
            if let Some(n) = this.reads.pop_front() {
                let n = n.min(buf.remaining());
                buf.initialize_unfilled_to(n).fill(7);
                buf.advance(n);
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// After handing h2 a bulk chunk the loop yields, so the connection task
    /// writes that chunk (still in cache, its buffer then free for reuse)
    /// before the next read.
    #[tokio::test(flavor = "current_thread")]
    async fn a_bulk_chunk_is_written_before_the_next_read() {
        let (send, recv, _server) =
            crate::test_h2::stream(true, |_body| std::future::pending::<()>()).await;
        let mut tcp = Scripted {
            reads: [FIRST_CHUNK, CHUNK, CHUNK, CHUNK].into(),
            offered: Vec::new(),
        };
        {
            let copy = copy_bidirectional(&mut tcp, H2Stream::new(send, recv, None));
            let mut copy = std::pin::pin!(copy);
            for _ in 0..2 {
                let pending = poll_fn(|cx| Poll::Ready(copy.as_mut().poll(cx).is_pending())).await;
                assert!(pending, "the copy has more to do");
            }
        }
        // One read per poll: the small first read (which filled its buffer,
        // so the tunnel is bulk from then on), then one bulk read.
        assert_eq!(tcp.offered, [FIRST_CHUNK, CHUNK], "reads in two polls");
    }

    /// A read that stops short of its buffer must not leave the next bulk
    /// read the remainder: each read costs a DATA frame and a TLS write
    /// whatever it carries, so every bulk read is offered a whole chunk.
    #[tokio::test(flavor = "current_thread")]
    async fn every_bulk_read_is_offered_a_whole_chunk() {
        let (send, recv, server) = crate::test_h2::stream(true, |mut body| async move {
            let mut got = 0;
            while let Some(data) = body.data().await {
                let data = data.expect("data");
                got += data.len();
                body.flow_control()
                    .release_capacity(data.len())
                    .expect("release");
            }
            got
        })
        .await;
        let reads = [FIRST_CHUNK, 100 << 10, 100 << 10, 3 << 10, CHUNK, 100 << 10];
        let mut tcp = Scripted {
            reads: reads.into(),
            offered: Vec::new(),
        };
        let (up, down) = copy_bidirectional(&mut tcp, H2Stream::new(send, recv, None))
            .await
            .expect("copy");
        let total: usize = reads.iter().sum();
        assert_eq!((up, down), (total as u64, 0));
        assert_eq!(
            server.await.expect("server"),
            total,
            "the peer got every byte"
        );
        assert_eq!(
            tcp.offered[0], FIRST_CHUNK,
            "a tunnel starts with small reads"
        );
        // Every read after the one that filled the first chunk (the last
        // is the EOF) was offered a whole chunk.
        assert_eq!(tcp.offered.len(), reads.len() + 1);
        for (i, offered) in tcp.offered.iter().enumerate().skip(1) {
            assert!(*offered >= CHUNK, "read {i} was offered {offered} bytes");
        }
    }
}
