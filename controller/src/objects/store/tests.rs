use super::*;
use crate::objects::kinds::Kind;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: demo}
spec:
  nodeName: node-a
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 198.18.0.1}
"#;

const SVC: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: s1, namespace: demo}
spec: {clusterIP: 198.18.128.1, selector: {app: x}, ports: [{port: 80, targetPort: 8080}]}
"#;

fn key(kind: Kind, ns: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: ns.into(),
        name: name.into(),
    }
}

fn texts(errors: &[ObjectError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

#[test]
fn good_documents_load_with_their_keys() {
    let mut s = ObjectStore::new();
    let errs = s.load_text("a.yaml", &format!("---\n{POD}\n---\n{SVC}\n---\n"), false);
    assert!(errs.is_empty(), "{:?}", texts(&errs));
    assert_eq!(s.len(), 2);
    assert!(s.get(&key(Kind::Pod, "demo", "p1")).is_some());
    assert_eq!(
        s.origin(&key(Kind::Service, "demo", "s1")).map(|d| d.index),
        Some(2)
    );
    assert_eq!(s.source_keys("a.yaml").len(), 2);
}

#[test]
fn a_namespaced_object_without_namespace_goes_to_default() {
    let mut s = ObjectStore::new();
    let errs = s.load_text(
        "a.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa}\n",
        false,
    );
    assert!(errs.is_empty());
    assert!(s.get(&key(Kind::ServiceAccount, "default", "sa")).is_some());
}

/// Each bad document is rejected on its own, with file, document, kind/name
/// and field; the good documents around it still load.
#[test]
fn bad_documents_are_rejected_alone_with_an_operator_message() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("malformed yaml", "metadata: {name: [unclosed\n", &["f.yaml, document 2", "not a valid manifest"]),
        ("not a mapping", "- just\n- a list\n", &["document 2", "not a mapping"]),
        (
            "unknown kind",
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
            &["document 2", "example.com/v1/Widget", "(named w)", "v1/Pod", "security.istio.io/v1/AuthorizationPolicy"],
        ),
        (
            "known kind, wrong apiVersion",
            "apiVersion: v2\nkind: Pod\nmetadata: {name: w}\n",
            &["unsupported kind v2/Pod"],
        ),
        (
            "unknown field in pod spec",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p2, namespace: demo}\nspec: {nodeNmae: x, containers: []}\n",
            &["f.yaml, document 2", "Pod demo/p2", "unknown field spec.nodeNmae"],
        ),
        (
            "unknown nested field",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p2, namespace: demo}\nspec: {containers: [{name: c, imagePullPolcy: Always}]}\n",
            &["unknown field spec.containers[0].imagePullPolcy"],
        ),
        (
            "unknown top-level field",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s2, namespace: demo}\nspecs: {}\n",
            &["Service demo/s2", "unknown field specs"],
        ),
        (
            "unknown metadata field on an own kind",
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm, namespace: demo, lables: {a: b}}\nspec: {address: 1.2.3.4}\n",
            &["WorkloadEntry demo/vm", "unknown field metadata.lables"],
        ),
        (
            "unknown field in policy spec",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ap, namespace: demo}\nspec: {acton: DENY}\n",
            &["AuthorizationPolicy demo/ap", "unknown field `acton`"],
        ),
        (
            "wrong type",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p3, namespace: demo}\nspec: {containers: 5}\n",
            &["Pod demo/p3", "invalid type"],
        ),
        (
            "audit action",
            "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: ap, namespace: demo}\nspec: {action: AUDIT}\n",
            &["spec.action Audit is not supported", "only ALLOW and DENY"],
        ),
        (
            "custom action",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ap, namespace: demo}\nspec: {action: CUSTOM, provider: {name: ext}}\n",
            &["spec.action Custom is not supported"],
        ),
        (
            "missing name",
            "apiVersion: v1\nkind: Namespace\nmetadata: {labels: {a: b}}\n",
            &["Namespace <no metadata.name>", "metadata.name is missing"],
        ),
    ];
    for (what, bad, wants) in cases {
        let mut s = ObjectStore::new();
        let text = format!("{POD}\n---\n{bad}\n---\n{SVC}");
        let errs = texts(&s.load_text("f.yaml", &text, false));
        assert_eq!(errs.len(), 1, "{what}: {errs:?}");
        for want in *wants {
            assert!(
                errs[0].contains(want),
                "{what}: {:?} lacks {want:?}",
                errs[0]
            );
        }
        assert_eq!(s.len(), 2, "{what}: the good documents still load");
    }
}

