//! HTTP/2 frames (RFC 9113 §4, §6): the 9-byte header, and each frame type
//! checked against the rules that do not need connection state.
//!
//! Pure functions over byte slices, so the whole codec is tested as tables
//! and fuzzed; the connection state machine ([`super::conn`]) applies the
//! rules that need state (stream states, windows, header blocks).

use bytes::{BufMut, BytesMut};
use h2::Reason;

/// The client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header.
pub(crate) const HEAD_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's floor and ceiling; every peer accepts the floor.
pub(crate) const MIN_MAX_FRAME: u32 = 1 << 14;
pub(crate) const MAX_MAX_FRAME: u32 = (1 << 24) - 1;
/// Largest flow-control window (2^31 - 1).
pub(crate) const MAX_WINDOW: u32 = (1 << 31) - 1;
/// The window every stream and the connection start with (RFC 9113 §6.9.2).
pub(crate) const DEFAULT_WINDOW: u32 = 65_535;

pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const PRIORITY: u8 = 0x2;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PUSH_PROMISE: u8 = 0x5;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;
pub(crate) const CONTINUATION: u8 = 0x9;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const PADDED: u8 = 0x8;
pub(crate) const PRIORITY_FLAG: u8 = 0x20;

/// SETTINGS identifiers (RFC 9113 §6.5.2, RFC 8441 §3).
pub(crate) const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub(crate) const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub(crate) const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub(crate) const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub(crate) const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub(crate) const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
pub(crate) const SETTINGS_ENABLE_CONNECT_PROTOCOL: u16 = 0x8;

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    /// Reads a header; the reserved bit of the stream id is ignored, as the
    /// RFC requires.
    pub(crate) fn parse(b: &[u8; HEAD_LEN]) -> Head {
        Head {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }

    /// The header's bytes. `len` must fit 24 bits (the callers cap frames
    /// at the peer's SETTINGS_MAX_FRAME_SIZE, itself at most 2^24 - 1).
    pub(crate) fn bytes(&self) -> [u8; HEAD_LEN] {
        debug_assert!(self.len <= MAX_MAX_FRAME);
        let l = self.len.to_be_bytes();
        let s = self.stream.to_be_bytes();
        [
            l[1], l[2], l[3], self.kind, self.flags, s[0], s[1], s[2], s[3],
        ]
    }

    /// Appends the header to `out`.
    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_slice(&self.bytes());
    }
}

/// A protocol violation and how far it reaches (RFC 9113 §5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The connection must end with GOAWAY carrying this code.
    Connection(Reason, &'static str),
    /// Only the stream must end, with RST_STREAM carrying this code.
    Stream(u32, Reason, &'static str),
}

/// One frame's meaning, after the stateless checks. Payload-carrying
/// variants give the payload's range within the frame's payload, so the
/// caller can split it out of its buffer without copying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// `data` is the range of the payload without padding; `flow` counts
    /// padding too, since flow control does (RFC 9113 §6.1).
    Data {
        stream: u32,
        data: std::ops::Range<usize>,
        flow: u32,
        end_stream: bool,
    },
    /// A header block fragment; more follow in CONTINUATION frames unless
    /// `end_headers`.
    Headers {
        stream: u32,
        fragment: std::ops::Range<usize>,
        end_stream: bool,
        end_headers: bool,
    },
    Continuation {
        stream: u32,
        end_headers: bool,
    },
    /// PRIORITY frames and unknown frame types: nothing to do.
    Ignored,
    Reset {
        stream: u32,
        reason: Reason,
    },
    Settings(Settings),
    SettingsAck,
    Ping {
        ack: bool,
        payload: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        reason: Reason,
        debug: std::ops::Range<usize>,
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
}

/// The values of one SETTINGS frame; `None` where the frame did not name one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    pub header_table_size: Option<u32>,
    pub enable_push: Option<bool>,
    pub max_concurrent_streams: Option<u32>,
    pub initial_window_size: Option<u32>,
    pub max_frame_size: Option<u32>,
    pub max_header_list_size: Option<u32>,
    pub enable_connect_protocol: Option<bool>,
}

