//! A VM outside Kubernetes joins the mesh with its WorkloadEntry (issue 14,
//! section 4), end to end: a real kube-apiserver and etcd, the real
//! controller in Kubernetes mode, one node (a network namespace) with a
//! shared node proxy and a pod, and a "VM": a network namespace outside the
//! cluster, on its own link to that node, running `trellis-node-proxy
//! --mode dedicated --capture` for its WorkloadEntry, with a token of the
//! entry's service account made by the TokenRequest API (`kubectl create
//! token <sa> --audience istio-ca`), as an operator bootstraps a VM.
//!
//! Needs root (TRELLIS_REQUIRE_NETNS) and $KUBE_APISERVER, $ETCD and
//! kubectl (TRELLIS_REQUIRE_KUBE); the WorkloadEntry and
//! AuthorizationPolicy CRDs come from the Go module istio.io/api.
//!
//! Deadlines here are hang guards, not performance bounds.

use std::net::SocketAddr;
use std::time::Duration;

use trellis_e2e::cluster::NodeProxy;
use trellis_e2e::controlled_mesh::{service_vip, ControlledMesh, Mode, Outcome};
use trellis_e2e::kube::require_kube;
use trellis_e2e::mesh_kit::{attempt_echo, config_dump, Attempt};
use trellis_e2e::proxy_args::{flag_value, local_state_flags, proc_cmdline};
use trellis_e2e::{ask_identity, echo_roundtrip, wait_until};

/// For one connection or one wait on the data path.
const T: Duration = Duration::from_secs(10);
/// For a change to travel from the API server to the proxies' traffic.
const PROPAGATION: Duration = Duration::from_secs(30);
/// Longer than the proxies' wait for a certificate (5 s), so a refusal
/// for want of one is seen as a refusal, not as a hang.
const CERT_REFUSAL: Duration = Duration::from_secs(15);

/// Service ports (port, targetPort): identity server, echo server.
const PORTS: [(u16, u16); 2] = [(80, 9000), (81, 9001)];
const CLOSED: &str = "istio_tcp_connections_closed_total";

/// Both gates: each fails (not skips) when its REQUIRE variable is set.
fn can_run() -> bool {
    trellis_e2e::require_root() && require_kube()
}

/// The pod `client` on node1, the VM `vm` linked to node1, and a service
/// for each: `client-svc` selects the pod, `vm-svc` the WorkloadEntry's
/// `app: vm` label.
fn start(mode: Mode, vm_token_account: &str) -> ControlledMesh {
    ControlledMesh::builder(mode)
        .pod("node1", "client", "client")
        .vm_with_token_of("node1", "vm", "vm", vm_token_account)
        .service("client-svc", service_vip(10), "client", &PORTS)
        .service("vm-svc", service_vip(20), "vm", &PORTS)
        .start()
        .unwrap_or_else(|e| panic!("starting the mesh: {e:#}"))
}

fn svc(n: u8, port: u16) -> SocketAddr {
    SocketAddr::new(service_vip(n), port)
}

/// Labels of one side of an HBONE connection `from` -> `to` (SPIFFE IDs).
fn mtls(reporter: &str, from: &str, to: &str) -> Vec<(&'static str, String)> {
    vec![
        ("reporter", reporter.into()),
        ("source_principal", from.into()),
        ("destination_principal", to.into()),
        ("connection_security_policy", "mutual_tls".into()),
    ]
}

