use serde_json::json;

use super::*;
use crate::kube::resources::DEFAULT_RESOURCES;
use crate::objects::Kind;

fn line(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

#[test]
fn watch_lines_become_steps() {
    let pod = json!({"metadata": {"name": "a", "namespace": "n", "resourceVersion": "7"}});
    let no_rv = json!({"metadata": {"name": "a"}});
    let cases: Vec<(&str, Vec<u8>, Step)> = vec![
        (
            "added",
            line(json!({"type": "ADDED", "object": pod})),
            Step::Upsert {
                object: pod.clone(),
                rv: Some("7".into()),
            },
        ),
        (
            "modified",
            line(json!({"type": "MODIFIED", "object": pod})),
            Step::Upsert {
                object: pod.clone(),
                rv: Some("7".into()),
            },
        ),
        (
            "deleted",
            line(json!({"type": "DELETED", "object": pod})),
            Step::Delete {
                object: pod.clone(),
                rv: Some("7".into()),
            },
        ),
        (
            "bookmark",
            line(json!({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})),
            Step::Bookmark { rv: "9".into() },
        ),
        (
            "bookmark without rv",
            line(json!({"type": "BOOKMARK", "object": no_rv})),
            Step::Restart {
                message: "bookmark without a resourceVersion".into(),
            },
        ),
        (
            "410 error",
            line(
                json!({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version: 1 (5)"}}),
            ),
            Step::Relist {
                message: "too old resource version: 1 (5)".into(),
            },
        ),
        (
            "gone by reason only",
            line(json!({"type": "ERROR", "object": {"reason": "Gone", "message": "m"}})),
            Step::Relist {
                message: "m".into(),
            },
        ),
        (
            "other error",
            line(json!({"type": "ERROR", "object": {"code": 500, "message": "etcd down"}})),
            Step::Restart {
                message: "watch error 500: etcd down".into(),
            },
        ),
        (
            "no object",
            line(json!({"type": "ADDED"})),
            Step::Restart {
                message: "watch event \"ADDED\" has no object".into(),
            },
        ),
        (
            "unknown type",
            line(json!({"type": "SYNC", "object": pod})),
            Step::Restart {
                message: "unknown watch event type \"SYNC\"".into(),
            },
        ),
    ];
    for (name, input, want) in cases {
        assert_eq!(classify(&input), want, "{name}");
    }
    assert!(
        matches!(classify(b"{not json"), Step::Restart { message } if message.starts_with("unreadable watch event"))
    );
}

fn res(kind: Kind) -> Resource {
    *DEFAULT_RESOURCES.iter().find(|r| r.kind == kind).unwrap()
}

#[test]
fn keys_and_source_names() {
    let cases = [
        (
            Kind::Pod,
            json!({"metadata": {"name": "a", "namespace": "n"}}),
            Some("kube:Pod/n/a"),
        ),
        (
            Kind::Namespace,
            json!({"metadata": {"name": "n"}}),
            Some("kube:Namespace/n"),
        ),
        (
            Kind::AuthorizationPolicy,
            json!({"metadata": {"name": "p", "namespace": "istio-system"}}),
            Some("kube:AuthorizationPolicy/istio-system/p"),
        ),
        (Kind::Pod, json!({"metadata": {"namespace": "n"}}), None),
        (Kind::Pod, json!({"metadata": {"name": ""}}), None),
    ];
    for (kind, object, want) in cases {
        let got = key_of(&res(kind), &object).map(|(_, s)| s);
        assert_eq!(got.as_deref(), want, "{object}");
    }
}

#[test]
fn list_items_get_their_kind_and_lose_managed_fields() {
    let r = res(Kind::Pod);
    let object = json!({
        "metadata": {"name": "a", "namespace": "n", "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:x": {}}}]},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
    });
    let (key, source) = key_of(&r, &object).unwrap();
    let (doc, k, _) = to_doc(&r, object, key.clone(), &source).expect("accepted");
    assert_eq!(k, key);
    assert_eq!(doc.source, "kube:Pod/n/a");
}

#[test]
fn a_rejected_object_keeps_its_key() {
    let r = res(Kind::AuthorizationPolicy);
    let object = json!({"metadata": {"name": "p", "namespace": "n"}, "spec": {"action": "AUDIT"}});
    let (key, source) = key_of(&r, &object).unwrap();
    let (_, rejected) = to_doc(&r, object, key.clone(), &source).unwrap_err();
    assert_eq!(rejected.key, Some(key));
    assert!(
        rejected.error.to_string().contains("is not supported"),
        "{}",
        rejected.error
    );
}
