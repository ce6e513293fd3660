//! A node proxy behind a waypoint drains as soon as its requests are done
//! (issue 16, 6.4). The waypoint keeps idle HTTP connections to endpoints
//! in HBONE tunnels to the endpoints' node proxy; before the fix those idle
//! tunnels held a draining node proxy open until its deadline. Now the node
//! proxy's GOAWAY makes the waypoint retire those connections (after any
//! request in flight on them), so the proxy exits once the last request ends.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use trellis_e2e::l7kit::{http1_request, http2_request, HttpServer};
use trellis_e2e::mesh_kit::{use_waypoint_pod, Mesh, T};
use trellis_e2e::wait_until;

const WEB_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 111, 10);
const HTTP_PORT: u16 = 80;
const APP_PORT: u16 = 8080;
/// Far longer than the test may take: reaching it is the bug.
const DRAIN_DEADLINE: &str = "120s";
/// Hang guard only: a proxy held open by idle tunnels would wait out the
/// 120 s deadline, far past this.
const EXIT_GUARD: Duration = Duration::from_secs(30);

#[test]
fn node_proxy_behind_a_waypoint_exits_once_requests_end_despite_pooled_tunnels() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mut m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node2", "v1", "demo", "web")
        .waypoint("node1", "wp", "demo", "waypoint")
        .service("web", WEB_VIP.into(), &[(HTTP_PORT, APP_PORT)], &["v1"])
        .configure(|cfg| use_waypoint_pod(cfg, "web", "wp"))
        .proxy_args(&["--drain-deadline", DRAIN_DEADLINE])
        .start()
        .unwrap_or_else(|e| panic!("starting the mesh: {e:#}"));
    let server = HttpServer::start(Some(&m.netns("v1")), m.addr("v1", APP_PORT), "v1")
        .expect("http server in v1");
    let web = SocketAddr::new(WEB_VIP.into(), HTTP_PORT);
    let client = m.netns("client");

    // Requests over HTTP/1.1 and HTTP/2 leave the waypoint with pooled,
    // idle upstream connections (each in an HBONE tunnel to node2's proxy).
    const WARM: usize = 6;
    for i in 0..WARM {
        let reply = if i % 2 == 0 {
            http1_request(Some(&client), web, "GET", "/", &[], b"")
        } else {
            http2_request(Some(&client), web, "GET", "/", &[], b"")
        }
        .unwrap_or_else(|e| panic!("warm-up request {i}: {e}\n{}", m.waypoint("wp").log()));
        assert_eq!(reply.status, 200, "warm-up request {i}: {}", reply.body);
    }
    assert!(
        server.connections() < WARM,
        "the waypoint pooled no upstream connection ({} connections for {WARM} requests)",
        server.connections()
    );

    // One request in flight across the start of the drain.
    let slow = std::thread::spawn({
        let client = m.netns("client");
        move || http1_request(Some(&client), web, "GET", "/delay/1500", &[], b"")
    });
    wait_until(T, "the slow request reached the server", || {
        server.in_flight() == 1
    })
    .unwrap();

    let p2 = m.proxy("node2");
    p2.sigterm();
    let reply = slow
        .join()
        .expect("slow request thread")
        .unwrap_or_else(|e| {
            panic!(
                "the request in flight failed during the drain: {e}\n{}",
                p2.log()
            )
        });
    assert_eq!(
        reply.status, 200,
        "the request in flight during the drain: {}",
        reply.body
    );

    let p2 = m.proxy_mut("node2");
    let status = p2.wait_exit(EXIT_GUARD);
    let log = p2.log();
    let status = status.unwrap_or_else(|| {
        panic!(
            "node2's proxy still running {EXIT_GUARD:?} after its last request, \
             held by the waypoint's pooled tunnels:\n{log}"
        )
    });
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("drain complete"), "{log}");
}
