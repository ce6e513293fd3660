//! A stream the peer resets right after opening it (HTTP/2 "rapid reset")
//! is dropped before the handler sees it: a node proxy would otherwise
//! connect to a pod for each one, for nobody (issue 16, section 3).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::lite_server::LiteServer;
use common::*;
use hbone::{lite, H2Settings, IncomingRequest};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Under h2's own limit of 20 reset streams waiting to be accepted, past
/// which it ends the connection: this test is about what the server does
/// with the streams it keeps.
const RESETS: u32 = 10;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A CONNECT to `authority` as HPACK literals without indexing.
fn connect_block(authority: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in [(":method", "CONNECT"), (":authority", authority)] {
        b.push(0);
        b.push(name.len() as u8);
        b.extend_from_slice(name.as_bytes());
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
    }
    b
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;

#[tokio::test]
async fn streams_reset_with_their_request_never_reach_the_handler() {
    let pki = Pki::new();
    let seen = Arc::new(AtomicUsize::new(0));
    let handler: Handler = {
        let seen = seen.clone();
        Arc::new(move |req: IncomingRequest| {
            seen.fetch_add(1, Ordering::SeqCst);
            req.reject(StatusCode::NOT_FOUND);
        })
    };
    let mut server = pki.serve(handler).await;
    let tls = within(tls_dial(server.addr, pki.client_tls()))
        .await
        .expect("tls");
    server.expect_accepted().await;
    open_and_reset(tls).await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "only the stream that was not reset reaches the handler"
    );
}

#[tokio::test]
async fn the_lite_server_drops_streams_reset_with_their_request_too() {
    let pki = Pki::new();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let server = LiteServer::start(
        &pki,
        H2Settings::default(),
        move |req: lite::Request<TcpStream>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { req.reject(StatusCode::NOT_FOUND) }
        },
    )
    .await;
    let tls = within(tls_dial(server.addr, pki.client_tls()))
        .await
        .expect("tls");
    open_and_reset(tls).await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "only the stream that was not reset reaches the handler"
    );
}

/// Opens RESETS streams each reset in the same write, then one more, and
/// reads until that one is answered.
async fn open_and_reset(mut tls: hbone::ClientTls) {
    // One write, so one TLS record: the server reads each reset together
    // with the request it cancels, as it does from an attacker.
    let block = connect_block("10.0.0.1:80");
    let mut bytes = PREFACE.to_vec();
    frame(&mut bytes, SETTINGS, 0, 0, &[]);
    for i in 0..RESETS {
        let stream = 1 + 2 * i;
        frame(&mut bytes, HEADERS, END_HEADERS, stream, &block);
        frame(&mut bytes, RST_STREAM, 0, stream, &CANCEL.to_be_bytes());
    }
    // A request nobody cancels, after them: once it is answered, every
    // reset before it has been read.
    let last = 1 + 2 * RESETS;
    frame(&mut bytes, HEADERS, END_HEADERS, last, &block);
    tls.write_all(&bytes).await.expect("write");
    tls.flush().await.expect("flush");

    let mut back = Vec::new();
    let mut buf = [0u8; 4096];
    while !has_headers_on(&back, last) {
        let n = within(tls.read(&mut buf)).await.expect("read");
        assert!(n > 0, "the server closed before answering stream {last}");
        back.extend_from_slice(&buf[..n]);
    }
}

/// Whether `b` (server frames) holds a HEADERS frame on `stream`.
fn has_headers_on(mut b: &[u8], stream: u32) -> bool {
    while b.len() >= 9 {
        let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
        let id = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
        if b[3] == HEADERS && id == stream {
            return true;
        }
        if b.len() < 9 + len {
            return false;
        }
        b = &b[9 + len..];
    }
    false
}
