//! Write batching under an HBONE connection's HTTP/2.
//!
//! h2 writes a DATA frame of more than 256 bytes by reference and must flush
//! it before it can take the next frame, so a connection carrying many small
//! streams (a waypoint's responses, a node proxy's requests) made one TLS
//! write and one `writev` per frame: strace of a waypoint at its maximum
//! rate showed runs of twenty 4 KiB `writev`s back to back, one per
//! response.
//!
//! [`Batch`] lets the first flush in a poll of the connection write as
//! usual, so a lone frame (a round trip's) leaves at once and costs nothing
//! more. Small writes after that flush are held in a buffer and their
//! flushes let pass; the driver ([`BatchHandle::poll`]) then polls the
//! connection once more, and that pass's flush, h2's last act in a poll,
//! writes everything held at once (one TLS write, records of up to 16 KiB,
//! one `writev`). Large writes (bulk tunnels) go straight through, uncopied.
//! Outside the driver's polls (the handshake, say) nothing is deferred, so
//! no byte can be held with no pass coming to write it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held back; more go out first.
const LIMIT: usize = 64 * 1024;

/// Writes this large skip the buffer when it is empty: they are a batch
/// already, and copying them would cost more than it saves.
const PASS_THROUGH: usize = 16 * 1024;

/// Where the driver is; see [`State::phase`].
const IDLE: u8 = 0;
const FIRST_PASS: u8 = 1;
const FIRST_PASS_FLUSHED: u8 = 2;
const LAST_PASS: u8 = 3;

/// What the driver and the I/O share about the batch. The connection is
/// polled by one task at a time, so relaxed atomics suffice.
#[derive(Debug, Default)]
struct State {
    /// `IDLE` outside the driver's polls; `FIRST_PASS` until the first
    /// flush of the first pass wrote; then `FIRST_PASS_FLUSHED`, where small
    /// writes are held and flushes deferred; `LAST_PASS` while the final
    /// pass writes them.
    phase: AtomicU8,
    /// A flush was let pass with bytes still held.
    deferred: AtomicBool,
}

/// The driver's side: poll the connection through [`poll`](Self::poll).
#[derive(Debug, Clone)]
pub(crate) struct BatchHandle(Arc<State>);

impl BatchHandle {
    /// Polls the connection with `poll`, and if that deferred a flush, once
    /// more as the final pass, whose flush writes the held bytes. A first
    /// pass that returns ready leaves them for the next poll: the driver
    /// polls again after handling what it got (an accepted stream).
    pub(crate) fn poll<T>(&self, mut poll: impl FnMut() -> Poll<T>) -> Poll<T> {
        let s = &self.0;
        s.phase.store(FIRST_PASS, Relaxed);
        let r = poll();
        if r.is_pending() && s.deferred.load(Relaxed) {
            s.phase.store(LAST_PASS, Relaxed);
            let r = poll();
            s.phase.store(IDLE, Relaxed);
            return r;
        }
        s.phase.store(IDLE, Relaxed);
        r
    }
}

/// Batches small writes to `IO`; see the module docs.
pub(crate) struct Batch<IO> {
    inner: IO,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to `inner`.
    pos: usize,
    state: Arc<State>,
}

impl<IO> Batch<IO> {
    pub(crate) fn new(inner: IO) -> (Batch<IO>, BatchHandle) {
        let state = Arc::new(State::default());
        let io = Batch {
            inner,
            buf: Vec::new(),
            pos: 0,
            state: state.clone(),
        };
        (io, BatchHandle(state))
    }

    fn held(&self) -> usize {
        self.buf.len() - self.pos
    }
}

