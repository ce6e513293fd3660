//! hbone::lite over real loopback TLS: against itself, and against the
//! h2-based client and server in both directions (the wire compatibility
//! that lets the two engines, and ztunnel, meet on one mesh).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::lite_server::LiteServer;
use common::*;
use hbone::{copy_bidirectional, lite, server_config, tls_accept, H2Settings, HboneError};
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Counts = Result<(u64, u64), HboneError>;

/// The node proxy's inbound shape: dial the target, relay, report counts.
fn relay_to_target(
    counts: mpsc::UnboundedSender<Counts>,
) -> impl Fn(
    lite::Request<TcpStream>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
       + Send
       + Sync
       + 'static {
    move |req| {
        let counts = counts.clone();
        Box::pin(async move {
            let target = match &req.parsed {
                Ok(r) => r.target,
                Err(e) => {
                    let status = e.status();
                    return req.reject(status);
                }
            };
            let Ok(tcp) = TcpStream::connect(target).await else {
                return req.reject(StatusCode::SERVICE_UNAVAILABLE);
            };
            let mut headers = HeaderMap::new();
            headers.insert("baggage", HeaderValue::from_static("k8s.pod.name=server"));
            let _ = counts.send(req.accept(tcp, headers).await);
        })
    }
}

async fn lite_client(pki: &Pki, addr: SocketAddr) -> lite::Client<TcpStream> {
    let tls = within(tls_dial(addr, pki.client_tls())).await.expect("tls");
    lite::Client::handshake(tls, &H2Settings::default()).expect("handshake")
}

