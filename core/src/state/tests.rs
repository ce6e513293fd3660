use super::*;
use trellis_api::config::parse;
use trellis_api::{Kind, Resource, ResourceKey, Update};

const CONFIG: &str = r#"
workloads:
  - {uid: c, name: client, namespace: demo, addresses: [10.0.1.1], node: node1, authorizationPolicies: [other/cross-ns]}
  - {uid: s1, name: server-1, namespace: demo, addresses: [10.0.2.1, 'fd00::2:1'], node: node2,
     authorizationPolicies: [demo/server-only, demo/ns-wide, root/everyone]}
  - {uid: s2, name: server-2, namespace: demo, addresses: ['fd00::2:2'], node: node2}
  - {uid: s3, name: server-3, namespace: demo, addresses: [10.0.2.3], node: node2, status: Unhealthy}
  - {uid: o, name: other, namespace: other, addresses: [10.0.3.1], node: node1}
services:
  - name: server
    namespace: demo
    hostname: server.demo.svc.cluster.local
    vips: [10.96.0.1, 'fd00::96:1']
    ports: [{port: 80, targetPort: 8080}, {port: 443, targetPort: 8443}]
    endpoints: [s1, s2, s3]
policies:
  - {name: everyone, namespace: root, scope: GLOBAL, action: DENY}
  - {name: ns-wide, namespace: demo, scope: NAMESPACE, action: ALLOW}
  - {name: server-only, namespace: demo, scope: WORKLOAD_SELECTOR, action: ALLOW}
  - {name: other-ns, namespace: other, scope: NAMESPACE, action: ALLOW}
  - {name: cross-ns, namespace: other, scope: NAMESPACE, action: DENY}
"#;

