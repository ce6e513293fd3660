//! The task that runs one HBONE connection: TLS, the HTTP/2 state and
//! every tunnel's socket, polled together.
//!
//! One poll does all that is ready: commands from the callers (open,
//! accept, reject), frames from the peer (delivered to the tunnels' sockets
//! at once), the tunnels whose sockets woke, and then one write of
//! everything queued. A message therefore crosses the proxy in one task
//! poll, where the h2 path took two (the tunnel's task, then h2's driver).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ahash::AHashMap;
use bytes::{Buf, BytesMut};
use h2::Reason;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};

use super::conn::{Conn, ConnError, Event, OpenError};
use super::head::{self, OwnedFields};
use super::tunnel::{Next, Opened, Outcome, Tunnel, HIGH_WATER};
use super::wake::{IdWake, ReadySet, COMMANDS, HANDSHAKE, SHUTDOWN, TIMER, TLS};
use crate::client::{ConnShared, StreamSlot};
use crate::conn_io::TlsFailure;
use crate::error::HboneError;
use crate::request::{ConnectRequest, RequestError};

/// What callers ask of the driver.
pub(crate) enum Command<S> {
    /// Client: open a tunnel for `sock` with this request head; `slot`
    /// counts it on the connection until it ends.
    Open {
        fields: OwnedFields,
        sock: S,
        slot: StreamSlot,
        opened: oneshot::Sender<Opened<S>>,
        done: oneshot::Sender<Outcome>,
    },
    /// Server: answer 200 (with `fields`) and relay with `sock`.
    Accept {
        stream: u32,
        fields: OwnedFields,
        sock: S,
        done: oneshot::Sender<Outcome>,
    },
    /// Server: answer with a non-2xx status and end the stream.
    Reject { stream: u32, fields: OwnedFields },
    /// Server: the request was dropped unanswered.
    Cancel { stream: u32 },
}

/// A server's new request, handed to its callback.
pub(crate) struct NewRequest<S> {
    pub(crate) stream: u32,
    pub(crate) parsed: Result<ConnectRequest, RequestError>,
    pub(crate) cmds: mpsc::UnboundedSender<Command<S>>,
    /// Set if the peer resets the stream before it is answered.
    pub(crate) reset: Arc<AtomicBool>,
}

type OnRequest<S> = Box<dyn FnMut(NewRequest<S>) + Send>;

/// The connection's timers.
pub(crate) struct Timers {
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
    /// Server: how long the peer has for its preface and SETTINGS.
    pub(crate) handshake: Option<Duration>,
}

impl Timers {
    pub(crate) fn new(settings: &crate::H2Settings, server: bool) -> Timers {
        Timers {
            keepalive_interval: settings.keepalive_interval,
            keepalive_timeout: settings.keepalive_timeout,
            handshake: server.then_some(settings.handshake_timeout),
        }
    }
}
type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Keep-alive: PING every `interval`; no answer within `timeout` ends the
/// connection (a peer that vanished without a FIN or RST).
struct Keepalive {
    interval: Duration,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// When the unanswered PING was sent.
    waiting: Option<Instant>,
    wake: Arc<IdWake>,
    waker: Waker,
}

/// Bytes read from TLS per read: a TLS record's plaintext is at most 16
/// KiB, and tokio-rustls hands over what it decrypted.
const READ_CHUNK: usize = 64 * 1024;
/// Answers to the peer's frames that may wait unwritten before we stop
/// reading from it.
const MAX_UNSENT_ANSWERS: usize = 64;
/// Answer of ours for a PING, to match the pong.
const PING_PAYLOAD: [u8; 8] = *b"trellis!";

