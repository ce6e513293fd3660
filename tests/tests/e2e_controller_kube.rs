//! The controller in Kubernetes mode feeding real node proxies, end to end
//! in network namespaces: a real kube-apiserver (with etcd, no kubelet: the
//! test writes pod status) in the controller's namespace, node proxies
//! authenticated by pod-bound service account tokens (TokenRequest, checked
//! by the controller with a TokenReview). The same steps as in manifests
//! mode (controller_flows/).
//!
//! Needs root (TRELLIS_REQUIRE_NETNS) and $KUBE_APISERVER, $ETCD and
//! kubectl (TRELLIS_REQUIRE_KUBE); the AuthorizationPolicy CRD comes from
//! the Go module istio.io/api (`go mod download`).

mod controller_flows;

use controller_flows as flows;
use trellis_e2e::controlled_mesh::Mode;
use trellis_e2e::kube::require_kube;

/// Both gates: each fails (not skips) when its REQUIRE variable is set.
fn can_run() -> bool {
    trellis_e2e::require_root() && require_kube()
}

#[test]
fn kube_traffic_crosses_nodes_over_hbone_with_the_controllers_certificates() {
    if !can_run() {
        return;
    }
    flows::traffic_crosses_nodes_over_hbone(Mode::Kube);
}

#[test]
fn kube_new_pod_joins_and_deleted_pod_is_refused() {
    if !can_run() {
        return;
    }
    flows::new_pod_joins_and_deleted_pod_is_refused(Mode::Kube);
}

#[test]
fn kube_policy_added_denies_and_removed_allows() {
    if !can_run() {
        return;
    }
    flows::policy_added_denies_and_removed_allows(Mode::Kube);
}

#[test]
fn kube_controller_killed_mid_traffic_loses_nothing() {
    if !can_run() {
        return;
    }
    flows::controller_killed_mid_traffic(Mode::Kube);
}

#[test]
fn kube_service_traffic_goes_through_a_waypoint() {
    if !can_run() {
        return;
    }
    flows::service_traffic_goes_through_a_waypoint(Mode::Kube);
}

#[test]
fn kube_route_weights_follow_an_httproute_change() {
    if !can_run() {
        return;
    }
    flows::route_weights_follow_an_httproute_change(Mode::Kube);
}

#[test]
fn kube_ca_down_when_renewal_is_due_keeps_serving_and_says_so() {
    if !can_run() {
        return;
    }
    flows::ca_down_when_renewal_is_due(Mode::Kube);
}
