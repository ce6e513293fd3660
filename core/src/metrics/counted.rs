//! Byte counting as the bytes flow, on one end of a proxied connection.
//!
//! Why not the copy's return value: a copy that ends in an error (a reset,
//! a cut at the drain deadline, a dropped task) returns no counts, so a
//! 30/30-byte exchange that ended in a reset was recorded as 0/0, and a
//! long-lived connection showed no bytes at all until it closed. Counting
//! each read and write as it completes, straight into the Prometheus
//! counters and the guard's access-log totals, makes both right whatever
//! the outcome. The cost is one relaxed atomic add per read or write: a
//! read is up to a whole chunk on bulk paths, and on request/response
//! paths it is small beside the syscall it follows.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus::IntCounter;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{ConnectionGuard, Open};

/// Which end of the proxied connection the counted socket is, so its reads
/// and writes map onto Istio's received (from the client) and sent (back
/// to the client) bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client's end: what is read from it was received, what is
    /// written to it was sent.
    Client,
    /// The destination's end: what is read from it goes back to the client
    /// (sent), what is written to it came from the client (received).
    Upstream,
}

/// A socket whose reads and writes are counted as they complete, into
/// `T`: the guard itself ([`Counted`]) or counters shared with it
/// ([`CountedOwned`]).
pub struct CountedIo<S, T> {
    io: S,
    tally: T,
    side: Side,
}

/// A socket counted into a [`ConnectionGuard`] it borrows. Made by
/// [`ConnectionGuard::counted`].
pub type Counted<'g, S> = CountedIo<S, GuardTally<'g>>;

/// Like [`Counted`], but owning its socket and not borrowing the guard, for
/// a data path that takes the socket into another task (`hbone::lite`'s
/// connection task). The Prometheus counters move at once, as with
/// [`Counted`]; the access log's totals are added when the guard drops, so
/// drop the guard only after the socket's tunnel ended. Made by
/// [`ConnectionGuard::counted_owned`].
pub type CountedOwned<S> = CountedIo<S, OwnedTally>;

/// Where counted bytes go: `sent` back to the client, `received` from it.
pub trait Tally {
    fn add(&mut self, sent: u64, received: u64);
}

/// The guard's own totals and counters.
pub struct GuardTally<'g>(&'g mut Open);

impl Tally for GuardTally<'_> {
    fn add(&mut self, sent: u64, received: u64) {
        self.0.add_bytes(sent, received);
    }
}

/// The guard's counters, and totals it reads when it drops.
pub struct OwnedTally {
    sent: IntCounter,
    received: IntCounter,
    totals: Arc<Totals>,
}

impl Tally for OwnedTally {
    fn add(&mut self, sent: u64, received: u64) {
        if sent > 0 {
            self.sent.inc_by(sent);
            self.totals.sent.fetch_add(sent, Ordering::Relaxed);
        }
        if received > 0 {
            self.received.inc_by(received);
            self.totals.received.fetch_add(received, Ordering::Relaxed);
        }
    }
}

/// Bytes an owned wrapper counted: (sent, received), read by the guard
/// when it drops.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    sent: AtomicU64,
    received: AtomicU64,
}

impl Totals {
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }
}

impl ConnectionGuard {
    /// Wraps one end of the connection so the bytes through it are counted
    /// as they flow. Wrap one end only, or every byte counts twice.
    pub fn counted<S>(&mut self, io: S, side: Side) -> Counted<'_, S> {
        CountedIo {
            io,
            tally: GuardTally(&mut self.inner),
            side,
        }
    }

    /// An owned [`counted`](Self::counted): see [`CountedOwned`]. Set the
    /// response flags first; the counters are resolved here.
    pub fn counted_owned<S>(&mut self, io: S, side: Side) -> CountedOwned<S> {
        let open = &mut *self.inner;
        let totals = open
            .owned_totals
            .get_or_insert_with(Default::default)
            .clone();
        CountedIo {
            io,
            tally: OwnedTally {
                sent: open.close.sent.clone(),
                received: open.close.received.clone(),
                totals,
            },
            side,
        }
    }
}

impl<S, T: Tally> CountedIo<S, T> {
    fn read(&mut self, n: usize) {
        match self.side {
            Side::Client => self.tally.add(0, n as u64),
            Side::Upstream => self.tally.add(n as u64, 0),
        }
    }

    fn written(&mut self, n: usize) {
        match self.side {
            Side::Client => self.tally.add(n as u64, 0),
            Side::Upstream => self.tally.add(0, n as u64),
        }
    }
}

impl<S: AsyncRead + Unpin, T: Tally + Unpin> AsyncRead for CountedIo<S, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read(n);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin, T: Tally + Unpin> AsyncWrite for CountedIo<S, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.written(n);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.written(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
