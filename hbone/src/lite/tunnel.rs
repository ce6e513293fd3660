//! One tunnel's relay between its plain socket and the connection's state.
//!
//! Called by the driver, in its task, when the tunnel's socket woke or new
//! bytes or window arrived for it:
//! - socket → peer: read straight into the connection's output buffer
//!   behind a DATA frame header, within the stream's and connection's send
//!   windows (no buffer of the tunnel's own, no copy before TLS);
//! - peer → socket: write each received chunk as it is, and give its
//!   flow-control credit back only once the socket took it, so a slow
//!   socket slows the peer instead of growing memory here.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, Bytes};
use h2::Reason;
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio_util::io::poll_read_buf;

use super::conn::Conn;
use super::wake::IdWake;
use crate::client::StreamSlot;
use crate::error::HboneError;

/// Bytes moved: (socket → peer, peer → socket).
pub type Moved = (u64, u64);
/// How a tunnel ended.
pub(crate) type Outcome = Result<Moved, HboneError>;
/// What a client learns from the peer's answer: its headers, or why not
/// (with the socket when the stream was never opened, to try elsewhere).
pub(crate) type Opened<S> = Result<HeaderMap, (HboneError, Option<S>)>;

/// First read size: small reads cost a copy-free read into the output
/// buffer either way; the size grows while reads fill it.
const FIRST_CHUNK: usize = 16 * 1024;
/// Largest read, and so the largest DATA frame we build (the same as the
/// h2 path's copy loop).
const MAX_CHUNK: usize = crate::copy::CHUNK;
/// Reads per service before other tunnels get their turn.
const BUDGET: usize = 16;
/// Output the driver lets queue before tunnels stop reading.
pub(crate) const HIGH_WATER: usize = 2 * MAX_CHUNK;

/// What servicing a tunnel left to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Waiting on its socket (it will wake us) or on the peer.
    Idle,
    /// Out of send window: service again on WINDOW_UPDATE.
    NeedWindow,
    /// The output buffer is full: service again once it drained.
    NeedOutput,
    /// Used its budget with more to read: service again soon.
    Busy,
    /// Finished, cleanly or not; the driver forgets it.
    Done,
}

