//! `deploy/daemonset`, checked the way CI can: rendered by `kubectl
//! kustomize` (base and every overlay), validated offline and strictly
//! against the Kubernetes schemas (`kubernetes-validate`), every
//! container's arguments parsed by the binaries' own parsers (args.rs),
//! the Grafana dashboard held against the metric names the code exports,
//! and applied to a real kube-apiserver, server-side dry run first, with
//! the RBAC rules exercised there (cluster.rs). Each check also gets a
//! broken copy, which it must reject.
//!
//! Custom resources (the GatewayClass) are validated against their CRD's
//! schema by the real API server in cluster.rs, with strict field
//! validation: there is no offline step for them.

#[path = "deploy_manifests/args.rs"]
mod args;
#[path = "deploy_manifests/cluster.rs"]
mod cluster;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use trellis_e2e::deploy::{
    self, promql, DeployError, Rendered, Variant, CNI_AGENT, CONTROLLER, NAMESPACE, NODE_PROXY,
};
use trellis_e2e::kube;

/// The custom resources of the tree (validated by the API server).
const CUSTOM_KINDS: [&str; 1] = ["GatewayClass"];
/// Cluster-scoped kinds; everything else lives in [`NAMESPACE`].
const CLUSTER_KINDS: [&str; 5] = [
    "Namespace",
    "CustomResourceDefinition",
    "GatewayClass",
    "ClusterRole",
    "ClusterRoleBinding",
];
/// Where the dashboard is, and its ConfigMap.
const DASHBOARD_FILE: &str = "base/grafana/trellis-dashboard.json";
const DASHBOARD_CONFIGMAP: &str = "trellis-grafana-dashboard";

fn render(v: Variant) -> Rendered {
    Rendered::of(v).unwrap_or_else(|e| panic!("{}: {e}", v.rel()))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A copy of deploy/daemonset in a temp dir, changed by `edit`.
fn broken_copy(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("file type").is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).expect("copy");
            }
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("trellis-deploy-")
        .tempdir()
        .expect("tempdir");
    copy(&deploy::deploy_dir(), dir.path());
    edit(dir.path());
    dir
}

/// Replaces `from` (which must be there) with `to` in `file`.
fn replace_in(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).expect("read");
    assert!(text.contains(from), "{} has no {from:?}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).expect("write");
}

/// Removes `flag` from the args of every container of a workload object.
fn strip_flag(object: &mut Value, flag: &str) {
    let containers = object
        .pointer_mut("/spec/template/spec/containers")
        .and_then(Value::as_array_mut);
    for c in containers.into_iter().flatten() {
        if let Some(args) = c.get_mut("args").and_then(Value::as_array_mut) {
            args.retain(|a| a != flag);
        }
    }
}

/// The ConfigMap of the controller's `--waypoint-template`, before its hash.
const WAYPOINT_TEMPLATE_CONFIGMAP: &str = "trellis-waypoint-template";

#[test]
fn kustomize_renders_base_and_every_overlay() {
    let base = render(Variant::Base);
    let want: BTreeSet<(String, String)> = [
        ("Namespace", NAMESPACE),
        ("CustomResourceDefinition", "trafficpolicies.trellis.dev"),
        ("GatewayClass", "trellis-waypoint"),
        ("ServiceAccount", CONTROLLER),
        ("ServiceAccount", NODE_PROXY),
        ("ServiceAccount", CNI_AGENT),
        ("ClusterRole", CONTROLLER),
        ("ClusterRoleBinding", CONTROLLER),
        ("Role", "trellis-controller-ca"),
        ("RoleBinding", "trellis-controller-ca"),
        ("ClusterRole", CNI_AGENT),
        ("ClusterRoleBinding", CNI_AGENT),
        ("Role", CNI_AGENT),
        ("RoleBinding", CNI_AGENT),
        ("Deployment", CONTROLLER),
        ("Service", CONTROLLER),
        ("PodDisruptionBudget", CONTROLLER),
        ("DaemonSet", NODE_PROXY),
        ("DaemonSet", CNI_AGENT),
        ("ConfigMap", DASHBOARD_CONFIGMAP),
        ("ConfigMap", WAYPOINT_TEMPLATE_CONFIGMAP),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    // The template's ConfigMap has kustomize's content hash appended (so a
    // change rolls the controller): compared without it.
    let got: BTreeSet<_> = base
        .inventory()
        .into_iter()
        .map(|(k, n)| match n.strip_prefix(WAYPOINT_TEMPLATE_CONFIGMAP) {
            Some(hash) if hash.len() == 11 && hash.starts_with('-') => {
                (k, WAYPOINT_TEMPLATE_CONFIGMAP.to_string())
            }
            _ => (k, n),
        })
        .collect();
    assert_eq!(got, want, "the base's objects");
    for o in &base.objects {
        let (kind, name) = (&o["kind"], &o["metadata"]["name"]);
        let ns = o["metadata"]["namespace"].as_str();
        if CLUSTER_KINDS.contains(&kind.as_str().unwrap_or_default()) {
            assert_eq!(ns, None, "{kind} {name} is cluster-scoped");
        } else {
            assert_eq!(ns, Some(NAMESPACE), "{kind} {name}");
        }
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/part-of"], "trellis",
            "{kind} {name}"
        );
    }

    // The overlay adds --istio-labels to the controller and the CNI agent,
    // once each, and changes nothing else.
    let compat = render(Variant::IstioCompat);
    assert_eq!(compat.inventory(), base.inventory());
    for (c, want) in [
        (compat.controller(), 1),
        (compat.cni_agent(), 1),
        (compat.node_proxy(), 0),
        (base.controller(), 0),
        (base.cni_agent(), 0),
    ] {
        let c = c.expect("container");
        let n = c.args.iter().filter(|a| *a == "--istio-labels").count();
        assert_eq!(n, want, "{}: {:?}", c.name, c.args);
    }
    for (mut o, b) in compat.objects.into_iter().zip(&base.objects) {
        strip_flag(&mut o, "--istio-labels");
        assert_eq!(&o, b, "the overlay changed more than --istio-labels");
    }
}

