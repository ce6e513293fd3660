//! The demo mesh as Kubernetes manifests, the way an operator writes them:
//! what the controller reads in manifests mode and turns into the proxies'
//! config. Pods carry `spec.nodeName` and `status.podIP` because no kubelet
//! fills them in.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};

use crate::demo_waypoint::{Endpoint, ENDPOINTS, WAYPOINT_IP};

/// The namespace every demo object lives in; it opts in to the mesh.
const NAMESPACE: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels:
    trellis.dev/dataplane-mode: ambient
"#;

/// sa/client may reach sa/server on port 8080 only: with an ALLOW policy
/// selecting the server, everything it does not match is denied.
const L4_POLICY: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: server-allow-client
  namespace: demo
spec:
  selector:
    matchLabels:
      app: server
  action: ALLOW
  rules:
    - from:
        - source:
            principals: ["cluster.local/ns/demo/sa/client"]
      to:
        - operation:
            ports: ["8080"]
"#;

/// The waypoint: a Gateway of the waypoint class, addressed by its pod.
const WAYPOINT: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: demo
spec:
  gatewayClassName: trellis-waypoint
  listeners:
    - name: mesh
      port: 15008
      protocol: HBONE
"#;

/// Services behind the waypoint, and their routes and L7 policies.
const L7_OBJECTS: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: demo
  labels:
    trellis.dev/use-waypoint: waypoint
spec:
  clusterIP: 10.96.0.10
  selector: {app: reviews}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: reviews-v1
  namespace: demo
spec:
  clusterIP: 10.96.0.11
  selector: {app: reviews, version: v1}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: reviews-v2
  namespace: demo
spec:
  clusterIP: 10.96.0.12
  selector: {app: reviews, version: v2}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: ratings
  namespace: demo
  labels:
    trellis.dev/use-waypoint: waypoint
spec:
  clusterIP: 10.96.0.20
  selector: {app: ratings}
  ports: [{port: 80, targetPort: 8080}]
---
# A canary: 80% of requests to reviews-v1, 20% to reviews-v2; and a
# rate-limited rule (its limit is in the TrafficPolicy below).
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  namespace: demo
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 80}]
  rules:
    - name: canary
      backendRefs:
        - {name: reviews-v1, port: 80, weight: 80}
        - {name: reviews-v2, port: 80, weight: 20}
    - name: limited
      matches: [{path: {type: PathPrefix, value: /limited}}]
      backendRefs: [{name: reviews-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: ratings
  namespace: demo
spec:
  parentRefs: [{group: "", kind: Service, name: ratings, port: 80}]
  rules:
    - name: retry
      backendRefs: [{name: ratings, port: 80}]
---
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata:
  name: reviews-limited
  namespace: demo
spec:
  targetRefs:
    - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: reviews, sectionName: limited}
  rateLimit: {requestsPerSecond: 2, burst: 2}
---
# Round robin so the failing endpoint keeps getting first tries; the
# budget is sized for the demo's burst of sequential requests.
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata:
  name: ratings-retry
  namespace: demo
spec:
  targetRefs:
    - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: ratings, sectionName: retry}
  retry: {attempts: 2, retryOn: [5xx], backoff: 1ms, budget: {minRetriesPerSecond: 200}}
  loadBalancer: {algorithm: RoundRobin}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: reviews-deny-admin
  namespace: demo
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules:
    - to: [{operation: {paths: ["/admin*"]}}]
"#;

/// A running pod on `node` at `ip`.
fn pod(name: &str, labels: &[(&str, &str)], sa: &str, node: &str, ip: IpAddr) -> String {
    let mut l = String::new();
    for (k, v) in labels {
        // Quoted: a label value such as "1" must stay a string.
        let _ = writeln!(l, "    {k}: \"{v}\"");
    }
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: demo
  labels:
{l}spec:
  serviceAccountName: {sa}
  nodeName: {node}
  containers: [{{name: app, image: trellis/demo-app}}]
status:
  phase: Running
  podIP: {ip}
"#
    )
}

fn endpoint_pod(e: &Endpoint) -> String {
    let (app, version) = e.name.split_once('-').unwrap_or((e.name, "v1"));
    pod(
        e.name,
        &[("app", app), ("version", version)],
        e.sa,
        "node2",
        IpAddr::V4(e.ip),
    )
}

/// Writes the demo's manifests into `dir`, one file per concern (the
/// controller reads every *.yaml below it). With `l7`, also the waypoint,
/// its services, endpoints, routes and policies.
pub fn write(dir: &Path, client_ip: IpAddr, server_ip: IpAddr, l7: bool) -> Result<()> {
    let mut files = vec![
        ("namespace.yaml", NAMESPACE.to_string()),
        (
            "client.yaml",
            pod("client", &[("app", "client")], "client", "node1", client_ip),
        ),
        (
            "server.yaml",
            pod("server", &[("app", "server")], "server", "node2", server_ip),
        ),
        ("server-policy.yaml", L4_POLICY.to_string()),
    ];
    if l7 {
        let waypoint_pod = pod(
            "waypoint",
            &[("gateway.networking.k8s.io/gateway-name", "waypoint")],
            "waypoint",
            "node2",
            WAYPOINT_IP,
        );
        files.push(("waypoint.yaml", format!("{WAYPOINT}---\n{waypoint_pod}")));
        let endpoints: Vec<String> = ENDPOINTS.iter().map(endpoint_pod).collect();
        files.push(("endpoints.yaml", endpoints.join("---\n")));
        files.push(("l7.yaml", L7_OBJECTS.to_string()));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
