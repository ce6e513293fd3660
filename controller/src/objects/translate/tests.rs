//! Table tests of the translation; inputs go through the real parser.

use std::net::IpAddr;

use trellis_api::config::{
    validate, Action, HealthStatus, LocalConfig, Match, Protocol, Scope, Service, StringMatch,
    WaypointAddress, Workload,
};

use super::*;

mod authz;
mod demo;
mod policies;
mod routes;

pub(super) fn store_of(yaml: &str) -> ObjectStore {
    let mut s = ObjectStore::new();
    let errs = s.load_text("t.yaml", yaml, false);
    assert!(errs.is_empty(), "test input must parse: {errs:?}");
    s
}

/// Translates and checks the contract: the config always validates.
pub(super) fn run_with(yaml: &str, opts: &TranslateOptions) -> Translation {
    let t = translate(&store_of(yaml), opts);
    if let Err(e) = validate(&t.config) {
        panic!("translation produced an invalid config: {e}");
    }
    t
}

pub(super) fn run(yaml: &str) -> Translation {
    run_with(yaml, &TranslateOptions::default())
}

pub(super) fn msgs(t: &Translation) -> Vec<String> {
    t.errors.iter().map(ToString::to_string).collect()
}

pub(super) fn workload<'a>(cfg: &'a LocalConfig, name: &str) -> &'a Workload {
    cfg.workloads
        .iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("no workload {name}"))
}

pub(super) fn service<'a>(cfg: &'a LocalConfig, name: &str) -> &'a Service {
    cfg.services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

pub(super) fn ns(name: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n---\n"
    )
}

