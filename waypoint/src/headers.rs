//! Request identity and trace context carried across the waypoint hop, and
//! hop-by-hop header removal.
//!
//! Trace context follows W3C Trace Context: the waypoint is one hop (span),
//! so it keeps the caller's trace id and flags and puts its own span id in
//! `traceparent`; `tracestate` and `baggage` belong to the caller and pass
//! through, except that `tracestate` without a valid `traceparent` is
//! dropped, as the spec requires.

use http::header::{CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longer ids are replaced: they bloat every log line and are likely abuse.
const MAX_REQUEST_ID: usize = 128;

/// "00-" + 32 hex + "-" + 16 hex + "-" + 2 hex.
const TRACEPARENT_LEN: usize = 55;

/// The ids of one request, for logs and access records.
#[derive(Debug, Clone)]
pub struct TraceIds {
    pub request_id: HeaderValue,
    pub trace_id: [u8; 16],
    /// This hop's span id, sent upstream as the parent id.
    pub span_id: [u8; 8],
}

impl TraceIds {
    /// The trace id as 32 lowercase hex digits, as tracing backends show it.
    pub fn trace_id_hex(&self) -> String {
        hex_string(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex_string(&self.span_id)
    }
}

/// The trace id as 32 lowercase hex digits.
pub fn trace_id_hex(ids: &TraceIds) -> String {
    ids.trace_id_hex()
}

/// Makes sure the upstream request carries `x-request-id` (the caller's if
/// usable, else a new UUID v4) and a `traceparent` naming this hop's span,
/// continuing the caller's trace when its `traceparent` is valid.
pub fn propagate(headers: &mut HeaderMap, rng: &mut fastrand::Rng) -> TraceIds {
    let request_id = match headers.get(X_REQUEST_ID) {
        Some(v) if valid_request_id(v.as_bytes()) => v.clone(),
        _ => uuid_v4(rng),
    };
    // `insert` also collapses repeated ids into one.
    headers.insert(X_REQUEST_ID, unique(request_id.clone()));

    let incoming = {
        let mut all = headers.get_all(TRACEPARENT).iter();
        match (all.next(), all.next()) {
            // Several traceparents cannot be told apart: start afresh.
            (Some(v), None) => parse_traceparent(v.as_bytes()),
            _ => None,
        }
    };
    let (trace_id, flags) = match incoming {
        Some(tp) => (tp.trace_id, tp.flags),
        None => {
            // The caller's vendor state describes a trace we are not continuing.
            headers.remove(TRACESTATE);
            (rng.u128(1..).to_be_bytes(), SAMPLED)
        }
    };
    let span_id = rng.u64(1..).to_be_bytes();
    headers.insert(
        TRACEPARENT,
        unique(format_traceparent(&trace_id, &span_id, flags)),
    );
    TraceIds {
        request_id,
        trace_id,
        span_id,
    }
}

const SAMPLED: u8 = 0x01;

/// Marks a value that is new on every request (an id, a span) as never to
/// be indexed by HPACK. Indexed, each one would be added to the upstream
/// connection's dynamic table and evict entries that do repeat (the
/// authority, the route's headers), and every later header would be
/// compared against it; it could never be referenced again anyway.
fn unique(mut v: HeaderValue) -> HeaderValue {
    v.set_sensitive(true);
    v
}

/// Visible ASCII only, so the id can be logged and echoed verbatim.
fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.iter().all(|b| (0x21..=0x7e).contains(b))
}

fn uuid_v4(rng: &mut fastrand::Rng) -> HeaderValue {
    let mut b = rng.u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        hex_into(&mut out[o..o + 2], &[*byte]);
        o += 2;
    }
    HeaderValue::from_bytes(&out).expect("hex and dashes are valid header bytes")
}

#[derive(Debug, PartialEq, Eq)]
struct TraceParent {
    trace_id: [u8; 16],
    flags: u8,
}

