//! HTTP/2 frames by hand (RFC 9113 §4, §6) and an HPACK header block of
//! literals without indexing (RFC 7541 §6.2.2), and a reader of the frames
//! that come back: attacks (perf's `trellis-attack-bench`, the waypoint's
//! e2e tests) send sequences that a conforming library (the `h2` crate)
//! refuses to send, such as HEADERS followed by endless CONTINUATION frames.

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
}

/// SETTINGS_INITIAL_WINDOW_SIZE (RFC 9113 §6.5.2).
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
/// CANCEL, the code a client resets a stream it gave up on with.
pub const CANCEL: u32 = 0x8;

/// Appends one frame to `out`. `payload` must fit the 24-bit length.
pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    debug_assert!(len < 1 << 24, "frame payload of {len} bytes");
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// A SETTINGS frame with `params` (identifier, value).
pub fn settings(out: &mut Vec<u8>, params: &[(u16, u32)]) {
    let mut p = Vec::with_capacity(params.len() * 6);
    for (id, v) in params {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(out, kind::SETTINGS, 0, 0, &p);
}

pub fn settings_ack(out: &mut Vec<u8>) {
    frame(out, kind::SETTINGS, flag::ACK, 0, &[]);
}

pub fn rst_stream(out: &mut Vec<u8>, stream: u32, code: u32) {
    frame(out, kind::RST_STREAM, 0, stream, &code.to_be_bytes());
}

pub fn ping_ack(out: &mut Vec<u8>, data: &[u8]) {
    frame(out, kind::PING, flag::ACK, 0, data);
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); `first` holds the
/// bits above the prefix.
pub fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal header field without indexing, with a literal name, neither
/// string Huffman-coded (RFC 7541 §6.2.2): the decoder adds nothing to its
/// dynamic table, so every field costs the server its full size.
pub fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_string(out, name);
    hpack_string(out, value);
}

/// A string literal, not Huffman-coded (RFC 7541 §5.2).
pub fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// The header block of an HBONE request: `CONNECT` to `authority`.
pub fn connect_block(authority: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + authority.len());
    hpack_literal(&mut b, b":method", b"CONNECT");
    hpack_literal(&mut b, b":authority", authority.as_bytes());
    b
}

/// One frame as read: its header fields and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// GOAWAY's (last stream id, error code), or RST_STREAM's code in the
    /// second field; None for other frames or a short payload.
    pub fn error_code(&self) -> Option<(u32, u32)> {
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        match self.kind {
            kind::GOAWAY if self.payload.len() >= 8 => Some((
                be(&self.payload[..4]) & 0x7fff_ffff,
                be(&self.payload[4..8]),
            )),
            kind::RST_STREAM if self.payload.len() >= 4 => {
                Some((self.stream, be(&self.payload[..4])))
            }
            _ => None,
        }
    }
}

/// Splits a byte stream into frames.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if buffered.
    pub fn next_frame(&mut self) -> Option<Frame> {
        if self.buf.len() < 9 {
            return None;
        }
        let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
        if self.buf.len() < 9 + len {
            return None;
        }
        let f = Frame {
            kind: self.buf[3],
            flags: self.buf[4],
            stream: u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]])
                & 0x7fff_ffff,
            payload: self.buf[9..9 + len].to_vec(),
        };
        self.buf.drain(..9 + len);
        Some(f)
    }
}

/// The name of an HTTP/2 error code (RFC 9113 §7).
pub fn code_name(code: u32) -> String {
    let name = match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        other => return format!("0x{other:x}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers_as_in_rfc_7541() {
        // (value, prefix bits, encoding): C.1.1, C.1.2, C.1.3 and the edges.
        let cases: &[(usize, u8, &[u8])] = &[
            (10, 5, &[0x0a]),
            (1337, 5, &[0x1f, 0x9a, 0x0a]),
            (42, 8, &[0x2a]),
            (126, 7, &[0x7e]),
            (127, 7, &[0x7f, 0x00]),
            (128, 7, &[0x7f, 0x01]),
            (16_000, 7, &[0x7f, 0x81, 0x7c]),
        ];
        for (v, n, want) in cases {
            let mut out = Vec::new();
            hpack_int(&mut out, 0, *n, *v);
            assert_eq!(&out, want, "{v} with a {n}-bit prefix");
        }
    }

    #[test]
    fn literal_without_indexing_with_a_new_name() {
        let mut out = Vec::new();
        hpack_literal(&mut out, b"custom-key", b"custom-header");
        let mut want = vec![0x00, 0x0a];
        want.extend_from_slice(b"custom-key");
        want.push(0x0d);
        want.extend_from_slice(b"custom-header");
        assert_eq!(out, want);
    }

    #[test]
    fn frames_round_trip_through_the_reader() {
        let mut out = Vec::new();
        frame(&mut out, kind::HEADERS, flag::END_HEADERS, 3, b"abc");
        rst_stream(&mut out, 3, CANCEL);
        settings(&mut out, &[(SETTINGS_INITIAL_WINDOW_SIZE, 65_535)]);
        let mut goaway = 5u32.to_be_bytes().to_vec();
        goaway.extend_from_slice(&0xbu32.to_be_bytes());
        frame(&mut out, kind::GOAWAY, 0, 0, &goaway);
        let mut r = FrameReader::default();
        // Fed in two pieces that cut a frame header in half.
        r.push(&out[..5]);
        assert_eq!(r.next_frame(), None);
        r.push(&out[5..]);
        let got: Vec<Frame> = std::iter::from_fn(|| r.next_frame()).collect();
        assert_eq!(got.len(), 4);
        assert_eq!(
            (
                got[0].kind,
                got[0].flags,
                got[0].stream,
                &got[0].payload[..]
            ),
            (kind::HEADERS, flag::END_HEADERS, 3, &b"abc"[..])
        );
        assert_eq!(got[1].error_code(), Some((3, CANCEL)));
        assert_eq!(got[2].payload, [0, 4, 0, 0, 0xff, 0xff]);
        assert_eq!(got[3].error_code(), Some((5, 0xb)));
        assert_eq!(code_name(0xb), "ENHANCE_YOUR_CALM");
        assert_eq!(code_name(0x42), "0x42");
    }
}
