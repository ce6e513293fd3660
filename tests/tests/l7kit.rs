//! The L7 test kit on loopback (no root, no namespaces): each server
//! behaviour and each client the waypoint tests rely on.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tonic::Code;
use trellis_e2e::l7kit::{
    grpc_say, grpc_say_with, grpc_stream, http1_keepalive, http1_request, http2_request,
    upgrade_echo, ClientError, GrpcMode, GrpcOpts, GrpcServer, HttpServer, Mode,
};

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn http_server(name: &str) -> HttpServer {
    HttpServer::start(None, any_port(), name).expect("http server starts on loopback")
}

#[test]
fn http1_request_is_described_back() {
    let s = http_server("one");
    let r = http1_request(
        None,
        s.addr(),
        "POST",
        "/hello?x=1",
        &[("x-test", "a"), ("x-test", "b")],
        "payload",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(r.header("x-server"), Some("one"));
    let j = r.json();
    assert_eq!(j["server"], "one");
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/hello?x=1");
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["headers"]["x-test"], "a, b");
    assert_eq!(j["authority"], s.addr().to_string());
    assert_eq!(j["body"], "payload");
    assert_eq!(r.server().as_deref(), Some("one"));
    assert_eq!(s.count(), 1);
}

#[test]
fn http1_host_header_replaces_the_default() {
    let s = http_server("one");
    let r = http1_request(None, s.addr(), "GET", "/", &[("Host", "svc.example")], "").unwrap();
    assert_eq!(r.json()["headers"]["host"], "svc.example");
    assert_eq!(r.json()["authority"], "svc.example");
}

#[test]
fn http1_keepalive_sends_all_requests_on_one_connection() {
    let s = http_server("one");
    let replies = http1_keepalive(None, s.addr(), "GET", "/k", &[], 3).unwrap();
    assert_eq!(replies.len(), 3);
    let peers: Vec<_> = replies.iter().map(|r| r.json()["peer"].clone()).collect();
    assert!(
        peers.iter().all(|p| *p == peers[0]),
        "one connection, one peer: {peers:?}"
    );
    assert_eq!(s.count(), 3);
}

#[test]
fn http2_prior_knowledge_carries_the_authority() {
    let s = http_server("two");
    let r = http2_request(None, s.addr(), "GET", "/h2", &[("x-a", "1")], "").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    let j = r.json();
    assert_eq!(j["version"], "HTTP/2.0");
    assert_eq!(j["path"], "/h2");
    assert_eq!(j["authority"], s.addr().to_string());
    assert_eq!(j["headers"]["x-a"], "1");

    let r = http2_request(
        None,
        s.addr(),
        "GET",
        "/",
        &[("host", "svc.example:80")],
        "",
    )
    .unwrap();
    assert_eq!(r.json()["authority"], "svc.example:80");
}

#[test]
fn status_path_and_status_mode() {
    let s = http_server("st");
    // (mode, path, expected status), in order on one server.
    let cases: &[(Mode, &str, u16)] = &[
        (Mode::Ok, "/status/503", 503),
        (Mode::Ok, "/status/204", 204),
        (Mode::Status(418), "/", 418),
        (Mode::Status(418), "/status/200", 200),
        (Mode::Ok, "/", 200),
    ];
    for (mode, path, want) in cases {
        s.set_mode(*mode);
        let r1 = http1_request(None, s.addr(), "GET", path, &[], "").unwrap();
        let r2 = http2_request(None, s.addr(), "GET", path, &[], "").unwrap();
        assert_eq!((r1.status, r2.status), (*want, *want), "{mode:?} {path}");
    }
    assert_eq!(s.count(), 2 * cases.len());
    s.reset_count();
    assert_eq!(s.count(), 0);
}

