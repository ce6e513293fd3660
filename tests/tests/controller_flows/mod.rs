//! The end-to-end steps run against the controller in both of its modes
//! (e2e_controller.rs: a manifests folder; e2e_controller_kube.rs: a real
//! kube-apiserver): node proxies in the nodes' namespaces get their state
//! only over xDS and their certificates only from the controller's CA; a
//! change to the objects must show in traffic within a deadline.
//!
//! Deadlines here are hang guards, not performance bounds.

use std::time::Duration;

use trellis_e2e::cert_probe::{hbone_server_chain, pem_file_ders};
use trellis_e2e::cluster::NodeProxy;
use trellis_e2e::controlled_mesh::{
    service_vip, ControlledMesh, Mode, Outcome, CONTROL_NODE, NAMESPACE,
};
use trellis_e2e::counted_stream::CountedStream;
use trellis_e2e::l7kit::{http1_request, HttpServer};
use trellis_e2e::manifests::{HttpRouteDef, PolicyDef};
use trellis_e2e::mesh_kit::{config_dump, errors, wait_errors, Attempt};
use trellis_e2e::proxy_args::{flag_value, local_state_flags, proc_cmdline};
use trellis_e2e::{ask_identity, echo_roundtrip, wait_until};

/// For one connection or one wait on the data path.
const T: Duration = Duration::from_secs(10);
/// For a change to travel from the objects to the proxies' traffic.
const PROPAGATION: Duration = Duration::from_secs(30);
/// For the proxies to notice the controller is gone, and to find it again
/// after its restart (their reconnect backoff grows while it is down).
const RECONNECT: Duration = Duration::from_secs(45);

const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// client on node1, server on node2: the usual pair.
fn pair(mode: Mode) -> trellis_e2e::controlled_mesh::ControlledMeshBuilder {
    ControlledMesh::builder(mode)
        .pod("node1", "client", "client")
        .pod("node2", "server", "server")
}

fn start(b: trellis_e2e::controlled_mesh::ControlledMeshBuilder) -> ControlledMesh {
    b.start()
        .unwrap_or_else(|e| panic!("starting the mesh: {e:#}"))
}

/// DENY from `from`'s principal on the pods labelled `app: server`.
fn deny(m: &ControlledMesh, name: &str, from: &str) -> PolicyDef {
    PolicyDef {
        namespace: NAMESPACE.into(),
        name: name.into(),
        action: "DENY".into(),
        selector_app: "server".into(),
        from_principals: vec![m.pod(from).principal()],
    }
}

fn wait_outcome(m: &ControlledMesh, from: &str, to: &str, port: u16, want: Outcome) {
    let took = m
        .wait_for_outcome(from, m.addr(to, port), want, PROPAGATION)
        .unwrap_or_else(|e| panic!("{from} -> {to}:{port}: {e:#}"));
    // Shown with --nocapture: how long the change took to reach traffic.
    eprintln!(
        "{:?}: {from} -> {to}:{port} {want:?} after {took:?}",
        m.mode()
    );
}

/// Metric labels of one side of an HBONE connection `from` -> `to`.
fn hbone_labels(m: &ControlledMesh, reporter: &str, from: &str, to: &str) -> Vec<(String, String)> {
    vec![
        ("reporter".into(), reporter.into()),
        ("source_principal".into(), m.pod(from).spiffe_id()),
        ("destination_principal".into(), m.pod(to).spiffe_id()),
        ("connection_security_policy".into(), "mutual_tls".into()),
    ]
}

fn metric(p: &NodeProxy, name: &str, labels: &[(String, String)]) -> f64 {
    let labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    p.metric(name, &labels)
}

/// Every proxy runs with the controller's address, root and a token, and
/// nothing local: read from the running process, not from what we meant.
fn assert_proxies_fed_only_by_the_controller(m: &ControlledMesh) {
    let grpc = m.controller().grpc().to_string();
    let root = m.ca_dir().join("root-cert.pem");
    for p in m.proxies() {
        let argv = proc_cmdline(p.pid()).expect("the proxy's /proc cmdline");
        assert!(
            argv[0].ends_with("trellis-node-proxy"),
            "{}: not the proxy binary: {argv:?}",
            p.node
        );
        assert_eq!(
            local_state_flags(&argv),
            Vec::<String>::new(),
            "{}: {argv:?}",
            p.node
        );
        assert_eq!(
            flag_value(&argv, "--xds-address"),
            Some(grpc.as_str()),
            "{argv:?}"
        );
        assert_eq!(
            flag_value(&argv, "--control-plane-root"),
            root.to_str(),
            "{argv:?}"
        );
        assert!(flag_value(&argv, "--token-file").is_some(), "{argv:?}");
        assert!(
            flag_value(&argv, "--ca-address").is_none(),
            "the CA is the xDS address: {argv:?}"
        );
    }
}

