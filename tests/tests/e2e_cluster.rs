//! The cluster in a box (`trellis_e2e::kube_cluster`): Trellis installed
//! from `deploy/daemonset` on a real kube-apiserver, the controller and
//! each node's CNI agent and node proxy started from the rendered
//! manifests, pods made with kubectl and wired by the real CNI chain. Each
//! step asserts what traffic does, within a deadline (hang guards, not
//! performance bounds).
//!
//! Needs root (TRELLIS_REQUIRE_NETNS), $KUBE_APISERVER, $ETCD and kubectl
//! (TRELLIS_REQUIRE_KUBE), Debian's containernetworking-plugins, and
//! `cargo build -p trellis-node-proxy -p trellis-controller -p trellis-cni`.

use std::net::SocketAddr;
use std::time::Duration;

use trellis_e2e::kube::require_kube;
use trellis_e2e::kube_cluster::{KubeCluster, APP_NS};
use trellis_e2e::manifests::{self, PolicyDef};
use trellis_e2e::mesh_kit::{attempt_echo, Attempt};
use trellis_e2e::{ask_identity, wait_until, TestServer};

/// One connection.
const T: Duration = Duration::from_secs(10);
/// A change travelling from the API server to traffic.
const PROPAGATION: Duration = Duration::from_secs(30);

const OPENED: &str = "istio_tcp_connections_opened_total";

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// `from` -> `to`:port echo, once.
fn echo(c: &KubeCluster, from: &str, to: SocketAddr) -> std::io::Result<Attempt> {
    attempt_echo(Some(&c.pod(from).netns()?), to, &payload(64), T)
}

