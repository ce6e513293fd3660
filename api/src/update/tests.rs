use super::*;
use crate::config::parse;

const BASE: &str = r#"
workloads:
  - {uid: a, name: a, namespace: demo, addresses: [10.0.0.1]}
  - {uid: b, name: b, namespace: demo, addresses: [10.0.0.2]}
  - {uid: c, name: c, namespace: demo, addresses: [10.0.0.3]}
services:
  - {name: web, namespace: demo, hostname: web.demo.svc.cluster.local, vips: [10.96.0.1], endpoints: [a]}
policies:
  - {name: deny-all, namespace: demo, scope: NAMESPACE, action: DENY}
"#;

fn base() -> LocalConfig {
    parse(BASE).expect("base config is valid")
}

fn workload(uid: &str, last_octet: u8) -> Resource {
    let yaml = format!(
        "workloads:\n  - {{uid: {uid}, name: {uid}, namespace: demo, addresses: [10.0.0.{last_octet}]}}\n"
    );
    Resource::Workload(parse(&yaml).expect("valid").workloads.remove(0))
}

fn key(kind: Kind, name: &str) -> ResourceKey {
    ResourceKey::new(kind, name)
}

/// `uid@last-octet` for each workload, in order: order and content at once.
fn workloads(cfg: &LocalConfig) -> Vec<String> {
    cfg.workloads
        .iter()
        .map(|w| format!("{}@{}", w.uid, w.addresses[0]))
        .collect()
}

#[test]
fn deltas_upsert_by_key_keep_order_and_remove() {
    type Case = (
        &'static str,
        Vec<Resource>,
        Vec<ResourceKey>,
        Vec<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "empty delta changes nothing",
            vec![],
            vec![],
            vec!["a@10.0.0.1", "b@10.0.0.2", "c@10.0.0.3"],
        ),
        (
            "new key appends",
            vec![workload("d", 4)],
            vec![],
            vec!["a@10.0.0.1", "b@10.0.0.2", "c@10.0.0.3", "d@10.0.0.4"],
        ),
        (
            "known key replaces in place",
            vec![workload("b", 9)],
            vec![],
            vec!["a@10.0.0.1", "b@10.0.0.9", "c@10.0.0.3"],
        ),
        (
            "removal keeps the order of the rest",
            vec![],
            vec![key(Kind::Workload, "b")],
            vec!["a@10.0.0.1", "c@10.0.0.3"],
        ),
        (
            "removing an unknown key is not an error",
            vec![],
            vec![key(Kind::Workload, "zz")],
            vec!["a@10.0.0.1", "b@10.0.0.2", "c@10.0.0.3"],
        ),
        (
            "a removal of another kind leaves workloads alone",
            vec![],
            vec![key(Kind::Service, "b")],
            vec!["a@10.0.0.1", "b@10.0.0.2", "c@10.0.0.3"],
        ),
        (
            "removed and upserted in one delta: the upsert wins",
            vec![workload("a", 7)],
            vec![key(Kind::Workload, "a")],
            vec!["b@10.0.0.2", "c@10.0.0.3", "a@10.0.0.7"],
        ),
        (
            "the later of two upserts of one key wins",
            vec![workload("e", 5), workload("e", 6)],
            vec![],
            vec!["a@10.0.0.1", "b@10.0.0.2", "c@10.0.0.3", "e@10.0.0.6"],
        ),
    ];
    for (name, upserts, removals, want) in cases {
        let got = Update::Delta { upserts, removals }.apply_to(&base());
        assert_eq!(workloads(&got), want, "{name}");
        assert_eq!(got.services, base().services, "{name}: services untouched");
        assert_eq!(got.policies, base().policies, "{name}: policies untouched");
    }
}

#[test]
fn keys_follow_istio_naming_per_kind() {
    let cfg = base();
    let cases = [
        (Resource::Workload(cfg.workloads[0].clone()), "workload a"),
        (
            Resource::Service(cfg.services[0].clone()),
            "service demo/web.demo.svc.cluster.local",
        ),
        (
            Resource::Authorization(cfg.policies[0].clone()),
            "authorization demo/deny-all",
        ),
    ];
    for (r, want) in cases {
        assert_eq!(r.key().to_string(), want);
    }
}

#[test]
fn services_and_policies_are_keyed_by_their_own_names() {
    let mut svc = base().services[0].clone();
    svc.vips = vec!["10.96.0.2".parse().unwrap()];
    let got = Update::Delta {
        upserts: vec![Resource::Service(svc.clone())],
        removals: vec![key(Kind::Authorization, "demo/deny-all")],
    }
    .apply_to(&base());
    assert_eq!(got.services, vec![svc]);
    assert!(got.policies.is_empty());
    assert_eq!(got.workloads, base().workloads);
}

#[test]
fn snapshot_replaces_everything() {
    let got = Update::Snapshot(LocalConfig::default()).apply_to(&base());
    assert_eq!(got, LocalConfig::default());
    assert_eq!(
        Update::Snapshot(LocalConfig::default()).summary(),
        "snapshot"
    );
    let delta = Update::Delta {
        upserts: vec![workload("d", 4)],
        removals: vec![key(Kind::Workload, "a"), key(Kind::Workload, "b")],
    };
    assert_eq!(delta.summary(), "delta +1 -2");
}
