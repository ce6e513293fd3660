//! One HBONE HTTP/2 connection's protocol state, without I/O.
//!
//! The driver ([`super::driver`]) feeds it the bytes TLS decrypted and
//! writes out what it queued. It applies everything HTTP/2 requires of a
//! connection that carries CONNECT tunnels: the preface and SETTINGS
//! exchange, PING, GOAWAY, stream states and limits, header blocks through
//! HPACK, and flow control on both sides. Server push, priorities and
//! request bodies other than tunnel bytes do not exist here.
//!
//! Why not h2: h2 runs every stream through its own store, queues and a
//! task hop to the connection's driver; for a relay that moves one message
//! at a time that machinery was the largest cost left per round trip (see
//! perf/results/bulk-rtt-floors.md). Here the driver moves a tunnel's bytes
//! between its socket and this state in the same poll.

use ahash::AHashMap;
use bytes::{Bytes, BytesMut};
use h2::Reason;

use super::frame::{self, Frame, FrameError, Head, Settings, HEAD_LEN};

/// Whether we opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

/// What we advertise and enforce; taken from [`crate::H2Settings`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame_size: u32,
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
}

impl From<&crate::H2Settings> for Limits {
    fn from(s: &crate::H2Settings) -> Limits {
        Limits {
            stream_window: s.stream_window,
            connection_window: s.connection_window,
            max_frame_size: s.max_frame_size,
            max_concurrent_streams: s.max_concurrent_streams,
            max_header_list_size: s.max_header_list_size,
        }
    }
}

/// A decoded header block: (name, value) pairs in order.
pub(crate) type Fields = Vec<(Bytes, Bytes)>;

/// Something the driver must act on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A header block: on a server a new stream's request, on a client the
    /// response to a stream we opened. Trailers are not reported.
    Headers {
        stream: u32,
        fields: Fields,
        end_stream: bool,
    },
    /// Tunnel bytes; give back flow-control credit with
    /// [`Conn::release`] once they are delivered.
    Data {
        stream: u32,
        data: Bytes,
        end_stream: bool,
    },
    /// The stream is gone: reset by the peer (`by_peer`), by us after a
    /// stream error, or refused by the peer's GOAWAY.
    Reset {
        stream: u32,
        reason: Reason,
        by_peer: bool,
    },
    /// Send windows grew: streams waiting for capacity may send.
    WindowOpened,
    /// The peer is going away; streams above `last_stream` were reset.
    GoAway { last_stream: u32, reason: Reason },
    /// The answer to one of our PINGs.
    Pong([u8; 8]),
}

/// A connection-ending violation or failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{detail} ({reason})")]
pub(crate) struct ConnError {
    pub reason: Reason,
    pub detail: &'static str,
}

/// Why a stream could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS is reached.
    AtLimit,
    /// The peer sent GOAWAY, or we did.
    GoingAway,
    /// Stream ids are exhausted; the connection must be replaced.
    Exhausted,
}

#[derive(Debug)]
struct Stream {
    /// What the peer lets us send; may go negative after a SETTINGS change.
    send_window: i64,
    /// What we still let the peer send.
    recv_window: i64,
    /// Delivered bytes not yet given back in a WINDOW_UPDATE.
    unacked: u32,
    /// We sent END_STREAM.
    local_closed: bool,
    /// The peer sent END_STREAM.
    remote_closed: bool,
    /// The peer's first header block arrived (request or response).
    head_seen: bool,
    /// Opened by the peer (counts against our concurrency limit).
    by_peer: bool,
}

/// A header block being received across CONTINUATION frames.
#[derive(Debug)]
struct PendingHeaders {
    stream: u32,
    end_stream: bool,
    block: BytesMut,
}

/// The connection state; see the module docs.
pub(crate) struct Conn {
    role: Role,
    limits: Limits,
    /// Frames waiting to be written, in order.
    out: BytesMut,
    preface_seen: bool,
    settings_seen: bool,
    peer: PeerSettings,
    send_window: i64,
    recv_window: i64,
    unacked: u32,
    streams: AHashMap<u32, Stream>,
    /// Streams each side opened and has not closed.
    local_open: u32,
    peer_open: u32,
    next_local: u32,
    last_peer: u32,
    pending: Option<PendingHeaders>,
    encoder: loona_hpack::Encoder<'static>,
    decoder: loona_hpack::Decoder<'static>,
    /// Whether our first header block (which starts with a table size
    /// update to 0) has been sent.
    sent_table_update: bool,
    goaway_sent: Option<u32>,
    goaway_received: Option<u32>,
    /// Frames queued in answer to the peer's (PING and SETTINGS acks,
    /// resets after stream errors) since the output was last empty.
    answers: usize,
}