impl Settings {
    /// Appends a SETTINGS frame naming every value that is set.
    pub(crate) fn put(&self, out: &mut BytesMut) {
        let entries = [
            (SETTINGS_HEADER_TABLE_SIZE, self.header_table_size),
            (SETTINGS_ENABLE_PUSH, self.enable_push.map(u32::from)),
            (SETTINGS_MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
            (SETTINGS_INITIAL_WINDOW_SIZE, self.initial_window_size),
            (SETTINGS_MAX_FRAME_SIZE, self.max_frame_size),
            (SETTINGS_MAX_HEADER_LIST_SIZE, self.max_header_list_size),
            (
                SETTINGS_ENABLE_CONNECT_PROTOCOL,
                self.enable_connect_protocol.map(u32::from),
            ),
        ];
        let n = entries.iter().filter(|(_, v)| v.is_some()).count();
        Head {
            len: 6 * n as u32,
            kind: SETTINGS,
            flags: 0,
            stream: 0,
        }
        .put(out);
        for (id, v) in entries {
            if let Some(v) = v {
                out.put_u16(id);
                out.put_u32(v);
            }
        }
    }
}

fn conn(reason: Reason, what: &'static str) -> FrameError {
    FrameError::Connection(reason, what)
}

/// Checks one frame whose header is `head` and whose payload is `p`
/// (exactly `head.len` bytes), and says what it is. `max_frame` is the
/// SETTINGS_MAX_FRAME_SIZE we advertised.
pub(crate) fn parse(head: &Head, p: &[u8], max_frame: u32) -> Result<Frame, FrameError> {
    debug_assert_eq!(p.len(), head.len as usize);
    if head.len > max_frame {
        return Err(conn(
            Reason::FRAME_SIZE_ERROR,
            "frame larger than our SETTINGS_MAX_FRAME_SIZE",
        ));
    }
    let stream = head.stream;
    let needs_stream = |what| {
        if stream == 0 {
            Err(conn(Reason::PROTOCOL_ERROR, what))
        } else {
            Ok(())
        }
    };
    let no_stream = |what| {
        if stream != 0 {
            Err(conn(Reason::PROTOCOL_ERROR, what))
        } else {
            Ok(())
        }
    };
    match head.kind {
        DATA => {
            needs_stream("DATA frame on stream 0")?;
            let data = unpad(head.flags, p)?;
            Ok(Frame::Data {
                stream,
                data,
                flow: head.len,
                end_stream: head.flags & END_STREAM != 0,
            })
        }
        HEADERS => {
            needs_stream("HEADERS frame on stream 0")?;
            let mut fragment = unpad(head.flags, p)?;
            if head.flags & PRIORITY_FLAG != 0 {
                if fragment.len() < 5 {
                    return Err(conn(
                        Reason::FRAME_SIZE_ERROR,
                        "HEADERS frame too short for its priority fields",
                    ));
                }
                fragment.start += 5;
            }
            Ok(Frame::Headers {
                stream,
                fragment,
                end_stream: head.flags & END_STREAM != 0,
                end_headers: head.flags & END_HEADERS != 0,
            })
        }
        CONTINUATION => {
            needs_stream("CONTINUATION frame on stream 0")?;
            Ok(Frame::Continuation {
                stream,
                end_headers: head.flags & END_HEADERS != 0,
            })
        }
        PRIORITY => {
            needs_stream("PRIORITY frame on stream 0")?;
            if head.len != 5 {
                return Err(FrameError::Stream(
                    stream,
                    Reason::FRAME_SIZE_ERROR,
                    "PRIORITY frame is not 5 bytes",
                ));
            }
            Ok(Frame::Ignored)
        }
        RST_STREAM => {
            needs_stream("RST_STREAM frame on stream 0")?;
            let code: [u8; 4] = p
                .try_into()
                .map_err(|_| conn(Reason::FRAME_SIZE_ERROR, "RST_STREAM frame is not 4 bytes"))?;
            Ok(Frame::Reset {
                stream,
                reason: Reason::from(u32::from_be_bytes(code)),
            })
        }
        SETTINGS => {
            no_stream("SETTINGS frame on a stream")?;
            if head.flags & ACK != 0 {
                if !p.is_empty() {
                    return Err(conn(
                        Reason::FRAME_SIZE_ERROR,
                        "SETTINGS acknowledgement with a payload",
                    ));
                }
                return Ok(Frame::SettingsAck);
            }
            parse_settings(p).map(Frame::Settings)
        }
        PUSH_PROMISE => Err(conn(
            Reason::PROTOCOL_ERROR,
            "PUSH_PROMISE received; hbone never enables server push",
        )),
        PING => {
            no_stream("PING frame on a stream")?;
            let payload: [u8; 8] = p
                .try_into()
                .map_err(|_| conn(Reason::FRAME_SIZE_ERROR, "PING frame is not 8 bytes"))?;
            Ok(Frame::Ping {
                ack: head.flags & ACK != 0,
                payload,
            })
        }
        GOAWAY => {
            no_stream("GOAWAY frame on a stream")?;
            if p.len() < 8 {
                return Err(conn(
                    Reason::FRAME_SIZE_ERROR,
                    "GOAWAY frame shorter than 8 bytes",
                ));
            }
            Ok(Frame::GoAway {
                last_stream: u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & MAX_WINDOW,
                reason: Reason::from(u32::from_be_bytes([p[4], p[5], p[6], p[7]])),
                debug: 8..p.len(),
            })
        }
        WINDOW_UPDATE => {
            let b: [u8; 4] = p.try_into().map_err(|_| {
                conn(
                    Reason::FRAME_SIZE_ERROR,
                    "WINDOW_UPDATE frame is not 4 bytes",
                )
            })?;
            let increment = u32::from_be_bytes(b) & MAX_WINDOW;
            if increment == 0 {
                let what = "WINDOW_UPDATE with an increment of 0";
                return Err(if stream == 0 {
                    conn(Reason::PROTOCOL_ERROR, what)
                } else {
                    FrameError::Stream(stream, Reason::PROTOCOL_ERROR, what)
                });
            }
            Ok(Frame::WindowUpdate { stream, increment })
        }
        // Unknown frame types are ignored (RFC 9113 §4.1); the connection
        // rejects them inside a header block.
        _ => Ok(Frame::Ignored),
    }
}

/// The range of a padded frame's payload without its pad length byte and
/// padding.
fn unpad(flags: u8, p: &[u8]) -> Result<std::ops::Range<usize>, FrameError> {
    if flags & PADDED == 0 {
        return Ok(0..p.len());
    }
    let Some((&pad, rest)) = p.split_first() else {
        return Err(conn(
            Reason::FRAME_SIZE_ERROR,
            "padded frame without its pad length",
        ));
    };
    if pad as usize >= p.len() {
        return Err(conn(
            Reason::PROTOCOL_ERROR,
            "padding as long as the frame's payload",
        ));
    }
    Ok(1..1 + rest.len() - pad as usize)
}

fn parse_settings(p: &[u8]) -> Result<Settings, FrameError> {
    if !p.len().is_multiple_of(6) {
        return Err(conn(
            Reason::FRAME_SIZE_ERROR,
            "SETTINGS frame length is not a multiple of 6",
        ));
    }
    let mut s = Settings::default();
    let flag = |v: u32, what| match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(conn(Reason::PROTOCOL_ERROR, what)),
    };
    for e in p.chunks_exact(6) {
        let id = u16::from_be_bytes([e[0], e[1]]);
        let v = u32::from_be_bytes([e[2], e[3], e[4], e[5]]);
        match id {
            SETTINGS_HEADER_TABLE_SIZE => s.header_table_size = Some(v),
            SETTINGS_ENABLE_PUSH => {
                s.enable_push = Some(flag(v, "SETTINGS_ENABLE_PUSH other than 0 or 1")?)
            }
            SETTINGS_MAX_CONCURRENT_STREAMS => s.max_concurrent_streams = Some(v),
            SETTINGS_INITIAL_WINDOW_SIZE => {
                if v > MAX_WINDOW {
                    return Err(conn(
                        Reason::FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                    ));
                }
                s.initial_window_size = Some(v);
            }
            SETTINGS_MAX_FRAME_SIZE => {
                if !(MIN_MAX_FRAME..=MAX_MAX_FRAME).contains(&v) {
                    return Err(conn(
                        Reason::PROTOCOL_ERROR,
                        "SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1",
                    ));
                }
                s.max_frame_size = Some(v);
            }
            SETTINGS_MAX_HEADER_LIST_SIZE => s.max_header_list_size = Some(v),
            SETTINGS_ENABLE_CONNECT_PROTOCOL => {
                s.enable_connect_protocol = Some(flag(
                    v,
                    "SETTINGS_ENABLE_CONNECT_PROTOCOL other than 0 or 1",
                )?)
            }
            // Unknown settings are ignored (RFC 9113 §6.5.2).
            _ => {}
        }
    }
    Ok(s)
}

/// Appends a frame with a small fixed payload.
pub(crate) fn put_frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    Head {
        len: payload.len() as u32,
        kind,
        flags,
        stream,
    }
    .put(out);
    out.put_slice(payload);
}

pub(crate) fn put_window_update(out: &mut BytesMut, stream: u32, increment: u32) {
    put_frame(out, WINDOW_UPDATE, 0, stream, &increment.to_be_bytes());
}

pub(crate) fn put_reset(out: &mut BytesMut, stream: u32, reason: Reason) {
    put_frame(out, RST_STREAM, 0, stream, &u32::from(reason).to_be_bytes());
}

pub(crate) fn put_goaway(out: &mut BytesMut, last_stream: u32, reason: Reason, debug: &[u8]) {
    Head {
        len: 8 + debug.len() as u32,
        kind: GOAWAY,
        flags: 0,
        stream: 0,
    }
    .put(out);
    out.put_u32(last_stream);
    out.put_u32(reason.into());
    out.put_slice(debug);
}

#[cfg(test)]
mod tests;