pub(super) fn pod(ns: &str, name: &str, ip: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec: {{nodeName: node-a, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n---\n"
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn enrollment_by_namespace_and_pod_labels() {
    let amb = "trellis.dev/dataplane-mode: ambient";
    let none = "trellis.dev/dataplane-mode: none";
    let i_amb = "istio.io/dataplane-mode: ambient";
    let i_none = "istio.io/dataplane-mode: none";
    // (namespace labels, pod labels, istio_labels, expected)
    let cases = [
        ("", "", false, Protocol::Tcp),
        (amb, "", false, Protocol::Hbone),
        (amb, none, false, Protocol::Tcp),
        ("", amb, false, Protocol::Hbone),
        (i_amb, "", false, Protocol::Tcp),
        (i_amb, "", true, Protocol::Hbone),
        (amb, i_none, true, Protocol::Tcp),
        (amb, i_none, false, Protocol::Hbone),
        // Both on one object: the Trellis label wins.
        (&format!("{amb}, {i_none}"), "", true, Protocol::Hbone),
        (i_amb, &format!("{none}, {i_amb}"), true, Protocol::Tcp),
    ];
    for (nsl, pl, istio, want) in cases {
        let yaml = format!("{}{}", ns("demo", nsl), pod("demo", "p", "198.18.0.1", pl));
        let opts = TranslateOptions {
            istio_labels: istio,
            ..Default::default()
        };
        let t = run_with(&yaml, &opts);
        assert_eq!(
            workload(&t.config, "p").protocol,
            want,
            "ns {nsl:?} pod {pl:?} istio {istio}"
        );
    }
}

#[test]
fn pod_becomes_a_workload() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: {app.kubernetes.io/name: web, app: ignored, version: v3}
spec: {serviceAccountName: web-sa, nodeName: node-b, containers: []}
status:
  phase: Running
  podIP: 198.18.0.5
  podIPs: [{ip: 198.18.0.5}, {ip: "fd00::5"}]
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: shop}
spec: {containers: []}
status: {podIP: 198.18.0.6}
"#;
    let opts = TranslateOptions {
        trust_domain: "example.org".into(),
        cluster_id: "c1".into(),
        ..Default::default()
    };
    let t = run_with(yaml, &opts);
    assert!(t.errors.is_empty(), "{:?}", msgs(&t));
    let w = workload(&t.config, "web-1");
    assert_eq!(w.uid, "c1//Pod/shop/web-1");
    assert_eq!(w.namespace, "shop");
    assert_eq!(w.service_account, "web-sa");
    assert_eq!(w.trust_domain, "example.org");
    assert_eq!(w.addresses, vec![ip("198.18.0.5"), ip("fd00::5")]);
    assert_eq!(w.node, "node-b");
    assert_eq!(w.canonical_name.as_deref(), Some("web"));
    assert_eq!(w.canonical_revision.as_deref(), Some("v3"));
    assert_eq!(w.cluster_id.as_deref(), Some("c1"));
    assert_eq!(w.status, HealthStatus::Healthy);
    let p = workload(&t.config, "plain");
    assert_eq!(p.service_account, "default");
    assert_eq!(p.node, "");
    assert_eq!(p.canonical_name, None);
    assert_eq!(p.protocol, Protocol::Tcp);
}

#[test]
fn pod_health_and_skips() {
    // (status yaml, extra spec, expected: None = skipped)
    let cases: &[(&str, &str, Option<HealthStatus>)] = &[
        (
            "{phase: Running, podIP: 198.18.0.1}",
            "",
            Some(HealthStatus::Healthy),
        ),
        ("{podIP: 198.18.0.1}", "", Some(HealthStatus::Healthy)),
        (
            "{phase: Pending, podIP: 198.18.0.1}",
            "",
            Some(HealthStatus::Unhealthy),
        ),
        (
            "{phase: Running, podIP: 198.18.0.1, conditions: [{type: Ready, status: \"True\"}]}",
            "",
            Some(HealthStatus::Healthy),
        ),
        (
            "{phase: Running, podIP: 198.18.0.1, conditions: [{type: Ready, status: \"False\"}]}",
            "",
            Some(HealthStatus::Unhealthy),
        ),
        ("{phase: Succeeded, podIP: 198.18.0.1}", "", None),
        ("{phase: Failed, podIP: 198.18.0.1}", "", None),
        ("{phase: Running}", "", None),
        (
            "{phase: Running, podIP: 198.18.0.1}",
            "hostNetwork: true, ",
            None,
        ),
    ];
    for (status, spec, want) in cases {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: demo}}\nspec: {{{spec}containers: []}}\nstatus: {status}\n"
        );
        let t = run(&yaml);
        assert!(
            t.errors.is_empty(),
            "{status}: skips are not errors: {:?}",
            msgs(&t)
        );
        let got = t.config.workloads.first().map(|w| w.status);
        assert_eq!(got, *want, "status {status} spec {spec}");
    }
}

#[test]
fn workload_entry_becomes_a_workload() {
    let we = |name: &str, spec: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: demo}}\nspec: {spec}\n---\n")
    };
    let yaml = format!(
        "{}{}{}{}",
        ns("demo", "trellis.dev/dataplane-mode: ambient"),
        we(
            "vm",
            "{address: 198.18.3.3, serviceAccount: vm-sa, labels: {app: db}}"
        ),
        we("dns", "{address: db.example.com}"),
        we("far", "{address: 198.18.3.4, network: other}"),
    );
    let t = run(&yaml);
    let w = workload(&t.config, "vm");
    assert_eq!(w.uid, "Kubernetes//WorkloadEntry/demo/vm");
    assert_eq!(w.addresses, vec![ip("198.18.3.3")]);
    assert_eq!(w.service_account, "vm-sa");
    assert_eq!(w.node, "");
    assert_eq!(w.protocol, Protocol::Hbone);
    assert_eq!(w.canonical_name.as_deref(), Some("db"));
    assert_eq!(t.config.workloads.len(), 1);
    let m = msgs(&t);
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(
        m.iter()
            .any(|e| e.contains("WorkloadEntry demo/dns") && e.contains("not an IP address")),
        "{m:?}"
    );
    assert!(
        m.iter()
            .any(|e| e.contains("WorkloadEntry demo/far") && e.contains("network")),
        "{m:?}"
    );
}