pub(crate) struct Driver<IO, S> {
    io: IO,
    conn: Conn,
    rbuf: BytesMut,
    tunnels: AHashMap<u32, Tunnel<S>>,
    ready: Arc<ReadySet>,
    fired: Vec<u32>,
    /// Tunnels to service on the next round whatever their sockets say.
    again: Vec<u32>,
    need_window: Vec<u32>,
    need_output: Vec<u32>,
    cmds: mpsc::UnboundedReceiver<Command<S>>,
    cmds_wake: (Arc<IdWake>, Waker),
    cmds_closed: bool,
    /// Server: where new requests go, and the sender they answer through.
    on_request: Option<(OnRequest<S>, mpsc::UnboundedSender<Command<S>>)>,
    /// Server: requests read but not yet handed to `on_request`. They wait
    /// until every frame at hand is read, so a HEADERS and the RST_STREAM
    /// right behind it (rapid reset) never reach the handler.
    new_requests: Vec<(u32, Result<ConnectRequest, RequestError>)>,
    shutdown: Option<(Signal, Arc<IdWake>, Waker)>,
    keepalive: Option<Keepalive>,
    /// Server: until the peer's preface and SETTINGS arrived, when to give
    /// up on it (a peer that finished TLS and stalls, or dribbles, would
    /// otherwise hold the connection).
    handshake: Option<(Pin<Box<Sleep>>, Arc<IdWake>, Waker)>,
    shared: Arc<ConnShared>,
    tls_failure: TlsFailure,
    read_eof: bool,
    flushed: bool,
    /// The TLS socket's own waker: input is read only after it fired (or
    /// before it was ever polled), not on every wake-up of the task, each
    /// futile read costing a trip through tokio-rustls and tokio's
    /// readiness checks.
    tls_wake: (Arc<IdWake>, Waker),
    /// Input may be ready: the TLS waker fired since the last read that
    /// found nothing.
    tls_ready: bool,
    /// The TLS socket took only part of the output: tunnels read no more
    /// until it took the rest. Reading on would only queue more here, and
    /// the room for it comes from moving the unsent bytes to the front of
    /// the buffer: a copy of everything waiting, per read.
    out_blocked: bool,
}

