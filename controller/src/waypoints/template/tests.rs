use serde_json::json;

use super::*;

#[test]
fn overlay_merges_objects_and_named_lists_and_ours_wins() {
    let base = json!({
        "spec": {
            "replicas": 2,
            "template": {"spec": {
                "tolerations": [{"key": "a"}],
                "containers": [
                    {"name": "waypoint", "resources": {"requests": {"cpu": "1"}}, "image": "base"},
                    {"name": "extra", "image": "sidecar"},
                ],
            }},
        },
    });
    let ours = json!({
        "spec": {
            "selector": {"matchLabels": {"x": "y"}},
            "template": {"spec": {
                "containers": [{"name": "waypoint", "image": "ours", "args": ["--a"]}],
            }},
        },
    });
    let got = overlay(&base, ours);
    assert_eq!(
        got,
        json!({
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"x": "y"}},
                "template": {"spec": {
                    "tolerations": [{"key": "a"}],
                    "containers": [
                        {"name": "waypoint", "resources": {"requests": {"cpu": "1"}}, "image": "ours", "args": ["--a"]},
                        {"name": "extra", "image": "sidecar"},
                    ],
                }},
            },
        })
    );
}

#[test]
fn overlay_replaces_scalars_and_unnamed_lists() {
    let cases = [
        (json!({"a": 1}), json!({"a": 2}), json!({"a": 2})),
        (json!({"a": [1, 2]}), json!({"a": [3]}), json!({"a": [3]})),
        (json!({"a": {"b": 1}}), json!({"a": "s"}), json!({"a": "s"})),
        (json!(null), json!({"a": 1}), json!({"a": 1})),
        (
            json!({"l": [{"key": "k"}]}),
            json!({"l": [{"name": "n"}]}),
            json!({"l": [{"name": "n"}]}),
        ),
    ];
    for (base, ours, want) in cases {
        assert_eq!(overlay(&base, ours.clone()), want, "{base} under {ours}");
    }
}

#[test]
fn the_shipped_template_parses_and_agrees_with_the_waypoints_ports() {
    let t = WaypointTemplate::shipped();
    let d = &t.deployment;
    assert_eq!(d["spec"]["replicas"], 1);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["name"], super::super::desired::CONTAINER);
    assert_eq!(
        c["readinessProbe"]["httpGet"]["port"],
        super::super::desired::READINESS_PORT
    );
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        super::super::desired::METRICS_PORT.to_string()
    );
    assert_eq!(t.service["spec"]["type"], "ClusterIP");
}

#[test]
fn bad_templates_are_refused_with_what_to_fix() {
    let cases: &[(&str, &str)] = &[
        ("spec: [unclosed", "not YAML"),
        (
            "apiVersion: v1\nkind: ConfigMap\n",
            "document 1 is v1 ConfigMap",
        ),
        ("kind: Deployment\n", "(no apiVersion) Deployment"),
        (
            "apiVersion: v1\nkind: Service\n---\napiVersion: v1\nkind: Service\n",
            "two Service documents",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
            "metadata.name is set",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {ownerReferences: []}\n",
            "metadata.ownerReferences is set",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nspec: {selector: {matchLabels: {a: b}}}\n",
            "spec.selector is set",
        ),
    ];
    for (text, want) in cases {
        let err = WaypointTemplate::parse("t.yaml", text).expect_err(text);
        let msg = err.to_string();
        assert!(
            msg.contains("t.yaml") && msg.contains(want),
            "{text:?}: {msg}"
        );
    }
    // Comments only, or one kind only, is fine: the other has no base.
    let t = WaypointTemplate::parse("t.yaml", "# nothing\n").unwrap();
    assert_eq!(t, WaypointTemplate::default());
    let t = WaypointTemplate::parse(
        "t.yaml",
        "apiVersion: v1\nkind: Service\nspec: {type: ClusterIP}\n",
    )
    .unwrap();
    assert!(t.deployment.is_null());
}
