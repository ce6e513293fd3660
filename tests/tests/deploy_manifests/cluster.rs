//! The tree against a real kube-apiserver (`trellis_e2e::kube`): the
//! prerequisite CRDs installed by the tree's own script, every variant
//! applied with a server-side dry run and then for real, read back; broken
//! copies refused by the server (schema, CRD schema with strict field
//! validation, semantic checks); and the RBAC rules asked, as each
//! component's service account, whether they allow what the code calls
//! and refuse the rest.

use serde_json::{json, Value};
use trellis_e2e::deploy::{self, Rendered, Variant, CNI_AGENT, CONTROLLER, NAMESPACE, NODE_PROXY};
use trellis_e2e::kube::{self, KubeApiServer};

use super::render;

fn start() -> Option<KubeApiServer> {
    if !kube::require_kube() {
        return None;
    }
    Some(KubeApiServer::start(None, None).unwrap_or_else(|e| panic!("{e}")))
}

fn kubectl(server: &KubeApiServer, args: &[&str], stdin: Option<&str>) -> String {
    server
        .kubectl(args, stdin)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn get_json(server: &KubeApiServer, kind: &str, name: &str) -> Value {
    let out = kubectl(
        server,
        &["get", kind, name, "-n", NAMESPACE, "-o", "json"],
        None,
    );
    serde_json::from_str(&out).expect("JSON")
}

fn container_args(workload: &Value, container: &str) -> Vec<String> {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == container))
        .and_then(|c| serde_json::from_value(c["args"].clone()).ok())
        .unwrap_or_default()
}

/// The rendered Namespace, created first: a server-side dry run persists
/// nothing, so namespaced objects in the same dry run would not find it.
fn create_namespace(server: &KubeApiServer, r: &Rendered) {
    let ns = r
        .get("Namespace", NAMESPACE)
        .expect("namespace")
        .to_string();
    kubectl(server, &["apply", "--server-side", "-f", "-"], Some(&ns));
}

#[test]
fn every_variant_applies_to_a_real_api_server_dry_run_then_for_real() {
    let Some(server) = start() else { return };
    deploy::install_prerequisites(server.kubeconfig()).unwrap_or_else(|e| panic!("{e}"));
    let base = render(Variant::Base);
    create_namespace(&server, &base);
    for v in Variant::ALL {
        let r = render(v);
        let dir = v.dir();
        let dir = dir.to_str().expect("utf-8 path");
        let dry = kubectl(
            &server,
            &["apply", "--server-side", "--dry-run=server", "-k", dir],
            None,
        );
        assert!(dry.contains("(server dry run)"), "{}: {dry}", v.rel());
        kubectl(&server, &["apply", "--server-side", "-k", dir], None);
        // Every object is there, and the workloads read back as rendered.
        let names = kubectl(&server, &["get", "-f", "-", "-o", "name"], Some(&r.yaml));
        assert_eq!(
            names.lines().count(),
            r.objects.len(),
            "{}: {names}",
            v.rel()
        );
        for (kind, name, container, rendered) in [
            ("daemonset", NODE_PROXY, "node-proxy", r.node_proxy()),
            ("daemonset", CNI_AGENT, "cni-agent", r.cni_agent()),
            ("deployment", CONTROLLER, "controller", r.controller()),
        ] {
            let got = container_args(&get_json(&server, kind, name), container);
            assert_eq!(
                got,
                rendered.expect("container").args,
                "{} {kind} {name}",
                v.rel()
            );
        }
    }
    kubectl(
        &server,
        &[
            "wait",
            "--for=condition=Established",
            "crd/trafficpolicies.trellis.dev",
            "--timeout=30s",
        ],
        None,
    );

    // Broken copies, each refused by the server's dry run: (what, edit, words).
    type Edit = fn(&mut Value);
    let cases: [(&str, &str, Edit, &str); 4] = [
        (
            "GatewayClass",
            "trellis-waypoint",
            |o| o["spec"]["controllerName"] = json!("not a controller path"),
            "controllerName",
        ),
        (
            "GatewayClass",
            "trellis-waypoint",
            |o| o["spec"]["controllerNmae"] = json!("trellis.dev/x"),
            "field not declared in schema",
        ),
        (
            "DaemonSet",
            NODE_PROXY,
            |o| o["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] = json!(0),
            "cannot be 0 when maxSurge is 0",
        ),
        (
            "PodDisruptionBudget",
            CONTROLLER,
            |o| o["spec"]["maxUnavailable"] = json!(1),
            "minAvailable and maxUnavailable cannot be both set",
        ),
    ];
    for (kind, name, edit, words) in cases {
        let mut o = base.get(kind, name).expect("object").clone();
        edit(&mut o);
        let err = server
            .kubectl(
                &["apply", "--server-side", "--dry-run=server", "-f", "-"],
                Some(&o.to_string()),
            )
            .expect_err(&format!("a broken {kind} {name} was accepted"));
        assert!(err.to_string().contains(words), "{kind} {name}: {err}");
    }
}

fn account(sa: &str) -> String {
    format!("system:serviceaccount:{NAMESPACE}:{sa}")
}

/// Whether service account `sa` may `verb` the resource, by a
/// SubjectAccessReview (the API server's own authorizer).
fn allowed(
    server: &KubeApiServer,
    sa: &str,
    verb: &str,
    resource: &str,
    ns: &str,
    name: &str,
) -> bool {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": account(sa),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{NAMESPACE}"), "system:authenticated"],
            "resourceAttributes": {
                "namespace": ns, "verb": verb, "group": group, "resource": resource,
                "subresource": subresource, "name": name,
            },
        },
    });
    let out = kubectl(
        server,
        &["create", "-f", "-", "-o", "json"],
        Some(&review.to_string()),
    );
    let v: Value = serde_json::from_str(&out).expect("JSON");
    v["status"]["allowed"].as_bool().unwrap_or(false)
}