/// Traffic pod -> pod across nodes and to a service VIP, over HBONE with
/// certificates the controller's CA issued.
pub fn traffic_crosses_nodes_over_hbone(mode: Mode) {
    let vip = service_vip(10);
    let m = start(pair(mode).service("echo", vip, "server", &[(80, 9000)]));
    assert_proxies_fed_only_by_the_controller(&m);
    let _id = m.identity("server", 8080);
    let echo = m.echo("server", 9000);
    let client_ns = m.netns("client");

    let seen = ask_identity(Some(&client_ns), m.addr("server", 8080), T)
        .unwrap_or_else(|e| panic!("client -> server:8080: {e}\n{}", m.logs()));
    assert_eq!(
        seen.peer.ip(),
        m.pod("client").ip,
        "the server sees the client pod's IP"
    );
    let data = payload(200_000);
    let back = echo_roundtrip(Some(&client_ns), m.addr("server", 9000), &data, T).unwrap();
    assert_eq!(back, data);

    // Both sides saw the tunnel: the client's proxy as source, the
    // server's as destination, each naming both SPIFFE identities.
    let (p1, p2) = (m.proxy("node1"), m.proxy("node2"));
    let src = hbone_labels(&m, "source", "client", "server");
    let dst = hbone_labels(&m, "destination", "client", "server");
    wait_until(T, "both proxies record the two connections closed", || {
        metric(p1, CLOSED, &src) == 2.0 && metric(p2, CLOSED, &dst) == 2.0
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n--- node1 ---\n{}\n--- node2 ---\n{}",
            p1.metrics_text().unwrap_or_default(),
            p2.metrics_text().unwrap_or_default()
        )
    });
    assert_eq!(
        metric(p2, "istio_tcp_received_bytes_total", &dst),
        data.len() as f64
    );

    // The service: its VIP is captured by the client's proxy and sent to
    // the one endpoint, over the same kind of tunnel.
    let accepted = echo.accepted();
    let back = echo_roundtrip(
        Some(&client_ns),
        std::net::SocketAddr::new(vip, 80),
        b"via vip",
        T,
    )
    .unwrap();
    assert_eq!(back, b"via vip");
    assert_eq!(echo.accepted(), accepted + 1);
    wait_until(T, "the service connection recorded as mTLS", || {
        metric(p2, CLOSED, &dst) == 3.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p2.metrics_text().unwrap_or_default()));

    // The certificate node2's proxy presents for the server pod was
    // signed by the controller's intermediate, under the mesh root.
    let chain = hbone_server_chain(
        &m.netns(CONTROL_NODE),
        m.addr("server", 15008),
        m.ca_dir(),
        &m.pod("server").spiffe_id(),
    )
    .unwrap();
    let intermediate = pem_file_ders(&m.ca_dir().join("ca-cert.pem")).unwrap();
    assert!(
        chain.len() >= 2 && chain[1] == intermediate[0],
        "the server's chain is not [leaf, the controller's intermediate, ...]: {} certificates",
        chain.len()
    );
    // Each proxy holds certificates for its own pods only.
    for (node, pod, other) in [("node1", "client", "server"), ("node2", "server", "client")] {
        let dump = config_dump(m.proxy(node)).unwrap();
        let ids: Vec<&str> = dump["certificates"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c["identity"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            ids.contains(&m.pod(pod).spiffe_id().as_str()),
            "{node}: {ids:?}"
        );
        assert!(
            !ids.contains(&m.pod(other).spiffe_id().as_str()),
            "{node}: {ids:?}"
        );
    }
    assert_eq!(
        m.controller().metric("pilot_xds"),
        2.0,
        "two proxies connected"
    );
}

