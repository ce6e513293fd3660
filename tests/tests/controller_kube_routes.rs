//! Routes and traffic policies from a real kube-apiserver (Kubernetes mode):
//!
//! - Gateway API's HTTPRoute and GRPCRoute CRDs (from the Go module
//!   sigs.k8s.io/gateway-api, experimental channel so rules keep their
//!   names) and Trellis's TrafficPolicy CRD (deploy/daemonset/base/crds/) are installed
//!   after the source started: the source picks them up on its retry;
//! - an HTTPRoute with two weighted backends and a TrafficPolicy on one of
//!   its rules reach the translation; changed weights follow;
//! - the API server itself refuses an invalid TrafficPolicy (the CRD's
//!   schema), and a route update the API server accepts but Trellis cannot
//!   honour keeps the route's last good version, with the error reported;
//! - a terminating pod (deleted, no kubelet to finish it) turns Unhealthy.
//!
//! Needs what controller_kube_source.rs needs, and `go` with the module
//! proxy for the Gateway API CRDs (required when TRELLIS_REQUIRE_KUBE=1).

use trellis_api::config::l7::{HttpRoute, ParentRef};
use trellis_api::config::HealthStatus;
use trellis_e2e::kube_source::{
    client, installed, namespace_yaml, pod_yaml, run_source, start_kube, wait_for, workload,
    Snapshot,
};

const SERVICES: &str = "apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: mesh}
spec: {ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: mesh}
spec: {ports: [{port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: mesh}
spec: {ports: [{port: 9080}]}
";

/// An HTTPRoute on port `http` of reviews, splitting by weight.
fn route(v1: u32, v2: u32, path_type: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: mesh}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: reviews, sectionName: http}}]
  rules:
  - name: split
    matches: [{{path: {{type: {path_type}, value: /}}}}]
    backendRefs:
    - {{name: reviews-v1, port: 9080, weight: {v1}}}
    - {{name: reviews-v2, port: 9080, weight: {v2}}}
"
    )
}

/// A TrafficPolicy on rule `split` of route r, with `body` under spec.
fn policy(body: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: p, namespace: mesh}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r, sectionName: split}}]
{body}"
    )
}

const GOOD_POLICY: &str =
    "  retry: {attempts: 2, retryOn: [5xx]}\n  rateLimit: {requestsPerSecond: 100, burst: 10}\n";

fn the_route(s: &Snapshot) -> Option<&HttpRoute> {
    s.config
        .http_routes
        .iter()
        .find(|r| r.namespace == "mesh" && r.name == "r")
}

fn weights(s: &Snapshot) -> Vec<u32> {
    the_route(s)
        .and_then(|r| r.rules.first())
        .map(|rule| rule.backend_refs.iter().map(|b| b.weight).collect())
        .unwrap_or_default()
}

