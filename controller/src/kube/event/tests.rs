use serde_json::json;

use super::*;
use crate::kube::resources::DEFAULT_RESOURCES;
use crate::objects::Kind;

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