#[test]
fn broken_kustomizations_are_refused() {
    // A resource file that is not there.
    let missing = broken_copy(|d| {
        replace_in(
            &d.join("base/kustomization.yaml"),
            "  - gatewayclass.yaml\n",
            "  - gatewayclass.yaml\n  - missing.yaml\n",
        )
    });
    match Rendered::of_dir(&missing.path().join("base")) {
        Err(DeployError::Kustomize { stderr, .. }) => {
            assert!(stderr.contains("missing.yaml"), "{stderr}")
        }
        other => panic!("a missing resource rendered: {other:?}"),
    }
    // The overlay's patch checks it edits the container it means: a
    // renamed container makes it fail instead of patching the wrong one.
    let renamed = broken_copy(|d| {
        replace_in(
            &d.join("base/controller/deployment.yaml"),
            "- name: controller\n",
            "- name: sidecar\n",
        )
    });
    let overlay = renamed.path().join(Variant::IstioCompat.rel());
    assert!(
        matches!(
            Rendered::of_dir(&overlay),
            Err(DeployError::Kustomize { .. })
        ),
        "the overlay patched a container it did not check"
    );
}

#[test]
fn images_are_set_in_one_place_with_the_workspace_version() {
    let cargo = std::fs::read_to_string(workspace().join("Cargo.toml")).expect("Cargo.toml");
    let version = cargo
        .split("[workspace.package]")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"'))
        .expect("workspace version");
    for v in Variant::ALL {
        let r = render(v);
        for (c, image) in [
            (r.controller(), "controller"),
            (r.node_proxy(), "node-proxy"),
            (r.cni_agent(), "cni"),
        ] {
            let c = c.expect("container");
            assert_eq!(
                c.image,
                format!("ghcr.io/trellis-mesh/{image}:{version}"),
                "{}",
                c.name
            );
        }
    }
}

#[test]
fn built_in_kinds_pass_strict_offline_schemas() {
    let versions =
        std::fs::read_to_string(workspace().join("tests/kube/versions.env")).expect("versions.env");
    // The schema of the API server the cluster tests run (v1.37.2 → 1.37.0).
    let schema = deploy::schema_version(&versions).expect("KUBE_VERSION");
    let dir = tempfile::tempdir().expect("tempdir");
    for v in Variant::ALL {
        let r = render(v);
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, &r.yaml).expect("write");
        let got = deploy::validate_offline(&file, &schema).unwrap_or_else(|e| panic!("{e}"));
        assert!(got.errors.is_empty(), "{}: {:?}", v.rel(), got.errors);
        let want_passed: BTreeSet<String> = r
            .objects
            .iter()
            .filter(|o| !CUSTOM_KINDS.contains(&o["kind"].as_str().unwrap_or_default()))
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or_default().to_lowercase(),
                    o["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect();
        let passed: BTreeSet<String> = got.passed.into_iter().collect();
        assert_eq!(
            passed,
            want_passed,
            "{}: every built-in object validated",
            v.rel()
        );
        assert_eq!(got.no_schema, CUSTOM_KINDS, "{}", v.rel());
    }

    // Broken copies: a misplaced field (capabilities outside
    // securityContext) and a wrong type.
    let base = render(Variant::Base);
    type Edit = fn(&mut Value);
    let cases: [(&str, &str, Edit, &str); 2] = [
        (
            "DaemonSet",
            NODE_PROXY,
            |o| o["spec"]["template"]["spec"]["containers"][0]["capabilities"] = json!({}),
            "daemonset/trellis-node-proxy",
        ),
        (
            "Deployment",
            CONTROLLER,
            |o| o["spec"]["replicas"] = json!("two"),
            "deployment/trellis-controller",
        ),
    ];
    for (kind, name, edit, object) in cases {
        let stream: Vec<String> = base
            .objects
            .iter()
            .map(|o| {
                let mut o = o.clone();
                if o["kind"] == kind && o["metadata"]["name"] == name {
                    edit(&mut o);
                }
                o.to_string()
            })
            .collect();
        let file = dir.path().join("broken.yaml");
        std::fs::write(&file, stream.join("\n---\n")).expect("write");
        let got = deploy::validate_offline(&file, &schema).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            got.errors.iter().any(|e| e.contains(object)),
            "a broken {kind} {name} was not refused: {got:?}"
        );
        assert_eq!(got.errors.len(), 1, "only the broken object: {got:?}");
    }
}

