//! Traffic through real node proxies in network namespaces: captured by the
//! nft rules in the source pod, tunnelled over HBONE, delivered to the app.

use std::time::Duration;

use trellis_e2e::cluster::{render_config, Fixture};
use trellis_e2e::{ask_identity, echo_roundtrip, wait_until, TestServer};

const T: Duration = Duration::from_secs(5);
const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/demo/sa/server";

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

const H2: &[&str] = &["--hbone-engine", "h2"];
const LITE: &[&str] = &["--hbone-engine", "lite"];

#[test]
fn cross_node_hbone_keeps_source_ip_and_reports_both_identities() {
    cross_node(H2, H2);
}

#[test]
fn cross_node_hbone_with_the_lite_engine_on_both_nodes() {
    cross_node(LITE, LITE);
}

/// The engines speak one wire protocol: a node can switch alone.
#[test]
fn cross_node_hbone_between_an_h2_node_and_a_lite_node_both_ways() {
    cross_node(H2, LITE);
    cross_node(LITE, H2);
}

/// Identity, source IP, a 200 kB echo and both proxies' metrics, with
/// `client_args` on the client's node and `server_args` on the server's.
fn cross_node(client_args: &[&str], server_args: &[&str]) {
    if !trellis_e2e::require_root() {
        return;
    }
    let f = Fixture::new(&[("node1", "client"), ("node2", "server")]).unwrap();
    let cfg = f
        .files
        .write_config(
            "mesh.yaml",
            &render_config(&[f.wl("client"), f.wl("server")], &[], ""),
        )
        .unwrap();
    let p1 = f
        .proxy_with("node1", &cfg, &["client"], client_args)
        .unwrap();
    let p2 = f
        .proxy_with("node2", &cfg, &["server"], server_args)
        .unwrap();
    let server_ns = f.netns("server");
    let _id = TestServer::identity(Some(&server_ns), f.addr("server", 8080)).unwrap();
    let _echo = TestServer::echo(Some(&server_ns), f.addr("server", 9000)).unwrap();
    let client_ns = f.netns("client");

    let seen = ask_identity(Some(&client_ns), f.addr("server", 8080), T).unwrap();
    assert_eq!(
        seen.peer.ip(),
        f.addr("client", 0).ip(),
        "server must see the client pod's IP"
    );

    let data = payload(200_000);
    let back = echo_roundtrip(Some(&client_ns), f.addr("server", 9000), &data, T).unwrap();
    assert_eq!(back, data);

    let src = [
        ("reporter", "source"),
        ("source_principal", CLIENT_ID),
        ("destination_principal", SERVER_ID),
        ("connection_security_policy", "mutual_tls"),
    ];
    let dst = [
        ("reporter", "destination"),
        ("source_principal", CLIENT_ID),
        ("destination_principal", SERVER_ID),
        ("connection_security_policy", "mutual_tls"),
    ];
    wait_until(T, "both proxies record two closed connections", || {
        p1.metric("istio_tcp_connections_closed_total", &src) == 2.0
            && p2.metric("istio_tcp_connections_closed_total", &dst) == 2.0
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            p1.metrics_text().unwrap(),
            p2.metrics_text().unwrap()
        )
    });
    assert_eq!(p1.metric("istio_tcp_connections_opened_total", &src), 2.0);
    assert_eq!(
        p2.metric("istio_tcp_received_bytes_total", &dst),
        data.len() as f64
    );
    assert_eq!(
        p1.metric("istio_tcp_received_bytes_total", &src),
        data.len() as f64
    );
    // The identity server's reply line plus the echoed payload came back.
    assert!(p2.metric("istio_tcp_sent_bytes_total", &dst) > data.len() as f64);
}

