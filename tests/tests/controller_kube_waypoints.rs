//! The controller's waypoint manager against a real kube-apiserver (etcd,
//! no kubelet, no kube-controller-manager: nothing garbage-collects by
//! ownerReference, so every deletion seen here is the controller's):
//!
//! - a Gateway of the waypoint class gets its ServiceAccount, root
//!   ConfigMap, Deployment and Service, owned by it, and a status
//!   `Programmed` with its Service's ClusterIP; a changed listener port
//!   reaches the objects; a Gateway of another class gets nothing; an
//!   object of the same name the controller did not make is neither
//!   applied over nor deleted, and the Gateway's status says why; a
//!   Gateway that changes class or is deleted loses its objects;
//! - two controllers on one API server settle: their re-applies change no
//!   resourceVersion;
//! - (root) the Deployment it renders runs: the harness plays the kubelet
//!   (Pod object, projected token, ConfigMap volume, args, env, readiness
//!   probe) and the real `trellis-waypoint` gets its config and its
//!   certificate from the controller as the Gateway's identity.
//!
//! Needs $KUBE_APISERVER, $ETCD and kubectl (TRELLIS_REQUIRE_KUBE), and
//! `go` for the Gateway API CRDs; the last test needs root
//! (TRELLIS_REQUIRE_NETNS) and `cargo build -p trellis-controller -p
//! trellis-waypoint`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use trellis_e2e::cert_probe::hbone_server_chain;
use trellis_e2e::controlled_mesh::SERVICE_CIDR;
use trellis_e2e::controller_proc::{ca_init, Controller, ObjectSource, RunArgs};
use trellis_e2e::kube::{require_kube, KubeApiServer};
use trellis_e2e::kube_source::{installed, start_kube};
use trellis_e2e::kubelet::{plan_pod, KubeletPod};
use trellis_e2e::manifests::{self, AMBIENT_LABEL, WAYPOINT_CLASS};
use trellis_e2e::waypoint_proc::waypoint_bin;
use trellis_e2e::{require_root, wait_for, wait_until, Topology};

/// A hang guard for each wait, not a performance bound.
const T: Duration = Duration::from_secs(30);
const NS: &str = "demo";
const IMAGE: &str = "example.com/trellis/waypoint:test";
/// The kinds the controller makes for a Gateway `gw`, and their names.
fn made_for(gw: &str) -> [(&'static str, String); 4] {
    [
        ("serviceaccount", gw.to_string()),
        ("configmap", format!("{gw}-ca-root")),
        ("deployment", gw.to_string()),
        ("service", gw.to_string()),
    ]
}

/// A Gateway with one HBONE listener on `port`.
fn gateway(name: &str, class: &str, port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  gatewayClassName: {class}\n  listeners: [{{name: mesh, port: {port}, protocol: HBONE}}]\n"
    )
}

/// The API server with the Gateway API CRDs and namespace [`NS`], or None
/// (after saying why) when the test cannot run here.
fn cluster() -> Option<KubeApiServer> {
    let kube = start_kube()?;
    if !installed("the Gateway API CRDs", kube.install_gateway_api_crds()) {
        return None;
    }
    kube.apply(&manifests::namespace(NS, Some(AMBIENT_LABEL)))
        .expect("the namespace");
    Some(kube)
}

/// A controller in Kubernetes mode in the test's own namespace, named
/// `tag` (its files under `dir`), sharing the CA in `dir/ca`.
fn controller(kube: &KubeApiServer, dir: &Path, tag: &str, extra: &[&str]) -> Controller {
    let ca = dir.join("ca");
    if !ca.join("root-cert.pem").is_file() {
        ca_init(&ca).expect("ca init");
    }
    let mut flags = vec![
        format!("--waypoint-image={IMAGE}"),
        "--waypoint-xds-address=localhost:15012".to_string(),
    ];
    flags.extend(extra.iter().map(|s| s.to_string()));
    Controller::start_here(
        RunArgs {
            source: ObjectSource::Kube {
                kubeconfig: kube.kubeconfig().to_path_buf(),
            },
            ca_dir: ca,
            listen: "127.0.0.1:0".parse().expect("addr"),
            admin: "127.0.0.1:0".parse().expect("addr"),
            bound_addrs_file: dir.join(format!("{tag}-addrs.json")),
            poll: Duration::from_millis(100),
            extra: flags,
        },
        &dir.join(format!("{tag}.log")),
    )
    .expect("the controller starts")
}

fn get(kube: &KubeApiServer, kind: &str, name: &str) -> Option<Value> {
    kube.get_json(kind, NS, name)
        .unwrap_or_else(|e| panic!("reading {kind} {name}: {e}"))
}

