//! A peer that completes mTLS and then never finishes the HTTP/2 preface
//! (a slowloris inside the session) is cut off at the handshake deadline,
//! with an error that says what it was waiting for; found by
//! trellis-attack-bench (issue 16, section 3).

mod common;

use std::time::Duration;

use common::*;
use hbone::{ClientTls, H2Settings, HboneError, PREFACE_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An echo server whose handshake deadline is 300 ms.
async fn short_deadline_server(pki: &Pki) -> TestServer {
    let settings = H2Settings {
        handshake_timeout: Duration::from_millis(300),
        ..H2Settings::default()
    };
    start_server(&pki.cert("server"), &pki.bundle, settings, echo_handler()).await
}

/// A client that completes mTLS with `server` and sends nothing yet.
async fn tls_client(server: &mut TestServer, pki: &Pki) -> ClientTls {
    let tls = within(tls_dial(server.addr, pki.client_tls()))
        .await
        .expect("tls");
    server.expect_accepted().await;
    tls
}

#[tokio::test]
async fn a_peer_that_stops_inside_the_preface_is_cut_off() {
    let pki = Pki::new();
    let mut server = short_deadline_server(&pki).await;
    for sent in [0, 10, PREFACE.len() - 1] {
        let mut tls = tls_client(&mut server, &pki).await;
        // Part of the preface, then silence; the write side stays open, so
        // only the server's deadline can end this.
        tls.write_all(&PREFACE[..sent]).await.expect("write");
        tls.flush().await.expect("flush");
        match server.expect_served().await {
            Err(HboneError::Timeout(what)) => assert_eq!(what, PREFACE_TIMEOUT),
            other => panic!("{sent} preface bytes then silence: served {other:?}"),
        }
        // And the client sees its connection end.
        let mut sink = Vec::new();
        let _ = within(tls.read_to_end(&mut sink)).await;
    }
}

#[tokio::test]
async fn a_peer_that_dribbles_the_preface_is_cut_off() {
    let pki = Pki::new();
    let mut server = short_deadline_server(&pki).await;
    let mut tls = tls_client(&mut server, &pki).await;
    let dribble = async {
        // One byte every 100 ms: the whole preface would take 2.4 s, each
        // byte arriving well inside any per-read timeout.
        for b in PREFACE {
            if tls.write_all(&[*b]).await.is_err() || tls.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (served, ()) = tokio::join!(server.expect_served(), dribble);
    match served {
        Err(HboneError::Timeout(what)) => assert_eq!(what, PREFACE_TIMEOUT),
        other => panic!("a dribbled preface was served: {other:?}"),
    }
}

#[tokio::test]
async fn a_prompt_client_is_served_under_the_same_deadline() {
    let pki = Pki::new();
    let server = short_deadline_server(&pki).await;
    let conn = within(pki.dial(server.addr)).await.expect("dial");
    let stream = open_tunnel(&conn, "10.0.0.1:80").await.expect("tunnel");
    assert_eq!(exchange(stream, b"hello").await, b"hello");
}
