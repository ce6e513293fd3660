//! The cluster in a box (`trellis_e2e::kube_cluster`): Trellis installed
//! from `deploy/daemonset` on a real kube-apiserver, the controller and
//! each node's CNI agent and node proxy started from the applied
//! manifests, pods made with kubectl and wired by the real CNI chain. The
//! steps and their checks are `kube_cluster::scenario::run`, which
//! `trellis-demo -- --kube` runs too: each asserts what traffic does
//! within a deadline, and any failed check fails this test.
//!
//! Needs root (TRELLIS_REQUIRE_NETNS), $KUBE_APISERVER, $ETCD and kubectl
//! (TRELLIS_REQUIRE_KUBE), Debian's containernetworking-plugins, and
//! `cargo build -p trellis-node-proxy -p trellis-controller -p trellis-cni`.

use trellis_e2e::kube::require_kube;
use trellis_e2e::kube_cluster::{scenario, KubeCluster};

#[test]
fn cluster_in_a_box_enrolls_secures_and_survives() {
    if !trellis_e2e::require_root() || !require_kube() {
        return;
    }
    let mut c = KubeCluster::start().unwrap_or_else(|e| panic!("starting the box: {e:#}"));
    let mut said = Vec::new();
    let outcome = scenario::run(&mut c, &mut |line| said.push(line));
    if let Err(e) = outcome {
        panic!("{e:#}\nsteps so far:\n{}\n{}", said.join("\n"), c.logs());
    }
    // Every step ran and reported what it saw, the last one included.
    for step in 1..=8 {
        let head = format!("== {step}.");
        assert!(
            said.iter().any(|l| l.trim_start().starts_with(&head)),
            "step {step} did not run: {said:#?}"
        );
    }
    assert!(
        said.iter().any(|l| l.contains("with no controller")),
        "{said:#?}"
    );
}
