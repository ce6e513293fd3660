//! A peer that sends SETTINGS frames back to back (each one owed an ACK)
//! gets its connection closed with an error naming the flood, and other
//! clients are still served; found by trellis-attack-bench (issue 16, 3).

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Far past the burst the server allows.
const FLOOD: usize = 5_000;

fn settings(out: &mut Vec<u8>, flags: u8, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend([0x4, flags, 0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// The error and every source under it, as text.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text += &format!(": {s}");
        cur = s.source();
    }
    text
}

#[tokio::test]
async fn a_settings_flood_ends_the_connection_and_others_are_served() {
    let pki = Pki::new();
    let mut server = pki.serve(echo_handler()).await;
    let mut tls = within(tls_dial(server.addr, pki.client_tls()))
        .await
        .expect("tls");
    server.expect_accepted().await;
    let mut bytes = PREFACE.to_vec();
    settings(&mut bytes, 0, &[]);
    settings(&mut bytes, 0x1, &[]); // ACK of the server's SETTINGS
    for i in 0..FLOOD {
        // INITIAL_WINDOW_SIZE, flipping: each frame means work.
        let w: u32 = 65_535 + (i as u32 & 1);
        let mut p = vec![0, 4];
        p.extend(w.to_be_bytes());
        settings(&mut bytes, 0, &p);
    }
    // The server may close before reading everything: a write error is fine.
    let _ = tls.write_all(&bytes).await;
    let _ = tls.flush().await;
    let mut back = Vec::new();
    let _ = within(tls.read_to_end(&mut back)).await;
    let served = server.expect_served().await;
    let err = served.expect_err("a SETTINGS flood must end the session with an error");
    let text = chain(&err);
    assert!(text.contains("SETTINGS flood"), "{text}");
    // Not every frame was acknowledged.
    let acks = count_settings_acks(&back);
    assert!(acks < FLOOD, "{acks} ACKs for {FLOOD} SETTINGS frames");

    let conn = within(pki.dial(server.addr)).await.expect("dial");
    let stream = open_tunnel(&conn, "10.0.0.1:80").await.expect("tunnel");
    assert_eq!(exchange(stream, b"still served").await, b"still served");
}

fn count_settings_acks(mut b: &[u8]) -> usize {
    let mut n = 0;
    while b.len() >= 9 {
        let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
        if b[3] == 0x4 && b[4] & 0x1 != 0 {
            n += 1;
        }
        b = &b[(9 + len).min(b.len())..];
    }
    n
}