fn wait_attempt(c: &KubeCluster, from: &str, to: SocketAddr, want_echo: bool, what: &str) {
    wait_until(PROPAGATION, what, || {
        matches!(
            (echo(c, from, to), want_echo),
            (Ok(Attempt::Echoed(_)), true) | (Ok(Attempt::Closed), false)
        )
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

#[test]
fn cluster_in_a_box_enrolls_secures_and_survives() {
    if !trellis_e2e::require_root() || !require_kube() {
        return;
    }
    let mut c = KubeCluster::start().unwrap_or_else(|e| panic!("starting the box: {e:#}"));

    // 1. A pod made before the label is left alone; after labelling the
    //    namespace, new pods are enrolled by CNI ADD, captured before it
    //    returns, and their first connection goes through the node proxy.
    let early = c
        .add_pod("node1", "early", "early")
        .unwrap()
        .has_capture_rules();
    assert!(
        !early.unwrap(),
        "a pod of an unlabelled namespace is not captured"
    );
    c.enroll_namespace().unwrap();
    let server = c.add_pod("node2", "server", "server").unwrap();
    assert!(server.has_capture_rules().unwrap());
    let server_ns = server.netns().unwrap();
    let (server_ip, server_id) = (server.ip, server.spiffe_id());
    let id_addr = SocketAddr::new(server_ip.into(), 8080);
    let echo_addr = SocketAddr::new(server_ip.into(), 9000);
    let _id = TestServer::identity(Some(&server_ns), id_addr).unwrap();
    let _echo = TestServer::echo(Some(&server_ns), echo_addr).unwrap();
    let client = c.add_pod("node1", "client", "client").unwrap();
    assert!(client.has_capture_rules().unwrap());
    let (client_ip, client_id) = (client.ip, client.spiffe_id());
    for (node, pod) in [("node1", "client"), ("node2", "server")] {
        let uid = c.pod(pod).uid.clone();
        let pods = c.node(node).proxy_pods().unwrap();
        assert!(pods.contains(&uid), "{node}'s proxy serves {pod}: {pods}");
    }
    let from_client = [("source_principal", client_id.as_str())];
    assert_eq!(c.node("node1").proxy_metric(OPENED, &from_client), 0.0);
    // The controller's config for each new pod (from the status the
    // kubelet wrote after ADD) reaches its node's proxy; a connection made
    // before that is captured but refused ("source workload ... is not in
    // the config"): the proxy does not yet serve a pod from ZDS's
    // WorkloadInfo alone.
    for (node, pod) in [("node1", "client"), ("node2", "server")] {
        let ip = c.pod(pod).ip.to_string();
        wait_until(
            PROPAGATION,
            &format!("{node}'s proxy has {pod}'s config"),
            || {
                c.node(node)
                    .proxy_admin_get("/config_dump")
                    .is_ok_and(|d| d.contains(&ip))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    // The first connection goes through the proxy: it is counted.
    let seen = ask_identity(Some(&c.pod("client").netns().unwrap()), id_addr, T)
        .unwrap_or_else(|e| panic!("the first connection: {e}\n{}", c.logs()));
    wait_until(T, "node1's proxy counts the first connection", || {
        c.node("node1").proxy_metric(OPENED, &from_client) == 1.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(
        seen.peer.ip(),
        std::net::IpAddr::from(client_ip),
        "source IP kept"
    );

    // 2. Across nodes it is mTLS with both pods' identities, as the
    //    destination node's proxy reports it.
    let mtls = [
        ("reporter", "destination"),
        ("source_principal", client_id.as_str()),
        ("destination_principal", server_id.as_str()),
        ("connection_security_policy", "mutual_tls"),
    ];
    wait_until(T, "node2's proxy reports the mTLS connection", || {
        c.node("node2").proxy_metric(OPENED, &mtls) >= 1.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(matches!(
        echo(&c, "client", echo_addr).unwrap(),
        Attempt::Echoed(b) if b == payload(64)
    ));

    // 3. An AuthorizationPolicy applied with kubectl denies the client;
    //    deleted, traffic is allowed again.
    let deny = PolicyDef {
        namespace: APP_NS.into(),
        name: "deny-client".into(),
        action: "DENY".into(),
        selector_app: "server".into(),
        from_principals: vec![manifests::spiffe_id(APP_NS, "client").replace("spiffe://", "")],
    };
    c.kube
        .apply(&manifests::authorization_policy(&deny))
        .unwrap();
    wait_attempt(
        &c,
        "client",
        echo_addr,
        false,
        "the policy denies client -> server",
    );
    c.kube
        .kubectl(
            &["delete", "authorizationpolicy", "deny-client", "-n", APP_NS],
            None,
        )
        .unwrap();
    wait_attempt(
        &c,
        "client",
        echo_addr,
        true,
        "client -> server allowed again",
    );

    // 6. Deleting a pod runs CNI DEL: the agent and the node proxy let it go.
    let gone_uid = c.add_pod("node1", "gone", "gone").unwrap().uid.clone();
    let enrolled = c
        .node("node1")
        .agent_metric("trellis_cni_enrolled_pods", &[]);
    assert_eq!(enrolled, 2.0, "client and gone\n{}", c.logs());
    let runs = c.delete_pod("gone").unwrap();
    assert!(runs.iter().all(|r| r.success), "{runs:?}");
    assert_eq!(
        c.node("node1")
            .agent_metric("trellis_cni_enrolled_pods", &[]),
        1.0
    );
    wait_until(T, "node1's proxy releases the pod", || {
        c.node("node1")
            .proxy_pods()
            .is_ok_and(|p| !p.contains(&gone_uid))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    // 7. The server's node proxy crashes and the kubelet restarts it: the
    //    agent's snapshot gives it the server pod again, and traffic resumes.
    let node2 = c.node_mut("node2");
    node2.proxy.kill();
    node2
        .proxy
        .restart()
        .unwrap_or_else(|e| panic!("restarting node2's proxy: {e:#}"));
    let server_uid = c.pod("server").uid.clone();
    assert!(c.node("node2").proxy_pods().unwrap().contains(&server_uid));
    wait_attempt(
        &c,
        "client",
        echo_addr,
        true,
        "traffic resumes after the restart",
    );

    // 8. The controller is killed: traffic keeps flowing on what the
    //    proxies have.
    c.controller.kill();
    for i in 0..20 {
        match echo(&c, "client", echo_addr) {
            Ok(Attempt::Echoed(b)) if b == payload(64) => {}
            other => panic!(
                "connection {i} with the controller gone: {other:?}\n{}",
                c.logs()
            ),
        }
    }
    assert!(!c.pod("early").has_capture_rules().unwrap());
}