/// Parses a `traceparent` per W3C Trace Context level 1. Version 00 must be
/// exactly 55 bytes; a later version may append fields after a '-', which are
/// ignored (we answer in version 00). Version ff, upper-case hex and all-zero
/// ids are invalid.
fn parse_traceparent(v: &[u8]) -> Option<TraceParent> {
    if v.len() < TRACEPARENT_LEN {
        return None;
    }
    let mut version = [0u8; 1];
    if !unhex_lc(&v[0..2], &mut version) || version[0] == 0xff {
        return None;
    }
    let well_sized = match version[0] {
        0 => v.len() == TRACEPARENT_LEN,
        _ => v.len() == TRACEPARENT_LEN || v[TRACEPARENT_LEN] == b'-',
    };
    if !well_sized || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    let mut flags = [0u8; 1];
    let hex_ok = unhex_lc(&v[3..35], &mut trace_id)
        && unhex_lc(&v[36..52], &mut parent_id)
        && unhex_lc(&v[53..55], &mut flags);
    if !hex_ok || trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        flags: flags[0],
    })
}

fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> HeaderValue {
    let mut out = [0u8; TRACEPARENT_LEN];
    out[..3].copy_from_slice(b"00-");
    hex_into(&mut out[3..35], trace_id);
    out[35] = b'-';
    hex_into(&mut out[36..52], span_id);
    out[52] = b'-';
    hex_into(&mut out[53..55], &[flags]);
    HeaderValue::from_bytes(&out).expect("hex and dashes are valid header bytes")
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

fn hex_string(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(&mut out, bytes);
    String::from_utf8(out).expect("hex is ASCII")
}

/// Decodes lowercase hex (the spec forbids upper case) into `out`.
fn unhex_lc(s: &[u8], out: &mut [u8]) -> bool {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if s.len() != out.len() * 2 {
        return false;
    }
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => *o = (h << 4) | l,
            _ => return false,
        }
    }
    true
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 4] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TRANSFER_ENCODING,
    TRAILER,
];

/// Removes hop-by-hop headers before a message is forwarded: the fixed set,
/// `te` unless it asks for trailers (gRPC needs `te: trailers` end to end),
/// and every header the `Connection` header names. With `keep_upgrade` (an
/// upgrade such as WebSocket being forwarded) `upgrade` survives and
/// `connection: upgrade` is set, which the next hop needs to accept it.
/// The request's `te` names `trailers` (RFC 9110 §10.1.4): the client
/// takes trailers after the body.
pub fn te_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| t.split(';').next())
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// TE forwarded as `trailers` if it offered that, else dropped: the only
/// value HTTP/2 allows, and the only one a proxy may pass on.
fn strip_te(headers: &mut HeaderMap) {
    let mut values = headers.get_all(TE).iter();
    let exact = matches!((values.next(), values.next()), (Some(v), None) if v == "trailers");
    if exact {
        return;
    }
    if te_trailers(headers) {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    } else {
        headers.remove(TE);
    }
}

pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass over the names is cheaper than a
    // hashed removal per hop-by-hop name.
    // TE alone is the common case (every gRPC request has `te: trailers`),
    // handled without the removals below.
    let hop = |n: &HeaderName| n == CONNECTION || n == UPGRADE || HOP_BY_HOP.contains(n);
    let mut te = false;
    let mut other = false;
    for n in headers.keys() {
        if n == TE {
            te = true;
        } else if hop(n) {
            other = true;
            break;
        }
    }
    if !other {
        if te {
            strip_te(headers);
        }
        return;
    }
    let nominated: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in nominated {
        // Dropping Host would misroute the request; Connection cannot unset it.
        if name == HOST || (keep_upgrade && name == UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    headers.remove(CONNECTION);
    for name in HOP_BY_HOP {
        headers.remove(name);
    }

    strip_te(headers);

    if keep_upgrade && headers.contains_key(UPGRADE) {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

#[cfg(test)]
mod tests;