/// Moves UP bytes app → backend and DOWN bytes back through one tunnel
/// whose client end is `open`, and checks every byte and count.
async fn round_trip<F, Fut>(open: F, server_counts: Option<&mut mpsc::UnboundedReceiver<Counts>>)
where
    F: FnOnce(SocketAddr, TcpStream) -> Fut,
    Fut: std::future::Future<Output = Counts>,
{
    const UP: usize = (8 << 20) + 17;
    const DOWN: usize = (8 << 20) + 12_345;
    let (backend, backend_task) =
        accept_once(|sock| async move { exchange(sock, &pattern(DOWN, 7)).await }).await;
    let (app, downstream) = tcp_pair().await;
    let app_task = tokio::spawn(async move { exchange(app, &pattern(UP, 3)).await });
    let client = within(open(backend, downstream)).await;
    let app_got = within(app_task).await.expect("app");
    let backend_got = within(backend_task).await.expect("backend");
    assert_eq!(app_got.len(), DOWN);
    assert!(app_got == pattern(DOWN, 7), "downstream payload corrupted");
    assert_eq!(backend_got.len(), UP);
    assert!(backend_got == pattern(UP, 3), "upstream payload corrupted");
    assert_eq!(client.expect("client relay"), (UP as u64, DOWN as u64));
    if let Some(rx) = server_counts {
        let server = within(rx.recv()).await.expect("server count");
        assert_eq!(server.expect("server relay"), (DOWN as u64, UP as u64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lite_client_and_lite_server_carry_a_large_tunnel_both_ways() {
    let pki = Pki::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = LiteServer::start(&pki, H2Settings::default(), relay_to_target(tx)).await;
    let client = lite_client(&pki, server.addr).await;
    round_trip(
        |backend, sock| async move {
            let t = client
                .open(&hbone::ConnectRequest::new(backend), sock)
                .await?;
            assert_eq!(t.headers()["baggage"], "k8s.pod.name=server");
            t.finish().await
        },
        Some(&mut rx),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lite_client_talks_to_the_h2_server() {
    let pki = Pki::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = pki
        .serve(Arc::new(move |req: hbone::IncomingRequest| {
            let Ok(target) = req.parsed.as_ref().map(|r| r.target) else {
                return req.reject(StatusCode::BAD_REQUEST);
            };
            let stream = req.accept().expect("accept");
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut tcp = TcpStream::connect(target).await.expect("dial backend");
                let _ = tx.send(copy_bidirectional(&mut tcp, stream).await);
            });
        }))
        .await;
    let client = lite_client(&pki, server.addr).await;
    round_trip(
        |backend, sock| async move {
            client
                .open(&hbone::ConnectRequest::new(backend), sock)
                .await?
                .finish()
                .await
        },
        Some(&mut rx),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_talks_to_the_lite_server() {
    let pki = Pki::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = LiteServer::start(&pki, H2Settings::default(), relay_to_target(tx)).await;
    let conn = pki.dial(server.addr).await.expect("h2 client");
    round_trip(
        |backend, mut sock| async move {
            let (stream, response) = conn
                .connect_with_response(&hbone::ConnectRequest::new(backend))
                .await?;
            assert_eq!(response["baggage"], "k8s.pod.name=server");
            copy_bidirectional(&mut sock, stream).await
        },
        Some(&mut rx),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tunnels_share_one_lite_connection() {
    const TUNNELS: usize = 24;
    const EACH: usize = 300_000;
    let pki = Pki::new();
    let (tx, _rx) = mpsc::unbounded_channel();
    let server = LiteServer::start(&pki, H2Settings::default(), relay_to_target(tx)).await;
    let client = lite_client(&pki, server.addr).await;
    let mut tasks = Vec::new();
    for i in 0..TUNNELS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let seed = i as u8;
            let (backend, backend_task) = accept_once(move |sock| async move {
                exchange(sock, &pattern(EACH + i, seed ^ 0x55)).await
            })
            .await;
            let (app, downstream) = tcp_pair().await;
            let app_task =
                tokio::spawn(async move { exchange(app, &pattern(EACH - i, seed)).await });
            let t = within(client.open(&hbone::ConnectRequest::new(backend), downstream))
                .await
                .expect("open");
            let counts = within(t.finish()).await.expect("relay");
            let app_got = within(app_task).await.expect("app");
            let backend_got = within(backend_task).await.expect("backend");
            assert!(app_got == pattern(EACH + i, seed ^ 0x55), "tunnel {i} down");
            assert!(backend_got == pattern(EACH - i, seed), "tunnel {i} up");
            assert_eq!(counts, ((EACH - i) as u64, (EACH + i) as u64));
        }));
    }
    for t in tasks {
        within(t).await.expect("tunnel task");
    }
    eventually("tunnels are forgotten", || client.active_tunnels() == 0).await;
}

/// Request/response in lockstep: each message must cross without waiting
/// for more bytes behind it (a missing flush or wake-up stalls here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockstep_messages_cross_one_by_one() {
    let pki = Pki::new();
    let (tx, _rx) = mpsc::unbounded_channel();
    let server = LiteServer::start(&pki, H2Settings::default(), relay_to_target(tx)).await;
    let client = lite_client(&pki, server.addr).await;
    let (backend, backend_task) = accept_once(|mut sock| async move {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while sock.read_exact(&mut buf).await.is_ok() {
            buf[0] = buf[0].wrapping_add(1);
            sock.write_all(&buf).await.expect("echo");
            n += 1;
        }
        n
    })
    .await;
    let (mut app, downstream) = tcp_pair().await;
    let t = within(client.open(&hbone::ConnectRequest::new(backend), downstream))
        .await
        .expect("open");
    let mut buf = [0u8; 64];
    for i in 0..500u32 {
        buf[0] = i as u8;
        within(app.write_all(&buf)).await.expect("send");
        within(app.read_exact(&mut buf)).await.expect("answer");
        assert_eq!(buf[0], (i as u8).wrapping_add(1));
    }
    app.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    within(app.read_to_end(&mut rest)).await.expect("eof");
    assert!(rest.is_empty());
    assert_eq!(within(backend_task).await.expect("backend"), 500);
    assert_eq!(
        within(t.finish()).await.expect("relay"),
        (64 * 500, 64 * 500)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reach_the_lite_client_as_status_errors() {
    let pki = Pki::new();
    let server = LiteServer::start(&pki, H2Settings::default(), |req| async move {
        req.reject(StatusCode::FORBIDDEN)
    })
    .await;
    let client = lite_client(&pki, server.addr).await;
    let (_app, sock) = tcp_pair().await;
    let e = within(client.open(&request("127.0.0.1:9"), sock))
        .await
        .expect_err("refused");
    assert!(
        matches!(e, HboneError::Status(StatusCode::FORBIDDEN)),
        "{e}"
    );
    // The connection stays usable after a refusal.
    let (_app, sock) = tcp_pair().await;
    let e = within(client.open(&request("127.0.0.1:9"), sock))
        .await
        .expect_err("refused again");
    assert!(
        matches!(e, HboneError::Status(StatusCode::FORBIDDEN)),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_from_an_h2_client_get_their_status() {
    let pki = Pki::new();
    let (tx, _rx) = mpsc::unbounded_channel();
    let server = LiteServer::start(&pki, H2Settings::default(), relay_to_target(tx)).await;
    let tls = within(tls_dial(server.addr, pki.client_tls()))
        .await
        .expect("tls");
    let (send, conn) = h2::client::handshake(tls).await.expect("h2");
    tokio::spawn(conn);
    for (method, uri, want) in [
        (
            http::Method::GET,
            "http://127.0.0.1:80/",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            http::Method::CONNECT,
            "not-an-address:80",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .expect("req");
        let mut send = send.clone().ready().await.expect("ready");
        let (resp, _) = send.send_request(req, true).expect("send");
        let resp = within(resp).await.expect("response");
        assert_eq!(resp.status(), want, "{uri}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http1_after_tls_gets_a_clear_error() {
    let pki = Pki::new();
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut server = LiteServer::start(&pki, H2Settings::default(), relay_to_target(tx)).await;
    let mut tls = within(tls_dial(server.addr, pki.client_tls()))
        .await
        .expect("tls");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let served = within(server.served.recv()).await.expect("served");
    let e = served.expect_err("not http/2");
    assert!(e.to_string().contains("preface"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_the_open_tunnel_finish() {
    let pki = Pki::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut server = LiteServer::start(&pki, H2Settings::default(), relay_to_target(tx)).await;
    let client = lite_client(&pki, server.addr).await;
    let (backend, backend_task) =
        accept_once(|sock| async move { exchange(sock, b"bye").await }).await;
    let (mut app, downstream) = tcp_pair().await;
    let t = within(client.open(&hbone::ConnectRequest::new(backend), downstream))
        .await
        .expect("open");
    server.shutdown.send_replace(true);
    eventually("the client sees the goaway", || client.is_going_away()).await;
    let (_a, sock) = tcp_pair().await;
    assert!(client.open(&request("127.0.0.1:9"), sock).await.is_err());
    app.write_all(b"hello").await.expect("write");
    app.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    within(app.read_to_end(&mut got)).await.expect("read");
    assert_eq!(got, b"bye");
    assert_eq!(within(backend_task).await.expect("backend"), b"hello");
    assert_eq!(within(t.finish()).await.expect("relay"), (5, 3));
    assert_eq!(
        within(rx.recv()).await.expect("count").expect("server"),
        (3, 5)
    );
    within(server.served.recv())
        .await
        .expect("served")
        .expect("clean end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_ends_a_connection_to_a_silent_peer() {
    let pki = Pki::new();
    // A TLS server that completes the handshake and then never reads.
    let cfg = server_config(&pki.cert("server"), &pki.bundle).expect("cfg");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let _tls = tls_accept(tcp, cfg).await.expect("tls");
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let tls = within(tls_dial(addr, pki.client_tls())).await.expect("tls");
    let settings = H2Settings {
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_millis(300),
        ..H2Settings::default()
    };
    let client: lite::Client<TcpStream> =
        lite::Client::handshake(tls, &settings).expect("handshake");
    eventually("the silent connection is closed", || client.is_closed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_shares_one_lite_connection_between_tunnels() {
    let pki = Pki::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = LiteServer::start(&pki, H2Settings::default(), relay_to_target(tx)).await;
    let pool: hbone::Pool<lite::Client<TcpStream>> =
        hbone::Pool::new(hbone::PoolSettings::default());
    let key = hbone::PoolKey::new(id("client"), vec![id("server")], server.addr);
    for i in 0..3u8 {
        let (backend, backend_task) =
            accept_once(move |sock| async move { exchange(sock, &[i; 10]).await }).await;
        let (mut app, sock) = tcp_pair().await;
        let cfg = pki.client_tls();
        let t = within(
            pool.open(&key, &hbone::ConnectRequest::new(backend), sock, || {
                tls_dial(server.addr, cfg)
            }),
        )
        .await
        .expect("open through the pool");
        app.write_all(&[i; 4]).await.expect("write");
        app.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        within(app.read_to_end(&mut got)).await.expect("read");
        assert_eq!(got, [i; 10]);
        assert_eq!(within(backend_task).await.expect("backend"), [i; 4]);
        assert_eq!(within(t.finish()).await.expect("relay"), (4, 10));
        assert_eq!(
            within(rx.recv()).await.expect("count").expect("server"),
            (10, 4)
        );
        let stats = pool.stats();
        assert_eq!(stats.connections, 1, "tunnel {i}: {stats:?}");
    }
    eventually("the finished tunnels are uncounted", || {
        pool.stats().streams == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stalls_or_dribbles_the_preface_is_cut_off() {
    let pki = Pki::new();
    let settings = H2Settings {
        handshake_timeout: Duration::from_millis(300),
        ..H2Settings::default()
    };
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut server = LiteServer::start(&pki, settings, relay_to_target(tx)).await;
    // Silent after TLS.
    let _silent = within(tls_dial(server.addr, pki.client_tls()))
        .await
        .expect("tls");
    let e = within(server.served.recv())
        .await
        .expect("served")
        .expect_err("cut off");
    assert!(matches!(e, HboneError::Timeout(_)), "{e}");
    assert!(e.to_string().contains("preface"), "{e}");
    // One byte of the preface every 100 ms: valid so far, never finished in time.
    let mut dribbler = within(tls_dial(server.addr, pki.client_tls()))
        .await
        .expect("tls");
    let dribble = tokio::spawn(async move {
        for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
            if dribbler.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let e = within(server.served.recv())
        .await
        .expect("served")
        .expect_err("cut off");
    assert!(matches!(e, HboneError::Timeout(_)), "{e}");
    dribble.abort();
    // A prompt client is served under the same deadline.
    let client = lite_client(&pki, server.addr).await;
    let (backend, backend_task) =
        accept_once(|sock| async move { exchange(sock, b"ok").await }).await;
    let (mut app, sock) = tcp_pair().await;
    let t = within(client.open(&hbone::ConnectRequest::new(backend), sock))
        .await
        .expect("open");
    // Time passing is what is tested here, not a wait for a condition: the
    // open tunnel must outlive the 300 ms handshake deadline untouched.
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    within(app.read_to_end(&mut got)).await.expect("read");
    assert_eq!(got, b"ok");
    assert_eq!(within(backend_task).await.expect("backend"), b"");
    assert_eq!(within(t.finish()).await.expect("relay"), (0, 2));
}
