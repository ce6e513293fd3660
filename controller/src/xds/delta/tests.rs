use prost::Message;
use trellis_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use trellis_api::pb::google::rpc::Status;
use trellis_api::pb::istio::security::Authorization;
use trellis_api::pb::istio::workload::{address, Address, Service, Workload};

use super::*;
use crate::xds::snapshot::{Snapshot, SnapshotError};

fn workload(uid: &str, node: &str, ip: [u8; 4], image: &str) -> prost_types::Any {
    let w = Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: "default".into(),
        addresses: vec![ip.to_vec()],
        node: node.into(),
        canonical_revision: image.into(),
        ..Default::default()
    };
    any(
        ADDRESS,
        &Address {
            r#type: Some(address::Type::Workload(w)),
        },
    )
}

fn service(name: &str) -> prost_types::Any {
    let s = Service {
        name: name.into(),
        namespace: "default".into(),
        hostname: format!("{name}.default.svc"),
        ..Default::default()
    };
    any(
        ADDRESS,
        &Address {
            r#type: Some(address::Type::Service(s)),
        },
    )
}

fn authz(name: &str) -> prost_types::Any {
    any(
        AUTHORIZATION,
        &Authorization {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        },
    )
}

fn any(type_url: &str, m: &impl Message) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

/// (uid, node, ip, revision) workloads, services and policies.
fn snap(
    workloads: &[(&str, &str, [u8; 4], &str)],
    services: &[&str],
    policies: &[&str],
) -> Snapshot {
    let mut b = Snapshot::builder();
    for (uid, node, ip, rev) in workloads {
        let alias = format!("net/{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]);
        b.add(
            ADDRESS,
            *uid,
            Some(node.to_string()),
            vec![alias],
            workload(uid, node, *ip, rev),
        )
        .unwrap();
    }
    for s in services {
        b.add(
            ADDRESS,
            format!("default/{s}.default.svc"),
            None,
            vec![],
            service(s),
        )
        .unwrap();
    }
    for p in policies {
        b.add(
            AUTHORIZATION,
            format!("default/{p}"),
            None,
            vec![],
            authz(p),
        )
        .unwrap();
    }
    b.build()
}

fn node(n: &str) -> Caller {
    Caller::NodeProxy { node: n.into() }
}

fn waypoint() -> Caller {
    Caller::Waypoint {
        spiffe_id: "spiffe://td/ns/default/sa/wp".into(),
    }
}

fn req(type_url: &str, sub: &[&str], unsub: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn ack(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// (sent names, removed names) of one response.
fn names(r: &DeltaDiscoveryResponse) -> (Vec<&str>, Vec<&str>) {
    (
        r.resources.iter().map(|r| r.name.as_str()).collect(),
        r.removed_resources.iter().map(|s| s.as_str()).collect(),
    )
}

fn one(out: &Output) -> &DeltaDiscoveryResponse {
    assert_eq!(out.responses.len(), 1, "expected one response, got {out:?}");
    &out.responses[0]
}

const A1: (&str, &str, [u8; 4], &str) = ("a1", "node-a", [10, 0, 0, 1], "v1");
const A2: (&str, &str, [u8; 4], &str) = ("a2", "node-a", [10, 0, 0, 2], "v1");
const B1: (&str, &str, [u8; 4], &str) = ("b1", "node-b", [10, 0, 1, 1], "v1");

#[test]
fn wildcard_first_response_is_scoped_to_the_node() {
    let s = snap(&[A1, A2, B1], &["web"], &["allow"]);
    // (caller, type, expected names)
    let cases: &[(Caller, &str, &[&str])] = &[
        (node("node-a"), ADDRESS, &["a1", "a2"]),
        (node("node-b"), ADDRESS, &["b1"]),
        (node("node-c"), ADDRESS, &[]),
        (node("node-a"), AUTHORIZATION, &["default/allow"]),
        (node("node-a"), CONFIG_OBJECT, &[]),
        (
            waypoint(),
            ADDRESS,
            &["a1", "a2", "b1", "default/web.default.svc"],
        ),
        (waypoint(), AUTHORIZATION, &["default/allow"]),
    ];
    for (caller, type_url, want) in cases {
        for first in [req(type_url, &[], &[]), req(type_url, &["*"], &[])] {
            let mut st = Stream::new(caller.clone(), "t");
            let out = st.on_request(&s, first).unwrap();
            let r = one(&out);
            assert_eq!(names(r).0, *want, "{caller:?} {type_url}");
            assert!(r.removed_resources.is_empty());
            assert_eq!(r.type_url, *type_url);
            assert!(!r.nonce.is_empty());
            assert_eq!(r.system_version_info, s.version());
        }
    }
}

#[test]
fn wildcard_add_update_remove() {
    let mut st = Stream::new(node("node-a"), "t");
    let s0 = snap(&[A1, A2], &[], &[]);
    let r = st.on_request(&s0, req(ADDRESS, &["*"], &[])).unwrap();
    let nonce = one(&r).nonce.clone();
    assert_eq!(
        st.on_request(&s0, ack(ADDRESS, &nonce)).unwrap().events,
        vec![Event::Ack {
            type_url: ADDRESS.into()
        }]
    );

    // (next snapshot, sent, removed)
    let steps: Vec<(Snapshot, Vec<&str>, Vec<&str>)> = vec![
        (snap(&[A1, A2], &[], &[]), vec![], vec![]),
        (
            snap(&[A1, A2, ("a3", "node-a", [10, 0, 0, 3], "v1")], &[], &[]),
            vec!["a3"],
            vec![],
        ),
        (
            snap(
                &[
                    ("a1", "node-a", [10, 0, 0, 1], "v2"),
                    A2,
                    ("a3", "node-a", [10, 0, 0, 3], "v1"),
                ],
                &[],
                &[],
            ),
            vec!["a1"],
            vec![],
        ),
        (
            snap(
                &[
                    ("a1", "node-a", [10, 0, 0, 1], "v2"),
                    ("a3", "node-a", [10, 0, 0, 3], "v1"),
                ],
                &[],
                &[],
            ),
            vec![],
            vec!["a2"],
        ),
        // another node's change is nothing for node-a
        (
            snap(
                &[
                    ("a1", "node-a", [10, 0, 0, 1], "v2"),
                    ("a3", "node-a", [10, 0, 0, 3], "v1"),
                    B1,
                ],
                &[],
                &[],
            ),
            vec![],
            vec![],
        ),
        // a workload moved off node-a is removed for node-a
        (
            snap(
                &[
                    ("a1", "node-a", [10, 0, 0, 1], "v2"),
                    ("a3", "node-b", [10, 0, 0, 3], "v1"),
                    B1,
                ],
                &[],
                &[],
            ),
            vec![],
            vec!["a3"],
        ),
    ];
    for (i, (s, sent, removed)) in steps.iter().enumerate() {
        let out = st.on_snapshot(s);
        if sent.is_empty() && removed.is_empty() {
            assert!(out.responses.is_empty(), "step {i}: {out:?}");
            continue;
        }
        let r = one(&out);
        assert_eq!(names(r), (sent.clone(), removed.clone()), "step {i}");
        for res in &r.resources {
            assert_eq!(
                res.version,
                s.table(ADDRESS).resolve(&res.name).unwrap().1.version
            );
        }
    }
}

#[test]
fn node_proxy_gets_another_nodes_workload_by_name_and_alias() {
    let s = snap(&[A1, B1], &[], &[]);
    let mut st = Stream::new(node("node-a"), "t");
    // on-demand mode: "*" subscribed and unsubscribed together; the node's
    // own workloads come without being asked for
    let out = st.on_request(&s, req(ADDRESS, &["*"], &["*"])).unwrap();
    assert_eq!(names(one(&out)), (vec!["a1"], vec![]));

    // (subscribe, sent, aliases on the sent resource, removed)
    type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
    let cases: &[Case] = &[
        ("b1", &["b1"], &[], &[]),
        (
            "net/10.0.1.1",
            &["b1"],
            &["net/10.0.1.1"],
            &["net/10.0.1.1"],
        ),
        (
            "net/10.0.0.1",
            &["a1"],
            &["net/10.0.0.1"],
            &["net/10.0.0.1"],
        ),
        ("net/10.9.9.9", &[], &[], &["net/10.9.9.9"]),
        ("nope", &[], &[], &["nope"]),
    ];
    for (name, sent, aliases, removed) in cases {
        let out = st.on_request(&s, req(ADDRESS, &[name], &[])).unwrap();
        let r = one(&out);
        assert_eq!(names(r), (sent.to_vec(), removed.to_vec()), "{name}");
        if let Some(res) = r.resources.first() {
            assert_eq!(res.aliases, aliases.to_vec(), "{name}");
        }
    }
    // misses and aliases are not repeated on an unrelated snapshot change
    let c1 = ("c1", "node-c", [10, 0, 2, 1], "v1");
    let s2 = snap(&[A1, B1, c1], &[], &[]);
    assert!(
        st.on_snapshot(&s2).responses.is_empty(),
        "c1 is not subscribed; misses sent once"
    );
    // a missed name that appears is sent
    let s3 = snap(
        &[A1, B1, c1, ("n", "node-c", [10, 9, 9, 9], "v1")],
        &[],
        &[],
    );
    assert_eq!(names(one(&st.on_snapshot(&s3))), (vec!["n"], vec![]));
}

#[test]
fn node_proxy_wildcard_never_gets_another_nodes_workload() {
    let mut st = Stream::new(node("node-a"), "t");
    let mut s = snap(&[A1], &[], &[]);
    st.on_request(&s, req(ADDRESS, &[], &[])).unwrap();
    for i in 0..5u8 {
        s = snap(
            &[
                A1,
                ("b", "node-b", [10, 0, 1, i], "v1"),
                ("c", "node-c", [10, 0, 2, i], "v1"),
            ],
            &[],
            &[],
        );
        for r in st.on_snapshot(&s).responses {
            assert!(r.resources.iter().all(|r| r.name == "a1"), "{r:?}");
        }
    }
}

#[test]
fn reconnect_with_initial_versions_sends_only_differences() {
    let old = snap(&[A1, A2], &[], &[]);
    let new = snap(
        &[
            ("a1", "node-a", [10, 0, 0, 1], "v2"),
            ("a4", "node-a", [10, 0, 0, 4], "v1"),
        ],
        &[],
        &[],
    );
    let version = |s: &Snapshot, n: &str| s.table(ADDRESS).resolve(n).unwrap().1.version.clone();
    let mut first = req(ADDRESS, &["*"], &[]);
    first.initial_resource_versions = [("a1", version(&old, "a1")), ("a2", version(&old, "a2"))]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();

    // nothing changed: an empty first response, nothing resent
    let mut st = Stream::new(node("node-a"), "t");
    assert_eq!(
        names(one(&st.on_request(&old, first.clone()).unwrap())),
        (vec![], vec![])
    );

    let mut st = Stream::new(node("node-a"), "t");
    assert_eq!(
        names(one(&st.on_request(&new, first).unwrap())),
        (vec!["a1", "a4"], vec!["a2"])
    );
}

#[test]
fn nack_is_recorded_and_not_resent() {
    let s = snap(&[A1], &[], &[]);
    let mut st = Stream::new(node("node-a"), "t");
    let nonce = one(&st.on_request(&s, req(ADDRESS, &["*"], &[])).unwrap())
        .nonce
        .clone();
    let mut nack = ack(ADDRESS, &nonce);
    nack.error_detail = Some(Status {
        code: 3,
        message: "bad workload a1".into(),
        details: vec![],
    });
    let out = st.on_request(&s, nack).unwrap();
    assert!(out.responses.is_empty());
    assert_eq!(
        out.events,
        vec![Event::Nack {
            type_url: ADDRESS.into(),
            message: "bad workload a1".into()
        }]
    );
    assert!(
        st.on_snapshot(&s).responses.is_empty(),
        "same versions are not resent"
    );
    let s2 = snap(&[("a1", "node-a", [10, 0, 0, 1], "v2")], &[], &[]);
    assert_eq!(
        names(one(&st.on_snapshot(&s2))),
        (vec!["a1"], vec![]),
        "the next change is sent"
    );
}

#[test]
fn stale_nonce_is_no_ack_and_no_resend() {
    let s = snap(&[A1], &[], &[]);
    let mut st = Stream::new(node("node-a"), "t");
    let n1 = one(&st.on_request(&s, req(ADDRESS, &["*"], &[])).unwrap())
        .nonce
        .clone();
    let n2 = one(&st.on_snapshot(&snap(&[A1, A2], &[], &[])))
        .nonce
        .clone();
    assert_ne!(n1, n2, "fresh nonces");
    let out = st
        .on_request(&snap(&[A1, A2], &[], &[]), ack(ADDRESS, &n1))
        .unwrap();
    assert!(out.responses.is_empty());
    assert_eq!(
        out.events,
        vec![Event::StaleNonce {
            type_url: ADDRESS.into(),
            nonce: n1
        }]
    );
    let out = st
        .on_request(&snap(&[A1, A2], &[], &[]), ack(ADDRESS, &n2))
        .unwrap();
    assert_eq!(
        out.events,
        vec![Event::Ack {
            type_url: ADDRESS.into()
        }]
    );
}

#[test]
fn unsubscribe_stops_updates_without_removal() {
    let s = snap(&[A1, B1], &[], &[]);
    let mut st = Stream::new(node("node-a"), "t");
    st.on_request(&s, req(ADDRESS, &["*"], &[])).unwrap();
    assert_eq!(
        names(one(&st.on_request(&s, req(ADDRESS, &["b1"], &[])).unwrap())),
        (vec!["b1"], vec![])
    );
    let out = st.on_request(&s, req(ADDRESS, &[], &["b1"])).unwrap();
    assert!(
        out.responses.is_empty(),
        "no removal for an unsubscribed name: {out:?}"
    );
    let s2 = snap(&[A1, ("b1", "node-b", [10, 0, 1, 1], "v2")], &[], &[]);
    assert!(
        st.on_snapshot(&s2).responses.is_empty(),
        "no updates after unsubscribe"
    );
    let s3 = snap(&[A1], &[], &[]);
    assert!(
        st.on_snapshot(&s3).responses.is_empty(),
        "no removal after unsubscribe"
    );
}

#[test]
fn config_objects_only_by_name_for_node_proxies_and_all_for_waypoints() {
    let mut b = Snapshot::builder();
    let cfg = trellis_api::pb::trellis::config::v1::ConfigObject {
        kind: "waypoint".into(),
        json: "{}".into(),
    };
    b.add(
        CONFIG_OBJECT,
        "default/wp",
        None,
        vec![],
        any(CONFIG_OBJECT, &cfg),
    )
    .unwrap();
    let s = b.build();
    let mut np = Stream::new(node("node-a"), "t");
    assert_eq!(
        names(one(&np
            .on_request(&s, req(CONFIG_OBJECT, &["*"], &[]))
            .unwrap())),
        (vec![], vec![])
    );
    assert_eq!(
        names(one(&np
            .on_request(&s, req(CONFIG_OBJECT, &["default/wp"], &[]))
            .unwrap())),
        (vec!["default/wp"], vec![])
    );
    let mut wp = Stream::new(waypoint(), "t");
    assert_eq!(
        names(one(&wp
            .on_request(&s, req(CONFIG_OBJECT, &[], &[]))
            .unwrap())),
        (vec!["default/wp"], vec![])
    );
}

#[test]
fn bad_requests() {
    let s = snap(&[A1], &[], &[]);
    let mut st = Stream::new(node("node-a"), "t");
    assert_eq!(
        st.on_request(&s, req("", &["*"], &[])),
        Err(ProtocolError::NoTypeUrl)
    );
    let out = st
        .on_request(
            &s,
            req(
                "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                &["*"],
                &[],
            ),
        )
        .unwrap();
    assert!(out.responses.is_empty());
    assert!(matches!(&out.events[..], [Event::UnknownType { .. }]));
}

#[test]
fn snapshot_versions_are_content_hashes() {
    let a = snap(&[A1], &[], &[]);
    let b = snap(&[A1], &[], &[]);
    let c = snap(&[("a1", "node-a", [10, 0, 0, 1], "v2")], &[], &[]);
    let v = |s: &Snapshot| s.table(ADDRESS).resolve("a1").unwrap().1.version.clone();
    assert_eq!(v(&a), v(&b));
    assert_ne!(v(&a), v(&c));
    assert_eq!(a.version(), b.version());
    assert_ne!(a.version(), c.version());
    let mut dup = Snapshot::builder();
    dup.add(ADDRESS, "x", None, vec!["net/1".into()], service("x"))
        .unwrap();
    assert!(matches!(
        dup.add(ADDRESS, "x", None, vec![], service("x")),
        Err(SnapshotError::Duplicate { .. })
    ));
    assert!(matches!(
        dup.add(ADDRESS, "y", None, vec!["net/1".into()], service("y")),
        Err(SnapshotError::AliasTaken { .. })
    ));
    assert!(matches!(
        dup.add(AUTHORIZATION, "z", None, vec![], service("z")),
        Err(SnapshotError::TypeMismatch { .. })
    ));
}

#[test]
fn a_service_asked_by_name_brings_its_endpoints_while_subscribed() {
    let with_members = |workloads: &[(&str, &str, [u8; 4], &str)], members: &[&str]| {
        let mut b = Snapshot::builder();
        for (uid, node, ip, rev) in workloads {
            b.add(
                ADDRESS,
                *uid,
                Some(node.to_string()),
                vec![],
                workload(uid, node, *ip, rev),
            )
            .unwrap();
        }
        b.add(
            ADDRESS,
            "default/web.default.svc",
            None,
            vec!["net/10.96.0.1".into()],
            service("web"),
        )
        .unwrap();
        b.members(
            ADDRESS,
            "default/web.default.svc",
            members.iter().map(|m| m.to_string()).collect(),
        )
        .unwrap();
        b.build()
    };
    let s = with_members(&[A1, B1], &["b1", "gone"]);
    let mut st = Stream::new(node("node-c"), "t");
    st.on_request(&s, req(ADDRESS, &["*"], &["*"])).unwrap();

    // Asked by VIP: the service (with the alias) and its endpoint b1; a
    // member that does not exist is skipped, not reported. The VIP is
    // echoed as removed so that ztunnel's lookup is released.
    let out = st
        .on_request(&s, req(ADDRESS, &["net/10.96.0.1"], &[]))
        .unwrap();
    let (mut sent, removed) = names(one(&out));
    sent.sort();
    assert_eq!(
        (sent, removed),
        (vec!["b1", "default/web.default.svc"], vec!["net/10.96.0.1"])
    );

    // An endpoint moves from b1 to a1: a1 is sent and b1 removed.
    let s2 = with_members(&[A1, B1], &["a1"]);
    let out = st.on_snapshot(&s2);
    assert_eq!(names(one(&out)), (vec!["a1"], vec!["b1"]));

    // Unsubscribing the service drops the endpoints from tracking too:
    // a later change of a1 is not sent.
    st.on_request(&s2, req(ADDRESS, &[], &["net/10.96.0.1"]))
        .unwrap();
    let s3 = with_members(&[("a1", "node-a", [10, 0, 0, 1], "v2"), B1], &["a1"]);
    assert!(st.on_snapshot(&s3).responses.is_empty());

    // Members can only be set on something added.
    let mut b = Snapshot::builder();
    assert!(matches!(
        b.members(ADDRESS, "nope", vec![]),
        Err(SnapshotError::NoSuchEntry { .. })
    ));
}

mod incremental;
mod ztunnel;
