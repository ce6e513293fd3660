//! Service VIPs through real node proxies. The VIPs are in 198.19.100.0/24,
//! an address range no interface has: pods route all of 198.18.0.0/15
//! (which includes it) via their node, so `connect()` finds a route, and
//! the capture rule in the source pod redirects the connection to the
//! proxy before any packet leaves.

use std::net::{IpAddr, SocketAddr};

use trellis_api::config::HealthStatus;
use trellis_e2e::mesh_kit::{errors, wait_errors, workload_mut, Attempt, Mesh, T};
use trellis_e2e::wait_until;

const CLOSED: &str = "istio_tcp_connections_closed_total";
const HOST: &str = "echo.demo.svc.cluster.local";

fn vip() -> IpAddr {
    "198.19.100.10".parse().unwrap()
}

/// client on node1 with endpoint e1 beside it; e2, e3 and the soon
/// unhealthy e4 on node2.
fn mesh() -> Mesh {
    Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node1", "e1", "demo", "echo")
        .member("node2", "e2", "demo", "echo")
        .member("node2", "e3", "demo", "echo")
        .member("node2", "e4", "demo", "echo")
        .service("echo", vip(), &[(80, 8080)], &["e1", "e2", "e3", "e4"])
        .start()
        .unwrap()
}

#[test]
fn vip_connections_spread_over_healthy_endpoints_on_both_nodes() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mut m = mesh();
    m.reload(|cfg| workload_mut(cfg, "e4").status = HealthStatus::Unhealthy)
        .unwrap();
    let eps = ["e1", "e2", "e3", "e4"];
    let servers: Vec<_> = eps.iter().map(|e| m.echo(e, 8080)).collect();
    // Each healthy endpoint expects 50; 15% (22) is over 4.8 standard
    // deviations below, so a working balancer essentially never misses it.
    const N: usize = 150;
    let dst = SocketAddr::new(vip(), 80);
    for i in 0..N {
        let msg = format!("conn {i}");
        let got = m.attempt_echo("client", dst, msg.as_bytes()).unwrap();
        assert_eq!(got, Attempt::Echoed(msg.into_bytes()), "connection {i}");
    }
    let counts: Vec<usize> = servers.iter().map(|s| s.accepted()).collect();
    assert_eq!(counts.iter().sum::<usize>(), N, "{counts:?}");
    assert_eq!(
        counts[3], 0,
        "the unhealthy endpoint got traffic: {counts:?}"
    );
    for (ep, c) in eps.iter().zip(&counts).take(3) {
        assert!(c * 100 >= N * 15, "{ep} got {c} of {N}: {counts:?}");
    }
    // The source proxy's per-endpoint counts agree with what the apps saw,
    // and every connection is attributed to the service.
    let p1 = m.proxy("node1");
    wait_until(T, "all connections closed in the metrics", || {
        p1.metric(
            CLOSED,
            &[("reporter", "source"), ("destination_service", HOST)],
        ) == N as f64
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p1.metrics_text().unwrap()));
    for (ep, c) in eps.iter().zip(&counts) {
        let labels = [
            ("reporter", "source"),
            ("destination_workload", ep),
            ("connection_security_policy", "mutual_tls"),
        ];
        assert_eq!(p1.metric(CLOSED, &labels), *c as f64, "{ep}");
    }
    // The destination side sees the client's own address.
    for s in &servers[..3] {
        assert!(s.peers().iter().all(|p| p.ip() == m.ip("client")));
    }
}

#[test]
fn vip_port_the_service_does_not_have_is_closed_and_counted() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mut m = mesh();
    let servers: Vec<_> = ["e1", "e2", "e3", "e4"]
        .iter()
        .map(|e| m.echo(e, 8080))
        .collect();
    let p1 = m.proxy("node1");
    let before = errors(p1, "no_healthy_endpoint");
    let got = m
        .attempt_echo("client", SocketAddr::new(vip(), 81), b"x")
        .unwrap();
    assert_eq!(got, Attempt::Closed);
    wait_errors(p1, "no_healthy_endpoint", before + 1.0);

    // With every endpoint unhealthy, port 80 is refused the same way.
    m.reload(|cfg| {
        for w in &mut cfg.workloads {
            if w.uid.starts_with('e') {
                w.status = HealthStatus::Unhealthy;
            }
        }
    })
    .unwrap();
    let p1 = m.proxy("node1");
    let got = m
        .attempt_echo("client", SocketAddr::new(vip(), 80), b"x")
        .unwrap();
    assert_eq!(got, Attempt::Closed);
    wait_errors(p1, "no_healthy_endpoint", before + 2.0);
    assert!(servers.iter().all(|s| s.accepted() == 0));
}
