use serde_json::{json, Value};

use super::*;
use crate::waypoints::desired::{Plan, Refusal};

fn gw(name: &str) -> GatewayRef {
    GatewayRef {
        namespace: "demo".into(),
        name: name.into(),
    }
}

/// A listed object: its name, labels and owner references.
fn item(name: &str, labels: Value, owners: Value) -> Value {
    json!({"metadata": {
        "name": name, "namespace": "demo", "uid": format!("uid-{name}"),
        "labels": labels, "ownerReferences": owners,
    }})
}

fn ours() -> Value {
    json!({"app.kubernetes.io/managed-by": "trellis-controller", "gateway.networking.k8s.io/gateway-name": "wp"})
}

fn owner(kind: &str, api_version: &str, name: &str) -> Value {
    json!([{"apiVersion": api_version, "kind": kind, "name": name, "uid": "g-1", "controller": true}])
}

fn gateway_owner(name: &str) -> Value {
    owner("Gateway", "gateway.networking.k8s.io/v1", name)
}

#[test]
fn only_objects_with_both_marks_are_the_controllers() {
    // (case, object, the Gateway it was made for)
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        (
            "label and owner",
            item("wp", ours(), gateway_owner("wp")),
            Some("wp"),
        ),
        (
            "owner named by the reference, not the object",
            item("other-name", ours(), gateway_owner("wp")),
            Some("wp"),
        ),
        (
            "an older Gateway API version",
            item(
                "wp",
                ours(),
                owner("Gateway", "gateway.networking.k8s.io/v1beta1", "wp"),
            ),
            Some("wp"),
        ),
        ("no label", item("wp", json!({}), gateway_owner("wp")), None),
        (
            "someone else's manager",
            item(
                "wp",
                json!({"app.kubernetes.io/managed-by": "Helm"}),
                gateway_owner("wp"),
            ),
            None,
        ),
        ("no owner", item("wp", ours(), json!([])), None),
        (
            "owned by a Deployment",
            item("wp", ours(), owner("Deployment", "apps/v1", "wp")),
            None,
        ),
        (
            "a Gateway of another group",
            item(
                "wp",
                ours(),
                owner("Gateway", "networking.istio.io/v1", "wp"),
            ),
            None,
        ),
        ("no metadata", json!({"kind": "Service"}), None),
    ];
    for (case, object, want) in cases {
        let got = made_by_us(ManagedKind::Service, &object);
        assert_eq!(
            got.as_ref().map(|m| m.gateway.name.as_str()),
            want,
            "{case}"
        );
        if let Some(m) = got {
            assert_eq!(m.uid, format!("uid-{}", m.name), "{case}");
            assert_eq!(m.gateway.namespace, "demo", "{case}");
        }
        assert_eq!(
            ours_for(ManagedKind::Service, &object, &gw("wp")),
            want == Some("wp"),
            "{case}"
        );
    }
    assert!(!ours_for(
        ManagedKind::Service,
        &item("wp", ours(), gateway_owner("wp")),
        &gw("other")
    ));
}

fn plan(name: &str, refused: bool) -> Plan {
    Plan {
        gateway: gw(name),
        uid: "g-1".into(),
        generation: 1,
        status: Value::Null,
        objects: if refused {
            Err(Refusal {
                reason: "Invalid",
                message: "x".into(),
            })
        } else {
            Ok(Vec::new())
        },
    }
}

#[test]
fn objects_of_gateways_without_a_plan_are_left_over() {
    let made = |kind, gateway: &str| Made {
        kind,
        name: gateway.into(),
        uid: format!("uid-{gateway}"),
        gateway: gw(gateway),
    };
    let plans: Plans = [plan("kept", false), plan("refused", true)]
        .into_iter()
        .map(|p| (p.gateway.clone(), p))
        .collect();
    let left = leftovers(
        vec![
            made(ManagedKind::Deployment, "kept"),
            made(ManagedKind::Deployment, "refused"),
            made(ManagedKind::Deployment, "gone"),
            made(ManagedKind::Service, "gone"),
        ],
        &plans,
    );
    let got: Vec<(String, Vec<ManagedKind>)> = left
        .into_iter()
        .map(|(g, ms)| (g.name, ms.into_iter().map(|m| m.kind).collect()))
        .collect();
    assert_eq!(
        got,
        [(
            "gone".to_string(),
            vec![ManagedKind::Deployment, ManagedKind::Service]
        )]
    );
}

#[test]
fn left_overs_are_deleted_only_when_a_fresh_read_agrees() {
    let class = |c: &str| json!({"spec": {"gatewayClassName": c}});
    let waypoint = class("trellis-waypoint");
    let istio = class("istio-waypoint");
    let other = class("nginx");
    // (case, read, istio_labels, verdict; Keep(words))
    type Case<'a> = (&'a str, Result<&'a Value, Option<u16>>, bool, Verdict);
    let cases: Vec<Case> = vec![
        ("gone", Err(Some(404)), false, Verdict::Delete),
        (
            "another class now",
            Ok(&other),
            false,
            Verdict::DeleteAndClearStatus,
        ),
        (
            "Istio's class, not honoured",
            Ok(&istio),
            false,
            Verdict::DeleteAndClearStatus,
        ),
        (
            "Istio's class, honoured",
            Ok(&istio),
            true,
            Verdict::Keep("is a waypoint".into()),
        ),
        (
            "a waypoint after all",
            Ok(&waypoint),
            false,
            Verdict::Keep("is a waypoint".into()),
        ),
        (
            "forbidden",
            Err(Some(403)),
            false,
            Verdict::Keep("HTTP 403".into()),
        ),
        (
            "no answer",
            Err(None),
            false,
            Verdict::Keep("no answer".into()),
        ),
    ];
    for (case, read, istio_labels, want) in cases {
        match (verdict(read, istio_labels), want) {
            (Verdict::Keep(why), Verdict::Keep(words)) => {
                assert!(why.contains(&words), "{case}: {why}")
            }
            (got, want) => assert_eq!(got, want, "{case}"),
        }
    }
}
