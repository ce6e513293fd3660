//! Data-path behaviour over real loopback TLS + HTTP/2: app → tcp → hbone → tcp → backend.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use hbone::{copy_bidirectional, ConnectRequest, ErrorSide, HboneError, IncomingRequest};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

type Counts = Result<(u64, u64), HboneError>;

/// Server side of a node proxy: accept the tunnel, dial its target, copy.
fn proxy_handler(counts: mpsc::UnboundedSender<Counts>) -> Handler {
    Arc::new(move |req: IncomingRequest| {
        let Ok(target) = req.parsed.as_ref().map(|r| r.target) else {
            return req.reject(http::StatusCode::BAD_REQUEST);
        };
        let stream = req.accept().expect("accept tunnel");
        let counts = counts.clone();
        tokio::spawn(async move {
            let mut tcp = TcpStream::connect(target).await.expect("dial backend");
            let _ = counts.send(copy_bidirectional(&mut tcp, stream).await);
        });
    })
}

/// Sets up server + client connection; returns the app-side socket, the client
/// proxy's copy task and the server proxy's count receiver.
async fn tunnel_to(
    backend: SocketAddr,
) -> (
    TcpStream,
    tokio::task::JoinHandle<Counts>,
    mpsc::UnboundedReceiver<Counts>,
) {
    let pki = Pki::new();
    let (tx, rx) = mpsc::unbounded_channel();
    let server = pki.serve(proxy_handler(tx)).await;
    let conn = pki.dial(server.addr).await.expect("client connection");
    let stream = within(conn.connect(&ConnectRequest::new(backend)))
        .await
        .expect("open tunnel");
    let (app, mut downstream) = tcp_pair().await;
    // `conn` is dropped on return: the connection then closes right after the
    // tunnel ends, which is exactly when an abrupt close would lose the tail
    // of the data (see the lingering close in the crate).
    let copy = tokio::spawn(async move {
        let _keep = server; // keep the server's event channel alive for the test's duration
        copy_bidirectional(&mut downstream, stream).await
    });
    (app, copy, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payload_round_trip_with_exact_counts() {
    const UP: usize = 16 << 20;
    const DOWN: usize = (16 << 20) + 12_345;
    let (backend_addr, backend_task) =
        accept_once(|sock| async move { exchange(sock, &pattern(DOWN, 7)).await }).await;

    let (app, client_copy, mut server_counts) = tunnel_to(backend_addr).await;
    let app_got = within(exchange(app, &pattern(UP, 3))).await;
    let backend_got = within(backend_task).await.expect("backend task");
    let client = within(client_copy).await.expect("join");
    let server = within(server_counts.recv()).await.expect("count");
    let summary = format!(
        "app got {}, backend got {}, client copy {client:?}, server copy {server:?}",
        app_got.len(),
        backend_got.len()
    );
    assert_eq!(app_got.len(), DOWN, "{summary}");
    assert!(app_got == pattern(DOWN, 7), "downstream payload corrupted");
    assert_eq!(backend_got.len(), UP, "{summary}");
    assert!(backend_got == pattern(UP, 3), "upstream payload corrupted");
    // (tcp→tunnel, tunnel→tcp) on each side.
    assert_eq!(client.expect("client copy"), (UP as u64, DOWN as u64));
    assert_eq!(server.expect("server copy"), (DOWN as u64, UP as u64));
}

#[tokio::test]
async fn client_half_close_keeps_the_reply_direction_open() {
    // Backend answers only after it saw EOF: proves END_STREAM became a FIN and
    // that the other direction kept working afterwards.
    let (addr, backend_task) = accept_once(|mut sock| async move {
        let mut got = Vec::new();
        sock.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"ping");
        sock.write_all(b"pong").await.expect("write");
        sock.shutdown().await.expect("shutdown");
    })
    .await;
    let (mut app, client_copy, mut server_counts) = tunnel_to(addr).await;
    app.write_all(b"ping").await.expect("write");
    app.shutdown().await.expect("half-close");
    let mut reply = Vec::new();
    within(app.read_to_end(&mut reply)).await.expect("read");
    assert_eq!(reply, b"pong");
    assert_eq!(
        within(client_copy).await.expect("join").expect("copy"),
        (4, 4)
    );
    assert_eq!(
        within(server_counts.recv())
            .await
            .expect("count")
            .expect("copy"),
        (4, 4)
    );
    within(backend_task).await.expect("backend saw the request");
}

#[tokio::test]
async fn server_half_close_keeps_the_request_direction_open() {
    let (addr, backend_task) = accept_once(|mut sock| async move {
        sock.write_all(b"hello").await.expect("write");
        sock.shutdown().await.expect("backend half-close");
        let mut got = Vec::new();
        sock.read_to_end(&mut got).await.expect("read");
        got
    })
    .await;
    let (mut app, client_copy, _server_counts) = tunnel_to(addr).await;
    let mut greeting = Vec::new();
    within(app.read_to_end(&mut greeting))
        .await
        .expect("read until backend's FIN");
    assert_eq!(greeting, b"hello");
    app.write_all(b"late data")
        .await
        .expect("write after peer FIN");
    app.shutdown().await.expect("shutdown");
    assert_eq!(within(backend_task).await.expect("join"), b"late data");
    assert_eq!(
        within(client_copy).await.expect("join").expect("copy"),
        (9, 5)
    );
}

#[tokio::test]
async fn peer_reset_ends_the_copy_with_an_error() {
    let pki = Pki::new();
    // Reads one byte, then drops the tunnel: h2 resets the stream (CANCEL).
    let handler: Handler = Arc::new(|req: IncomingRequest| {
        let mut stream = req.accept().expect("accept");
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let _ = stream.read_exact(&mut byte).await;
            drop(stream);
        });
    });
    let server = pki.serve(handler).await;
    let conn = pki.dial(server.addr).await.expect("connect");
    let stream = open_tunnel(&conn, "127.0.0.1:9").await.expect("tunnel");
    let (mut app, mut downstream) = tcp_pair().await;
    app.write_all(b"x").await.expect("write");
    let err = within(copy_bidirectional(&mut downstream, stream))
        .await
        .expect_err("reset must fail the copy");
    assert!(matches!(err, HboneError::StreamReset(_)), "{err:?}");
    assert_eq!(err.side(), ErrorSide::Upstream);
    assert_eq!(conn.active_streams(), 0, "stream slot released");
}