impl<IO: AsyncWrite + Unpin> Batch<IO> {
    /// Writes out every held byte.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pos < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
        }
        self.buf.clear();
        self.pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Batch<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Batch<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        // Once bytes are held, later ones queue behind them whatever the
        // phase, so the order on the wire is the order written.
        let hold = this.held() > 0 || this.state.phase.load(Relaxed) == FIRST_PASS_FLUSHED;
        if !hold || total >= PASS_THROUGH {
            if this.held() > 0 {
                ready!(this.poll_drain(cx))?;
            }
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        if this.held() + total > LIMIT {
            ready!(this.poll_drain(cx))?;
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let phase = this.state.phase.load(Relaxed);
        if this.held() > 0 && phase == FIRST_PASS_FLUSHED {
            this.state.deferred.store(true, Relaxed);
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_drain(cx))?;
        this.state.deferred.store(false, Relaxed);
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        if phase == FIRST_PASS {
            this.state.phase.store(FIRST_PASS_FLUSHED, Relaxed);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        this.state.deferred.store(false, Relaxed);
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// A sink that records each write it is given, as the socket would see it.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    enum Op {
        Write(usize),
        Flush,
        Shutdown,
    }

    /// Runs `ops` as one poll of the connection, through the driver when
    /// `driven`, and returns the sizes of the writes `inner` saw and how
    /// many passes the driver made.
    fn run(driven: bool, ops: &[Op]) -> (Vec<usize>, usize) {
        let (mut io, handle) = Batch::new(Writes::default());
        let mut cx = Context::from_waker(Waker::noop());
        let mut apply = |io: &mut Batch<Writes>, op: &Op| {
            let p = Pin::new(io);
            match op {
                Op::Write(n) => {
                    let r = p.poll_write(&mut cx, &vec![7u8; *n]);
                    assert!(matches!(r, Poll::Ready(Ok(w)) if w == *n));
                }
                Op::Flush => assert!(p.poll_flush(&mut cx).is_ready()),
                Op::Shutdown => assert!(p.poll_shutdown(&mut cx).is_ready()),
            }
        };
        let mut passes = 0;
        if driven {
            let _ = handle.poll(|| {
                passes += 1;
                if passes == 1 {
                    ops.iter().for_each(|op| apply(&mut io, op));
                } else {
                    // The final pass: nothing new, only h2's closing flush.
                    apply(&mut io, &Op::Flush);
                }
                Poll::<()>::Pending
            });
        } else {
            ops.iter().for_each(|op| apply(&mut io, op));
        }
        (io.inner.0.iter().map(Vec::len).collect(), passes)
    }

    #[test]
    fn writes_after_the_first_flush_leave_as_one() {
        use Op::*;
        const PT: usize = PASS_THROUGH;
        // (what, driven, ops, the writes `inner` saw, the driver's passes)
        type Case<'a> = (&'a str, bool, &'a [Op], &'a [usize], usize);
        let cases: &[Case] = &[
            (
                "outside the driver's polls every write goes through",
                false,
                &[Write(10), Flush, Write(20), Flush],
                &[10, 20],
                0,
            ),
            (
                "a lone frame leaves at once, in one pass",
                true,
                &[Write(64), Flush],
                &[64],
                1,
            ),
            (
                "frames after the first flush leave together in the final pass",
                true,
                &[Write(10), Flush, Write(4096), Flush, Write(9), Flush],
                &[10, 4105],
                2,
            ),
            (
                "a large write passes through uncopied",
                true,
                &[Write(10), Flush, Write(PT)],
                &[10, PT],
                1,
            ),
            (
                "held bytes go before a large write",
                true,
                &[Write(1), Flush, Write(5), Write(PT), Flush],
                &[1, 5, PT],
                1,
            ),
            (
                "over the limit: the batch goes first",
                true,
                &[
                    Write(1),
                    Flush,
                    Write(15_000),
                    Flush,
                    Write(15_000),
                    Write(15_000),
                    Write(15_000),
                    Write(15_000),
                    Flush,
                ],
                &[1, 60_000, 15_000],
                2,
            ),
            (
                "shutdown writes what is held",
                true,
                &[Write(1), Flush, Write(3), Shutdown],
                &[1, 3],
                1,
            ),
            ("nothing written: nothing sent", true, &[Flush], &[], 1),
        ];
        for (name, driven, ops, writes, passes) in cases {
            assert_eq!(run(*driven, ops), (writes.to_vec(), *passes), "{name}");
        }
    }
}