fn state() -> ProxyState {
    ProxyState::new(parse(CONFIG).expect("test config parses")).expect("test config valid")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn policy_names(st: &ProxyState, uid: &str) -> Vec<String> {
    let w = st.workload_by_uid(uid).expect("workload exists");
    st.policies_for(w).map(|p| p.key()).collect()
}

#[test]
fn lookups_by_ip_uid_vip_and_node() {
    let st = state();
    assert_eq!(st.version(), 1);
    assert_eq!(
        st.workload_by_ip(ip("10.0.2.1")).map(|w| w.uid.as_str()),
        Some("s1")
    );
    assert_eq!(
        st.workload_by_ip(ip("fd00::2:1")).map(|w| w.uid.as_str()),
        Some("s1")
    );
    // A dual-stack socket reports IPv4 peers as mapped addresses.
    assert_eq!(
        st.workload_by_ip(ip("::ffff:10.0.1.1"))
            .map(|w| w.uid.as_str()),
        Some("c")
    );
    assert!(st.workload_by_ip(ip("10.9.9.9")).is_none());
    assert_eq!(
        st.workload_by_uid("o").map(|w| w.name.as_str()),
        Some("other")
    );
    assert!(st.workload_by_uid("nope").is_none());
    assert_eq!(
        st.service_by_vip(ip("fd00::96:1")).map(|s| s.name.as_str()),
        Some("server")
    );
    assert!(st.service_by_vip(ip("10.0.2.1")).is_none());
    let on2: Vec<&str> = st
        .workloads_on_node("node2")
        .iter()
        .map(|w| w.uid.as_str())
        .collect();
    assert_eq!(on2, ["s1", "s2", "s3"]);
    assert!(st.workloads_on_node("node9").is_empty());
    assert_eq!(st.config().workloads.len(), 5);
}

#[test]
fn endpoints_are_healthy_mapped_to_target_port_in_the_vip_family() {
    let st = state();
    let svc = st.service_by_vip(ip("10.96.0.1")).expect("service").clone();
    let got: Vec<(String, SocketAddr)> = st
        .endpoints(&svc, 80)
        .into_iter()
        .map(|(w, a)| (w.uid.clone(), a))
        .collect();
    // s3 is unhealthy; s2 has only IPv6, so it falls back to that.
    assert_eq!(
        got,
        vec![
            ("s1".to_string(), "10.0.2.1:8080".parse().unwrap()),
            ("s2".to_string(), "[fd00::2:2]:8080".parse().unwrap()),
        ]
    );
    let v6: Vec<SocketAddr> = st
        .endpoints_via(&svc, Some(ip("fd00::96:1")), 443)
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    assert_eq!(
        v6,
        vec![
            "[fd00::2:1]:8443".parse().unwrap(),
            "[fd00::2:2]:8443".parse().unwrap()
        ]
    );
    assert!(
        st.endpoints(&svc, 81).is_empty(),
        "unknown service port has no endpoints"
    );
}

#[test]
fn service_for_workload_port_matches_target_ports() {
    let st = state();
    let s1 = st.workload_by_uid("s1").unwrap().clone();
    assert_eq!(
        st.service_for_workload_port(&s1, 8443)
            .map(|s| s.name.clone()),
        Some("server".into())
    );
    assert!(
        st.service_for_workload_port(&s1, 80).is_none(),
        "80 is the service port, not the target"
    );
    let c = st.workload_by_uid("c").unwrap().clone();
    assert!(st.service_for_workload_port(&c, 8080).is_none());
}

#[test]
fn policies_for_combines_scopes_without_duplicates() {
    let st = state();
    // s1 lists a GLOBAL and a same-namespace policy too; each appears once.
    assert_eq!(
        policy_names(&st, "s1"),
        ["root/everyone", "demo/ns-wide", "demo/server-only"]
    );
    assert_eq!(policy_names(&st, "s2"), ["root/everyone", "demo/ns-wide"]);
    assert_eq!(
        policy_names(&st, "o"),
        ["root/everyone", "other/other-ns", "other/cross-ns"]
    );
    // A listed policy from another namespace is not dropped.
    assert_eq!(
        policy_names(&st, "c"),
        ["root/everyone", "demo/ns-wide", "other/cross-ns"]
    );
}

#[test]
fn new_state_refuses_an_invalid_config() {
    let mut cfg = parse(CONFIG).unwrap();
    cfg.workloads[1].uid = "c".into();
    match ProxyState::new(cfg) {
        Err(ConfigError::Invalid(p)) => {
            assert_eq!(p.len(), 2, "{p:#?}");
            assert!(p[0].starts_with("workloads[1].uid: \"c\" is already the uid of workloads[0]"));
            assert!(p[1].starts_with("services[0].endpoints[0]: no workload has uid \"s1\""));
        }
        other => panic!("expected an invalid config, got {other:?}"),
    }
}

#[test]
fn apply_bumps_version_notifies_and_keeps_state_on_error() {
    let store = StateStore::new(state());
    let mut rx = store.subscribe();
    assert_eq!(*rx.borrow_and_update(), 1);

    let mut cfg = parse(CONFIG).unwrap();
    cfg.workloads.retain(|w| w.uid != "o");
    assert_eq!(
        store.apply(Update::Snapshot(cfg.clone())).expect("valid"),
        2
    );
    assert!(rx.has_changed().expect("sender alive"));
    assert_eq!(*rx.borrow_and_update(), 2);
    assert!(store.load().workload_by_uid("o").is_none());

    // The same config again is not a change.
    assert_eq!(
        store.apply(Update::Snapshot(cfg.clone())).expect("valid"),
        2
    );
    assert!(!rx.has_changed().expect("sender alive"));

    let mut bad = cfg.clone();
    bad.services[0].endpoints.push("ghost".into());
    assert!(matches!(
        store.apply(Update::Snapshot(bad)),
        Err(ConfigError::Invalid(_))
    ));
    assert_eq!(store.version(), 2);
    assert!(!rx.has_changed().expect("sender alive"));
    assert_eq!(store.snapshot().config(), &cfg);
}

#[test]
fn deltas_go_through_the_same_validation_and_indexing() {
    let store = StateStore::new(state());
    let mut moved = store
        .load()
        .workload_by_uid("o")
        .expect("o")
        .as_ref()
        .clone();
    moved.addresses = vec![ip("10.0.3.9")];
    let v = store
        .apply(Update::Delta {
            upserts: vec![Resource::Workload(moved)],
            removals: vec![ResourceKey::new(Kind::Workload, "c")],
        })
        .expect("valid delta");
    assert_eq!(v, 2);
    let st = store.load();
    assert_eq!(
        st.workload_by_ip(ip("10.0.3.9")).map(|w| w.uid.as_str()),
        Some("o")
    );
    assert!(
        st.workload_by_ip(ip("10.0.3.1")).is_none(),
        "old address unindexed"
    );
    assert!(st.workload_by_uid("c").is_none());
    drop(st);

    // A delta with an object that is wrong on its own (an address another
    // workload owns) is refused whole, and the state stays.
    let mut thief = store
        .load()
        .workload_by_uid("o")
        .expect("o")
        .as_ref()
        .clone();
    thief.uid = "thief".into();
    thief.addresses = vec![ip("10.0.2.1")];
    let err = store
        .apply(Update::Delta {
            upserts: vec![Resource::Workload(thief)],
            removals: vec![ResourceKey::new(Kind::Workload, "s2")],
        })
        .expect_err("address owned by s1");
    assert!(err.to_string().contains("10.0.2.1"), "{err}");
    assert_eq!(store.version(), 2);
    assert!(store.load().workload_by_uid("s2").is_some());
    assert!(store.load().workload_by_uid("thief").is_none());

    // A delta extends a view that may be partial, so a service endpoint
    // that is not (yet) known is allowed; it is simply not routable.
    let v = store
        .apply(Update::Delta {
            upserts: vec![],
            removals: vec![ResourceKey::new(Kind::Workload, "s1")],
        })
        .expect("a dangling endpoint is fine in a delta");
    assert_eq!(v, 3);
    let st = store.load();
    let server = st.service_by_vip(ip("10.96.0.1")).expect("service").clone();
    let uids: Vec<_> = st
        .endpoints(&server, 80)
        .into_iter()
        .map(|(w, _)| w.uid.clone())
        .collect();
    assert_eq!(uids, ["s2"]);
    drop(st);

    // A delta that changes nothing is not a new version.
    let same = Update::Delta {
        upserts: vec![],
        removals: vec![ResourceKey::new(Kind::Workload, "never-there")],
    };
    assert_eq!(store.apply(same).expect("valid"), 3);
}

#[test]
fn membership_comes_from_either_side_without_duplicates() {
    // xDS carries membership on the workload; a file may list it on the
    // service, or both. Unknown services on a workload are ignored.
    let mut cfg = parse(CONFIG).unwrap();
    cfg.services[0].endpoints = vec!["s1".into()];
    for w in &mut cfg.workloads {
        match w.uid.as_str() {
            "s1" | "s2" => w.services = vec!["demo/server.demo.svc.cluster.local".into()],
            "o" => w.services = vec!["other/nowhere.other.svc.cluster.local".into()],
            _ => {}
        }
    }
    let st = ProxyState::index(cfg, 1);
    let server = st.service_by_vip(ip("10.96.0.1")).expect("service").clone();
    let uids: Vec<_> = st
        .endpoints(&server, 80)
        .into_iter()
        .map(|(w, _)| w.uid.clone())
        .collect();
    assert_eq!(uids, ["s1", "s2"]);
    let s2 = st.workload_by_uid("s2").expect("s2").clone();
    assert_eq!(
        st.service_for_workload_port(&s2, 8080)
            .map(|s| s.name.clone()),
        Some("server".into())
    );
    let o = st.workload_by_uid("o").expect("o").clone();
    assert!(st.service_for_workload_port(&o, 8080).is_none());
}

#[test]
fn concurrent_applies_get_distinct_versions() {
    let store = Arc::new(StateStore::new(state()));
    let base = parse(CONFIG).unwrap();
    let handles: Vec<_> = (0..4u8)
        .map(|t| {
            let store = store.clone();
            let base = base.clone();
            std::thread::spawn(move || {
                (0..25u8)
                    .map(|i| {
                        let mut cfg = base.clone();
                        cfg.workloads[0].name = format!("client-{t}-{i}");
                        store.apply(Update::Snapshot(cfg)).expect("valid")
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread ran"))
        .collect();
    all.sort_unstable();
    assert_eq!(all, (2..=101).collect::<Vec<u64>>());
    assert_eq!(store.version(), 101);
}

#[tokio::test(start_paused = true)]
async fn wait_for_sees_a_later_version_and_gives_up_at_its_deadline() {
    use std::time::Duration;
    let store = Arc::new(StateStore::new(state()));
    let wanted = |st: &ProxyState| st.workload_by_uid("late").map(|w| w.addresses.clone());

    // Already there: answered at once, whatever the deadline.
    assert_eq!(
        store
            .wait_for(Duration::ZERO, |st| st
                .workload_by_uid("c")
                .map(|w| w.uid.clone()))
            .await
            .as_deref(),
        Some("c")
    );

    // Not there: a version that does not bring it does not end the wait,
    // the one that does, does.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let unrelated = store.load().workload_by_uid("o").unwrap().as_ref().clone();
            let mut moved = unrelated;
            moved.addresses = vec![ip("10.0.3.7")];
            store
                .apply(Update::Delta {
                    upserts: vec![Resource::Workload(moved.clone())],
                    removals: vec![],
                })
                .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut late = moved;
            late.uid = "late".into();
            late.name = "late".into();
            late.addresses = vec![ip("10.0.9.9")];
            store
                .apply(Update::Delta {
                    upserts: vec![Resource::Workload(late)],
                    removals: vec![],
                })
                .unwrap()
        })
    };
    let started = tokio::time::Instant::now();
    let got = store.wait_for(Duration::from_secs(5), wanted).await;
    assert_eq!(got, Some(vec![ip("10.0.9.9")]));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(writer.await.unwrap(), 3);

    // Never there: None once the deadline passes.
    let started = tokio::time::Instant::now();
    let none = store
        .wait_for(Duration::from_secs(5), |st| {
            st.workload_by_uid("ghost").map(|_| ())
        })
        .await;
    assert_eq!(none, None);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}