#[test]
fn route_kinds_are_read_and_their_typos_refused() {
    let mut s = ObjectStore::new();
    let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: demo}\nspec: {parentRefs: [{group: \"\", kind: Service, name: s}]}\n";
    assert!(s.load_text("r.yaml", text, false).is_empty());
    assert!(matches!(
        s.get(&key(Kind::HttpRoute, "demo", "r")),
        Some(Object::HttpRoute(_))
    ));
    let errs = texts(&s.load_text(
        "r.yaml",
        &text.replace("spec: {", "spec: {anything: goes, "),
        false,
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("unknown field `anything`"), "{errs:?}");
    assert!(
        matches!(
            s.get(&key(Kind::HttpRoute, "demo", "r")),
            Some(Object::HttpRoute(_))
        ),
        "the last good version stays"
    );
}

#[test]
fn last_good_version_stays_when_an_object_breaks() {
    let mut s = ObjectStore::new();
    assert!(s
        .load_text("f.yaml", &format!("{POD}\n---\n{SVC}"), false)
        .is_empty());
    // The pod now has a typo; the service changed its cluster IP.
    let broken_pod = POD.replace("nodeName", "nodeNmae");
    let new_svc = SVC.replace("198.18.128.1", "198.18.128.2");
    let errs = texts(&s.load_text("f.yaml", &format!("{broken_pod}\n---\n{new_svc}"), false));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("unknown field spec.nodeNmae"));
    let Some(Object::Pod(pod)) = s.get(&key(Kind::Pod, "demo", "p1")) else {
        panic!("last good pod dropped")
    };
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("node-a")
    );
    let Some(Object::Service(svc)) = s.get(&key(Kind::Service, "demo", "s1")) else {
        panic!("service missing")
    };
    assert_eq!(
        svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("198.18.128.2")
    );
    // A document so broken its key is unreadable keeps what sat at its position.
    let errs = s.load_text("f.yaml", &format!("{POD}\n---\nspec: [broken\n"), false);
    assert_eq!(errs.len(), 1);
    assert!(s.get(&key(Kind::Service, "demo", "s1")).is_some());
    // Fixed: the new version replaces the kept one.
    let errs = s.load_text("f.yaml", &POD.replace("node-a", "node-c"), false);
    assert!(errs.is_empty());
    let Some(Object::Pod(pod)) = s.get(&key(Kind::Pod, "demo", "p1")) else {
        panic!()
    };
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("node-c")
    );
    assert!(
        s.get(&key(Kind::Service, "demo", "s1")).is_none(),
        "removed from the file"
    );
}

#[test]
fn a_broken_new_object_is_simply_absent() {
    let mut s = ObjectStore::new();
    let errs = s.load_text("f.yaml", &POD.replace("nodeName", "nodeNmae"), false);
    assert_eq!(errs.len(), 1);
    assert!(s.is_empty());
}

