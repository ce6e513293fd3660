//! The demo mesh as Kubernetes manifests, the way an operator writes them:
//! what the controller reads in manifests mode and turns into the proxies'
//! config. The fixed objects are YAML files beside this module
//! (demo_manifests/); the pods, whose addresses are the demo's, come from
//! the e2e manifests writer ([`crate::manifests`]) with `spec.nodeName` and
//! `status.podIP`, because no kubelet fills them in.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};

use crate::demo_waypoint::{Endpoint, ENDPOINTS, WAYPOINT_IP};
use crate::manifests::{self, ManifestsDir, PodDef, AMBIENT_LABEL};

/// The namespace every demo object lives in.
const NAMESPACE: &str = "demo";

/// sa/client may reach sa/server on port 8080 only.
const L4_POLICY: &str = include_str!("demo_manifests/server-policy.yaml");

/// Services behind the waypoint, and their routes and L7 policies.
const L7_OBJECTS: &str = include_str!("demo_manifests/l7.yaml");

/// A running pod of the demo namespace on `node` at `ip`, labelled
/// `app: <app>`, with service account `sa`.
fn pod_def(name: &str, app: &str, sa: &str, node: &str, ip: IpAddr) -> PodDef {
    PodDef {
        namespace: NAMESPACE.into(),
        name: name.into(),
        service_account: sa.into(),
        node: node.into(),
        ip,
        app: app.into(),
        gateway: None,
        labels: Vec::new(),
    }
}

/// An endpoint behind the waypoint: `reviews-v1` is app reviews, version v1.
fn endpoint_pod(e: &Endpoint) -> String {
    let (app, version) = e.name.split_once('-').unwrap_or((e.name, "v1"));
    let def = PodDef {
        labels: vec![("version".into(), version.into())],
        ..pod_def(e.name, app, e.sa, "node2", IpAddr::V4(e.ip))
    };
    manifests::pod(&def, true)
}

/// The waypoint's Gateway and the pod that runs it.
fn waypoint() -> String {
    let pod = PodDef {
        gateway: Some("waypoint".into()),
        ..pod_def("waypoint", "waypoint", "waypoint", "node2", WAYPOINT_IP)
    };
    manifests::stream(&[
        manifests::waypoint_gateway(NAMESPACE, "waypoint"),
        manifests::pod(&pod, true),
    ])
}

/// Writes the demo's manifests into `dir`, one file per concern (the
/// controller reads every *.yaml below it). With `l7`, also the waypoint,
/// its services, endpoints, routes and policies.
pub fn write(dir: &Path, client_ip: IpAddr, server_ip: IpAddr, l7: bool) -> Result<()> {
    let client = pod_def("client", "client", "client", "node1", client_ip);
    let server = pod_def("server", "server", "server", "node2", server_ip);
    let mut files = vec![
        (
            "namespace.yaml",
            manifests::namespace(NAMESPACE, Some(AMBIENT_LABEL)),
        ),
        ("client.yaml", manifests::pod(&client, true)),
        ("server.yaml", manifests::pod(&server, true)),
        ("server-policy.yaml", L4_POLICY.to_string()),
    ];
    if l7 {
        files.push(("waypoint.yaml", waypoint()));
        let endpoints: Vec<String> = ENDPOINTS.iter().map(endpoint_pod).collect();
        files.push(("endpoints.yaml", manifests::stream(&endpoints)));
        files.push(("l7.yaml", L7_OBJECTS.to_string()));
    }
    let out = ManifestsDir::create(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in files {
        out.write(name, &text)
            .with_context(|| format!("writing {}", dir.join(name).display()))?;
    }
    Ok(())
}