#[test]
fn rbac_allows_what_the_code_calls_and_refuses_the_rest() {
    let Some(server) = start() else { return };
    let base = render(Variant::Base);
    // Only the namespace, accounts and RBAC: nothing else is needed to ask.
    let rbac: Vec<String> = base
        .objects
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some(
                    "Namespace"
                        | "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .map(Value::to_string)
        .collect();
    kubectl(
        &server,
        &["apply", "--server-side", "-f", "-"],
        Some(&rbac.join("\n")),
    );

    let c = CONTROLLER;
    let np = NODE_PROXY;
    let a = CNI_AGENT;
    let ns = NAMESPACE;
    // (account, verb, resource[.group][/subresource], namespace, name, allowed)
    let cases: &[(&str, &str, &str, &str, &str, bool)] = &[
        // The controller: watched kinds, list and watch only.
        (c, "list", "namespaces", "", "", true),
        (c, "watch", "namespaces", "", "", true),
        (c, "get", "namespaces", "", "demo", false),
        (c, "get", "pods", "demo", "p", true),
        (c, "watch", "pods", "", "", true),
        (c, "delete", "pods", "demo", "p", false),
        (
            c,
            "list",
            "httproutes.gateway.networking.k8s.io",
            "",
            "",
            true,
        ),
        (
            c,
            "watch",
            "grpcroutes.gateway.networking.k8s.io",
            "",
            "",
            true,
        ),
        (
            c,
            "list",
            "authorizationpolicies.security.istio.io",
            "",
            "",
            true,
        ),
        (
            c,
            "create",
            "authorizationpolicies.security.istio.io",
            "demo",
            "",
            false,
        ),
        (
            c,
            "watch",
            "workloadentries.networking.istio.io",
            "",
            "",
            true,
        ),
        (c, "list", "trafficpolicies.trellis.dev", "", "", true),
        (
            c,
            "create",
            "tokenreviews.authentication.k8s.io",
            "",
            "",
            true,
        ),
        // Its CA Secret, and no other.
        (c, "get", "secrets", ns, "cacerts", true),
        (c, "get", "secrets", ns, "other", false),
        (c, "list", "secrets", ns, "", false),
        (c, "get", "secrets", "istio-system", "cacerts", false),
        // Waypoints: get, list, create, patch, delete; no update, no watch
        // of what it makes (but Services are watched for translation).
        (c, "patch", "deployments.apps", "demo", "wp", true),
        (c, "create", "deployments.apps", "demo", "wp", true),
        (c, "delete", "deployments.apps", "demo", "wp", true),
        (c, "update", "deployments.apps", "demo", "wp", false),
        (c, "watch", "deployments.apps", "", "", false),
        (c, "get", "daemonsets.apps", ns, NODE_PROXY, false),
        (c, "patch", "services", "demo", "wp", true),
        (c, "watch", "services", "", "", true),
        (c, "patch", "serviceaccounts", "demo", "wp", true),
        (c, "list", "configmaps", "", "", true),
        (
            c,
            "get",
            "gateways.gateway.networking.k8s.io",
            "demo",
            "wp",
            true,
        ),
        (
            c,
            "patch",
            "gateways.gateway.networking.k8s.io",
            "demo",
            "wp",
            false,
        ),
        (
            c,
            "patch",
            "gateways.gateway.networking.k8s.io/status",
            "demo",
            "wp",
            true,
        ),
        (
            c,
            "update",
            "gateways.gateway.networking.k8s.io/finalizers",
            "demo",
            "wp",
            true,
        ),
        // The node proxy: nothing.
        (np, "get", "pods", "demo", "p", false),
        (np, "list", "namespaces", "", "", false),
        (
            np,
            "create",
            "tokenreviews.authentication.k8s.io",
            "",
            "",
            false,
        ),
        (np, "get", "secrets", ns, "cacerts", false),
        (np, "get", "configmaps", ns, "trellis-ca-root-cert", false),
        // The CNI agent: namespaces and pods to read, its own DaemonSet.
        (a, "get", "pods", "demo", "p", true),
        (a, "list", "pods", "", "", true),
        (a, "watch", "namespaces", "", "", true),
        (a, "patch", "pods", "demo", "p", false),
        (a, "get", "daemonsets.apps", ns, CNI_AGENT, true),
        (a, "get", "daemonsets.apps", ns, NODE_PROXY, false),
        (a, "delete", "daemonsets.apps", ns, CNI_AGENT, false),
        (a, "get", "secrets", ns, "cacerts", false),
        (
            a,
            "create",
            "tokenreviews.authentication.k8s.io",
            "",
            "",
            false,
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(sa, verb, res, ns, name, want)| {
            allowed(&server, sa, verb, res, ns, name) != *want
        })
        .map(|(sa, verb, res, ns, name, want)| {
            format!("{sa} {verb} {res} {ns}/{name}: want allowed={want}")
        })
        .collect();
    assert!(wrong.is_empty(), "RBAC disagrees with the code: {wrong:#?}");

    // A real call as each account: the controller's server-side apply that
    // makes a new object (authorized as patch and as create), and its delete;
    // the node proxy refused.
    kubectl(&server, &["create", "namespace", "demo"], None);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "wp-root", "namespace": "demo"}, "data": {"root-cert.pem": "x"}});
    let as_controller = format!("--as={}", account(CONTROLLER));
    kubectl(
        &server,
        &[
            "apply",
            "--server-side",
            "--field-manager=trellis-controller",
            &as_controller,
            "-f",
            "-",
        ],
        Some(&cm.to_string()),
    );
    kubectl(
        &server,
        &[
            "delete",
            "configmap",
            "wp-root",
            "-n",
            "demo",
            &as_controller,
        ],
        None,
    );
    let err = server
        .kubectl(
            &[
                "get",
                "pods",
                "-A",
                &format!("--as={}", account(NODE_PROXY)),
            ],
            None,
        )
        .expect_err("the node proxy listed pods");
    assert!(err.to_string().contains("forbidden"), "{err}");
}