fn closed(p: &NodeProxy, labels: &[(&'static str, String)]) -> f64 {
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    p.metric(CLOSED, &labels)
}

/// The identities a proxy holds certificates for, from its config dump.
fn certificates(p: &NodeProxy) -> Vec<String> {
    let dump = config_dump(p).unwrap_or_else(|e| panic!("{}: {e:#}", p.node));
    dump["certificates"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["identity"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn vm_and_pod_call_each_other_over_mtls_until_its_entry_is_deleted() {
    if !can_run() {
        return;
    }
    vm_and_pod_call_each_other(Mode::Kube);
}

/// The same in manifests mode: the WorkloadEntry is a file in the
/// controller's folder, the VM's token a bootstrap token for its identity.
#[test]
fn manifests_vm_and_pod_call_each_other_over_mtls_until_its_entry_is_deleted() {
    if !trellis_e2e::require_root() {
        return;
    }
    vm_and_pod_call_each_other(Mode::Manifests);
}

fn vm_and_pod_call_each_other(mode: Mode) {
    let m = start(mode, "vm");
    let (vm, client) = (m.vm("vm"), m.pod("client"));
    let (vm_id, client_id) = (vm.spiffe_id(), client.spiffe_id());
    let (vm_proxy, node1) = (m.vm_proxy("vm"), m.proxy("node1"));

    // The VM's proxy runs as an operator runs it: dedicated to the entry,
    // capturing its own netns, fed by the controller with the token only.
    let argv = proc_cmdline(vm_proxy.pid()).expect("the VM proxy's /proc cmdline");
    assert_eq!(flag_value(&argv, "--mode"), Some("dedicated"), "{argv:?}");
    assert_eq!(
        flag_value(&argv, "--workload-uid"),
        Some("Kubernetes//WorkloadEntry/demo/vm"),
        "{argv:?}"
    );
    assert!(argv.iter().any(|a| a == "--capture"), "{argv:?}");
    assert_eq!(local_state_flags(&argv), Vec::<String>::new(), "{argv:?}");

    let _vm_id_server = m.identity("vm", 9000);
    let _vm_echo = m.echo("vm", 9001);
    let _client_id_server = m.identity("client", 9000);
    let _client_echo = m.echo("client", 9001);
    let (client_ns, vm_ns) = (m.netns("client"), m.netns("vm"));

    // Pod -> VM through the Service selecting the WorkloadEntry's labels.
    // The VM's app sees the pod's own address: the VM's proxy preserves it.
    let seen = ask_identity(Some(&client_ns), svc(20, 80), T)
        .unwrap_or_else(|e| panic!("client -> vm-svc: {e}\n{}", m.logs()));
    assert_eq!(seen.peer.ip(), client.ip, "the VM's app sees the pod");
    assert_eq!(seen.local, m.addr("vm", 9000), "the VM's app was reached");
    let data: Vec<u8> = (0..100_000).map(|i| (i * 7 % 251) as u8).collect();
    let back = echo_roundtrip(Some(&client_ns), svc(20, 81), &data, T)
        .unwrap_or_else(|e| panic!("client -> vm-svc:81: {e}\n{}", m.logs()));
    assert_eq!(back, data);

    // VM -> pod through the pod's Service: the VM's outbound is captured
    // by its own proxy and tunnelled to the pod's node proxy.
    let seen = ask_identity(Some(&vm_ns), svc(10, 80), T)
        .unwrap_or_else(|e| panic!("vm -> client-svc: {e}\n{}", m.logs()));
    assert_eq!(seen.peer.ip(), vm.ip, "the pod's app sees the VM");
    assert_eq!(seen.local, m.addr("client", 9000));
    let back = echo_roundtrip(Some(&vm_ns), svc(10, 81), &data, T)
        .unwrap_or_else(|e| panic!("vm -> client-svc:81: {e}\n{}", m.logs()));
    assert_eq!(back, data);

    // Each side saw the other's SPIFFE identity over mutual TLS: both
    // directions, recorded by the proxy at each end.
    let sides = [
        (node1, mtls("source", &client_id, &vm_id)),
        (vm_proxy, mtls("destination", &client_id, &vm_id)),
        (vm_proxy, mtls("source", &vm_id, &client_id)),
        (node1, mtls("destination", &vm_id, &client_id)),
    ];
    wait_until(T, "every side records two mTLS connections closed", || {
        sides.iter().all(|(p, l)| closed(p, l) == 2.0)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n--- node1 ---\n{}\n--- vm ---\n{}",
            node1.metrics_text().unwrap_or_default(),
            vm_proxy.metrics_text().unwrap_or_default()
        )
    });

    // The CA gave the VM's proxy its entry's identity, and nothing else.
    assert_eq!(certificates(vm_proxy), vec![vm_id]);

    // Without its WorkloadEntry the VM is out of the mesh: the service
    // has no endpoint, and its address is no workload the VM's proxy serves.
    m.delete_vm_entry("vm").unwrap();
    for dst in [svc(20, 81), m.addr("vm", 9001)] {
        let took = m
            .wait_for_outcome("client", dst, Outcome::Closed, PROPAGATION)
            .unwrap_or_else(|e| panic!("client -> {dst} after the entry's deletion: {e:#}"));
        eprintln!("client -> {dst} refused {took:?} after the entry's deletion");
    }
}

#[test]
fn vm_with_another_accounts_token_gets_no_certificate_and_no_traffic() {
    if !can_run() {
        return;
    }
    // The operator gave the VM a token of the pod's service account.
    let m = start(Mode::Kube, "client");
    let vm_id = m.vm("vm").spiffe_id();
    let token_id = m.pod("client").spiffe_id();
    let vm_proxy = m.vm_proxy("vm");
    // xDS serves any service account; the CA gives it only its own identity.
    let want = format!("a caller with the token of {token_id} asked for {vm_id}");
    wait_until(
        PROPAGATION,
        "the CA's refusal in the VM proxy's log",
        || vm_proxy.log().contains(&want),
    )
    .unwrap_or_else(|e| panic!("{e}: want {want:?}\n{}", m.logs()));
    assert!(
        m.controller()
            .metric("trellis_controller_cert_refused_total")
            >= 1.0,
        "the controller counts the refusal"
    );
    assert_eq!(certificates(vm_proxy), Vec::<String>::new());

    // With no certificate the VM neither accepts nor makes mesh connections.
    let _vm_echo = m.echo("vm", 9001);
    let _client_echo = m.echo("client", 9001);
    for (from, dst) in [("client", svc(20, 81)), ("vm", svc(10, 81))] {
        let got = attempt_echo(Some(&m.netns(from)), dst, b"no cert", CERT_REFUSAL)
            .unwrap_or_else(|e| panic!("{from} -> {dst}: {e}\n{}", m.logs()));
        assert_eq!(got, Attempt::Closed, "{from} -> {dst}");
    }
}
