//! The incremental path against the whole one: for a table of object
//! changes, the previous snapshot patched with the diff must serve exactly
//! what a snapshot built from scratch serves, and name as changed exactly
//! the resources that differ.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use trellis_api::config::LocalConfig;
use trellis_api::pb::istio::security::Authorization as PbAuthorization;
use trellis_api::pb::istio::workload::Address;
use trellis_api::pb::trellis::config::v1::ConfigObject;

use super::*;
use crate::objects::{translate, ObjectStore, TranslateOptions};
use crate::xds::{Snapshot, SnapshotError, ADDRESS, AUTHORIZATION, CONFIG_OBJECT};

/// A resource's decoded message: compared decoded, because a workload in
/// two services carries a protobuf map whose byte order is not fixed.
#[derive(Debug, PartialEq)]
enum Msg {
    Address(Box<Address>),
    Authorization(PbAuthorization),
    Config(ConfigObject),
}

fn decode(any: &prost_types::Any) -> Msg {
    let bytes = any.value.as_slice();
    match any.type_url.as_str() {
        ADDRESS => Msg::Address(Box::new(Address::decode(bytes).expect("address"))),
        AUTHORIZATION => Msg::Authorization(PbAuthorization::decode(bytes).expect("authz")),
        CONFIG_OBJECT => Msg::Config(ConfigObject::decode(bytes).expect("config object")),
        other => panic!("unexpected type {other}"),
    }
}

/// (node, aliases, members sorted, message) per (type, name).
type Served = BTreeMap<(String, String), (Option<String>, Vec<String>, Vec<String>, Msg)>;

fn served_objects(objects: Vec<XdsObject>) -> Served {
    let mut out = Served::new();
    for o in objects {
        let mut members = o.members;
        members.sort();
        let prev = out.insert(
            (o.type_url.to_string(), o.name),
            (o.node, o.aliases, members, decode(&o.resource)),
        );
        assert!(prev.is_none(), "a name twice");
    }
    out
}

/// What the snapshot serves, checking its indexes on the way: every alias
/// resolves to its entry and each node lists exactly its entries.
fn served(s: &Snapshot) -> Served {
    let mut out = Served::new();
    for type_url in [ADDRESS, AUTHORIZATION, CONFIG_OBJECT] {
        let table = s.table(type_url);
        let mut nodes: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (name, e) in table.entries() {
            for alias in &e.aliases {
                assert_eq!(
                    table.resolve(alias).map(|(n, _)| n),
                    Some(name),
                    "alias {alias}"
                );
            }
            if let Some(node) = &e.node {
                nodes.entry(node).or_default().insert(name);
            }
            let mut members = e.members.clone();
            members.sort();
            out.insert(
                (type_url.to_string(), name.to_string()),
                (
                    e.node.clone(),
                    e.aliases.clone(),
                    members,
                    decode(&e.resource),
                ),
            );
        }
        for (node, names) in nodes {
            let listed: BTreeSet<&str> = table.on_node(node).map(|(n, _)| n).collect();
            assert_eq!(listed, names, "node {node}");
        }
        assert_eq!(table.len(), out.keys().filter(|k| k.0 == type_url).count());
    }
    out
}

fn from_scratch(cfg: &LocalConfig) -> Snapshot {
    let mut p = Snapshot::default().patch();
    diff(&LocalConfig::default(), cfg, "net").apply_to(&mut p);
    p.apply().expect("from scratch")
}

const AMBIENT: &str = "trellis.dev/dataplane-mode: ambient";

fn pod(name: &str, node: &str, ip: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, labels: {{{labels}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n"
    )
}

fn service(name: &str, vip: &str, selector: &str, target: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec: {{clusterIP: {vip}, selector: {{{selector}}}, ports: [{{port: 80, targetPort: {target}}}]}}\n"
    )
}

fn policy(name: &str, spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n{spec}\n")
}

const NS_WIDE: &str = "  action: DENY\n  rules: [{from: [{source: {namespaces: [bad]}}]}]";
const SELECTS_A: &str = "  selector: {matchLabels: {app: a}}\n  action: ALLOW\n  rules: [{from: [{source: {namespaces: [demo]}}]}]";
const L7: &str = "  targetRefs: [{kind: Service, group: \"\", name: sa}]\n  action: DENY\n  rules: [{to: [{operation: {methods: [POST]}}]}]";

/// One object per source, so a case edits one object.
fn base() -> Vec<(String, String)> {
    let objects = [
        (
            "ns",
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: demo, labels: {{{AMBIENT}}}}}\n"),
        ),
        ("p1", pod("p1", "n1", "198.18.0.1", "app: a")),
        ("p2", pod("p2", "n1", "198.18.0.2", "app: a, tier: front")),
        ("p3", pod("p3", "n2", "198.18.0.3", "app: b")),
        ("p4", pod("p4", "n2", "198.18.0.4", "app: b")),
        ("sa", service("sa", "198.18.128.1", "app: a", "8080")),
        ("sb", service("sb", "198.18.128.2", "app: b", "http")),
        // p2 is in two services.
        ("sf", service("sf", "198.18.128.3", "tier: front", "8080")),
        ("deny", policy("deny", NS_WIDE)),
        ("allow-a", policy("allow-a", SELECTS_A)),
        ("l7", policy("l7", L7)),
    ];
    objects
        .into_iter()
        .map(|(n, y)| (n.to_string(), y))
        .collect()
}