#[test]
fn reset_mode_answers_nothing_on_both_versions() {
    let s = http_server("rst");
    s.set_mode(Mode::Reset);
    let e1 = http1_request(None, s.addr(), "GET", "/", &[], "").unwrap_err();
    assert!(e1.is_aborted(), "h1: {e1}");
    let e2 = http2_request(None, s.addr(), "GET", "/", &[], "").unwrap_err();
    assert!(e2.is_aborted(), "h2: {e2}");
    assert_eq!(s.count(), 2);
    s.set_mode(Mode::Ok);
    assert_eq!(
        http1_request(None, s.addr(), "GET", "/", &[], "")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn delay_mode_and_delay_path_hold_the_answer() {
    let s = http_server("slow");
    s.set_mode(Mode::Delay(Duration::from_millis(200)));
    let t = Instant::now();
    assert_eq!(
        http1_request(None, s.addr(), "GET", "/", &[], "")
            .unwrap()
            .status,
        200
    );
    assert!(t.elapsed() >= Duration::from_millis(200));
    s.set_mode(Mode::Ok);
    let t = Instant::now();
    assert_eq!(
        http2_request(None, s.addr(), "GET", "/delay/150", &[], "")
            .unwrap()
            .status,
        200
    );
    assert!(t.elapsed() >= Duration::from_millis(150));
}

#[test]
fn upgrade_is_switched_and_echoes_bytes() {
    let s = http_server("ws");
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (head, back) = upgrade_echo(None, s.addr(), "/ws", &[], &payload).unwrap();
    assert_eq!(head.status, 101);
    assert_eq!(head.header("upgrade"), Some("websocket"));
    assert_eq!(back, payload);

    s.set_mode(Mode::Status(503));
    match upgrade_echo(None, s.addr(), "/ws", &[], b"x") {
        Err(ClientError::NotUpgraded { status: 503, .. }) => {}
        other => panic!("expected a refused upgrade, got {other:?}"),
    }
}

#[test]
fn refused_connect_is_a_connect_error_not_an_abort() {
    let addr = {
        let s = http_server("gone");
        s.addr()
    };
    let e = http1_request(None, addr, "GET", "/", &[], "").unwrap_err();
    assert!(
        matches!(e, ClientError::Connect { .. }),
        "a stopped server refuses: {e}"
    );
    assert!(!e.is_aborted());
}

#[test]
fn grpc_unary_with_metadata_and_authority() {
    let g = GrpcServer::start(None, any_port(), "g1").unwrap();
    let r = grpc_say(None, g.addr(), "hi").unwrap();
    assert_eq!((r.message.as_str(), r.server.as_str()), ("hi", "g1"));
    assert_eq!(r.authority, g.addr().to_string());

    let opts = GrpcOpts {
        authority: Some("echo.demo.svc.cluster.local:50051".into()),
        metadata: vec![("x-route".into(), "blue".into())],
    };
    let resp = grpc_say_with(None, g.addr(), "hey", &opts).unwrap();
    assert_eq!(
        resp.metadata()
            .get("x-server")
            .and_then(|v| v.to_str().ok()),
        Some("g1")
    );
    let r = resp.into_inner();
    assert_eq!(r.authority, "echo.demo.svc.cluster.local:50051");
    assert_eq!(r.headers.get("x-route").map(String::as_str), Some("blue"));
    assert_eq!(g.count(), 2);
}

#[test]
fn grpc_stream_sends_count_replies_and_a_trailer() {
    let g = GrpcServer::start(None, any_port(), "g2").unwrap();
    let (replies, trailers) = grpc_stream(None, g.addr(), "m", 5).unwrap();
    let got: Vec<_> = replies.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(got, ["m 0", "m 1", "m 2", "m 3", "m 4"]);
    assert!(replies.iter().all(|r| r.server == "g2"));
    assert_eq!(
        trailers.get("x-trailer").and_then(|v| v.to_str().ok()),
        Some("done")
    );
    let (none, trailers) = grpc_stream(None, g.addr(), "m", 0).unwrap();
    assert!(none.is_empty());
    assert!(trailers.get("x-trailer").is_some());
}

#[test]
fn grpc_modes_fail_calls_as_values() {
    let g = GrpcServer::start(None, any_port(), "g3").unwrap();
    g.set_mode(GrpcMode::Unavailable);
    assert_eq!(
        grpc_say(None, g.addr(), "x").unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(
        grpc_stream(None, g.addr(), "x", 2).unwrap_err().code(),
        Code::Unavailable
    );
    g.set_mode(GrpcMode::Fail(Code::PermissionDenied));
    assert_eq!(
        grpc_say(None, g.addr(), "x").unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(g.count(), 3);
    g.set_mode(GrpcMode::Ok);
    g.reset_count();
    assert_eq!(grpc_say(None, g.addr(), "ok").unwrap().message, "ok");
    assert_eq!(g.count(), 1);
}

#[test]
fn grpc_to_a_stopped_server_is_unavailable() {
    let addr = GrpcServer::start(None, any_port(), "gone").unwrap().addr();
    assert_eq!(
        grpc_say(None, addr, "x").unwrap_err().code(),
        Code::Unavailable
    );
}

/// The kit as the waypoint tests use it: servers listening in one pod's
/// netns, clients dialling from another pod's netns across nodes, without
/// any proxy. The server can only bind the pod IP inside the pod, and it
/// sees the client pod's IP as the peer, so each side really ran in its pod.
#[test]
fn servers_and_clients_work_inside_pod_namespaces() {
    if !trellis_e2e::require_root() {
        return;
    }
    let topo = trellis_e2e::Topology::builder()
        .pod("node1", "client")
        .pod("node2", "server")
        .build()
        .expect("building the topology");
    let server = topo.pod("server").unwrap();
    let client_ns = topo.pod("client").unwrap().netns().unwrap();
    let server_ns = server.netns().unwrap();
    let s = HttpServer::start(Some(&server_ns), SocketAddr::new(server.ip, 8080), "pod").unwrap();
    let g = GrpcServer::start(Some(&server_ns), SocketAddr::new(server.ip, 9090), "gpod").unwrap();

    let r = http1_request(Some(&client_ns), s.addr(), "GET", "/", &[], "").unwrap();
    assert_eq!(r.server().as_deref(), Some("pod"));
    let client_ip = topo.pod("client").unwrap().ip.to_string();
    let peer = r.json()["peer"].as_str().unwrap_or_default().to_string();
    assert!(
        peer.starts_with(&client_ip),
        "peer {peer} is the client pod"
    );
    let r = http2_request(Some(&client_ns), s.addr(), "GET", "/", &[], "").unwrap();
    assert_eq!(r.json()["version"], "HTTP/2.0");
    let (_, back) = upgrade_echo(Some(&client_ns), s.addr(), "/", &[], b"ping").unwrap();
    assert_eq!(back, b"ping");
    assert_eq!(
        grpc_say(Some(&client_ns), g.addr(), "hi").unwrap().server,
        "gpod"
    );
    let (replies, _) = grpc_stream(Some(&client_ns), g.addr(), "s", 3).unwrap();
    assert_eq!(replies.len(), 3);
}