#[test]
fn services_map_vips_ports_and_endpoints() {
    let yaml = format!(
        "{}{}{}{}{}",
        pod("demo", "a-1", "198.18.0.1", "app: a"),
        pod("demo", "a-2", "198.18.0.2", "app: a"),
        pod("demo", "b-1", "198.18.0.3", "app: b"),
        pod("other", "a-x", "198.18.0.4", "app: a"),
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm, namespace: demo}
spec: {address: 198.18.3.3, labels: {app: a}}
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: demo}
spec:
  clusterIPs: [198.18.128.1, "fd00::1"]
  selector: {app: a}
  ports:
    - {name: web, port: 80, targetPort: http}
    - {name: admin, port: 9000, targetPort: 9001}
    - {name: plain, port: 7000}
    - {name: missing, port: 81, targetPort: grpc}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: demo}
spec: {clusterIP: None, selector: {app: b}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: noselector, namespace: demo}
spec: {clusterIP: 198.18.128.2, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: demo}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: v1
kind: Service
metadata: {name: clash, namespace: demo}
spec: {clusterIP: 198.18.128.1, ports: [{port: 80}]}
"#
    );
    let t = run(&yaml);
    let a = service(&t.config, "a");
    assert_eq!(a.hostname, "a.demo.svc.cluster.local");
    assert_eq!(a.vips, vec![ip("198.18.128.1"), ip("fd00::1")]);
    let ports: Vec<(u16, u16)> = a.ports.iter().map(|p| (p.port, p.target_port)).collect();
    assert_eq!(ports, vec![(80, 8080), (9000, 9001), (7000, 7000)]);
    assert_eq!(
        a.endpoints,
        vec![
            "Kubernetes//Pod/demo/a-1",
            "Kubernetes//Pod/demo/a-2",
            "Kubernetes//WorkloadEntry/demo/vm"
        ]
    );
    let h = service(&t.config, "headless");
    assert!(h.vips.is_empty());
    assert_eq!(h.endpoints, vec!["Kubernetes//Pod/demo/b-1"]);
    assert!(service(&t.config, "noselector").endpoints.is_empty());
    assert!(t
        .config
        .services
        .iter()
        .all(|s| s.name != "ext" && s.name != "clash"));
    let m = msgs(&t);
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(
        m.iter().any(|e| e.contains("Service demo/a")
            && e.contains("targetPort")
            && e.contains("grpc")),
        "{m:?}"
    );
    assert!(
        m.iter()
            .any(|e| e.contains("Service demo/clash") && e.contains("198.18.128.1")),
        "{m:?}"
    );
}

const WAYPOINT: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: demo}
spec:
  gatewayClassName: trellis-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
"#;

#[test]
fn waypoints_are_found_and_used_by_labels() {
    let amb = "trellis.dev/dataplane-mode: ambient";
    let yaml = format!(
        "{}{WAYPOINT}{}{}{}{}{}{}",
        ns("demo", &format!("{amb}, trellis.dev/use-waypoint: wp")),
        pod(
            "demo",
            "wp-1",
            "198.18.9.1",
            "gateway.networking.k8s.io/gateway-name: wp"
        ),
        pod(
            "demo",
            "wp-0",
            "198.18.9.0",
            "gateway.networking.k8s.io/gateway-name: wp"
        ),
        pod("demo", "app", "198.18.0.1", "app: x"),
        pod(
            "demo",
            "optout",
            "198.18.0.2",
            "app: x, trellis.dev/use-waypoint: none"
        ),
        pod("demo", "typo", "198.18.0.3", "trellis.dev/use-waypoint: wq"),
        r#"apiVersion: v1
kind: Service
metadata: {name: s, namespace: demo}
spec: {clusterIP: 198.18.128.1, selector: {app: x}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: s-none, namespace: demo, labels: {trellis.dev/use-waypoint: none}}
spec: {clusterIP: 198.18.128.2, ports: [{port: 80}]}
"#
    );
    let t = run(&yaml);
    let wp = Some(WaypointAddress {
        address: ip("198.18.9.0"),
        hbone_mtls_port: 15008,
    });
    assert_eq!(t.config.waypoints.len(), 1);
    assert_eq!(
        (
            t.config.waypoints[0].namespace.as_str(),
            t.config.waypoints[0].name.as_str()
        ),
        ("demo", "wp")
    );
    assert_eq!(workload(&t.config, "app").waypoint, wp, "namespace default");
    assert_eq!(workload(&t.config, "optout").waypoint, None, "pod opt-out");
    assert_eq!(
        workload(&t.config, "wp-0").waypoint,
        None,
        "a waypoint never uses one"
    );
    assert_eq!(
        workload(&t.config, "typo").waypoint,
        None,
        "kept without waypoint"
    );
    assert_eq!(service(&t.config, "s").waypoint, wp);
    assert_eq!(service(&t.config, "s-none").waypoint, None);
    let m = msgs(&t);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].contains("Pod demo/typo") && m[0].contains("trellis.dev/use-waypoint=wq"),
        "{m:?}"
    );
}