pub(crate) struct Tunnel<S> {
    pub(crate) stream: u32,
    /// The plain socket; `None` on a server until the request is accepted.
    pub(crate) sock: Option<S>,
    wake: Arc<IdWake>,
    waker: Waker,
    /// Received bytes the socket has not taken yet.
    down: VecDeque<Bytes>,
    /// The peer ended its side.
    pub(crate) down_end: bool,
    /// We shut down the socket's write side after `down_end`.
    shut: bool,
    /// The socket reached EOF and we ended our side.
    up_end: bool,
    /// Relaying: a client after the 200, a server after accepting.
    pub(crate) active: bool,
    chunk: usize,
    up: u64,
    downs: u64,
    /// A client waiting for the peer's answer.
    pub(crate) opened: Option<oneshot::Sender<Opened<S>>>,
    done: Option<oneshot::Sender<Outcome>>,
    /// Client: counts the tunnel on its connection (for the pool) until dropped.
    pub(crate) slot: Option<StreamSlot>,
    /// Server: tells the request's holder the peer reset the stream.
    pub(crate) reset_flag: Option<Arc<AtomicBool>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Tunnel<S> {
    pub(crate) fn new(
        stream: u32,
        sock: Option<S>,
        wake: (Arc<IdWake>, Waker),
        done: Option<oneshot::Sender<Outcome>>,
    ) -> Tunnel<S> {
        Tunnel {
            stream,
            sock,
            wake: wake.0,
            waker: wake.1,
            down: VecDeque::new(),
            down_end: false,
            shut: false,
            up_end: false,
            active: false,
            chunk: FIRST_CHUNK,
            up: 0,
            downs: 0,
            opened: None,
            done,
            slot: None,
            reset_flag: None,
        }
    }

    /// Starts relaying with `sock` (server: the accepted request's socket).
    pub(crate) fn activate(&mut self, sock: S, done: oneshot::Sender<Outcome>) {
        self.sock = Some(sock);
        self.done = Some(done);
        self.active = true;
    }

    /// Received bytes not yet written to the socket.
    pub(crate) fn held(&self) -> usize {
        self.down.iter().map(Bytes::len).sum()
    }

    /// Whether both sides have ended and only writing to the socket is left.
    pub(crate) fn only_writing_left(&self) -> bool {
        self.active && self.up_end && self.down_end
    }

    /// Bytes the peer sent; `end` if it ended its side.
    pub(crate) fn received(&mut self, data: Bytes, end: bool) {
        if !data.is_empty() {
            self.down.push_back(data);
        }
        self.down_end |= end;
    }

    /// Moves what can move now; see [`Next`]. Without `room` (the TLS
    /// socket is full) the socket is not read.
    pub(crate) fn service(&mut self, conn: &mut Conn, room: bool) -> Next {
        self.wake.clear();
        if !self.active {
            return Next::Idle;
        }
        let Some(sock) = self.sock.as_mut() else {
            return Next::Idle;
        };
        let mut cx = Context::from_waker(&self.waker);
        if let Err(e) = write_down(
            sock,
            &mut cx,
            &mut self.down,
            conn,
            self.stream,
            &mut self.downs,
        ) {
            return self.fail(conn, HboneError::Tcp(e));
        }
        if self.down.is_empty() && self.down_end && !self.shut {
            match Pin::new(&mut *sock).poll_shutdown(&mut cx) {
                Poll::Ready(Ok(())) => self.shut = true,
                // The socket is gone already: nothing left to tell it.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::NotConnected => self.shut = true,
                Poll::Ready(Err(e)) => return self.fail(conn, HboneError::Tcp(e)),
                Poll::Pending => {}
            }
        }
        let mut next = Next::Idle;
        let mut budget = BUDGET;
        while !self.up_end {
            if budget == 0 {
                next = Next::Busy;
                break;
            }
            budget -= 1;
            if !room || conn.out().len() >= HIGH_WATER {
                next = Next::NeedOutput;
                break;
            }
            let cap = conn.send_capacity(self.stream);
            if cap == 0 {
                next = Next::NeedWindow;
                break;
            }
            let want = cap.min(self.chunk);
            let at = conn.begin_data();
            let out = conn.out();
            out.reserve(want);
            let mut limited = out.limit(want);
            match poll_read_buf(Pin::new(&mut *sock), &mut cx, &mut limited) {
                Poll::Ready(Ok(0)) => {
                    conn.out().truncate(at);
                    conn.send_data(self.stream, &[], true);
                    self.up_end = true;
                }
                Poll::Ready(Ok(n)) => {
                    conn.finish_data(at, self.stream, n, false);
                    self.up += n as u64;
                    if n == self.chunk && self.chunk < MAX_CHUNK {
                        self.chunk = (self.chunk * 2).min(MAX_CHUNK);
                    }
                }
                Poll::Ready(Err(e)) => {
                    conn.out().truncate(at);
                    return self.fail(conn, HboneError::Tcp(e));
                }
                Poll::Pending => {
                    conn.out().truncate(at);
                    break;
                }
            }
        }
        if self.up_end && self.down_end && self.down.is_empty() && self.shut {
            self.finish(Ok((self.up, self.downs)));
            return Next::Done;
        }
        next
    }

    /// Ends the tunnel with `e`, resetting its stream.
    fn fail(&mut self, conn: &mut Conn, e: HboneError) -> Next {
        conn.reset(self.stream, Reason::CANCEL);
        self.finish(Err(e));
        Next::Done
    }

    /// Reports the outcome to whoever waits for it (once).
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if let Some(opened) = self.opened.take() {
            let e = match &outcome {
                Err(e) => e.duplicate(),
                Ok(_) => HboneError::ConnectionClosed,
            };
            let _ = opened.send(Err((e, None)));
        }
        if let Some(done) = self.done.take() {
            // The waiter may have given up (its task was cancelled).
            let _ = done.send(outcome);
        }
    }
}

/// Writes queued bytes to the socket until it would block, crediting the
/// stream for what it took.
fn write_down<S: AsyncWrite + Unpin>(
    sock: &mut S,
    cx: &mut Context<'_>,
    down: &mut VecDeque<Bytes>,
    conn: &mut Conn,
    stream: u32,
    moved: &mut u64,
) -> io::Result<()> {
    while let Some(front) = down.front_mut() {
        match Pin::new(&mut *sock).poll_write(cx, front) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => {
                front.advance(n);
                conn.release(stream, n);
                *moved += n as u64;
                if front.is_empty() {
                    down.pop_front();
                }
            }
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    Ok(())
}
