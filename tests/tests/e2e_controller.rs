//! The controller in manifests mode feeding real node proxies, end to end
//! in network namespaces: a folder of Kubernetes YAML and a bootstrap
//! token file in, xDS and certificates out. The steps are in
//! controller_flows/ and run in Kubernetes mode too (e2e_controller_kube.rs).

mod controller_flows;

use controller_flows as flows;
use trellis_e2e::controlled_mesh::Mode;

#[test]
fn manifests_traffic_crosses_nodes_over_hbone_with_the_controllers_certificates() {
    if !trellis_e2e::require_root() {
        return;
    }
    flows::traffic_crosses_nodes_over_hbone(Mode::Manifests);
}

#[test]
fn manifests_new_pod_joins_and_deleted_pod_is_refused() {
    if !trellis_e2e::require_root() {
        return;
    }
    flows::new_pod_joins_and_deleted_pod_is_refused(Mode::Manifests);
}

#[test]
fn manifests_policy_added_denies_and_removed_allows() {
    if !trellis_e2e::require_root() {
        return;
    }
    flows::policy_added_denies_and_removed_allows(Mode::Manifests);
}

#[test]
fn manifests_controller_killed_mid_traffic_loses_nothing() {
    if !trellis_e2e::require_root() {
        return;
    }
    flows::controller_killed_mid_traffic(Mode::Manifests);
}

#[test]
fn manifests_service_traffic_goes_through_a_waypoint() {
    if !trellis_e2e::require_root() {
        return;
    }
    flows::service_traffic_goes_through_a_waypoint(Mode::Manifests);
}

#[test]
fn manifests_route_weights_follow_an_httproute_change() {
    if !trellis_e2e::require_root() {
        return;
    }
    flows::route_weights_follow_an_httproute_change(Mode::Manifests);
}

#[test]
fn manifests_ca_down_when_renewal_is_due_keeps_serving_and_says_so() {
    if !trellis_e2e::require_root() {
        return;
    }
    flows::ca_down_when_renewal_is_due(Mode::Manifests);
}