/// Namespace demo with `ns_labels`, the Gateway `gateway`, its running
/// pod wp-0 (198.18.9.0) and a pod app.
fn waypoint_and_app(ns_labels: &str, gateway: &str) -> String {
    format!(
        "{}{gateway}{}{}",
        ns("demo", ns_labels),
        pod(
            "demo",
            "wp-0",
            "198.18.9.0",
            "gateway.networking.k8s.io/gateway-name: wp"
        ),
        pod("demo", "app", "198.18.0.1", ""),
    )
}

#[test]
fn waypoint_class_and_labels_follow_istio_labels_option() {
    let yaml = waypoint_and_app(
        "istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp",
        &WAYPOINT.replace("trellis-waypoint", "istio-waypoint"),
    );
    let on = run_with(
        &yaml,
        &TranslateOptions {
            istio_labels: true,
            ..Default::default()
        },
    );
    assert!(on.errors.is_empty(), "{:?}", msgs(&on));
    assert_eq!(
        workload(&on.config, "app").waypoint.map(|w| w.address),
        Some(ip("198.18.9.0"))
    );
    let off = run(&yaml);
    assert!(off.config.waypoints.is_empty());
    assert_eq!(workload(&off.config, "app").waypoint, None);
    assert_eq!(workload(&off.config, "app").protocol, Protocol::Tcp);
}

#[test]
fn the_waypoint_port_is_its_hbone_listeners() {
    // (listeners, the port node proxies tunnel to)
    let cases = [
        ("[{name: mesh, port: 15008, protocol: HBONE}]", 15008),
        ("[{name: mesh, port: 15009, protocol: HBONE}]", 15009),
        // Refused listeners (the Gateway's status says why) keep the default.
        ("[{name: web, port: 80, protocol: HTTP}]", 15008),
    ];
    for (listeners, port) in cases {
        let yaml = waypoint_and_app(
            "trellis.dev/dataplane-mode: ambient, trellis.dev/use-waypoint: wp",
            &WAYPOINT.replace("[{name: mesh, port: 15008, protocol: HBONE}]", listeners),
        );
        let t = run(&yaml);
        assert_eq!(
            workload(&t.config, "app").waypoint,
            Some(WaypointAddress {
                address: ip("198.18.9.0"),
                hbone_mtls_port: port
            }),
            "{listeners}"
        );
    }
}

#[test]
fn a_waypoint_without_a_running_pod_is_reported_per_user() {
    let yaml = format!(
        "{}{WAYPOINT}{}",
        ns("demo", "trellis.dev/dataplane-mode: ambient"),
        pod("demo", "app", "198.18.0.1", "trellis.dev/use-waypoint: wp"),
    );
    let t = run(&yaml);
    assert_eq!(workload(&t.config, "app").waypoint, None);
    let m = msgs(&t);
    assert!(m.len() == 1 && m[0].contains("no running pod"), "{m:?}");
}

