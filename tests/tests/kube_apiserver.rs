//! The real Kubernetes API server the control-plane tests run against:
//! built from k8s.io/kubernetes at the version pinned in
//! tests/kube/versions.env (by tests/kube/install.sh, which `tests/run`
//! calls), started on loopback by tests/kube/start-local.sh with etcd and no
//! kubelet, through the shared harness ([`trellis_e2e::kube`]). This proves
//! what the controller's Kubernetes mode relies on: the server comes up
//! ready, and it answers TokenReviews, the check the CA and xDS server make
//! of a proxy's bearer token.
//!
//! Needs $KUBE_APISERVER and $ETCD (tests/run exports them) and kubectl.
//! Without them the test says so and passes, unless TRELLIS_REQUIRE_KUBE=1
//! (CI) makes a missing server a failure.

use serde_json::Value;
use trellis_e2e::kube::{require_kube, KubeApiServer};

#[test]
fn apiserver_starts_on_loopback_and_reviews_tokens() {
    if !require_kube() {
        return;
    }
    let kube = KubeApiServer::start(None, None).expect("the API server starts");
    assert_eq!(kube.pids().len(), 2, "etcd and kube-apiserver");

    let ns = kube
        .kubectl(&["get", "namespace", "default", "-o", "json"], None)
        .expect("get namespace");
    let ns: Value = serde_json::from_str(&ns).expect("namespace JSON");
    assert_eq!(ns["metadata"]["name"], "default");

    kube.kubectl(
        &["create", "serviceaccount", "probe", "-n", "default"],
        None,
    )
    .expect("create serviceaccount");
    let token = kube
        .kubectl(&["create", "token", "probe", "-n", "default"], None)
        .expect("create token");
    let status = kube.token_review(token.trim()).expect("token review");
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(
        status["user"]["username"], "system:serviceaccount:default:probe",
        "{status}"
    );

    let status = kube.token_review("not-a-token").expect("token review");
    assert_ne!(status["authenticated"], true, "{status}");
}

/// Parallel tests pick ports at the same moment, so one may bind a port
/// another has just found free (CI saw etcd exit with "bind: address
/// already in use"). The start script retries such a start on other ports.
/// Here each binary's first start is made to fail that way, by a wrapper
/// that runs the real binary from its second call on.
#[test]
fn a_port_taken_between_check_and_bind_is_retried_on_other_ports() {
    if !require_kube() {
        return;
    }
    let wrappers = tempfile::tempdir().expect("a temp dir");
    let wrap = |name: &str, real: &str| {
        let real = std::env::var(real).expect("the binary's variable");
        let once = wrappers.path().join(format!("{name}.failed-once"));
        let path = wrappers.path().join(name);
        let script = format!(
            "#!/bin/sh\nif [ ! -e '{once}' ]; then\n  touch '{once}'\n  \
             echo 'listen tcp 127.0.0.1:1: bind: address already in use' >&2\n  exit 1\nfi\n\
             exec '{real}' \"$@\"\n",
            once = once.display()
        );
        std::fs::write(&path, script).expect("write the wrapper");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("make the wrapper executable");
        (path, once)
    };
    let (etcd, etcd_once) = wrap("etcd", "ETCD");
    let (apiserver, apiserver_once) = wrap("kube-apiserver", "KUBE_APISERVER");
    let kube = KubeApiServer::start_with(
        None,
        None,
        &[("ETCD", &etcd), ("KUBE_APISERVER", &apiserver)],
    )
    .expect("the API server starts after a clash on each port");
    assert!(etcd_once.exists(), "etcd's first start failed");
    assert!(
        apiserver_once.exists(),
        "kube-apiserver's first start failed"
    );
    let ns = kube
        .kubectl(&["get", "namespace", "default", "-o", "name"], None)
        .expect("get namespace");
    assert_eq!(ns.trim(), "namespace/default");
}