#[tokio::test]
async fn h2stream_async_read_write_echo() {
    let pki = Pki::new();
    let server = pki.serve(echo_handler()).await;
    let conn = pki.dial(server.addr).await.expect("connect");
    let stream = open_tunnel(&conn, "127.0.0.1:9").await.expect("tunnel");
    assert_eq!(conn.active_streams(), 1);
    let payload = pattern(1 << 20, 11);
    // `exchange` consumes the stream and drops it once both directions finished.
    let echoed = within(exchange(stream, &payload)).await;
    assert!(echoed == payload, "echo mismatch ({} bytes)", echoed.len());
    assert_eq!(conn.active_streams(), 0);
}

/// A vectored write goes out whole as one DATA frame: an HTTP/2 codec inside
/// the tunnel (the waypoint's) writes a frame header and its payload as two
/// slices, and a frame per slice would double the frames, TLS records and
/// often the syscalls per request. The reading side's `poll_read` hands out
/// one received DATA frame at a time, so one read seeing every byte shows
/// they travelled in one frame.
#[tokio::test]
async fn vectored_write_is_one_data_frame() {
    let pki = Pki::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler: Handler = Arc::new(move |req: IncomingRequest| {
        let Ok(mut stream) = req.accept() else { return };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            let n = stream.read(&mut buf).await.expect("read");
            let _ = tx.send(buf[..n].to_vec());
        });
    });
    let server = pki.serve(handler).await;
    let conn = pki.dial(server.addr).await.expect("connect");
    let mut stream = open_tunnel(&conn, "127.0.0.1:9").await.expect("tunnel");
    assert!(stream.is_write_vectored());
    let (head, body) = (pattern(9, 1), pattern(4096, 2));
    let slices = [
        std::io::IoSlice::new(&head),
        std::io::IoSlice::new(&[]),
        std::io::IoSlice::new(&body),
    ];
    let n = within(stream.write_vectored(&slices)).await.expect("write");
    assert_eq!(n, head.len() + body.len(), "the whole write is taken");
    let got = within(rx.recv()).await.expect("server read");
    assert_eq!(got.len(), n, "one read, one frame");
    assert_eq!(got[..9], head[..]);
    assert_eq!(got[9..], body[..]);
}

/// Many small round trips on one tunnel, each answered before the next is
/// sent, with several tunnels sharing one connection: every byte a
/// connection writes must leave when the connection goes idle, or a round
/// trip waits forever. (The driver defers flushes within a poll of the
/// connection to batch small frames; a deferred flush left behind shows up
/// here as a round trip that never completes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_round_trips_never_wait_for_a_later_write() {
    const TUNNELS: usize = 4;
    const ROUNDS: usize = 2000;
    let pki = Pki::new();
    let server = pki.serve(echo_handler()).await;
    let conn = pki.dial(server.addr).await.expect("connect");
    let mut tasks = Vec::new();
    for t in 0..TUNNELS {
        let stream = open_tunnel(&conn, "127.0.0.1:9").await.expect("tunnel");
        tasks.push(tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(stream);
            let mut buf = [0u8; 64];
            for i in 0..ROUNDS {
                let msg = [(t * 31 + i) as u8; 64];
                let rt = async {
                    wr.write_all(&msg).await?;
                    rd.read_exact(&mut buf).await?;
                    std::io::Result::Ok(())
                };
                match tokio::time::timeout(std::time::Duration::from_secs(5), rt).await {
                    Ok(Ok(())) => assert_eq!(buf, msg, "tunnel {t} round trip {i}: echo mismatch"),
                    Ok(Err(e)) => panic!("tunnel {t} round trip {i}: {e}"),
                    Err(_) => panic!("tunnel {t} round trip {i}: no answer within 5 s"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("round-trip task");
    }
}