#[test]
fn broken_objects_next_to_good_ones_and_duplicate_ips() {
    let mut store = ObjectStore::new();
    let yaml = format!(
        "{}{}apiVersion: v1\nkind: Pod\nmetadata: {{name: bad, namespace: demo}}\nspec: {{nodeNmae: x}}\n---\n{}{}",
        pod("demo", "good-1", "198.18.0.1", ""),
        "nonsense: [\n---\n",
        pod("demo", "good-2", "198.18.0.2", ""),
        pod("demo", "same-ip", "198.18.0.2", ""),
    );
    let load_errors = store.load_text("t.yaml", &yaml, false);
    assert_eq!(load_errors.len(), 2, "{load_errors:?}");
    let t = translate(&store, &TranslateOptions::default());
    assert!(validate(&t.config).is_ok());
    let names: Vec<&str> = t.config.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, vec!["good-1", "good-2"]);
    let m = msgs(&t);
    assert!(
        m.len() == 1 && m[0].contains("Pod demo/same-ip") && m[0].contains("198.18.0.2"),
        "{m:?}"
    );
}

#[test]
fn a_route_attached_to_no_service_is_not_translated_and_not_an_error() {
    // An ingress route (its parentRef defaults to a Gateway).
    let yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: r, namespace: demo}\nspec: {parentRefs: [{name: ingress}]}\n";
    let t = run(yaml);
    assert!(t.errors.is_empty(), "{:?}", msgs(&t));
    assert_eq!(t.config, LocalConfig::default());
}

#[test]
fn terminating_pods_are_unhealthy() {
    // (deletionTimestamp set, Ready condition, expected)
    let cases = [
        (false, "True", HealthStatus::Healthy),
        (true, "True", HealthStatus::Unhealthy),
        (true, "False", HealthStatus::Unhealthy),
        (false, "False", HealthStatus::Unhealthy),
    ];
    for (terminating, ready, want) in cases {
        let deleting = if terminating {
            ", deletionTimestamp: \"2025-01-01T00:00:00Z\", deletionGracePeriodSeconds: 30"
        } else {
            ""
        };
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: demo{deleting}}}\nspec: {{containers: []}}\nstatus: {{phase: Running, podIP: 198.18.0.1, conditions: [{{type: Ready, status: \"{ready}\"}}]}}\n"
        );
        let t = run(&yaml);
        assert!(t.errors.is_empty(), "{:?}", msgs(&t));
        assert_eq!(
            workload(&t.config, "p").status,
            want,
            "terminating {terminating}, ready {ready}: a terminating pod takes no new connections but stays for those it has"
        );
    }
}

#[test]
fn the_guard_drops_what_validation_refuses() {
    // A namespace that cannot be part of a SPIFFE id passes the Kubernetes
    // parser (the folder has no API server to refuse it) but not validation.
    let yaml = format!(
        "{}{}",
        pod("demo", "ok", "198.18.0.1", ""),
        pod("bad@ns", "p", "198.18.0.2", "")
    );
    let t = run(&yaml);
    assert_eq!(t.config.workloads.len(), 1);
    assert!(
        msgs(&t)
            .iter()
            .any(|m| m.contains("workload Kubernetes//Pod/bad@ns/p")
                && m.contains("workloads[0].namespace")),
        "{:?}",
        msgs(&t)
    );
}

pub(super) fn sm(s: &str) -> StringMatch {
    s.parse().expect("string match")
}

#[test]
fn a_named_target_port_pods_disagree_on_takes_the_first_pod_by_name() {
    let yaml = format!(
        "{}{}{}",
        pod("demo", "b", "198.18.0.2", "app: a").replace("8080", "9090"),
        pod("demo", "a", "198.18.0.1", "app: a"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: demo}\nspec: {clusterIP: 198.18.128.1, selector: {app: a}, ports: [{port: 80, targetPort: http}]}\n",
    );
    let t = run(&yaml);
    assert!(t.errors.is_empty(), "{:?}", msgs(&t));
    assert_eq!(service(&t.config, "s").ports[0].target_port, 8080);
}
