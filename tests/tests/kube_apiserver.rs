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