fn store_of(sources: &[(String, String)]) -> ObjectStore {
    let mut s = ObjectStore::new();
    for (name, yaml) in sources {
        let errors = s.load_text(name, yaml, false);
        assert!(errors.is_empty(), "{name}: {errors:?}");
    }
    s
}

fn config_of(store: &ObjectStore) -> LocalConfig {
    let t = translate(store, &TranslateOptions::default());
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    t.config
}

/// (what the case does, the edits, the (type, name) of every entry that
/// must be named as changed)
type Case = (&'static str, Vec<Edit>, Vec<(&'static str, String)>);

enum Edit {
    Put(&'static str, String),
    Drop(&'static str),
}
use Edit::{Drop, Put};

fn uid(pod: &str) -> String {
    format!("Kubernetes//Pod/demo/{pod}")
}

fn svc(name: &str) -> String {
    format!("demo/{name}.demo.svc.cluster.local")
}

#[test]
fn a_patched_snapshot_serves_what_one_built_from_scratch_serves() {
    // (case, edits, the resources a node proxy or waypoint must be sent
    // again: every (type, name) whose entry changed). The expectations are
    // written out so that re-encoding too much fails as well as too little.
    let a = |n: &str| (ADDRESS, n.to_string());
    let cases: Vec<Case> = vec![
        (
            "add a pod a service selects",
            vec![Put("p5", pod("p5", "n3", "198.18.0.5", "app: b"))],
            vec![a(&uid("p5")), a(&svc("sb"))],
        ),
        (
            "update a pod's health-neutral label: nothing served changes",
            vec![Put("p4", pod("p4", "n2", "198.18.0.4", "app: b, note: x"))],
            vec![],
        ),
        (
            "update a pod's labels: it leaves one service for another",
            vec![Put("p4", pod("p4", "n2", "198.18.0.4", "app: a"))],
            vec![a(&uid("p4")), a(&svc("sa")), a(&svc("sb"))],
        ),
        (
            "remove a pod",
            vec![Drop("p3")],
            vec![a(&uid("p3")), a(&svc("sb"))],
        ),
        (
            "move a pod to another node",
            vec![Put("p1", pod("p1", "n9", "198.18.0.1", "app: a"))],
            vec![a(&uid("p1"))],
        ),
        (
            "change a pod's address",
            vec![Put("p3", pod("p3", "n2", "198.18.0.33", "app: b"))],
            vec![a(&uid("p3"))],
        ),
        (
            "one pod's address moves to a new pod",
            vec![
                Drop("p3"),
                Put("p6", pod("p6", "n2", "198.18.0.3", "app: b")),
            ],
            vec![a(&uid("p3")), a(&uid("p6")), a(&svc("sb"))],
        ),
        (
            "add a namespace-wide policy",
            vec![Put("deny2", policy("deny2", NS_WIDE))],
            vec![(AUTHORIZATION, "demo/deny2".into())],
        ),
        (
            "remove a policy that selects workloads",
            vec![Drop("allow-a")],
            vec![
                (AUTHORIZATION, "demo/allow-a".into()),
                a(&uid("p1")),
                a(&uid("p2")),
            ],
        ),
        (
            "update a policy in place",
            vec![Put(
                "deny",
                policy("deny", &NS_WIDE.replace("bad", "worse")),
            )],
            vec![(AUTHORIZATION, "demo/deny".into())],
        ),
        (
            "update an L7 policy",
            vec![Put("l7", policy("l7", &L7.replace("POST", "PUT")))],
            vec![(CONFIG_OBJECT, "l7-policy/demo/l7".into())],
        ),
        (
            "change a service's port: its endpoints carry it",
            vec![Put("sa", service("sa", "198.18.128.1", "app: a", "9090"))],
            vec![a(&svc("sa")), a(&uid("p1")), a(&uid("p2"))],
        ),
        (
            "change a service's VIP",
            vec![Put("sb", service("sb", "198.18.128.9", "app: b", "http"))],
            vec![a(&svc("sb"))],
        ),
        (
            "add a service",
            vec![Put("sc", service("sc", "198.18.128.4", "app: b", "8080"))],
            vec![a(&svc("sc")), a(&uid("p3")), a(&uid("p4"))],
        ),
        (
            "remove a service of a pod in two",
            vec![Drop("sf")],
            vec![a(&svc("sf")), a(&uid("p2"))],
        ),
        (
            "the namespace leaves the mesh: every workload changes protocol",
            vec![Put(
                "ns",
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n".into(),
            )],
            vec![a(&uid("p1")), a(&uid("p2")), a(&uid("p3")), a(&uid("p4"))],
        ),
        ("nothing changes", vec![], vec![]),
    ];
    for (case, edits, want) in cases {
        let sources = base();
        let before = config_of(&store_of(&sources));
        let mut store = store_of(&sources);
        for e in edits {
            match e {
                Put(name, yaml) => {
                    let errors = store.load_text(name, &yaml, false);
                    assert!(errors.is_empty(), "{case}: {errors:?}");
                }
                Drop(name) => assert!(store.remove_source(name), "{case}: {name}"),
            }
        }
        let after = config_of(&store);

        let old = from_scratch(&before);
        let mut patch = old.patch();
        let d = diff(&before, &after, "net");
        d.apply_to(&mut patch);
        let patched = patch.apply().unwrap_or_else(|e| panic!("{case}: {e}"));
        let scratch = from_scratch(&after);
        assert_eq!(served(&patched), served(&scratch), "{case}");
        // Byte for byte too: encoding is deterministic (a workload in two
        // services included), so the versions agree.
        assert_eq!(versions(&patched), versions(&scratch), "{case}");
        assert_eq!(patched.version(), scratch.version(), "{case}");
        // The version is kept up to date by the patch, not recomputed.
        assert_eq!(patched.version(), rebuilt_version(&patched), "{case}");

        // Exactly the entries that differ are named as changed.
        let changes = patched.changes().expect("a patch names its changes");
        assert_eq!(changes.parent, old.version(), "{case}");
        let named: BTreeSet<(String, String)> = changes
            .names
            .iter()
            .flat_map(|(t, names)| names.iter().map(move |n| (t.clone(), n.clone())))
            .collect();
        let want: BTreeSet<(String, String)> =
            want.into_iter().map(|(t, n)| (t.to_string(), n)).collect();
        assert_eq!(named, want, "{case}");
        let (o, p) = (served(&old), served(&patched));
        let differ: BTreeSet<(String, String)> = o
            .keys()
            .chain(p.keys())
            .filter(|k| o.get(*k) != p.get(*k))
            .cloned()
            .collect();
        assert!(differ.is_subset(&named), "{case}: {differ:?} not named");
    }
}

fn versions(s: &Snapshot) -> BTreeMap<(String, String), String> {
    [ADDRESS, AUTHORIZATION, CONFIG_OBJECT]
        .into_iter()
        .flat_map(|t| {
            s.table(t)
                .entries()
                .map(move |(n, e)| ((t.to_string(), n.to_string()), e.version.clone()))
        })
        .collect()
}

/// The version a whole build gives the same entries.
fn rebuilt_version(s: &Snapshot) -> String {
    let mut b = Snapshot::builder();
    for type_url in [ADDRESS, AUTHORIZATION, CONFIG_OBJECT] {
        for (name, e) in s.table(type_url).entries() {
            b.add(
                type_url,
                name,
                e.node.clone(),
                e.aliases.clone(),
                e.resource.clone(),
            )
            .expect("add");
            b.members(type_url, name, e.members.clone())
                .expect("members");
        }
    }
    b.build().version().to_string()
}

#[test]
fn a_full_diff_encodes_what_encode_config_encodes() {
    let mut cfg = config_of(&store_of(&base()));
    // Membership stated on the workload side too (a config file's shape):
    // p3 names sa, which does not select it.
    let p3 = cfg
        .workloads
        .iter_mut()
        .find(|w| w.name == "p3")
        .expect("p3");
    p3.services.push(svc("sa"));
    let ours = served_objects(diff(&LocalConfig::default(), &cfg, "net").upserts);
    let theirs = served_objects(trellis_api::xds::encode_config(&cfg, "net"));
    assert_eq!(ours, theirs);
    let sa = &ours[&(ADDRESS.to_string(), svc("sa"))];
    assert_eq!(sa.2, vec![uid("p1"), uid("p2"), uid("p3")]);

    // And the change of that list alone re-encodes p3 and both services.
    let mut before = cfg.clone();
    before.workloads.iter_mut().for_each(|w| w.services.clear());
    let d = diff(&before, &cfg, "net");
    let names: BTreeSet<String> = d.upserts.iter().map(|o| o.name.clone()).collect();
    assert_eq!(names, BTreeSet::from([uid("p3"), svc("sa")]));
    assert!(d.removed.is_empty());
}

#[test]
fn a_conflict_fails_the_patch_and_leaves_the_base() {
    let cfg = config_of(&store_of(&base()));
    let old = from_scratch(&cfg);
    let mut bad = cfg.clone();
    // Two services claiming one VIP: a whole build refuses it too.
    let vip = bad.services[0].vips[0];
    bad.services[1].vips = vec![vip];
    let mut patch = old.patch();
    diff(&cfg, &bad, "net").apply_to(&mut patch);
    assert!(matches!(
        patch.apply(),
        Err(SnapshotError::AliasTaken { .. })
    ));
    let mut whole = Snapshot::builder();
    assert!(whole
        .add_all(trellis_api::xds::encode_config(&bad, "net"))
        .is_err());
    assert_eq!(served(&old), served(&from_scratch(&cfg)));
}