/// A pod created after the start becomes reachable through the mesh; a
/// deleted one is refused by the proxies at once, though its app still listens.
pub fn new_pod_joins_and_deleted_pod_is_refused(mode: Mode) {
    let m = start(pair(mode).later_pod("node2", "late", "late"));
    let echo = m.echo("late", 9000);
    let p2 = m.proxy("node2");
    let dst = hbone_labels(&m, "destination", "client", "late");

    // Not in the mesh yet: the client's proxy passes it through as plain TCP.
    assert_eq!(
        m.attempt("client", m.addr("late", 9000), b"before")
            .unwrap(),
        Attempt::Echoed(b"before".to_vec())
    );
    assert_eq!(metric(p2, OPENED, &dst), 0.0);

    m.add_pod("late").unwrap();
    wait_until(
        PROPAGATION,
        "a connection to the new pod over HBONE",
        || {
            let sent = m.attempt("client", m.addr("late", 9000), b"hello late");
            matches!(sent, Ok(Attempt::Echoed(ref b)) if b == b"hello late")
                && metric(p2, OPENED, &dst) >= 1.0
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n--- node2 metrics ---\n{}\n--- controller ---\n{}",
            p2.metrics_text().unwrap_or_default(),
            m.controller().log()
        )
    });

    m.delete_pod("late").unwrap();
    wait_outcome(&m, "client", "late", 9000, Outcome::Closed);
    let accepted = echo.accepted();
    for i in 0..3 {
        let got = m.attempt("client", m.addr("late", 9000), b"gone?").unwrap();
        assert_eq!(got, Attempt::Closed, "attempt {i} after the delete");
    }
    assert_eq!(
        echo.accepted(),
        accepted,
        "a refused connection reached the deleted pod's app"
    );
}