#[derive(Clone, Copy, Debug)]
struct PeerSettings {
    initial_window: u32,
    max_frame: u32,
    max_concurrent: u32,
    max_header_list: u32,
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            initial_window: frame::DEFAULT_WINDOW,
            max_frame: frame::MIN_MAX_FRAME,
            max_concurrent: u32::MAX,
            max_header_list: u32::MAX,
        }
    }
}

/// Give back receive credit once this fraction of a window is delivered:
/// one WINDOW_UPDATE per half window keeps a sender busy while costing a
/// frame only every few MB at the default windows.
const UPDATE_DIVISOR: u32 = 2;
/// Our HPACK table size (the default): what the peer's encoder may use.
const DECODER_TABLE: usize = 4096;

fn err(reason: Reason, detail: &'static str) -> ConnError {
    ConnError { reason, detail }
}

impl Conn {
    /// A connection whose first bytes out are the preface (client) and our
    /// SETTINGS, plus a WINDOW_UPDATE raising the connection window.
    pub(crate) fn new(role: Role, limits: Limits) -> Conn {
        let mut out = BytesMut::with_capacity(128);
        if role == Role::Client {
            out.extend_from_slice(frame::PREFACE);
        }
        Settings {
            enable_push: (role == Role::Client).then_some(false),
            max_concurrent_streams: Some(limits.max_concurrent_streams),
            initial_window_size: Some(limits.stream_window),
            max_frame_size: Some(limits.max_frame_size),
            max_header_list_size: Some(limits.max_header_list_size),
            ..Settings::default()
        }
        .put(&mut out);
        if limits.connection_window > frame::DEFAULT_WINDOW {
            frame::put_window_update(
                &mut out,
                0,
                limits.connection_window - frame::DEFAULT_WINDOW,
            );
        }
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(DECODER_TABLE);
        let mut encoder = loona_hpack::Encoder::new();
        // No dynamic table: whatever table size the peer allows, a literal
        // we add is evicted at once, and we never refer to one.
        encoder.set_max_table_size(0);
        Conn {
            role,
            limits,
            out,
            preface_seen: role == Role::Client,
            settings_seen: false,
            peer: PeerSettings::default(),
            send_window: frame::DEFAULT_WINDOW.into(),
            recv_window: limits.connection_window.max(frame::DEFAULT_WINDOW).into(),
            unacked: 0,
            streams: AHashMap::new(),
            local_open: 0,
            peer_open: 0,
            next_local: if role == Role::Client { 1 } else { 2 },
            last_peer: 0,
            pending: None,
            encoder,
            decoder,
            sent_table_update: false,
            goaway_sent: None,
            goaway_received: None,
            answers: 0,
        }
    }

    /// Answers queued since the output was last empty: the driver stops
    /// reading while too many wait, so a peer that sends frames needing
    /// answers (PING, SETTINGS, bad frames) without reading ours cannot
    /// grow our memory. DATA needs no such guard: flow control bounds it.
    pub(crate) fn unsent_answers(&self) -> usize {
        self.answers
    }

    /// The driver wrote all of [`out`](Self::out).
    pub(crate) fn output_drained(&mut self) {
        self.answers = 0;
    }

