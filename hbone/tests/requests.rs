//! CONNECT request handling, statuses, metadata, graceful shutdown and keep-alive.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use hbone::{tls_accept, ClientConn, H2Settings, HboneError, IncomingRequest};
use http::{HeaderValue, Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// A plain h2 client over HBONE mTLS, for sending requests `ClientConn` would never send.
async fn raw_h2(addr: SocketAddr, pki: &Pki) -> h2::client::SendRequest<Bytes> {
    let tls = tls_dial(addr, pki.client_tls()).await.expect("tls");
    let (send, conn) = h2::client::handshake(tls).await.expect("h2");
    tokio::spawn(conn);
    send
}

async fn status_of(send: &h2::client::SendRequest<Bytes>, method: Method, uri: &str) -> StatusCode {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .expect("request");
    let mut send = send.clone().ready().await.expect("ready");
    let (resp, _body) = send.send_request(req, true).expect("send");
    within(resp).await.expect("response").status()
}

#[tokio::test]
async fn invalid_requests_get_405_and_400() {
    let pki = Pki::new();
    let server = pki.serve(echo_handler()).await;
    let send = within(raw_h2(server.addr, &pki)).await;
    // All on one connection: it survives bad requests.
    for (method, uri, expected) in [
        (
            Method::GET,
            "http://127.0.0.1:80/",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::POST,
            "http://127.0.0.1:80/",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (Method::CONNECT, "example.com:80", StatusCode::BAD_REQUEST),
        (Method::CONNECT, "127.0.0.1:0", StatusCode::BAD_REQUEST),
    ] {
        let status = status_of(&send, method.clone(), uri).await;
        assert_eq!(status, expected, "{method} {uri}");
    }
}

#[tokio::test]
async fn refusals_surface_as_status_errors() {
    let pki = Pki::new();
    let handler: Handler = Arc::new(|req: IncomingRequest| {
        if req.parsed.as_ref().is_ok_and(|r| r.target.port() == 503) {
            req.reject(StatusCode::SERVICE_UNAVAILABLE);
        } else {
            let _ = req.accept(); // invalid requests are answered with their status
        }
    });
    let server = pki.serve(handler).await;
    let conn = pki.dial(server.addr).await.expect("connect");
    let err = open_tunnel(&conn, "10.0.0.1:503")
        .await
        .expect_err("refused");
    assert!(
        matches!(err, HboneError::Status(StatusCode::SERVICE_UNAVAILABLE)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("destination proxy refused the tunnel with status 503"),
        "{err}"
    );
    let err = open_tunnel(&conn, "10.0.0.1:0")
        .await
        .expect_err("port 0 is invalid");
    assert!(
        matches!(err, HboneError::Status(StatusCode::BAD_REQUEST)),
        "{err:?}"
    );
    assert_eq!(conn.active_streams(), 0);
}

#[tokio::test]
async fn forwarded_and_traceparent_reach_the_server() {
    let pki = Pki::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler: Handler = Arc::new(move |req: IncomingRequest| {
        let _ = tx.send(req.parsed.clone());
        req.reject(StatusCode::NO_CONTENT);
    });
    let server = pki.serve(handler).await;
    let conn = pki.dial(server.addr).await.expect("connect");
    for (target, from) in [
        ("10.1.2.3:8080", "192.168.7.9:41000"),
        ("[fd00::5]:443", "[::1]:80"),
    ] {
        let mut req = request(target);
        req.forwarded_for = Some(from.parse().expect("from"));
        req.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        req.extra_headers.insert(
            "baggage",
            HeaderValue::from_static("k8s.namespace.name=default"),
        );
        let _ = within(conn.connect(&req)).await;
        let seen = within(rx.recv())
            .await
            .expect("request seen")
            .expect("request valid");
        assert_eq!(seen, req);
    }
}

/// The headers ztunnel puts on a CONNECT and its 200, over real TLS and h2,
/// through the pool as the node proxy uses it: the server sees the exact
/// request headers, and the client gets the response's `baggage`.
#[tokio::test]
async fn ztunnel_metadata_headers_cross_in_both_directions() {
    let pki = Pki::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler: Handler = Arc::new(move |req: IncomingRequest| {
        let _ = tx.send(req.parsed.clone());
        let mut answer = http::HeaderMap::new();
        answer.insert(
            "baggage",
            HeaderValue::from_static("k8s.namespace.name=prod,k8s.pod.name=server-1"),
        );
        let _ = req.accept_with_headers(answer);
    });
    let server = pki.serve(handler).await;
    let pool = hbone::Pool::new(hbone::PoolSettings::default());
    let key = hbone::PoolKey::new(id("client"), vec![id("server")], server.addr);
    let mut req = request("10.1.2.3:8080");
    req.forwarded_for = Some("10.0.0.7:41000".parse().expect("from"));
    req.forwarded_host = Some("web.demo.svc.cluster.local".into());
    req.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into());
    req.extra_headers.insert(
        "baggage",
        HeaderValue::from_static("k8s.namespace.name=demo,k8s.pod.name=client-1"),
    );
    let tls = pki.client_tls();
    let addr = server.addr;
    let (_stream, response) =
        within(pool.connect_with_response(&key, &req, || async move { tls_dial(addr, tls).await }))
            .await
            .expect("tunnel");
    assert_eq!(
        response.get("baggage").map(HeaderValue::as_bytes),
        Some(&b"k8s.namespace.name=prod,k8s.pod.name=server-1"[..])
    );
    let seen = within(rx.recv())
        .await
        .expect("request seen")
        .expect("request valid");
    assert_eq!(seen, req);
    assert_eq!(
        seen.forwarded_host.as_deref(),
        Some("web.demo.svc.cluster.local")
    );
    assert_eq!(
        seen.extra_headers.get("baggage").map(HeaderValue::as_bytes),
        Some(&b"k8s.namespace.name=demo,k8s.pod.name=client-1"[..])
    );
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_streams() {
    let pki = Pki::new();
    let mut server = pki.serve(echo_handler()).await;
    let conn = pki.dial(server.addr).await.expect("connect");
    server.expect_accepted().await;
    let mut stream = open_tunnel(&conn, "10.0.0.1:80").await.expect("tunnel");
    let mut buf = [0u8; 1];
    stream.write_all(b"a").await.expect("write");
    within(stream.read_exact(&mut buf))
        .await
        .expect("echo before shutdown");

    server.shutdown();
    // The in-flight stream keeps working after GOAWAY.
    stream.write_all(b"b").await.expect("write after goaway");
    within(stream.read_exact(&mut buf))
        .await
        .expect("echo after goaway");
    assert_eq!(&buf, b"b");
    stream.shutdown().await.expect("finish");
    let mut rest = Vec::new();
    within(stream.read_to_end(&mut rest))
        .await
        .expect("peer finishes");
    drop(stream);

    server.expect_served().await.expect("clean shutdown");
    eventually("client sees the connection closed", || conn.is_closed()).await;
    let err = open_tunnel(&conn, "10.0.0.1:80")
        .await
        .expect_err("closed connection takes no new tunnels");
    assert!(!err.to_string().is_empty());
}

#[tokio::test]
async fn keepalive_closes_connection_to_silent_peer() {
    let pki = Pki::new();
    let cfg = hbone::server_config(&pki.cert("server"), &pki.bundle).expect("server config");
    // Completes TLS, then never speaks HTTP/2: pings go unanswered.
    let (addr, silent_server) =
        accept_once(|tcp| async move { tls_accept(tcp, cfg).await.expect("tls") }).await;
    let tls = within(tls_dial(addr, pki.client_tls())).await.expect("tls");
    let settings = H2Settings {
        keepalive_interval: Duration::from_millis(50),
        keepalive_timeout: Duration::from_millis(100),
        ..H2Settings::default()
    };
    let conn = within(ClientConn::handshake(tls, &settings))
        .await
        .expect("h2 handshake");
    let _silent = within(silent_server).await.expect("server side held");
    assert!(!conn.is_closed());
    eventually("keep-alive timeout closes the connection", || {
        conn.is_closed()
    })
    .await;
    assert!(!conn.is_ready());
}