impl<IO, S> Driver<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        io: IO,
        conn: Conn,
        cmds: mpsc::UnboundedReceiver<Command<S>>,
        on_request: Option<(OnRequest<S>, mpsc::UnboundedSender<Command<S>>)>,
        shutdown: Option<Signal>,
        timers: Timers,
        shared: Arc<ConnShared>,
        tls_failure: TlsFailure,
    ) -> Driver<IO, S> {
        let ready = Arc::new(ReadySet::default());
        let cmds_wake = IdWake::new(COMMANDS, &ready);
        let tls_wake = IdWake::new(TLS, &ready);
        let shutdown = shutdown.map(|s| {
            let (w, waker) = IdWake::new(SHUTDOWN, &ready);
            (s, w, waker)
        });
        let handshake = timers.handshake.map(|d| {
            let (w, waker) = IdWake::new(HANDSHAKE, &ready);
            (Box::pin(tokio::time::sleep(d)), w, waker)
        });
        let keepalive = (!timers.keepalive_interval.is_zero()).then(|| {
            let (wake, waker) = IdWake::new(TIMER, &ready);
            Keepalive {
                interval: timers.keepalive_interval,
                timeout: timers.keepalive_timeout,
                sleep: Box::pin(tokio::time::sleep(timers.keepalive_interval)),
                waiting: None,
                wake,
                waker,
            }
        });
        Driver {
            io,
            conn,
            rbuf: BytesMut::new(),
            tunnels: AHashMap::new(),
            ready,
            fired: Vec::new(),
            again: Vec::new(),
            need_window: Vec::new(),
            need_output: Vec::new(),
            cmds,
            cmds_wake,
            cmds_closed: false,
            on_request,
            new_requests: Vec::new(),
            shutdown,
            keepalive,
            handshake,
            shared,
            tls_failure,
            read_eof: false,
            flushed: true,
            tls_wake,
            tls_ready: true,
            out_blocked: false,
        }
    }

    /// Runs the connection to its end.
    pub(crate) async fn run(mut self) -> Result<(), HboneError> {
        let result = std::future::poll_fn(|cx| self.poll_run(cx)).await;
        self.shared.closed.store(true, Ordering::Release);
        self.shared.goaway.fire();
        let e = match &result {
            Ok(()) => HboneError::ConnectionClosed,
            Err(e) => e.duplicate(),
        };
        for (_, mut t) in self.tunnels.drain() {
            t.finish(Err(e.duplicate()));
        }
        result
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HboneError>> {
        self.ready.register(cx.waker());
        let tls_waker = self.tls_wake.1.clone();
        let tls = &mut Context::from_waker(&tls_waker);
        loop {
            let mut progress = false;
            self.ready.take(&mut self.fired);
            let mut fired = std::mem::take(&mut self.fired);
            fired.append(&mut self.again);
            for id in fired.drain(..) {
                progress = true;
                match id {
                    COMMANDS => self.poll_commands(),
                    TIMER => self.poll_keepalive()?,
                    HANDSHAKE => self.poll_handshake()?,
                    SHUTDOWN => self.poll_shutdown_signal(),
                    TLS => {
                        self.tls_wake.0.clear();
                        self.tls_ready = true;
                    }
                    stream => self.service(stream),
                }
            }
            self.fired = fired;
            let held_back = self.conn.unsent_answers() >= MAX_UNSENT_ANSWERS;
            if self.tls_ready && !self.read_eof && !held_back {
                progress |= self.poll_input(tls)?;
            }
            self.hand_over_requests();
            let before = self.conn.out().len();
            if before > 0 || !self.flushed {
                match self.poll_output(tls) {
                    // The peer is gone: what we would tell it no longer matters.
                    Err(_) if self.read_eof => self.conn.out().clear(),
                    r => r?,
                }
            }
            if !self.out_blocked && self.conn.out().len() < HIGH_WATER {
                self.again.append(&mut self.need_output);
            }
            // Input held back for unsent answers resumes once they are out.
            progress |= held_back && self.conn.unsent_answers() < MAX_UNSENT_ANSWERS;
            if let Some(done) = self.finished(tls) {
                return done;
            }
            if !progress && self.again.is_empty() {
                return Poll::Pending;
            }
        }
    }

    /// Handles the frames already read, then reads and handles more until
    /// TLS has none; true if any arrived.
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Result<bool, HboneError> {
        let mut any = false;
        loop {
            while let Some(event) = self
                .conn
                .poll_event(&mut self.rbuf)
                .map_err(|e| self.protocol(e))?
            {
                self.on_event(event);
                any = true;
            }
            if self.conn.unsent_answers() >= MAX_UNSENT_ANSWERS {
                // Write before reading more: a peer that floods us with
                // frames needing answers (PING, SETTINGS) without reading
                // stalls itself. What is left in `rbuf` waits for the next
                // round. Never for DATA: two peers that each stopped
                // reading while their output is full would wait forever.
                return Ok(any);
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                self.rbuf.reserve(READ_CHUNK);
            }
            let spare = self.rbuf.spare_capacity_mut();
            let len = READ_CHUNK.min(spare.len());
            let mut buf = ReadBuf::uninit(&mut spare[..len]);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    if n == 0 {
                        self.read_eof = true;
                        return Ok(any);
                    }
                    // SAFETY: poll_read initialised and filled `n` bytes of the spare capacity.
                    unsafe { self.rbuf.set_len(self.rbuf.len() + n) };
                    any = true;
                }
                Poll::Ready(Err(e)) => return Err(self.io_error(e)),
                Poll::Pending => {
                    self.tls_ready = false;
                    return Ok(any);
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        // The first event is the peer's SETTINGS (anything else is an error).
        self.handshake = None;
        match event {
            Event::Data {
                stream,
                data,
                end_stream,
            } => match self.tunnels.get_mut(&stream) {
                Some(t) => {
                    t.received(data, end_stream);
                    self.again.push(stream);
                }
                None => self.conn.release(stream, data.len()),
            },
            Event::Headers {
                stream,
                fields,
                end_stream,
            } => {
                if self.on_request.is_some() {
                    self.on_request_head(stream, &fields, end_stream);
                } else {
                    self.on_response_head(stream, &fields, end_stream);
                }
            }
            Event::Reset {
                stream,
                reason,
                by_peer,
            } => {
                if let Some(mut t) = self.remove_tunnel(stream) {
                    if let Some(flag) = &t.reset_flag {
                        flag.store(true, Ordering::Release);
                    }
                    t.finish(Err(if by_peer {
                        HboneError::StreamReset(reason)
                    } else {
                        HboneError::Protocol {
                            reason,
                            detail: "the peer broke http/2's rules on the tunnel's stream",
                        }
                    }));
                }
            }
            Event::WindowOpened => self.again.append(&mut self.need_window),
            Event::GoAway {
                last_stream,
                reason,
            } => {
                self.shared.goaway.fire();
                if reason != Reason::NO_ERROR {
                    tracing::debug!(%reason, last_stream, "hbone peer sent goaway");
                }
                for stream in self.conn.refused_by_goaway() {
                    if let Some(mut t) = self.remove_tunnel(stream) {
                        t.finish(Err(HboneError::StreamReset(Reason::REFUSED_STREAM)));
                    }
                }
            }
            Event::Pong(payload) => {
                if payload == PING_PAYLOAD {
                    if let Some(k) = &mut self.keepalive {
                        k.waiting = None;
                    }
                }
            }
        }
    }

    fn on_request_head(&mut self, stream: u32, fields: &super::conn::Fields, end_stream: bool) {
        let parsed = match head::request(fields) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, stream, "malformed hbone request head");
                self.conn.reset(stream, Reason::PROTOCOL_ERROR);
                return;
            }
        };
        if let Err(e) = &parsed {
            tracing::debug!(error = %e, "invalid hbone request");
        }
        let wake = IdWake::new(stream, &self.ready);
        let mut t = Tunnel::new(stream, None, wake, None);
        t.down_end = end_stream;
        self.tunnels.insert(stream, t);
        self.new_requests.push((stream, parsed));
    }

    /// Hands the requests read so far to the callback, but those the peer
    /// already reset.
    fn hand_over_requests(&mut self) {
        let Some((on_request, tx)) = &mut self.on_request else {
            return;
        };
        for (stream, parsed) in self.new_requests.drain(..) {
            let Some(t) = self.tunnels.get_mut(&stream) else {
                continue;
            };
            let reset = Arc::new(AtomicBool::new(false));
            t.reset_flag = Some(reset.clone());
            on_request(NewRequest {
                stream,
                parsed,
                cmds: tx.clone(),
                reset,
            });
        }
    }

    fn on_response_head(&mut self, stream: u32, fields: &super::conn::Fields, end_stream: bool) {
        let Some(t) = self.tunnels.get_mut(&stream) else {
            return;
        };
        let answer = match head::response(fields) {
            Ok((status, headers)) if status == StatusCode::OK => Ok(headers),
            Ok((status, _)) => Err(HboneError::Status(status)),
            Err(e) => {
                tracing::debug!(error = %e, stream, "malformed hbone response head");
                Err(HboneError::Protocol {
                    reason: Reason::PROTOCOL_ERROR,
                    detail: "the peer's response head is malformed",
                })
            }
        };
        match answer {
            Ok(headers) => {
                t.active = true;
                t.down_end |= end_stream;
                if let Some(opened) = t.opened.take() {
                    let _ = opened.send(Ok(headers));
                }
                self.again.push(stream);
            }
            Err(e) => {
                let mut t = self.remove_tunnel(stream).expect("looked up above");
                self.conn.reset(stream, Reason::CANCEL);
                t.finish(Err(e));
            }
        }
    }

    fn service(&mut self, stream: u32) {
        let Some(t) = self.tunnels.get_mut(&stream) else {
            return;
        };
        match t.service(&mut self.conn, !self.out_blocked) {
            Next::Idle => {}
            Next::NeedWindow => self.need_window.push(stream),
            Next::NeedOutput => self.need_output.push(stream),
            Next::Busy => self.again.push(stream),
            Next::Done => {
                self.remove_tunnel(stream);
            }
        }
    }

    fn poll_commands(&mut self) {
        self.cmds_wake.0.clear();
        let waker = self.cmds_wake.1.clone();
        let mut cx = Context::from_waker(&waker);
        while let Poll::Ready(cmd) = self.cmds.poll_recv(&mut cx) {
            let Some(cmd) = cmd else {
                self.cmds_closed = true;
                return;
            };
            self.command(cmd);
        }
    }

    fn command(&mut self, cmd: Command<S>) {
        match cmd {
            Command::Open {
                fields,
                sock,
                slot,
                opened,
                done,
            } => {
                let stream = match self.conn.open(&head::borrow(&fields)) {
                    Ok(s) => s,
                    Err(e) => {
                        // Not sent: the caller gets its socket back to try
                        // another connection.
                        let e = match e {
                            OpenError::GoingAway | OpenError::Exhausted => {
                                HboneError::ConnectionClosed
                            }
                            OpenError::AtLimit => HboneError::StreamReset(Reason::REFUSED_STREAM),
                        };
                        let _ = opened.send(Err((e, Some(sock))));
                        return;
                    }
                };
                let wake = IdWake::new(stream, &self.ready);
                let mut t = Tunnel::new(stream, Some(sock), wake, Some(done));
                t.opened = Some(opened);
                t.slot = Some(slot);
                self.tunnels.insert(stream, t);
            }
            Command::Accept {
                stream,
                fields,
                sock,
                done,
            } => match self.tunnels.get_mut(&stream) {
                Some(t) if self.conn.respond(stream, &head::borrow(&fields), false) => {
                    t.activate(sock, done);
                    self.again.push(stream);
                }
                // Reset by the peer while the caller decided.
                _ => {
                    let _ = done.send(Err(HboneError::StreamReset(Reason::CANCEL)));
                }
            },
            Command::Reject { stream, fields } => {
                self.conn.respond(stream, &head::borrow(&fields), true);
                self.forget(stream);
            }
            Command::Cancel { stream } => {
                self.conn.reset(stream, Reason::CANCEL);
                self.forget(stream);
            }
        }
    }

    /// Removes a tunnel; bytes it held for its socket give their
    /// flow-control credit back, or the connection's window would shrink
    /// with every tunnel that ended with data in hand.
    fn remove_tunnel(&mut self, stream: u32) -> Option<Tunnel<S>> {
        let t = self.tunnels.remove(&stream)?;
        let held = t.held();
        if held > 0 {
            self.conn.release(stream, held);
        }
        Some(t)
    }

    /// Drops a server tunnel that was never accepted.
    fn forget(&mut self, stream: u32) {
        self.remove_tunnel(stream);
        if self.conn.is_open(stream) {
            self.conn.reset(stream, Reason::NO_ERROR);
        }
    }

    fn poll_handshake(&mut self) -> Result<(), HboneError> {
        let Some((sleep, wake, waker)) = &mut self.handshake else {
            return Ok(());
        };
        wake.clear();
        if sleep
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_ready()
        {
            return Err(HboneError::Timeout(crate::server::PREFACE_TIMEOUT));
        }
        Ok(())
    }

    fn poll_keepalive(&mut self) -> Result<(), HboneError> {
        let Some(k) = &mut self.keepalive else {
            return Ok(());
        };
        k.wake.clear();
        let mut cx = Context::from_waker(&k.waker);
        while k.sleep.as_mut().poll(&mut cx).is_ready() {
            let now = Instant::now();
            match k.waiting {
                Some(sent) if now >= sent + k.timeout => {
                    return Err(HboneError::Timeout(
                        "waiting for the peer's answer to a keep-alive PING",
                    ));
                }
                Some(sent) => k.sleep.as_mut().reset(sent + k.timeout),
                None => {
                    self.conn.ping(PING_PAYLOAD);
                    k.waiting = Some(now);
                    k.sleep.as_mut().reset(now + k.interval.min(k.timeout));
                }
            }
        }
        Ok(())
    }

    fn poll_shutdown_signal(&mut self) {
        let Some((signal, wake, waker)) = &mut self.shutdown else {
            return;
        };
        wake.clear();
        let mut cx = Context::from_waker(waker);
        if signal.as_mut().poll(&mut cx).is_ready() {
            tracing::debug!("hbone connection draining: sent goaway");
            self.conn.goaway(Reason::NO_ERROR, b"");
            self.shared.goaway.fire();
            self.shutdown = None;
        }
    }

    /// Writes what is queued and flushes once it is all out.
    fn poll_output(&mut self, cx: &mut Context<'_>) -> Result<(), HboneError> {
        loop {
            let out = self.conn.out();
            if out.is_empty() {
                self.conn.output_drained();
                self.out_blocked = false;
                break;
            }
            match Pin::new(&mut self.io).poll_write(cx, out) {
                Poll::Ready(Ok(0)) => {
                    return Err(HboneError::Io(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => {
                    out.advance(n);
                    self.flushed = false;
                }
                Poll::Ready(Err(e)) => return Err(self.io_error(e)),
                Poll::Pending => {
                    self.out_blocked = true;
                    return Ok(());
                }
            }
        }
        if !self.flushed {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flushed = true,
                Poll::Ready(Err(e)) => return Err(self.io_error(e)),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Whether the connection is over: the peer closed it, or nothing is
    /// left to carry and nothing new may come.
    fn finished(&mut self, cx: &mut Context<'_>) -> Option<Poll<Result<(), HboneError>>> {
        if self.read_eof {
            return self.finished_by_peer();
        }
        let idle = self.tunnels.is_empty() && self.conn.open_streams() == 0;
        let no_more = self.conn.going_away() || (self.cmds_closed && self.on_request.is_none());
        if !(idle && no_more) {
            return None;
        }
        if self.cmds_closed && !self.conn.going_away() {
            // The last client handle is gone: say goodbye properly.
            self.conn.goaway(Reason::NO_ERROR, b"");
        }
        if let Err(e) = self.poll_output(cx) {
            return Some(Poll::Ready(Err(e)));
        }
        if !self.conn.out().is_empty() || !self.flushed {
            // poll_output registered for the socket's readiness.
            return Some(Poll::Pending);
        }
        match Pin::new(&mut self.io).poll_shutdown(cx) {
            Poll::Ready(_) => Some(Poll::Ready(Ok(()))),
            Poll::Pending => Some(Poll::Pending),
        }
    }

    /// The peer closed the connection. Tunnels it had finished with (both
    /// sides ended) still write what they hold to their sockets; the others
    /// cannot finish and fail.
    fn finished_by_peer(&mut self) -> Option<Poll<Result<(), HboneError>>> {
        if !self.again.is_empty() {
            return None;
        }
        let cut: Vec<u32> = self
            .tunnels
            .iter()
            .filter(|(_, t)| !t.only_writing_left())
            .map(|(id, _)| *id)
            .collect();
        for id in cut {
            if let Some(mut t) = self.tunnels.remove(&id) {
                t.finish(Err(HboneError::ConnectionClosed));
            }
        }
        if self.tunnels.is_empty() {
            Some(Poll::Ready(Ok(())))
        } else {
            // Their sockets wake us.
            Some(Poll::Pending)
        }
    }

    fn protocol(&mut self, e: ConnError) -> HboneError {
        tracing::debug!(error = %e, "hbone http/2 protocol error; sending goaway");
        self.conn.goaway(e.reason, e.detail.as_bytes());
        // Best effort: the peer learns why before we close.
        let waker = futures_util::task::noop_waker();
        let _ = self.poll_output(&mut Context::from_waker(&waker));
        HboneError::Protocol {
            reason: e.reason,
            detail: e.detail,
        }
    }

    fn io_error(&self, e: std::io::Error) -> HboneError {
        if let Some(tls) = self.tls_failure.get() {
            return tls.duplicate();
        }
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            return HboneError::ConnectionClosed;
        }
        HboneError::from_tls_io(e)
    }
}