/// Waits until `kind name` exists and `ok` holds for it; returns it.
fn wait_object(
    kube: &KubeApiServer,
    c: &Controller,
    kind: &str,
    name: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = None;
    let got = wait_for(T, &format!("{kind} {name}: {what}"), || {
        last = get(kube, kind, name);
        last.clone().filter(|v| ok(v))
    });
    got.unwrap_or_else(|e| panic!("{e}; last seen: {last:#?}\ncontroller log:\n{}", c.log()))
}

fn wait_gone(kube: &KubeApiServer, c: &Controller, kind: &str, name: &str) {
    wait_until(T, &format!("{kind} {name} to be deleted"), || {
        get(kube, kind, name).is_none()
    })
    .unwrap_or_else(|e| panic!("{e}\ncontroller log:\n{}", c.log()));
}

/// The condition `t` of a Gateway's status.
fn condition<'a>(gw: &'a Value, t: &str) -> Option<&'a Value> {
    gw.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn args(deployment: &Value) -> Vec<String> {
    deployment
        .pointer("/spec/template/spec/containers/0/args")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

/// Whether the object is owned by the Gateway (as the controller makes
/// owners) and carries both marks of the controller.
fn owned_by(obj: &Value, gw: &Value) -> bool {
    let owners = obj.pointer("/metadata/ownerReferences").cloned();
    owners
        == Some(serde_json::json!([{
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "name": str_at(gw, "/metadata/name"),
            "uid": str_at(gw, "/metadata/uid"),
            "controller": true,
            "blockOwnerDeletion": true,
        }]))
        && str_at(obj, "/metadata/labels/app.kubernetes.io~1managed-by") == "trellis-controller"
        && str_at(
            obj,
            "/metadata/labels/gateway.networking.k8s.io~1gateway-name",
        ) == str_at(gw, "/metadata/name")
}

fn programmed(gw: &Value) -> bool {
    condition(gw, "Programmed").is_some_and(|c| c["status"] == "True")
        && condition(gw, "Programmed").and_then(|c| c["observedGeneration"].as_i64())
            == gw.pointer("/metadata/generation").and_then(Value::as_i64)
}

#[test]
fn a_waypoint_gateway_gets_its_objects_and_status_and_they_follow_it() {
    let Some(kube) = cluster() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let c = controller(&kube, dir.path(), "controller", &[]);

    kube.apply(&gateway("wp", WAYPOINT_CLASS, 15008))
        .expect("apply");
    let gw = wait_object(&kube, &c, "gateway", "wp", "has a uid", |g| {
        !str_at(g, "/metadata/uid").is_empty()
    });
    for (kind, name) in made_for("wp") {
        let obj = wait_object(&kube, &c, kind, &name, "owned by the Gateway", |o| {
            owned_by(o, &gw)
        });
        assert_eq!(str_at(&obj, "/metadata/namespace"), NS);
    }
    let root = std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).expect("root");
    let cm = get(&kube, "configmap", "wp-ca-root").expect("configmap");
    assert_eq!(str_at(&cm, "/data/root-cert.pem"), root);
    let d = get(&kube, "deployment", "wp").expect("deployment");
    assert_eq!(d.pointer("/spec/replicas"), Some(&Value::from(1)));
    assert_eq!(str_at(&d, "/spec/template/spec/containers/0/image"), IMAGE);
    assert_eq!(
        args(&d),
        [
            "--name=demo/wp",
            "--service-account=wp",
            "--trust-domain=cluster.local",
            "--xds-address=localhost:15012",
            "--control-plane-root=/var/run/secrets/trellis/root-cert.pem",
            "--token-file=/var/run/secrets/tokens/istio-token",
            "--control-plane-name=localhost",
            "--listen=0.0.0.0:15008",
            "--metrics-addr=0.0.0.0:15020",
            "--readiness-addr=0.0.0.0:15021",
        ]
    );

    // Programmed, with the ClusterIP the API server gave the Service.
    let gw = wait_object(&kube, &c, "gateway", "wp", "Programmed", programmed);
    let svc = get(&kube, "service", "wp").expect("service");
    let ip = str_at(&svc, "/spec/clusterIP");
    assert!(!ip.is_empty(), "{svc:#}");
    // Above the static band the tests' fixed cluster IPs use (see
    // SERVICE_CIDR): an allocated address there could take one first.
    assert!(
        !ip.starts_with("198.19.128."),
        "the API server allocated {ip} in the static band of {SERVICE_CIDR}"
    );
    assert_eq!(
        gw.pointer("/status/addresses"),
        Some(&serde_json::json!([{"type": "IPAddress", "value": ip}]))
    );
    assert_eq!(
        str_at(condition(&gw, "Accepted").expect("Accepted"), "/status"),
        "True"
    );

    // A new listener port reaches the waypoint's flag, its container and
    // its Service.
    kube.apply(&gateway("wp", WAYPOINT_CLASS, 15009))
        .expect("apply");
    wait_object(&kube, &c, "deployment", "wp", "listens on 15009", |d| {
        args(d).contains(&"--listen=0.0.0.0:15009".to_string())
            && d.pointer("/spec/template/spec/containers/0/ports/0/containerPort")
                == Some(&Value::from(15009))
    });
    wait_object(&kube, &c, "service", "wp", "serves 15009", |s| {
        s.pointer("/spec/ports/0/port") == Some(&Value::from(15009))
            && s.pointer("/spec/ports/0/targetPort") == Some(&Value::from(15009))
    });
    wait_object(
        &kube,
        &c,
        "gateway",
        "wp",
        "the new generation observed",
        programmed,
    );

    // Another class gets nothing. wp2 is applied with it: once wp2's
    // objects are there, the controller has seen both.
    kube.apply(&manifests::stream(&[
        gateway("other", "example.com/other", 15008),
        gateway("wp2", WAYPOINT_CLASS, 15008),
    ]))
    .expect("apply");
    wait_object(&kube, &c, "gateway", "wp2", "Programmed", programmed);
    for (kind, name) in made_for("other") {
        assert!(get(&kube, kind, &name).is_none(), "{kind} {name} was made");
    }
    let other = get(&kube, "gateway", "other").expect("gateway other");
    assert!(
        condition(&other, "Programmed").is_none_or(|c| c["status"] != "True"),
        "{other:#}"
    );

    // A Deployment someone else made under a Gateway's name is neither
    // applied over nor deleted; the Gateway's status says why.
    kube.kubectl(
        &[
            "create",
            "deployment",
            "taken",
            "-n",
            NS,
            "--image=example.com/app:1",
        ],
        None,
    )
    .expect("create deployment");
    kube.apply(&gateway("taken", WAYPOINT_CLASS, 15008))
        .expect("apply");
    let gw = wait_object(&kube, &c, "gateway", "taken", "not Programmed", |g| {
        condition(g, "Programmed").is_some_and(|c| c["status"] == "False")
    });
    let why = condition(&gw, "Programmed").expect("Programmed");
    assert_eq!(str_at(why, "/reason"), "Invalid");
    let message = str_at(why, "/message");
    assert!(
        message.contains(
            "Deployment demo/taken already exists and was not made by trellis-controller"
        ),
        "{message}"
    );
    let foreign = get(&kube, "deployment", "taken").expect("deployment taken");
    assert_eq!(
        str_at(&foreign, "/spec/template/spec/containers/0/image"),
        "example.com/app:1"
    );
    assert!(
        foreign.pointer("/metadata/ownerReferences").is_none(),
        "{foreign:#}"
    );
    for (kind, name) in [("serviceaccount", "taken"), ("service", "taken")] {
        assert!(get(&kube, kind, name).is_none(), "{kind} {name} was made");
    }
    assert!(c.metric("trellis_controller_waypoint_apply_errors_total") >= 1.0);

    // A Gateway that stops being a waypoint loses its objects and the
    // conditions the controller wrote.
    kube.apply(&gateway("wp2", "example.com/other", 15008))
        .expect("apply");
    for (kind, name) in made_for("wp2") {
        wait_gone(&kube, &c, kind, &name);
    }
    wait_object(
        &kube,
        &c,
        "gateway",
        "wp2",
        "no condition True (the controller's withdrawn)",
        |g| {
            ["Accepted", "Programmed"]
                .iter()
                .all(|t| condition(g, t).is_none_or(|c| c["status"] != "True"))
        },
    );

    // Deleted Gateways: the controller deletes what it made, and only that.
    kube.kubectl(&["delete", "gateway", "wp", "taken", "-n", NS], None)
        .expect("delete gateways");
    for (kind, name) in made_for("wp") {
        wait_gone(&kube, &c, kind, &name);
    }
    assert!(
        get(&kube, "deployment", "taken").is_some(),
        "the foreign Deployment was deleted"
    );
    assert!(c.metric("trellis_controller_waypoint_deletes_total") >= 8.0);
    assert_eq!(c.metric("trellis_controller_waypoints_programmed"), 0.0);
}