#[test]
fn duplicates_across_files_first_by_name_wins_in_any_load_order() {
    for order in [["b.yaml", "a.yaml"], ["a.yaml", "b.yaml"]] {
        let mut s = ObjectStore::new();
        let mut errs = Vec::new();
        for f in order {
            let node = if f == "a.yaml" { "node-a" } else { "node-b" };
            errs = s.load_text(f, &POD.replace("node-a", node), false);
        }
        let msgs = texts(&errs);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(msgs[0].contains("Pod demo/p1 is defined twice: in file a.yaml, document 1 and in file b.yaml, document 1"), "{}", msgs[0]);
        let Some(Object::Pod(pod)) = s.get(&key(Kind::Pod, "demo", "p1")) else {
            panic!()
        };
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some("node-a")
        );
        // The winner's file deleted: the other definition takes over.
        assert!(s.remove_source("a.yaml"));
        assert!(s.duplicates().is_empty());
        let Some(Object::Pod(pod)) = s.get(&key(Kind::Pod, "demo", "p1")) else {
            panic!()
        };
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some("node-b")
        );
    }
}

#[test]
fn json_sources_parse() {
    let mut s = ObjectStore::new();
    let text = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"demo","labels":{"trellis.dev/dataplane-mode":"ambient"}}}"#;
    assert!(s.load_text("ns.json", text, true).is_empty());
    assert!(s.get(&key(Kind::Namespace, "", "demo")).is_some());
    let errs = s.load_text("ns.json", "{not json", true);
    assert_eq!(errs.len(), 1);
    assert!(
        s.get(&key(Kind::Namespace, "", "demo")).is_some(),
        "last good kept"
    );
}

#[test]
fn current_errors_stay_until_the_source_is_fixed_or_removed() {
    let mut s = ObjectStore::new();
    s.load_text("a.yaml", &POD.replace("nodeName", "nodeNmae"), false);
    s.load_text("b.yaml", SVC, false);
    s.load_text("c.yaml", SVC, false);
    let now = texts(&s.errors());
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(now[0].contains("file a.yaml, document 1") && now[0].contains("nodeNmae"));
    assert!(now[1].contains("defined twice: in file b.yaml"));
    s.load_text("a.yaml", POD, false);
    assert!(s.remove_source("c.yaml"));
    assert!(s.errors().is_empty());
}

#[test]
fn endpoint_slices_are_parsed_and_checked() {
    let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s1-abc, namespace: demo}\naddressType: IPv4\nendpoints: [{addresses: [198.18.0.1], conditions: {ready: true}}]\nports: [{port: 8080}]\n";
    let mut s = ObjectStore::new();
    assert!(s.load_text("e.yaml", slice, false).is_empty());
    assert!(matches!(
        s.get(&key(Kind::EndpointSlice, "demo", "s1-abc")),
        Some(Object::EndpointSlice(_))
    ));
    let errs = texts(&s.load_text("e.yaml", &slice.replace("ready", "raedy"), false));
    assert!(
        errs.len() == 1 && errs[0].contains("endpoints[0].conditions.raedy"),
        "{errs:?}"
    );
}

#[test]
fn of_kind_gives_exactly_that_kind_in_key_order() {
    let mut s = ObjectStore::new();
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n";
    let svc2 = SVC
        .replace("name: s1", "name: s0")
        .replace("198.18.128.1", "198.18.128.2");
    let text = format!("---\n{SVC}\n---\n{POD}\n---\n{ns}\n---\n{svc2}\n");
    let errs = s.load_text("a.yaml", &text, false);
    assert!(errs.is_empty(), "{:?}", texts(&errs));
    let of = |kind| -> Vec<ObjectKey> { s.of_kind(kind).map(|(k, _)| k.clone()).collect() };
    assert_eq!(
        of(Kind::Service),
        vec![
            key(Kind::Service, "demo", "s0"),
            key(Kind::Service, "demo", "s1")
        ]
    );
    assert_eq!(of(Kind::Pod), vec![key(Kind::Pod, "demo", "p1")]);
    assert_eq!(of(Kind::Namespace), vec![key(Kind::Namespace, "", "demo")]);
    assert!(of(Kind::Gateway).is_empty());
    let all: usize = Kind::ALL.iter().map(|k| s.of_kind(*k).count()).sum();
    assert_eq!(all, s.len());
}