fn rate(s: &Snapshot) -> Option<f64> {
    let rule = the_route(s)?.rules.first()?;
    rule.policy
        .as_ref()?
        .rate_limit
        .map(|r| r.requests_per_second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_traffic_policies_from_the_api_server_become_config() {
    let Some(kube) = start_kube() else { return };
    let (mut rx, task) = run_source(client(&kube));
    kube.apply(&namespace_yaml("mesh")).expect("apply");
    kube.apply(SERVICES).expect("apply");
    wait_for(&mut rx, "the three services", |s| {
        s.config
            .services
            .iter()
            .filter(|v| v.namespace == "mesh")
            .count()
            == 3
    })
    .await;

    // The CRDs come after the source started; the harness waits until
    // their kinds are served.
    if !installed("the Gateway API CRDs", kube.install_gateway_api_crds()) {
        task.abort();
        return;
    }
    kube.install_traffic_policy_crd()
        .expect("the TrafficPolicy CRD is installed");
    kube.apply(&route(90, 10, "PathPrefix")).expect("apply");
    kube.apply(&policy(GOOD_POLICY)).expect("apply");

    let s = wait_for(&mut rx, "the route with its policy", |s| {
        weights(s) == [90, 10] && rate(s) == Some(100.0)
    })
    .await;
    let r = the_route(&s).expect("route");
    assert_eq!(
        r.parent_refs,
        vec![ParentRef {
            kind: "Service".into(),
            group: None,
            name: "reviews".into(),
            namespace: None,
            port: Some(9080),
        }],
        "sectionName http is port 9080 of the Service the API server holds"
    );
    let p = r.rules[0].policy.as_ref().expect("policy");
    assert_eq!(p.retry.as_ref().map(|r| r.attempts), Some(2));
    assert!(
        s.translation_errors.is_empty(),
        "{:?}",
        s.translation_errors
    );

    // New weights follow, the policy stays attached.
    kube.apply(&route(50, 50, "PathPrefix")).expect("apply");
    wait_for(&mut rx, "the new weights", |s| {
        weights(s) == [50, 50] && rate(s) == Some(100.0)
    })
    .await;

    // The API server refuses what the CRD's schema forbids.
    // (body, what its error says)
    let refused = [
        ("  retry: {attempts: 50}\n", "spec.retry.attempts"),
        ("  retry: {attempts: 50}\n", "less than or equal to 10"),
        (
            "  loadBalancer: {algorithm: Random}\n",
            "spec.loadBalancer.algorithm",
        ),
        (
            "  rateLimit: {requestsPerSecond: 0}\n",
            "spec.rateLimit.requestsPerSecond",
        ),
        (
            "  circuitBreaker: {maxRequests: 1, pendingTimeout: 1.5s}\n",
            "spec.circuitBreaker.pendingTimeout",
        ),
        ("", "sets nothing"),
    ];
    for (body, want) in refused {
        match kube.apply(&policy(body)) {
            Ok(()) => panic!("the API server accepted {body:?}"),
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains(want), "{body:?}: {e:?} lacks {want:?}")
            }
        }
    }
    let other_kind = policy("  rateLimit: {requestsPerSecond: 1}\n")
        .replace("kind: HTTPRoute, name: r", "kind: Service, name: reviews");
    let e = kube
        .apply(&other_kind)
        .expect_err("a Service target is refused")
        .to_string();
    assert!(
        e.contains("spec.targetRefs[0].kind") && e.contains("Unsupported value"),
        "{e}"
    );
    assert_eq!(
        rate(&rx.borrow()),
        Some(100.0),
        "the stored policy is untouched"
    );

    // Valid Gateway API that Trellis cannot honour: the API server takes
    // it, Trellis keeps the last good version and says why.
    kube.apply(&route(10, 90, "RegularExpression"))
        .expect("apply");
    let s = wait_for(&mut rx, "the refused route update reported", |s| {
        s.errors.iter().any(|e| e.contains("HTTPRoute/mesh/r"))
    })
    .await;
    assert!(
        s.errors.iter().any(|e| e
            .contains("spec.rules[0].matches[0].path.type: RegularExpression is not supported")),
        "{:?}",
        s.errors
    );
    assert_eq!(weights(&s), [50, 50], "the last good version is served");
    kube.apply(&route(10, 90, "PathPrefix")).expect("apply");
    wait_for(&mut rx, "the fixed route, error cleared", |s| {
        weights(s) == [10, 90] && s.errors.is_empty()
    })
    .await;

    // A GRPCRoute next to it.
    kube.apply(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: mesh}
spec:
  parentRefs: [{group: \"\", kind: Service, name: reviews}]
  rules: [{matches: [{method: {service: reviews.Reviews}}], backendRefs: [{name: reviews-v1, port: 9080}]}]
",
    )
    .expect("apply");
    wait_for(&mut rx, "the GRPCRoute", |s| {
        s.config
            .grpc_routes
            .iter()
            .any(|r| r.name == "g" && r.rules.len() == 1)
    })
    .await;

    // The policy goes: so do its settings.
    kube.kubectl(&["delete", "trafficpolicy", "p", "-n", "mesh"], None)
        .expect("delete");
    wait_for(&mut rx, "the policy gone from the rule", |s| {
        the_route(s).is_some_and(|r| r.rules[0].policy.is_none())
    })
    .await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_pod_turns_unhealthy_and_stays_until_gone() {
    let Some(kube) = start_kube() else { return };
    let (mut rx, task) = run_source(client(&kube));
    kube.apply(&namespace_yaml("mesh")).expect("apply");
    kube.apply(&pod_yaml("mesh", "web-1", "web", "node-a"))
        .expect("apply");
    kube.pod_status("mesh", "web-1", "10.1.0.11", true)
        .expect("pod status");
    wait_for(&mut rx, "web-1 healthy", |s| {
        workload(s, "mesh", "web-1").is_some_and(|w| w.status == HealthStatus::Healthy)
    })
    .await;

    // A graceful delete: the API server sets deletionTimestamp and waits
    // for a kubelet (there is none) to confirm the pod is gone.
    kube.kubectl(
        &["delete", "pod", "web-1", "-n", "mesh", "--wait=false"],
        None,
    )
    .expect("graceful delete");
    wait_for(&mut rx, "web-1 terminating, so unhealthy", |s| {
        workload(s, "mesh", "web-1").is_some_and(|w| w.status == HealthStatus::Unhealthy)
    })
    .await;

    kube.delete_pod("mesh", "web-1").expect("delete");
    wait_for(&mut rx, "web-1 gone", |s| {
        workload(s, "mesh", "web-1").is_none()
    })
    .await;
    task.abort();
}
