use serde_json::json;

use super::containers::flag_value;
use super::promql::{label_exported, metric_exported, names};
use super::*;

fn set(items: &[&str]) -> std::collections::BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn promql_names_are_read_or_refused() {
    // (expr, metrics, labels) or the words of the error
    type Want = Result<(&'static [&'static str], &'static [&'static str]), &'static str>;
    let cases: &[(&str, Want)] = &[
        ("up", Ok((&["up"], &[]))),
        (
            r#"sum by (reporter, connection_security_policy) (rate(istio_tcp_connections_opened_total{reporter=~"source|destination"}[$__rate_interval]))"#,
            Ok((
                &["istio_tcp_connections_opened_total"],
                &["connection_security_policy", "reporter"],
            )),
        ),
        (
            r#"histogram_quantile(0.99, sum by (le, destination_service) (rate(istio_request_duration_milliseconds_bucket{reporter="waypoint"}[5m])))"#,
            Ok((
                &["istio_request_duration_milliseconds_bucket"],
                &["destination_service", "le", "reporter"],
            )),
        ),
        (
            "sum(a_total) - sum without(x) (b_total) / on(y) group_left(z) c_total",
            Ok((&["a_total", "b_total", "c_total"], &["x", "y", "z"])),
        ),
        (
            r#"max(g{rule!="a,b}"}) offset 5m and bool 1e3"#,
            Ok((&["g"], &["rule"])),
        ),
        // Grafana's variables are neither metrics nor labels.
        (
            "rate(m_total{instance=~\"$node\"}[${__rate_interval}])",
            Ok((&["m_total"], &["instance"])),
        ),
        (r#"m{a="unterminated}"#, Err("unterminated string")),
        ("m{a=\"b\"", Err("unclosed '{'")),
        ("rate(m[5m)", Err("unclosed '['")),
        ("sum by (a", Err("unclosed '('")),
        ("sum by (a=b) (m)", Err("in a label list")),
    ];
    for (expr, want) in cases {
        match (names(expr), want) {
            (Ok(got), Ok((metrics, labels))) => {
                assert_eq!(got.metrics, set(metrics), "metrics of {expr}");
                assert_eq!(got.labels, set(labels), "labels of {expr}");
            }
            (Err(e), Err(words)) => assert!(e.contains(words), "{expr}: {e}"),
            (got, want) => panic!("{expr}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn exported_names_are_string_literals_of_the_source() {
    let source = r#"counter_vec("istio_requests_total", "Requests", &["rule"]); histogram("istio_request_bytes"); metric("citadel_server_success_cert_issuance_count")"#;
    let cases: &[(&str, bool)] = &[
        ("istio_requests_total", true),
        ("istio_request_bytes_bucket", true),
        ("istio_request_bytes_sum", true),
        ("istio_request_bytes_count", true),
        ("citadel_server_success_cert_issuance_count", true),
        // Only whole literals: a prefix or an unknown suffix is not a name.
        ("istio_requests", false),
        ("istio_request_bytes_total", false),
        ("istio_made_up_total", false),
    ];
    for (name, want) in cases {
        assert_eq!(metric_exported(name, source), *want, "{name}");
    }
    assert!(label_exported("rule", source));
    assert!(label_exported("le", source), "Prometheus adds le");
    assert!(
        label_exported("instance", source),
        "Prometheus adds instance"
    );
    assert!(
        !label_exported("pod", source),
        "pod comes from relabelling, not the code"
    );
}

#[test]
fn schema_version_is_the_api_servers_minor() {
    let cases: &[(&str, Result<&str, &str>)] = &[
        ("KUBE_VERSION=v1.37.2\nETCD_VERSION=v3.7.4\n", Ok("1.37.0")),
        ("# c\nKUBE_VERSION=1.36.0\n", Ok("1.36.0")),
        ("ETCD_VERSION=v3.7.4\n", Err("no KUBE_VERSION")),
        ("KUBE_VERSION=latest\n", Err("not vMAJOR.MINOR.PATCH")),
        ("KUBE_VERSION=v1.x.0\n", Err("not vMAJOR.MINOR.PATCH")),
    ];
    for (env, want) in cases {
        match (schema_version(env), want) {
            (Ok(v), Ok(w)) => assert_eq!(v, *w),
            (Err(e), Err(words)) => assert!(e.contains(words), "{env:?}: {e}"),
            (got, want) => panic!("{env:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn validator_output_is_sorted_into_passed_unknown_and_errors() {
    let out = "INFO f passed for resource namespace/trellis-system against version 1.37\n\
        ERROR f did not validate for resource daemonset/x against version 1.37: bad\n\
        WARN f Couldn't find schema for kind GatewayClass with api version gateway.networking.k8s.io/v1 for kubernetes version 1.37\n\
        FATAL kubernetes-validate 1.37.0 does not support kubernetes version 1.99.0\n";
    let v = parse_validation(out);
    assert_eq!(v.passed, ["namespace/trellis-system"]);
    assert_eq!(v.no_schema, ["GatewayClass"]);
    assert_eq!(v.errors.len(), 2, "{v:?}");
    assert!(v.errors[0].contains("daemonset/x"));
}

#[test]
fn flags_are_found_in_both_spellings() {
    let args: Vec<String> = ["--a=1", "--b", "2", "--c"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let cases: &[(&str, Option<&str>)] = &[
        ("--a", Some("1")),
        ("--b", Some("2")),
        ("--c", None),
        ("--d", None),
        ("--", None),
    ];
    for (flag, want) in cases {
        assert_eq!(flag_value(&args, flag), *want, "{flag}");
    }
}

fn workload(container: serde_json::Value, volumes: serde_json::Value) -> serde_json::Value {
    json!({"kind": "DaemonSet", "spec": {"template": {"spec": {
        "containers": [container], "volumes": volumes}}}})
}

#[test]
fn containers_are_read_with_env_and_mounts_or_refused() {
    let ds = workload(
        json!({"name": "p", "image": "img:1", "command": ["bin"], "args": ["--x=1"],
            "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "CLUSTER_ID", "value": "K"}],
            "ports": [{"name": "http", "containerPort": 15021}, {"containerPort": 1}],
            "volumeMounts": [{"name": "tok", "mountPath": "/t", "readOnly": true},
                             {"name": "run", "mountPath": "/var/run/x"}]}),
        json!([{"name": "tok", "projected": {"sources": [{"serviceAccountToken":
                    {"audience": "istio-ca", "expirationSeconds": 600, "path": "istio-token"}}]}},
               {"name": "run", "hostPath": {"path": "/var/run/x"}}]),
    );
    let c = Container::from_workload(&ds, "p").expect("reads");
    assert_eq!(c.program(), Some("bin"));
    assert_eq!(c.flag("--x"), Some("1"));
    assert_eq!(c.port("http"), Some(15021));
    assert_eq!(c.ports.len(), 1, "unnamed ports are left out");
    let pod = PodFacts {
        node_name: "n1".into(),
        pod_name: "p-1".into(),
        namespace: "ns".into(),
    };
    assert_eq!(
        c.env_values(&pod).expect("resolves"),
        [
            ("NODE_NAME".to_string(), "n1".to_string()),
            ("CLUSTER_ID".to_string(), "K".to_string())
        ]
    );
    let token = c.mount_holding(Path::new("/t/istio-token")).expect("token");
    assert!(token.read_only);
    assert_eq!(
        token.source,
        MountSource::Token {
            audience: "istio-ca".into(),
            path: "istio-token".into(),
            expiration_seconds: Some(600)
        }
    );
    assert_eq!(
        c.mount_holding(Path::new("/var/run/x/zds.sock"))
            .map(|m| &m.source),
        Some(&MountSource::HostPath("/var/run/x".into()))
    );
    assert!(c.mount_holding(Path::new("/etc/other")).is_none());

    // (container, volumes, words of the error)
    let bad: &[(serde_json::Value, serde_json::Value, &str)] = &[
        (
            json!({"name": "q", "image": "i"}),
            json!([]),
            "no container \"p\"",
        ),
        (json!({"name": "p"}), json!([]), "image is missing"),
        (
            json!({"name": "p", "image": "i", "args": "--x"}),
            json!([]),
            "args is \"--x\", not a list",
        ),
        (
            json!({"name": "p", "image": "i", "args": [1]}),
            json!([]),
            "args holds 1",
        ),
        (
            json!({"name": "p", "image": "i", "volumeMounts": [{"name": "v", "mountPath": "/v"}]}),
            json!([]),
            "names no volume",
        ),
        (
            json!({"name": "p", "image": "i", "env": [{"name": "S", "valueFrom": {"secretKeyRef": {}}}]}),
            json!([]),
            "neither a value nor a fieldRef",
        ),
    ];
    for (container, volumes, words) in bad {
        let err = Container::from_workload(&workload(container.clone(), volumes.clone()), "p")
            .expect_err("refused");
        assert!(err.contains(words), "{container}: {err}");
    }
    let odd = workload(
        json!({"name": "p", "image": "i", "env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}),
        json!([]),
    );
    let err = Container::from_workload(&odd, "p")
        .expect("reads")
        .env_values(&pod)
        .expect_err("status.podIP is not resolved");
    assert!(err.contains("status.podIP"), "{err}");
}

#[test]
fn yaml_streams_are_objects_or_refused_with_the_document() {
    let ok = "apiVersion: v1\nkind: A\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: B\n";
    let objects = parse_stream(ok).expect("parses");
    assert_eq!(objects.len(), 2, "empty documents are skipped");
    let cases: &[(&str, usize, &str)] = &[
        ("apiVersion: v1\nkind: A\n---\nmetadata: {}\n", 1, "no kind"),
        (
            "---\napiVersion: v1\nkind: A\n---\nmetadata: {}\n",
            2,
            "no kind",
        ),
        ("apiVersion: v1\nkind: A\n---\nkind: [\n", 1, ""),
    ];
    for (yaml, index, words) in cases {
        let (i, e) = parse_stream(yaml).expect_err("refused");
        assert_eq!(i, *index, "{yaml:?}: {e}");
        assert!(e.contains(words), "{yaml:?}: {e}");
    }
}

#[test]
fn shell_assignments_are_read() {
    let script = "#!/bin/bash\nGATEWAY_API_VERSION=v1.3.0\nX=\"a b\"\n";
    assert_eq!(
        shell_assignment(script, "GATEWAY_API_VERSION"),
        Some("v1.3.0")
    );
    assert_eq!(shell_assignment(script, "X"), Some("a b"));
    assert_eq!(shell_assignment(script, "Y"), None);
}