/// resourceVersions of a Gateway and of everything made for it.
fn versions(kube: &KubeApiServer, gw: &str) -> Vec<(String, String)> {
    std::iter::once(("gateway", gw.to_string()))
        .chain(made_for(gw))
        .map(|(kind, name)| {
            let obj = get(kube, kind, &name).unwrap_or_else(|| panic!("{kind} {name} missing"));
            (
                format!("{kind}/{name}"),
                str_at(&obj, "/metadata/resourceVersion").to_string(),
            )
        })
        .collect()
}

#[test]
fn two_controllers_apply_the_same_waypoint_and_settle() {
    let Some(kube) = cluster() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // Both re-apply everything every second: a re-apply that changed
    // anything would show in a resourceVersion.
    let resync = ["--waypoint-resync=1s"];
    let a = controller(&kube, dir.path(), "a", &resync);
    let b = controller(&kube, dir.path(), "b", &resync);
    kube.apply(&gateway("wp", WAYPOINT_CLASS, 15008))
        .expect("apply");
    wait_object(&kube, &a, "gateway", "wp", "Programmed", programmed);
    for (kind, name) in made_for("wp") {
        wait_object(&kube, &a, kind, &name, "made", |_| true);
    }
    // Two full passes (four applies each) by each controller.
    let passes = |what: &str| {
        let start = [&a, &b].map(|c| c.metric("trellis_controller_waypoint_applies_total"));
        wait_until(T, what, || {
            [&a, &b]
                .iter()
                .zip(start)
                .all(|(c, s)| c.metric("trellis_controller_waypoint_applies_total") >= s + 8.0)
        })
        .unwrap_or_else(|e| panic!("{e}\nlog a:\n{}\nlog b:\n{}", a.log(), b.log()));
    };
    passes("both controllers to re-apply twice");
    let settled = versions(&kube, "wp");
    passes("both controllers to re-apply twice more");
    assert_eq!(
        versions(&kube, "wp"),
        settled,
        "a re-apply changed an object\nlog a:\n{}\nlog b:\n{}",
        a.log(),
        b.log()
    );
    for c in [&a, &b] {
        assert_eq!(
            c.metric("trellis_controller_waypoint_apply_errors_total"),
            0.0
        );
        assert_eq!(c.metric("trellis_controller_waypoints_programmed"), 1.0);
    }
}

