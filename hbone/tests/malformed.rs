//! Malformed HTTP/2 inside a valid mTLS session ends that session with an
//! error, never a panic, and the server keeps serving other clients.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Raw byte sequences a broken or hostile peer might send after the TLS handshake.
fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let frame = |len: u32, kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut v = len.to_be_bytes()[1..].to_vec();
        v.extend([kind, flags]);
        v.extend(stream.to_be_bytes());
        v.extend(payload);
        v
    };
    let with_preface = |rest: Vec<u8>| {
        let mut v = PREFACE.to_vec();
        v.extend(frame(0, 0x4, 0, 0, &[])); // empty SETTINGS
        v.extend(rest);
        v
    };
    vec![
        ("no preface", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("truncated preface", PREFACE[..10].to_vec()),
        (
            "frame longer than max frame size",
            with_preface(frame(0xff_ffff, 0x0, 0, 1, &[])),
        ),
        (
            "data on stream 0",
            with_preface(frame(4, 0x0, 0, 0, b"abcd")),
        ),
        (
            "headers with garbage hpack",
            with_preface(frame(6, 0x1, 0x5, 1, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff])),
        ),
        (
            "settings with bad length",
            with_preface(frame(5, 0x4, 0, 0, &[0, 1, 2, 3, 4])),
        ),
        (
            "window update of zero",
            with_preface(frame(4, 0x8, 0, 0, &[0, 0, 0, 0])),
        ),
        (
            "continuation without headers",
            with_preface(frame(1, 0x9, 0x4, 1, &[0x82])),
        ),
        (
            "random bytes",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
    ]
}

#[tokio::test]
async fn malformed_frames_end_the_session_cleanly() {
    let pki = Pki::new();
    let mut server = pki.serve(echo_handler()).await;
    let cfg = pki.client_tls();
    for (name, bytes) in cases() {
        let mut tls = within(tls_dial(server.addr, cfg.clone()))
            .await
            .expect("tls");
        // The server may close before reading everything; a write error is fine.
        let _ = tls.write_all(&bytes).await;
        let _ = tls.flush().await;
        let _ = tls.shutdown().await;
        let mut sink = Vec::new();
        let _ = within(tls.read_to_end(&mut sink)).await;
        // Accepted, then the session ends with an error (or a clean close for
        // inputs h2 treats as a goodbye) — what matters is that it ends.
        let mut served = None;
        for _ in 0..2 {
            if let ServerEvent::Served(r) = server.next_event().await {
                served = Some(r);
                break;
            }
        }
        let served = served.unwrap_or_else(|| panic!("{name}: session never ended"));
        assert!(
            served.is_err() || name == "truncated preface",
            "{name}: malformed input was served without error"
        );
    }
    // Still serving proper clients.
    let conn = pki.dial(server.addr).await.expect("server still accepts");
    assert!(!conn.is_closed());
}
