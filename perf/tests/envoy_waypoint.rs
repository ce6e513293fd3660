//! The Envoy waypoint of `trellis-l7-bench` does the Trellis waypoint's
//! work in the Trellis waypoint's place: real Envoy (the pinned release),
//! real netns pods and node proxies. node1's proxy tunnels the client's
//! requests to it over HBONE; it applies the route (header filter) and the
//! ALLOW policy and tunnels on over HBONE to node2's proxy.

use std::net::SocketAddr;
use std::time::Duration;

use trellis_perf::l7::client::{Proto, HTTP_PATH};
use trellis_perf::l7::envoy_waypoint::EnvoyWaypoint;
use trellis_perf::l7::load;
use trellis_perf::l7::mesh::{L7Topo, AUTHORITY};
use trellis_perf::l7::servers::{Listen, Upstreams};
use trellis_perf::l7::{GRPC_PORT, HTTP_PORT};
use trellis_perf::sidecars::envoy::Envoy;

#[test]
fn envoy_waypoint_routes_over_hbone_and_enforces_the_policy() {
    if !trellis_e2e::require_root() {
        return;
    }
    let envoy = Envoy::locate().expect("the pinned Envoy (perf/envoy/install.sh)");
    let proxy_bin = trellis_e2e::cluster::node_proxy_bin().expect("trellis-node-proxy");
    let t = L7Topo::build().unwrap();
    let server_ns = t.bt.server.netns().unwrap();
    let upstreams = Upstreams::start(
        &[Listen {
            ns: &server_ns,
            http: SocketAddr::new(t.bt.server.ip, HTTP_PORT),
            grpc: SocketAddr::new(t.bt.server.ip, GRPC_PORT),
        }],
        0,
    )
    .unwrap();
    let proxies = [
        t.bt.start_proxy(&proxy_bin, "node1", &t.bt.client, 0)
            .unwrap(),
        t.bt.start_proxy(&proxy_bin, "node2", &t.bt.server, 0)
            .unwrap(),
    ];
    let mut wp = EnvoyWaypoint::start(&t, &envoy, 1).unwrap();
    let client_ns = t.bt.client.netns().unwrap();
    let logs = |wp: &EnvoyWaypoint| {
        let tail = |log: String| {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        format!(
            "{}\n--- node1 proxy log (tail) ---\n{}\n--- node2 proxy log (tail) ---\n{}",
            wp.diagnostics(),
            tail(proxies[0].log()),
            tail(proxies[1].log())
        )
    };

    // Every protocol answers through it, and the server sees the route's
    // header on each request.
    for proto in Proto::ALL {
        let [_, routed_http, _, routed_grpc] = upstreams.counts().get();
        let before = if proto == Proto::Grpc {
            routed_grpc
        } else {
            routed_http
        };
        load::check(&client_ns, &t.envoy_target(proto), Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("{}: {e:#}\n{}", proto.label(), logs(&wp)));
        let [_, routed_http, _, routed_grpc] = upstreams.counts().get();
        let after = if proto == Proto::Grpc {
            routed_grpc
        } else {
            routed_http
        };
        assert!(
            after > before,
            "{}: the server did not see the route's header",
            proto.label()
        );
    }

    let get = |path: &str| {
        trellis_e2e::l7kit::http1_request(
            Some(&client_ns),
            t.envoy_target(Proto::Http1).dst,
            "GET",
            path,
            &[("host", AUTHORITY)],
            b"",
        )
        .unwrap()
    };
    let ok = get(HTTP_PATH);
    assert_eq!(ok.status, 200, "{}: {}", ok.body, logs(&wp));
    let forbidden = get("/forbidden");
    assert_eq!(forbidden.status, 403, "{}", forbidden.body);
    assert!(
        forbidden.body.contains("RBAC"),
        "the 403 must be the RBAC filter's: {}",
        forbidden.body
    );

    let (allowed, denied) = wp.rbac_counts().unwrap();
    assert!(allowed >= 4, "RBAC allowed {allowed}");
    assert!(denied >= 1, "RBAC denied {denied}");
    // Both sides were HBONE: CONNECT terminated from node1's proxy, and
    // originated to node2's over mTLS with the server's identity.
    let s = wp.stats("connect_terminate|connect_originate").unwrap();
    let get_stat = |suffix: &str| {
        s.iter()
            .filter(|(k, _)| k.ends_with(suffix))
            .map(|(_, v)| *v)
            .sum::<u64>()
    };
    assert!(
        get_stat("http.connect_terminate.downstream_rq_total") >= 1,
        "{s:?}"
    );
    assert!(
        get_stat("/ns/bench/sa/server.ssl.handshake") >= 1,
        "no upstream HBONE handshake: {s:?}"
    );
    assert!(
        get_stat("/ns/bench/sa/server.upstream_rq_total") >= 1,
        "no upstream CONNECT: {s:?}"
    );
    wp.check_alive().unwrap();
}