#[test]
fn prerequisite_crds_are_the_versions_the_tests_run() {
    let script = std::fs::read_to_string(deploy::deploy_dir().join("install-prerequisites.sh"))
        .expect("install-prerequisites.sh");
    for (var, module) in [
        ("GATEWAY_API_VERSION", kube::GATEWAY_API),
        ("ISTIO_API_VERSION", kube::ISTIO_API),
    ] {
        let (_, want) = module.split_once('@').expect("module@version");
        assert_eq!(deploy::shell_assignment(&script, var), Some(want), "{var}");
    }
    let readme = std::fs::read_to_string(deploy::deploy_dir().join("README.md")).expect("README");
    for module in [kube::GATEWAY_API, kube::ISTIO_API] {
        assert!(readme.contains(module), "README.md does not name {module}");
    }
}

/// Every metric or label name of the dashboard's queries that the code
/// does not export, as "panel: name".
fn unexported_names(dashboard: &Value, source: &str) -> (Vec<String>, BTreeSet<String>) {
    let mut missing = Vec::new();
    let mut metrics = BTreeSet::new();
    for (title, expr) in promql::dashboard_queries(dashboard) {
        let names = promql::names(&expr).unwrap_or_else(|e| panic!("{title}: {e}"));
        for m in &names.metrics {
            if !promql::metric_exported(m, source) {
                missing.push(format!("{title}: metric {m}"));
            }
        }
        for l in &names.labels {
            if !promql::label_exported(l, source) {
                missing.push(format!("{title}: label {l}"));
            }
        }
        metrics.extend(names.metrics);
    }
    (missing, metrics)
}

/// The production source of the crates that export metrics: every `.rs`
/// under their `src/`, without test files and `#[cfg(test)]` tails.
fn production_source() -> String {
    fn walk(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if path.is_dir() {
                if name != "tests" {
                    walk(&path, out);
                }
            } else if name.ends_with(".rs") && name != "tests.rs" {
                let text = std::fs::read_to_string(&path).expect("read");
                out.push_str(text.split("#[cfg(test)]").next().unwrap_or_default());
            }
        }
    }
    let mut out = String::new();
    for krate in [
        "core",
        "node-proxy",
        "waypoint",
        "controller",
        "cni",
        "hbone",
    ] {
        walk(&workspace().join(krate).join("src"), &mut out);
    }
    out
}

#[test]
fn dashboard_uses_only_metric_and_label_names_the_code_exports() {
    let file = deploy::deploy_dir().join(DASHBOARD_FILE);
    let text = std::fs::read_to_string(&file).expect("dashboard");
    // kustomize's configMapGenerator carries the file as it is.
    let base = render(Variant::Base);
    let cm = base
        .get("ConfigMap", DASHBOARD_CONFIGMAP)
        .expect("configmap");
    assert_eq!(cm["data"]["trellis-dashboard.json"], text.as_str());
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");

    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let source = production_source();
    let (missing, metrics) = unexported_names(&dashboard, &source);
    assert!(missing.is_empty(), "not exported by the code: {missing:#?}");
    for family in [
        "istio_tcp_",
        "istio_requests_total",
        "istio_request_duration_milliseconds",
        "pilot_",
        "citadel_",
        "trellis_proxy_",
        "trellis_waypoint_",
        "trellis_controller_",
    ] {
        assert!(
            metrics.iter().any(|m| m.starts_with(family)),
            "the dashboard shows nothing of {family}*: {metrics:?}"
        );
    }

    // A broken copy: a made-up metric and label are reported.
    let mut broken = dashboard.clone();
    broken["panels"][1]["targets"]
        .as_array_mut()
        .expect("targets")
        .push(serde_json::json!({"refId": "Z", "expr": "sum by (made_up_label) (rate(istio_tcp_made_up_total[5m]))"}));
    let (missing, _) = unexported_names(&broken, &source);
    assert_eq!(missing.len(), 2, "{missing:?}");
    assert!(
        missing[0].ends_with("metric istio_tcp_made_up_total"),
        "{missing:?}"
    );
    assert!(missing[1].ends_with("label made_up_label"), "{missing:?}");
}