#[test]
fn the_rendered_waypoint_runs_as_a_kubelet_would_start_it() {
    if !(require_root() && require_kube()) {
        return;
    }
    let topo = Topology::builder()
        .pod("node1", "wp-pod")
        .node("cp")
        .build()
        .expect("topology");
    let cp = topo.node("cp").expect("cp");
    let kube = KubeApiServer::start(Some(cp.netns_name()), Some(SERVICE_CIDR)).expect("kube");
    if !installed("the Gateway API CRDs", kube.install_gateway_api_crds()) {
        return;
    }
    kube.apply(&manifests::namespace(NS, Some(AMBIENT_LABEL)))
        .expect("namespace");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    ca_init(&ca).expect("ca init");
    // A fixed port is safe inside the topology's own namespace, and the
    // waypoint's address flag must be known before the controller starts.
    let grpc = SocketAddr::new(cp.uplink_ip, 15012);
    let c = Controller::start(
        cp.netns_name(),
        RunArgs {
            source: ObjectSource::Kube {
                kubeconfig: kube.kubeconfig().to_path_buf(),
            },
            ca_dir: ca.clone(),
            listen: grpc,
            admin: "127.0.0.1:0".parse().expect("addr"),
            bound_addrs_file: dir.path().join("addrs.json"),
            poll: Duration::from_millis(100),
            extra: vec![format!("--waypoint-xds-address={grpc}")],
        },
        &dir.path().join("controller.log"),
    )
    .expect("controller");

    kube.apply(&gateway("wp", WAYPOINT_CLASS, 15008))
        .expect("apply");
    let deployment = wait_object(&kube, &c, "deployment", "wp", "made", |_| true);
    wait_object(&kube, &c, "configmap", "wp-ca-root", "made", |_| true);

    let pod = topo.pod("wp-pod").expect("pod");
    let node = topo.node("node1").expect("node1").netns().expect("netns");
    let plan = plan_pod(
        &deployment,
        "wp-0",
        "node1",
        &pod.ip.to_string(),
        &dir.path().join("wp-0"),
    )
    .expect("the Deployment's pod");
    let bin = waypoint_bin().expect("trellis-waypoint");
    let running = KubeletPod::start(&kube, plan, &bin, pod.netns_name(), &node, pod.ip)
        .unwrap_or_else(|e| panic!("{e:#}\ncontroller log:\n{}", c.log()));

    // Ready means it has its config over xDS, authenticated by its
    // projected token and checking the controller against the root from
    // the ConfigMap. On 15008 it presents the Gateway's identity, with a
    // certificate from the controller's CA.
    let id = "spiffe://cluster.local/ns/demo/sa/wp";
    let chain = hbone_server_chain(&node, SocketAddr::new(pod.ip, 15008), &ca, id)
        .unwrap_or_else(|e| panic!("{e:#}\nwaypoint log:\n{}", running.log()));
    assert!(!chain.is_empty());
    assert!(c.metric("citadel_server_success_cert_issuance_count") >= 1.0);
    wait_object(&kube, &c, "gateway", "wp", "Programmed", programmed);
}