    /// Bytes queued for the peer; the driver writes and clears them.
    pub(crate) fn out(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Streams open in either direction.
    pub(crate) fn open_streams(&self) -> u32 {
        self.local_open + self.peer_open
    }

    /// Whether either side sent GOAWAY.
    pub(crate) fn going_away(&self) -> bool {
        self.goaway_sent.is_some() || self.goaway_received.is_some()
    }

    /// Reads one event from `input`, consuming the frames it used; `None`
    /// when `input` holds no complete frame with an event in it.
    pub(crate) fn poll_event(&mut self, input: &mut BytesMut) -> Result<Option<Event>, ConnError> {
        if !self.preface_seen {
            let n = input.len().min(frame::PREFACE.len());
            if input[..n] != frame::PREFACE[..n] {
                return Err(err(
                    Reason::PROTOCOL_ERROR,
                    "the peer did not send the http/2 preface (an http/1.1 or non-hbone client?)",
                ));
            }
            if n < frame::PREFACE.len() {
                return Ok(None);
            }
            let _ = input.split_to(n);
            self.preface_seen = true;
        }
        loop {
            let Some(head) = input.first_chunk::<HEAD_LEN>().map(Head::parse) else {
                return Ok(None);
            };
            if head.len > self.limits.max_frame_size {
                return Err(err(
                    Reason::FRAME_SIZE_ERROR,
                    "frame larger than our SETTINGS_MAX_FRAME_SIZE",
                ));
            }
            let total = HEAD_LEN + head.len as usize;
            if input.len() < total {
                // Let the next read land in one piece.
                input.reserve(total - input.len());
                return Ok(None);
            }
            let bytes = input.split_to(total);
            if let Some(event) = self.on_frame(&head, bytes)? {
                return Ok(Some(event));
            }
        }
    }

    fn on_frame(&mut self, head: &Head, mut bytes: BytesMut) -> Result<Option<Event>, ConnError> {
        // Both before the frame's own checks: a frame that is malformed as
        // well is still a connection error here, not a stream error.
        if !self.settings_seen && (head.kind != frame::SETTINGS || head.flags & frame::ACK != 0) {
            return Err(err(
                Reason::PROTOCOL_ERROR,
                "the peer's first frame is not SETTINGS",
            ));
        }
        if let Some(p) = &self.pending {
            if head.kind != frame::CONTINUATION || head.stream != p.stream {
                return Err(err(
                    Reason::PROTOCOL_ERROR,
                    "a header block was interrupted by another frame",
                ));
            }
        }
        let parsed = frame::parse(head, &bytes[HEAD_LEN..], self.limits.max_frame_size);
        let frame = match parsed {
            Ok(f) => f,
            Err(FrameError::Connection(reason, detail)) => return Err(err(reason, detail)),
            // No RST_STREAM may name an idle stream (RFC 9113 §6.4), and
            // such frames on one break the connection (§5.1).
            Err(FrameError::Stream(stream, reason, detail)) if self.is_idle(stream) => {
                return Err(err(reason, detail));
            }
            Err(FrameError::Stream(stream, reason, _)) => {
                return Ok(self.reset_stream(stream, reason));
            }
        };
        match frame {
            Frame::Data {
                stream,
                data,
                flow,
                end_stream,
            } => {
                let _ = bytes.split_to(HEAD_LEN);
                let data = bytes.freeze().slice(data);
                self.on_data(stream, data, flow, end_stream)
            }
            Frame::Headers {
                stream,
                fragment,
                end_stream,
                end_headers,
            } => {
                let _ = bytes.split_to(HEAD_LEN + fragment.start);
                bytes.truncate(fragment.len());
                self.pending = Some(PendingHeaders {
                    stream,
                    end_stream,
                    block: bytes,
                });
                if end_headers {
                    self.on_header_block()
                } else {
                    self.check_block_size().map(|()| None)
                }
            }
            Frame::Continuation { end_headers, .. } => {
                let Some(p) = &mut self.pending else {
                    return Err(err(
                        Reason::PROTOCOL_ERROR,
                        "CONTINUATION without a header block to continue",
                    ));
                };
                p.block.extend_from_slice(&bytes[HEAD_LEN..]);
                self.check_block_size()?;
                if end_headers {
                    self.on_header_block()
                } else {
                    Ok(None)
                }
            }
            Frame::Ignored => Ok(None),
            Frame::Reset { stream, reason } => {
                if self.is_idle(stream) {
                    return Err(err(Reason::PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
                }
                Ok(self.remove(stream).then_some(Event::Reset {
                    stream,
                    reason,
                    by_peer: true,
                }))
            }
            Frame::Settings(s) => self.on_settings(&s).map(|()| Some(Event::WindowOpened)),
            Frame::SettingsAck => Ok(None),
            Frame::Ping { ack: true, payload } => Ok(Some(Event::Pong(payload))),
            Frame::Ping {
                ack: false,
                payload,
            } => {
                self.answers += 1;
                frame::put_frame(&mut self.out, frame::PING, frame::ACK, 0, &payload);
                Ok(None)
            }
            Frame::GoAway {
                last_stream,
                reason,
                ..
            } => Ok(Some(self.on_goaway(last_stream, reason))),
            Frame::WindowUpdate { stream, increment } => self.on_window_update(stream, increment),
        }
    }

    /// Whether `stream` has never been used (so frames on it other than a
    /// new HEADERS are a protocol error).
    fn is_idle(&self, stream: u32) -> bool {
        let local = (stream % 2 == 1) == (self.role == Role::Client);
        if local {
            stream >= self.next_local
        } else {
            stream > self.last_peer
        }
    }

    fn on_data(
        &mut self,
        stream: u32,
        data: Bytes,
        flow: u32,
        end_stream: bool,
    ) -> Result<Option<Event>, ConnError> {
        if i64::from(flow) > self.recv_window {
            return Err(err(
                Reason::FLOW_CONTROL_ERROR,
                "the peer sent more DATA than the connection window allows",
            ));
        }
        self.recv_window -= i64::from(flow);
        let padding = flow - data.len() as u32;
        if self.is_idle(stream) {
            return Err(err(Reason::PROTOCOL_ERROR, "DATA on an idle stream"));
        }
        let verdict = match self.streams.get_mut(&stream) {
            // A stream we reset or finished: its bytes are dropped, but the
            // connection window still gives them back (RFC 9113 §6.9).
            None => Some(None),
            Some(s) if s.remote_closed => Some(Some(Reason::STREAM_CLOSED)),
            Some(s) if !s.head_seen => Some(Some(Reason::PROTOCOL_ERROR)),
            Some(s) if i64::from(flow) > s.recv_window => Some(Some(Reason::FLOW_CONTROL_ERROR)),
            Some(s) => {
                s.recv_window -= i64::from(flow);
                s.remote_closed |= end_stream;
                None
            }
        };
        if let Some(reset) = verdict {
            self.credit_connection(flow);
            return Ok(reset.and_then(|reason| self.reset_stream(stream, reason)));
        }
        if padding > 0 {
            self.release(stream, padding as usize);
        }
        if end_stream {
            self.close_if_done(stream);
        }
        Ok(Some(Event::Data {
            stream,
            data,
            end_stream,
        }))
    }

    /// Bounds a header block in progress: its compressed size cannot
    /// sensibly exceed the decoded limit we advertised.
    fn check_block_size(&self) -> Result<(), ConnError> {
        match &self.pending {
            Some(p) if p.block.len() > self.limits.max_header_list_size as usize => Err(err(
                Reason::ENHANCE_YOUR_CALM,
                "header block larger than our SETTINGS_MAX_HEADER_LIST_SIZE",
            )),
            _ => Ok(()),
        }
    }

    fn on_header_block(&mut self) -> Result<Option<Event>, ConnError> {
        let Some(p) = self.pending.take() else {
            return Ok(None);
        };
        // Decode first, whatever happens to the stream: HPACK state is
        // shared by the whole connection.
        let limit = self.limits.max_header_list_size as usize;
        let mut size = 0usize;
        let mut fields = Fields::new();
        let decoded = self.decoder.decode_with_cb(&p.block, |n, v| {
            size += n.len() + v.len() + 32;
            if size <= limit {
                fields.push((Bytes::copy_from_slice(&n), Bytes::copy_from_slice(&v)));
            }
        });
        if decoded.is_err() {
            return Err(err(
                Reason::COMPRESSION_ERROR,
                "the peer's header block does not decode (HPACK)",
            ));
        }
        let stream = p.stream;
        let known = self.streams.contains_key(&stream);
        let local = (stream % 2 == 1) == (self.role == Role::Client);
        if known {
            let s = self.streams.get_mut(&stream).expect("checked");
            if s.remote_closed {
                return Ok(self.reset_stream(stream, Reason::STREAM_CLOSED));
            }
            if s.head_seen {
                // Trailers: only as the end of the stream.
                if !p.end_stream {
                    return Ok(self.reset_stream(stream, Reason::PROTOCOL_ERROR));
                }
                s.remote_closed = true;
                self.close_if_done(stream);
                return Ok(Some(Event::Data {
                    stream,
                    data: Bytes::new(),
                    end_stream: true,
                }));
            }
            s.head_seen = true;
            if p.end_stream {
                s.remote_closed = true;
            }
        } else if local || self.role == Role::Client {
            if self.is_idle(stream) {
                return Err(err(
                    Reason::PROTOCOL_ERROR,
                    "HEADERS on a stream the server may not open",
                ));
            }
            // A response on a stream we already reset: ignored.
            return Ok(None);
        } else {
            if stream <= self.last_peer {
                return Err(err(
                    Reason::STREAM_CLOSED,
                    "HEADERS reusing a closed stream id",
                ));
            }
            self.last_peer = stream;
            if self.goaway_sent.is_some() {
                // After our GOAWAY new streams are ignored (RFC 9113 §6.8).
                return Ok(None);
            }
            if self.peer_open >= self.limits.max_concurrent_streams || size > limit {
                self.answers += 1;
                let reason = if size > limit {
                    Reason::PROTOCOL_ERROR
                } else {
                    Reason::REFUSED_STREAM
                };
                frame::put_reset(&mut self.out, stream, reason);
                return Ok(None);
            }
            self.peer_open += 1;
            self.streams.insert(
                stream,
                Stream {
                    send_window: self.peer.initial_window.into(),
                    recv_window: self.limits.stream_window.into(),
                    unacked: 0,
                    local_closed: false,
                    remote_closed: p.end_stream,
                    head_seen: true,
                    by_peer: true,
                },
            );
        }
        if size > limit {
            return Ok(self.reset_stream(stream, Reason::PROTOCOL_ERROR));
        }
        let end_stream = p.end_stream;
        if end_stream {
            self.close_if_done(stream);
        }
        Ok(Some(Event::Headers {
            stream,
            fields,
            end_stream,
        }))
    }

    fn on_settings(&mut self, s: &Settings) -> Result<(), ConnError> {
        self.settings_seen = true;
        if let Some(w) = s.initial_window_size {
            let delta = i64::from(w) - i64::from(self.peer.initial_window);
            for st in self.streams.values_mut() {
                st.send_window += delta;
                if st.send_window > i64::from(frame::MAX_WINDOW) {
                    return Err(err(
                        Reason::FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE pushed a stream window above 2^31-1",
                    ));
                }
            }
            self.peer.initial_window = w;
        }
        if let Some(f) = s.max_frame_size {
            self.peer.max_frame = f;
        }
        if let Some(m) = s.max_concurrent_streams {
            self.peer.max_concurrent = m;
        }
        if let Some(m) = s.max_header_list_size {
            self.peer.max_header_list = m;
        }
        self.answers += 1;
        frame::put_frame(&mut self.out, frame::SETTINGS, frame::ACK, 0, &[]);
        Ok(())
    }

    fn on_goaway(&mut self, last_stream: u32, reason: Reason) -> Event {
        let last = self
            .goaway_received
            .map_or(last_stream, |l| l.min(last_stream));
        self.goaway_received = Some(last);
        // Streams we opened above `last` were never processed: they are
        // reported reset (REFUSED_STREAM) when the driver asks.
        Event::GoAway {
            last_stream: last,
            reason,
        }
    }

    /// Our streams the peer's GOAWAY says it will not process; each is
    /// forgotten, and the driver fails its tunnel.
    pub(crate) fn refused_by_goaway(&mut self) -> Vec<u32> {
        let Some(last) = self.goaway_received else {
            return Vec::new();
        };
        let client = self.role == Role::Client;
        let refused: Vec<u32> = self
            .streams
            .iter()
            .filter(|(id, s)| **id > last && !s.by_peer && ((**id % 2 == 1) == client))
            .map(|(id, _)| *id)
            .collect();
        for id in &refused {
            self.remove(*id);
        }
        refused
    }

    fn on_window_update(&mut self, stream: u32, inc: u32) -> Result<Option<Event>, ConnError> {
        if stream == 0 {
            self.send_window += i64::from(inc);
            if self.send_window > i64::from(frame::MAX_WINDOW) {
                return Err(err(
                    Reason::FLOW_CONTROL_ERROR,
                    "WINDOW_UPDATE pushed the connection window above 2^31-1",
                ));
            }
            return Ok(Some(Event::WindowOpened));
        }
        if self.is_idle(stream) {
            return Err(err(
                Reason::PROTOCOL_ERROR,
                "WINDOW_UPDATE on an idle stream",
            ));
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(None);
        };
        s.send_window += i64::from(inc);
        if s.send_window > i64::from(frame::MAX_WINDOW) {
            return Ok(self.reset_stream(stream, Reason::FLOW_CONTROL_ERROR));
        }
        Ok(Some(Event::WindowOpened))
    }

    /// Resets `stream` after a stream error and reports it, if it was open.
    fn reset_stream(&mut self, stream: u32, reason: Reason) -> Option<Event> {
        self.answers += 1;
        frame::put_reset(&mut self.out, stream, reason);
        self.remove(stream).then_some(Event::Reset {
            stream,
            reason,
            by_peer: false,
        })
    }

    /// Forgets a stream; false if it was not open.
    fn remove(&mut self, stream: u32) -> bool {
        let Some(s) = self.streams.remove(&stream) else {
            return false;
        };
        if s.by_peer {
            self.peer_open -= 1;
        } else {
            self.local_open -= 1;
        }
        true
    }

    fn close_if_done(&mut self, stream: u32) {
        if self
            .streams
            .get(&stream)
            .is_some_and(|s| s.local_closed && s.remote_closed)
        {
            self.remove(stream);
        }
    }

    fn credit_connection(&mut self, n: u32) {
        self.recv_window += i64::from(n);
        self.unacked += n;
        // The window we advertised, not what it is now, decides when.
        if self.unacked >= self.limits.connection_window.max(frame::DEFAULT_WINDOW) / UPDATE_DIVISOR
        {
            frame::put_window_update(&mut self.out, 0, self.unacked);
            self.unacked = 0;
        }
    }

    /// `n` received bytes of `stream` were delivered: give their
    /// flow-control credit back (in WINDOW_UPDATEs once enough gathered).
    pub(crate) fn release(&mut self, stream: u32, n: usize) {
        let n = n as u32;
        self.credit_connection(n);
        let threshold = self.limits.stream_window / UPDATE_DIVISOR;
        if let Some(s) = self.streams.get_mut(&stream) {
            s.recv_window += i64::from(n);
            s.unacked += n;
            // No update for a stream the peer has finished sending on.
            if s.unacked >= threshold && !s.remote_closed {
                frame::put_window_update(&mut self.out, stream, s.unacked);
                s.unacked = 0;
            }
        }
    }

    /// Opens a stream (client) with the request head `fields`.
    pub(crate) fn open(&mut self, fields: &[(&[u8], &[u8])]) -> Result<u32, OpenError> {
        if self.going_away() {
            return Err(OpenError::GoingAway);
        }
        if self.local_open >= self.peer.max_concurrent {
            return Err(OpenError::AtLimit);
        }
        let id = self.next_local;
        if id > frame::MAX_WINDOW {
            return Err(OpenError::Exhausted);
        }
        self.next_local += 2;
        self.local_open += 1;
        self.streams.insert(
            id,
            Stream {
                send_window: self.peer.initial_window.into(),
                recv_window: self.limits.stream_window.into(),
                unacked: 0,
                local_closed: false,
                remote_closed: false,
                head_seen: false,
                by_peer: false,
            },
        );
        self.put_headers(id, fields, false);
        Ok(id)
    }

    /// Answers a stream the peer opened (server); `end_stream` for a
    /// refusal. False if the stream is gone (the peer reset it).
    pub(crate) fn respond(
        &mut self,
        stream: u32,
        fields: &[(&[u8], &[u8])],
        end_stream: bool,
    ) -> bool {
        if self.streams.get(&stream).is_none_or(|s| s.local_closed) {
            return false;
        }
        self.put_headers(stream, fields, end_stream);
        if end_stream {
            self.end_local(stream);
        }
        true
    }

    fn put_headers(&mut self, stream: u32, fields: &[(&[u8], &[u8])], end_stream: bool) {
        let mut block = Vec::with_capacity(128);
        if !self.sent_table_update {
            // Dynamic table size update to 0 (RFC 7541 §6.3).
            block.push(0x20);
            self.sent_table_update = true;
        }
        self.encoder
            .encode_into(fields.iter().copied(), &mut block)
            .expect("writing to a Vec cannot fail");
        let max = self.peer.max_frame as usize;
        let mut chunks = block.chunks(max).peekable();
        let mut kind = frame::HEADERS;
        let mut flags = if end_stream { frame::END_STREAM } else { 0 };
        // An empty block still needs its HEADERS frame.
        let first: &[u8] = chunks.next().unwrap_or(&[]);
        let mut chunk = first;
        loop {
            let last = chunks.peek().is_none();
            if last {
                flags |= frame::END_HEADERS;
            }
            frame::put_frame(&mut self.out, kind, flags, stream, chunk);
            match chunks.next() {
                Some(c) => {
                    chunk = c;
                    kind = frame::CONTINUATION;
                    flags = 0;
                }
                None => break,
            }
        }
    }

    /// How many bytes `stream` may send in its next DATA frame now.
    pub(crate) fn send_capacity(&self, stream: u32) -> usize {
        let Some(s) = self.streams.get(&stream) else {
            return 0;
        };
        if s.local_closed {
            return 0;
        }
        s.send_window
            .min(self.send_window)
            .min(self.peer.max_frame.into())
            .max(0) as usize
    }

    /// Queues the header of a DATA frame whose `len` payload bytes the
    /// caller appends to [`out`](Self::out) right after; `len` must be
    /// within [`send_capacity`](Self::send_capacity). Returns where the
    /// header sits so that [`patch_data`](Self::patch_data) can shorten it.
    pub(crate) fn begin_data(&mut self) -> usize {
        let at = self.out.len();
        self.out.extend_from_slice(&[0u8; HEAD_LEN]);
        at
    }

    /// Finishes the DATA frame begun at `at` with the `len` bytes appended
    /// since, charging them to the windows; with `end_stream` it ends our
    /// side of the stream.
    pub(crate) fn finish_data(&mut self, at: usize, stream: u32, len: usize, end_stream: bool) {
        debug_assert_eq!(self.out.len(), at + HEAD_LEN + len);
        debug_assert!(len <= self.send_capacity(stream) || len == 0);
        let head = Head {
            len: len as u32,
            kind: frame::DATA,
            flags: if end_stream { frame::END_STREAM } else { 0 },
            stream,
        };
        self.out[at..at + HEAD_LEN].copy_from_slice(&head.bytes());
        self.send_window -= len as i64;
        if let Some(s) = self.streams.get_mut(&stream) {
            s.send_window -= len as i64;
        }
        if end_stream {
            self.end_local(stream);
        }
    }

    /// Appends a whole DATA frame carrying `data` (within capacity).
    pub(crate) fn send_data(&mut self, stream: u32, data: &[u8], end_stream: bool) {
        let at = self.begin_data();
        self.out.extend_from_slice(data);
        self.finish_data(at, stream, data.len(), end_stream);
    }

    fn end_local(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.local_closed = true;
        }
        self.close_if_done(stream);
    }

    /// Resets a stream of ours (say its TCP side failed).
    pub(crate) fn reset(&mut self, stream: u32, reason: Reason) {
        if self.remove(stream) {
            frame::put_reset(&mut self.out, stream, reason);
        }
    }

    /// Sends a PING carrying `payload`.
    pub(crate) fn ping(&mut self, payload: [u8; 8]) {
        frame::put_frame(&mut self.out, frame::PING, 0, 0, &payload);
    }

    /// Sends GOAWAY: no new streams from the peer beyond those it opened.
    pub(crate) fn goaway(&mut self, reason: Reason, debug: &[u8]) {
        if self.goaway_sent.is_none() {
            self.goaway_sent = Some(self.last_peer);
            frame::put_goaway(&mut self.out, self.last_peer, reason, debug);
        }
    }

    /// Whether `stream` is still open.
    pub(crate) fn is_open(&self, stream: u32) -> bool {
        self.streams.contains_key(&stream)
    }

    /// One stream's (send, receive) windows, for tests.
    #[cfg(test)]
    pub(crate) fn windows(&self, stream: u32) -> Option<(i64, i64)> {
        self.streams
            .get(&stream)
            .map(|s| (s.send_window, s.recv_window))
    }
}

/// A field list from text pairs (tests of this module and of `head`).
#[cfg(test)]
pub(crate) fn fields(list: &[(&str, &str)]) -> Fields {
    list.iter()
        .map(|(n, v)| {
            (
                Bytes::copy_from_slice(n.as_bytes()),
                Bytes::copy_from_slice(v.as_bytes()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