/// A policy added denies a connection that worked; an update the
/// controller refuses keeps the policy in force; removing it allows again.
pub fn policy_added_denies_and_removed_allows(mode: Mode) {
    let m = start(pair(mode));
    let echo = m.echo("server", 9000);
    wait_outcome(&m, "client", "server", 9000, Outcome::Echoed);
    let p2 = m.proxy("node2");

    let policy = deny(&m, "deny-client", "client");
    m.apply_policy(&policy).unwrap();
    wait_outcome(&m, "client", "server", 9000, Outcome::Closed);
    let denied = errors(p2, "policy_denied");
    assert!(denied >= 1.0, "node2 counts the denial");
    let accepted = echo.accepted();

    m.break_policy(&policy).unwrap();
    wait_until(
        PROPAGATION,
        "the controller to report the refused policy",
        || m.controller().metric("trellis_controller_object_errors") >= 1.0,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", m.controller().log()));
    assert_eq!(
        m.attempt("client", m.addr("server", 9000), b"still denied?")
            .unwrap(),
        Attempt::Closed,
        "the last good policy stays in force"
    );
    wait_errors(p2, "policy_denied", denied + 1.0);
    assert_eq!(
        echo.accepted(),
        accepted,
        "a denied connection reached the app"
    );

    m.delete_policy(NAMESPACE, "deny-client").unwrap();
    wait_outcome(&m, "client", "server", 9000, Outcome::Echoed);
}

/// The controller is killed while a tunnel streams: the stream loses no
/// byte, new connections work while it is down (the proxies keep their
/// config and certificates), and after its restart a change propagates.
pub fn controller_killed_mid_traffic(mode: Mode) {
    let mut m = start(pair(mode));
    let _echo = m.echo("server", 9000);
    wait_outcome(&m, "client", "server", 9000, Outcome::Echoed);
    let stream = CountedStream::start(&m.netns("client"), m.addr("server", 9000)).unwrap();
    stream.wait_progress(1 << 20, T).unwrap();

    m.controller_mut().kill().unwrap();
    assert!(!m.controller_mut().is_running());
    for p in m.proxies() {
        wait_until(
            RECONNECT,
            &format!("{} to notice the controller is gone", p.node),
            || p.log().contains("xds stream to the controller ended"),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    }
    stream
        .wait_progress(1 << 20, T)
        .unwrap_or_else(|e| panic!("the stream stalled while the controller was down: {e}"));
    let p2 = m.proxy("node2");
    let dst = hbone_labels(&m, "destination", "client", "server");
    let opened = metric(p2, OPENED, &dst);
    for i in 0..3 {
        let msg = format!("while down {i}");
        assert_eq!(
            m.attempt("client", m.addr("server", 9000), msg.as_bytes())
                .unwrap(),
            Attempt::Echoed(msg.into_bytes()),
            "new connection {i} while the controller is down"
        );
    }
    wait_until(T, "the new connections recorded as HBONE on node2", || {
        metric(p2, OPENED, &dst) >= opened + 3.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p2.metrics_text().unwrap_or_default()));

    m.controller_mut().restart().unwrap();
    wait_until(
        RECONNECT,
        "both proxies back on the restarted controller",
        || m.controller().metric("pilot_xds") == 2.0,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", m.controller().log()));
    assert_eq!(
        m.attempt("client", m.addr("server", 9000), b"after restart")
            .unwrap(),
        Attempt::Echoed(b"after restart".to_vec()),
        "a new connection after the restart"
    );
    stream.wait_progress(1 << 20, T).unwrap();
    let report = stream.finish();
    assert_eq!(report.error, None, "{report:?}");
    assert_eq!(report.first_mismatch, None, "{report:?}");
    assert!(report.sent >= 3 << 20, "{report:?}");
    assert_eq!(report.received, report.sent, "bytes lost: {report:?}");

    m.apply_policy(&deny(&m, "deny-client", "client")).unwrap();
    wait_outcome(&m, "client", "server", 9000, Outcome::Closed);
    m.delete_policy(NAMESPACE, "deny-client").unwrap();
    wait_outcome(&m, "client", "server", 9000, Outcome::Echoed);
}

/// A service labelled to use a waypoint: its traffic goes client ->
/// waypoint -> endpoint, the waypoint fed only by the controller (its
/// config over xDS, its certificate from the CA).
pub fn service_traffic_goes_through_a_waypoint(mode: Mode) {
    let vip = service_vip(20);
    let m = start(
        ControlledMesh::builder(mode)
            .pod("node1", "client", "client")
            .pod("node2", "e1", "web")
            .waypoint("node3", "wp", "waypoint")
            .service_via("waypoint", "web", vip, "web", &[(80, 8080)]),
    );
    let wp = m.waypoint("wp");
    let argv = proc_cmdline(wp.pid()).expect("the waypoint's /proc cmdline");
    assert_eq!(local_state_flags(&argv), Vec::<String>::new(), "{argv:?}");
    assert_eq!(
        flag_value(&argv, "--xds-address"),
        Some(m.controller().grpc().to_string().as_str())
    );

    let _e1 = HttpServer::start(Some(&m.netns("e1")), m.addr("e1", 8080), "e1").unwrap();
    let dst = std::net::SocketAddr::new(vip, 80);
    let r = http1_request(
        Some(&m.netns("client")),
        dst,
        "GET",
        "/via-waypoint",
        &[],
        b"",
    )
    .unwrap_or_else(|e| panic!("client -> web: {e}\n{}", m.logs()));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["server"], "e1");

    let client = m.pod("client").spiffe_id();
    wait_until(T, "the waypoint counted the request", || {
        wp.metric(
            "istio_requests_total",
            &[
                ("reporter", "waypoint"),
                ("source_principal", client.as_str()),
                ("destination_service", "web.demo.svc.cluster.local"),
                ("response_code", "200"),
            ],
        ) == 1.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", wp.metrics_text().unwrap_or_default()));
    // The endpoint's node proxy got the request from the waypoint, with the
    // waypoint's certificate from the controller's CA.
    let waypoint_id = m.pod("wp").spiffe_id();
    let node2 = m.proxy("node2");
    wait_until(T, "node2 counted the waypoint's tunnel", || {
        node2.metric(
            OPENED,
            &[
                ("reporter", "destination"),
                ("source_principal", waypoint_id.as_str()),
                ("connection_security_policy", "mutual_tls"),
            ],
        ) >= 1.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", node2.metrics_text().unwrap_or_default()));
}

/// Which backend served each of `n` requests to `dst` from `from`, in order.
fn served_by(m: &ControlledMesh, from: &str, dst: std::net::SocketAddr, n: usize) -> Vec<String> {
    let ns = m.netns(from);
    (0..n)
        .map(|i| {
            let r = http1_request(Some(&ns), dst, "GET", &format!("/split/{i}"), &[], b"")
                .unwrap_or_else(|e| panic!("request {i} to {dst}: {e}\n{}", m.logs()));
            assert_eq!(r.status, 200, "request {i}: {}", r.body);
            r.json()["server"].as_str().unwrap_or("?").to_string()
        })
        .collect()
}

/// Waits until a request to `dst` is served by `backend` (a route change
/// reached the waypoint), for at most [`PROPAGATION`].
fn wait_served_by(m: &ControlledMesh, dst: std::net::SocketAddr, backend: &str) {
    let ns = m.netns("client");
    let mut last = String::new();
    let reached = wait_until(
        PROPAGATION,
        &format!("a request served by {backend}"),
        || match http1_request(Some(&ns), dst, "GET", "/probe", &[], b"") {
            Ok(r) if r.status == 200 && r.json()["server"] == backend => true,
            Ok(r) => {
                last = format!("{} {}", r.status, r.body);
                false
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        },
    );
    if let Err(e) = reached {
        panic!("{e}; last answer: {last}\n{}", m.logs());
    }
}

/// An HTTPRoute on a service splits its requests over two backend
/// services by weight, at the waypoint; a weight change in the route
/// reaches the traffic within the deadline.
pub fn route_weights_follow_an_httproute_change(mode: Mode) {
    let m = start(
        ControlledMesh::builder(mode)
            .pod("node1", "client", "client")
            .pod("node2", "v1", "web-v1")
            .pod("node2", "v2", "web-v2")
            .waypoint("node3", "wp", "waypoint")
            // The parent selects no pod: only the route reaches a backend.
            .service_via("waypoint", "web", service_vip(30), "web", &[(80, 8080)])
            .service("web-v1", service_vip(31), "web-v1", &[(80, 8080)])
            .service("web-v2", service_vip(32), "web-v2", &[(80, 8080)]),
    );
    let _v1 = HttpServer::start(Some(&m.netns("v1")), m.addr("v1", 8080), "v1").unwrap();
    let _v2 = HttpServer::start(Some(&m.netns("v2")), m.addr("v2", 8080), "v2").unwrap();
    let dst = std::net::SocketAddr::new(service_vip(30), 80);
    let route = |w1: u32, w2: u32| HttpRouteDef {
        namespace: NAMESPACE.into(),
        name: "web".into(),
        parent_service: "web".into(),
        parent_port: 80,
        backends: vec![("web-v1".into(), 80, w1), ("web-v2".into(), 80, w2)],
    };
    let count = |served: &[String], name: &str| served.iter().filter(|s| *s == name).count();

    m.apply_route(&route(100, 0)).unwrap();
    wait_served_by(&m, dst, "v1");
    let served = served_by(&m, "client", dst, 20);
    assert_eq!(count(&served, "v1"), 20, "weights 100/0: {served:?}");

    m.apply_route(&route(0, 100)).unwrap();
    wait_served_by(&m, dst, "v2");
    // Config versions only move forward: once v2 answered, the new weights rule.
    let served = served_by(&m, "client", dst, 20);
    assert_eq!(count(&served, "v2"), 20, "weights 0/100: {served:?}");

    m.apply_route(&route(50, 50)).unwrap();
    wait_served_by(&m, dst, "v1");
    let served = served_by(&m, "client", dst, 40);
    // Binomial(40, 1/2): 4 or fewer on one side has odds below 1e-7.
    for name in ["v1", "v2"] {
        assert!(
            count(&served, name) >= 5,
            "weights 50/50, {name}: {served:?}"
        );
    }
    let wp = m.waypoint("wp");
    assert!(
        wp.metric(
            "istio_requests_total",
            &[("reporter", "waypoint"), ("response_code", "200")]
        ) >= 80.0,
        "the waypoint counted the requests: {}",
        wp.metrics_text().unwrap_or_default()
    );
}

/// The controller (and so its CA) is down when certificates are due for
/// renewal: the proxies keep serving with the certificates they hold,
/// retry with backoff, and say so on /metrics and in the log; once it is
/// back, the renewal goes through and the failing gauge returns to 0.
/// Certificates live 30 s here, so renewal is due 15 s after issue.
pub fn ca_down_when_renewal_is_due(mode: Mode) {
    let mut m = start(pair(mode).controller_args(&["--max-cert-validity", "30s"]));
    let _echo = m.echo("server", 9000);
    wait_outcome(&m, "client", "server", 9000, Outcome::Echoed);
    m.controller_mut().kill().unwrap();
    let failure = [("result", "failure")];
    for p in m.proxies() {
        wait_until(
            Duration::from_secs(25),
            &format!("{} to fail a renewal and say so", p.node),
            || {
                p.metric("trellis_ca_requests_total", &failure) >= 1.0
                    && p.metric("trellis_ca_identities_failing", &[]) >= 1.0
                    && p.log().contains("cannot renew a workload certificate")
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    }
    // The held certificates are still valid: a new connection works.
    assert_eq!(
        m.attempt("client", m.addr("server", 9000), b"renewal failing")
            .unwrap(),
        Attempt::Echoed(b"renewal failing".to_vec()),
        "a new connection while renewals fail"
    );
    let ok = [("result", "success")];
    let before: Vec<f64> = m
        .proxies()
        .map(|p| p.metric("trellis_ca_requests_total", &ok))
        .collect();
    m.controller_mut().restart().unwrap();
    for (p, before) in m.proxies().zip(before) {
        wait_until(
            Duration::from_secs(12),
            &format!("{} to renew once the CA is back", p.node),
            || {
                p.metric("trellis_ca_requests_total", &ok) > before
                    && p.metric("trellis_ca_identities_failing", &[]) == 0.0
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", p.metrics_text().unwrap_or_default()));
    }
    assert_eq!(
        m.attempt("client", m.addr("server", 9000), b"renewed")
            .unwrap(),
        Attempt::Echoed(b"renewed".to_vec()),
    );
}