#[test]
fn same_node_pods_talk_over_hbone_through_one_proxy() {
    if !trellis_e2e::require_root() {
        return;
    }
    let f = Fixture::new(&[("node1", "client"), ("node1", "server")]).unwrap();
    let cfg = f
        .files
        .write_config(
            "mesh.yaml",
            &render_config(&[f.wl("client"), f.wl("server")], &[], ""),
        )
        .unwrap();
    let p1 = f.proxy("node1", &cfg, &["client", "server"]).unwrap();
    let _id = TestServer::identity(Some(&f.netns("server")), f.addr("server", 8080)).unwrap();
    let seen = ask_identity(Some(&f.netns("client")), f.addr("server", 8080), T).unwrap();
    assert_eq!(seen.peer.ip(), f.addr("client", 0).ip());
    wait_until(
        T,
        "source and destination sides recorded by the one proxy",
        || {
            p1.metric(
                "istio_tcp_connections_closed_total",
                &[
                    ("reporter", "source"),
                    ("connection_security_policy", "mutual_tls"),
                ],
            ) == 1.0
                && p1.metric(
                    "istio_tcp_connections_closed_total",
                    &[("reporter", "destination"), ("source_principal", CLIENT_ID)],
                ) == 1.0
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", p1.metrics_text().unwrap()));
}

#[test]
fn service_vip_spreads_connections_over_its_endpoints() {
    if !trellis_e2e::require_root() {
        return;
    }
    let f = Fixture::new(&[
        ("node1", "client"),
        ("node2", "s1"),
        ("node2", "s2"),
        ("node2", "s3"),
    ])
    .unwrap();
    // A VIP inside the pods' routed range but assigned to no pod: the
    // client's capture rule redirects it before it is ever routed.
    let vip = "198.18.250.10";
    let wls: Vec<_> = ["client", "s1", "s2", "s3"]
        .iter()
        .map(|p| f.wl(p).sa("server"))
        .collect();
    let cfg = f
        .files
        .write_config(
            "mesh.yaml",
            &render_config(&wls, &[("echo", vip, 80, 8080, &["s1", "s2", "s3"])], ""),
        )
        .unwrap();
    let _p1 = f.proxy("node1", &cfg, &["client"]).unwrap();
    let _p2 = f.proxy("node2", &cfg, &["s1", "s2", "s3"]).unwrap();
    let servers: Vec<_> = ["s1", "s2", "s3"]
        .iter()
        .map(|p| TestServer::echo(Some(&f.netns(p)), f.addr(p, 8080)).unwrap())
        .collect();
    let client_ns = f.netns("client");
    let dst = format!("{vip}:80").parse().unwrap();
    const N: usize = 60;
    for i in 0..N {
        let msg = format!("hello {i}");
        let back = echo_roundtrip(Some(&client_ns), dst, msg.as_bytes(), T).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    let counts: Vec<usize> = servers.iter().map(|s| s.accepted()).collect();
    assert_eq!(counts.iter().sum::<usize>(), N, "{counts:?}");
    for c in &counts {
        // Uniform would be 20 each; 9 (15%) is far outside chance for a working balancer.
        assert!(*c >= 9, "endpoint got {c} of {N}: {counts:?}");
    }
}

#[test]
fn tcp_destination_passes_through_as_plain_tcp() {
    if !trellis_e2e::require_root() {
        return;
    }
    let f = Fixture::new(&[("node1", "client"), ("node2", "legacy")]).unwrap();
    let cfg = f
        .files
        .write_config(
            "mesh.yaml",
            &render_config(&[f.wl("client"), f.wl("legacy").tcp()], &[], ""),
        )
        .unwrap();
    let p1 = f.proxy("node1", &cfg, &["client"]).unwrap();
    let _id = TestServer::identity(Some(&f.netns("legacy")), f.addr("legacy", 8080)).unwrap();
    let seen = ask_identity(Some(&f.netns("client")), f.addr("legacy", 8080), T).unwrap();
    assert_eq!(seen.peer.ip(), f.addr("client", 0).ip());
    wait_until(T, "passthrough recorded without mTLS", || {
        p1.metric(
            "istio_tcp_connections_closed_total",
            &[
                ("reporter", "source"),
                ("connection_security_policy", "unknown"),
                ("destination_workload", "legacy"),
            ],
        ) == 1.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p1.metrics_text().unwrap()));
    assert_eq!(
        p1.metric(
            "istio_tcp_connections_opened_total",
            &[("connection_security_policy", "mutual_tls")]
        ),
        0.0
    );
}

#[test]
fn non_mesh_client_reaches_enrolled_pod_through_plaintext_inbound() {
    if !trellis_e2e::require_root() {
        return;
    }
    let f = Fixture::new(&[("node1", "outsider"), ("node2", "server")]).unwrap();
    // The outsider is not in the mesh config and no proxy enrolls it.
    let cfg = f
        .files
        .write_config("mesh.yaml", &render_config(&[f.wl("server")], &[], ""))
        .unwrap();
    let p2 = f.proxy("node2", &cfg, &["server"]).unwrap();
    let _id = TestServer::identity(Some(&f.netns("server")), f.addr("server", 8080)).unwrap();
    let seen = ask_identity(Some(&f.netns("outsider")), f.addr("server", 8080), T).unwrap();
    assert_eq!(
        seen.peer.ip(),
        f.addr("outsider", 0).ip(),
        "source IP preserved on 15006 too"
    );
    wait_until(T, "plaintext inbound recorded", || {
        p2.metric(
            "istio_tcp_connections_closed_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "unknown"),
                ("destination_principal", SERVER_ID),
            ],
        ) == 1.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p2.metrics_text().unwrap()));
}
