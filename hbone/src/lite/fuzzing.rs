//! The fuzz target's way into the crate-private connection state
//! (`fuzz/fuzz_targets/hbone_lite.rs`). Not an API: it may change with
//! the target.
#![doc(hidden)]

use bytes::BytesMut;
use h2::Reason;
use http::{HeaderMap, StatusCode};

use super::conn::{Conn, Event, Limits, Role};
use super::{frame, head};

/// Small limits, so that short inputs reach the streams' window updates,
/// the stream limit and the header list limit. The connection's window
/// cannot start below 65,535, so its updates need inputs past libFuzzer's
/// default 4 KiB `-max_len`.
const LIMITS: Limits = Limits {
    stream_window: 1024,
    connection_window: 65_535,
    max_frame_size: frame::MIN_MAX_FRAME,
    max_concurrent_streams: 4,
    max_header_list_size: 1024,
};

/// Feeds `chunks`, in order, as the peer's bytes to a new connection
/// playing the server (the client preface is fed first) or the client
/// (with two CONNECT streams opened before any input), and acts on its
/// events as the driver does: heads answered, tunnel bytes released and
/// echoed within the send window, GOAWAY's refused streams dropped. Stops
/// at the first connection error, after queuing GOAWAY as the driver does.
/// Returns the bytes the connection queued for the peer in all.
pub fn conn_bytes(server: bool, chunks: &[&[u8]]) -> usize {
    let role = if server { Role::Server } else { Role::Client };
    let mut conn = Conn::new(role, LIMITS);
    let mut input = BytesMut::new();
    if server {
        input.extend_from_slice(frame::PREFACE);
    } else {
        let connect: &[(&[u8], &[u8])] = &[
            (b":method", b"CONNECT"),
            (b":authority", b"10.0.0.1:8080"),
            (b"forwarded", b"for=\"10.0.0.2:40000\""),
        ];
        for _ in 0..2 {
            conn.open(connect).expect("a new connection opens streams");
        }
    }
    let mut total = 0;
    for chunk in chunks {
        input.extend_from_slice(chunk);
        let failed = loop {
            match conn.poll_event(&mut input) {
                Ok(Some(event)) => on_event(&mut conn, event, server),
                Ok(None) => break false,
                Err(e) => {
                    assert!(!e.detail.is_empty());
                    conn.goaway(e.reason, e.detail.as_bytes());
                    break true;
                }
            }
        };
        // The driver's write: everything queued goes out.
        total += conn.out().len();
        conn.out().clear();
        conn.output_drained();
        assert_eq!(conn.unsent_answers(), 0);
        if failed {
            break;
        }
    }
    total
}

fn on_event(conn: &mut Conn, event: Event, server: bool) {
    match event {
        Event::Headers { stream, fields, .. } if server => match head::request(&fields) {
            Ok(Ok(_)) => {
                let ok = head::response_fields(StatusCode::OK, &HeaderMap::new());
                conn.respond(stream, &head::borrow(&ok), false);
            }
            Ok(Err(e)) => {
                let no = head::response_fields(e.status(), &HeaderMap::new());
                conn.respond(stream, &head::borrow(&no), true);
            }
            Err(_) => conn.reset(stream, Reason::PROTOCOL_ERROR),
        },
        Event::Headers { stream, fields, .. } => {
            if head::response(&fields).is_err() {
                conn.reset(stream, Reason::PROTOCOL_ERROR);
            }
        }
        Event::Data {
            stream,
            data,
            end_stream,
        } => {
            conn.release(stream, data.len());
            // Echo what the window allows, so output stays within a
            // constant factor of the input (the target checks it); a
            // positive capacity also says our side is still open.
            let cap = conn.send_capacity(stream);
            let n = data.len().min(cap);
            if cap > 0 && (n > 0 || end_stream) {
                conn.send_data(stream, &data[..n], end_stream);
            }
        }
        Event::GoAway { .. } => {
            for stream in conn.refused_by_goaway() {
                assert!(!conn.is_open(stream));
            }
        }
        Event::Reset { stream, .. } => assert!(!conn.is_open(stream)),
        Event::WindowOpened | Event::Pong(_) => {}
    }
}
