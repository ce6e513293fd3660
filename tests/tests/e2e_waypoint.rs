//! The waypoint on the data path: node proxies send service traffic to it
//! over HBONE, it sees the real caller, and forwards to endpoints over HBONE.

use std::net::{IpAddr, SocketAddr};

use trellis_e2e::l7kit::{grpc_say, http1_request, http2_request, GrpcServer, HttpServer};
use trellis_e2e::mesh_kit::{use_waypoint, Mesh, T};
use trellis_e2e::wait_until;

fn vip() -> IpAddr {
    "198.19.100.20".parse().unwrap()
}

fn mesh() -> Mesh {
    Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node2", "e1", "demo", "web")
        .member("node2", "e2", "demo", "web")
        .waypoint("node2", "wp", "demo", "waypoint")
        .service("web", vip(), &[(80, 8080)], &["e1", "e2"])
        .configure(|cfg| {
            let ip = cfg
                .workloads
                .iter()
                .find(|w| w.uid == "wp")
                .unwrap()
                .addresses[0];
            use_waypoint(cfg, "web", ip);
        })
        .start()
        .unwrap()
}

#[test]
fn http1_and_http2_reach_endpoints_through_the_waypoint_with_the_callers_identity() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh();
    let _s1 = HttpServer::start(Some(&m.netns("e1")), m.addr("e1", 8080), "e1").unwrap();
    let _s2 = HttpServer::start(Some(&m.netns("e2")), m.addr("e2", 8080), "e2").unwrap();
    let dst = SocketAddr::new(vip(), 80);
    let ns = m.netns("client");
    let r = http1_request(Some(&ns), dst, "GET", "/hello?x=1", &[], b"")
        .unwrap_or_else(|e| panic!("{e}\n{}", m.waypoint("wp").log()));
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert!(matches!(j["server"].as_str(), Some("e1" | "e2")), "{j}");
    assert_eq!(j["path"], "/hello?x=1");
    let h = &j["headers"];
    assert!(
        h["x-request-id"].as_str().is_some_and(|v| !v.is_empty()),
        "{j}"
    );
    assert!(
        h["traceparent"]
            .as_str()
            .is_some_and(|v| v.starts_with("00-")),
        "{j}"
    );

    let r2 = http2_request(Some(&ns), dst, "GET", "/h2", &[], b"")
        .unwrap_or_else(|e| panic!("{e}\n{}", m.waypoint("wp").log()));
    assert_eq!(r2.status, 200, "{}", r2.body);
    assert_eq!(r2.json()["version"], "HTTP/2.0");

    let wp = m.waypoint("wp");
    wait_until(T, "waypoint counted both requests", || {
        wp.metric(
            "istio_requests_total",
            &[
                ("reporter", "waypoint"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/demo/sa/client",
                ),
                ("destination_service", "web.demo.svc.cluster.local"),
                ("response_code", "200"),
            ],
        ) == 2.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", wp.metrics_text().unwrap(), wp.log()));

    // The endpoints' node proxy sees the waypoint as the source, workload
    // and principal alike (as ztunnel does: waypoint -> server), although
    // the waypoint's `forwarded` header still names the client.
    let node2 = m.proxy("node2");
    let waypoint_principal = "spiffe://cluster.local/ns/demo/sa/waypoint";
    wait_until(T, "node2 counted the waypoint's tunnels", || {
        node2.metric(
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("source_workload", "wp"),
                ("source_principal", waypoint_principal),
            ],
        ) >= 2.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", node2.metrics_text().unwrap()));
    let mixed = node2.metric(
        "istio_tcp_connections_opened_total",
        &[
            ("source_workload", "client"),
            ("source_principal", waypoint_principal),
        ],
    );
    assert_eq!(mixed, 0.0, "{}", node2.metrics_text().unwrap());
}

#[test]
fn many_grpc_calls_share_the_waypoints_upstream_connection_without_goaway() {
    if !trellis_e2e::require_root() {
        return;
    }
    // tonic ends each call with an empty DATA frame; the waypoint must not
    // forward those, or the upstream h2 server sends GOAWAY after 100 of
    // them on the pooled connection and calls in flight fail.
    let m = mesh();
    let _g1 = GrpcServer::start(Some(&m.netns("e1")), m.addr("e1", 8080), "e1").unwrap();
    let _g2 = GrpcServer::start(Some(&m.netns("e2")), m.addr("e2", 8080), "e2").unwrap();
    let dst = SocketAddr::new(vip(), 80);
    let ns = m.netns("client");
    for i in 0..250 {
        let reply = grpc_say(Some(&ns), dst, &format!("call {i}"))
            .unwrap_or_else(|s| panic!("call {i}: {s:?}\n{}", m.waypoint("wp").log()));
        assert_eq!(reply.message, format!("call {i}"));
    }
}
