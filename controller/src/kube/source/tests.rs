use super::*;
use crate::objects::ObjectKey;
use serde_json::json;

fn pod(name: &str, ip: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "n"}, "spec": {"containers": []}, "status": {"podIP": ip}})
}

fn policy(action: &str) -> Value {
    json!({"metadata": {"name": "p", "namespace": "n"}, "spec": {"action": action}})
}

fn res(kind: Kind) -> Resource {
    *DEFAULT_RESOURCES.iter().find(|r| r.kind == kind).unwrap()
}

fn key(kind: Kind, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: "n".into(),
        name: name.into(),
    }
}

/// Each step, then the pod names in the store and the number of
/// errors the step reported.
#[test]
fn applier_keeps_the_store_in_step_with_the_api() {
    let p = res(Kind::Pod);
    let ap = res(Kind::AuthorizationPolicy);
    let mut a = Applier {
        store: ObjectStore::new(),
        known: BTreeMap::new(),
        listed: BTreeSet::new(),
    };
    let steps: Vec<(&str, Msg, &[&str], usize)> = vec![
        (
            "first list",
            (
                p,
                WatchEvent::Listed(vec![pod("a", "10.0.0.1"), pod("b", "10.0.0.2")]),
            ),
            &["a", "b"],
            0,
        ),
        (
            "added",
            (p, WatchEvent::Upsert(pod("c", "10.0.0.3"))),
            &["a", "b", "c"],
            0,
        ),
        (
            "deleted",
            (p, WatchEvent::Delete(pod("a", ""))),
            &["b", "c"],
            0,
        ),
        (
            "relist drops what is gone",
            (
                p,
                WatchEvent::Listed(vec![pod("c", "10.0.0.3"), pod("d", "10.0.0.4")]),
            ),
            &["c", "d"],
            0,
        ),
        (
            "rejected update keeps the pod",
            (
                p,
                WatchEvent::Upsert(
                    json!({"metadata": {"name": "c", "namespace": "n"}, "spec": {"nodeNmae": "x"}}),
                ),
            ),
            &["c", "d"],
            1,
        ),
        (
            "absent kind lists empty",
            (p, WatchEvent::Listed(vec![])),
            &[],
            0,
        ),
    ];
    for (name, msg, want, errors) in steps {
        let mut out = KubeChanges::default();
        a.apply(msg, &mut out);
        let pods: Vec<String> = a
            .store
            .of_kind(Kind::Pod)
            .map(|(k, _)| k.name.clone())
            .collect();
        assert_eq!(pods, want, "{name}");
        assert_eq!(out.errors.len(), errors, "{name}: {:?}", out.errors);
    }
    // A rejected policy update keeps the last good policy.
    let mut out = KubeChanges::default();
    a.apply((ap, WatchEvent::Upsert(policy("ALLOW"))), &mut out);
    a.apply((ap, WatchEvent::Upsert(policy("AUDIT"))), &mut out);
    assert_eq!(out.errors.len(), 1);
    assert!(a.store.get(&key(Kind::AuthorizationPolicy, "p")).is_some());
    assert_eq!(a.store.errors().len(), 1);
    a.apply((ap, WatchEvent::Upsert(policy("DENY"))), &mut out);
    assert!(
        a.store.errors().is_empty(),
        "a good version clears the error"
    );
    assert_eq!(a.listed, BTreeSet::from([Kind::Pod]));
}
