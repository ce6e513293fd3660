//! A stream fed patched snapshots (which name their changes, so it looks
//! only at those) must send exactly what a stream fed the same contents
//! built whole sends, step by step, for every kind of subscriber.

use trellis_api::xds::XdsObject;

use super::*;
use crate::xds::snapshot::Snapshot;

/// (type, name, node, aliases, members, resource)
type Item = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Vec<&'static str>,
    Vec<&'static str>,
    prost_types::Any,
);

fn wl(uid: &'static str, node: &'static str, ip: [u8; 4], rev: &str) -> Item {
    (
        ADDRESS,
        uid,
        Some(node),
        vec![],
        vec![],
        workload(uid, node, ip, rev),
    )
}

fn svc(name: &'static str, alias: &'static str, members: Vec<&'static str>) -> Item {
    (ADDRESS, name, None, vec![alias], members, service(name))
}

fn pol(name: &'static str) -> Item {
    (AUTHORIZATION, name, None, vec![], vec![], authz(name))
}

fn object(i: &Item) -> XdsObject {
    XdsObject {
        type_url: i.0,
        name: i.1.to_string(),
        node: i.2.map(str::to_string),
        aliases: i.3.iter().map(|a| a.to_string()).collect(),
        members: i.4.iter().map(|m| m.to_string()).collect(),
        resource: i.5.clone(),
    }
}

fn whole(items: &[Item]) -> Snapshot {
    let mut b = Snapshot::builder();
    b.add_all(items.iter().map(object).collect())
        .expect("whole");
    b.build()
}

/// `prev` patched into `items`: every item upserted (unchanged ones keep
/// their entry), every name no longer there removed.
fn patched(prev: &Snapshot, prev_items: &[Item], items: &[Item]) -> Snapshot {
    let mut p = prev.patch();
    for old in prev_items {
        if !items.iter().any(|i| i.0 == old.0 && i.1 == old.1) {
            p.remove(old.0, old.1);
        }
    }
    for i in items {
        p.upsert(object(i));
    }
    p.apply().expect("patch")
}

fn steps() -> Vec<Vec<Item>> {
    let web = "default/web.default.svc";
    let api = "default/api.default.svc";
    vec![
        vec![
            wl("a1", "node-a", [10, 0, 0, 1], "v1"),
            wl("a2", "node-a", [10, 0, 0, 2], "v1"),
            wl("b1", "node-b", [10, 0, 1, 1], "v1"),
            svc(web, "net/10.96.0.1", vec!["b1"]),
            pol("p1"),
        ],
        // A workload changes, a policy is added, a member joins.
        vec![
            wl("a1", "node-a", [10, 0, 0, 1], "v2"),
            wl("a2", "node-a", [10, 0, 0, 2], "v1"),
            wl("b1", "node-b", [10, 0, 1, 1], "v1"),
            svc(web, "net/10.96.0.1", vec!["b1", "a2"]),
            pol("p1"),
            pol("p2"),
        ],
        // A member goes; b1 moves to node-a.
        vec![
            wl("a1", "node-a", [10, 0, 0, 1], "v2"),
            wl("b1", "node-a", [10, 0, 1, 1], "v1"),
            svc(web, "net/10.96.0.1", vec!["b1"]),
            pol("p1"),
            pol("p2"),
        ],
        // The VIP a client asked for moves to another service.
        vec![
            wl("a1", "node-a", [10, 0, 0, 1], "v2"),
            wl("b1", "node-a", [10, 0, 1, 1], "v1"),
            svc(web, "net/10.96.0.2", vec!["b1"]),
            svc(api, "net/10.96.0.1", vec!["a1"]),
            pol("p1"),
            pol("p2"),
        ],
        // A policy goes, b1 changes and leaves node-a.
        vec![
            wl("a1", "node-a", [10, 0, 0, 1], "v2"),
            wl("b1", "node-c", [10, 0, 1, 1], "v3"),
            svc(web, "net/10.96.0.2", vec!["b1"]),
            svc(api, "net/10.96.0.1", vec!["a1"]),
            pol("p2"),
        ],
        // Nothing changes.
        vec![
            wl("a1", "node-a", [10, 0, 0, 1], "v2"),
            wl("b1", "node-c", [10, 0, 1, 1], "v3"),
            svc(web, "net/10.96.0.2", vec!["b1"]),
            svc(api, "net/10.96.0.1", vec!["a1"]),
            pol("p2"),
        ],
    ]
}

/// (caller, first requests) of each kind of subscriber.
fn subscribers() -> Vec<(&'static str, Caller, Vec<DeltaDiscoveryRequest>)> {
    vec![
        (
            "node proxy wildcard",
            node("node-a"),
            vec![req(ADDRESS, &["*"], &[]), req(AUTHORIZATION, &["*"], &[])],
        ),
        (
            "node proxy on demand",
            node("node-c"),
            vec![
                req(ADDRESS, &["*", "net/10.96.0.1", "absent"], &[]),
                req(AUTHORIZATION, &["default/p1"], &[]),
            ],
        ),
        (
            // ztunnel with XDS_ON_DEMAND: "*" subscribed and unsubscribed at
            // once, its node's workloads unasked, then a lookup by VIP.
            "ztunnel on demand",
            node("node-a"),
            vec![
                req(ADDRESS, &["*"], &["*"]),
                req(ADDRESS, &["net/10.96.0.1"], &[]),
                req(AUTHORIZATION, &[], &[]),
            ],
        ),
        (
            "waypoint",
            waypoint(),
            vec![req(ADDRESS, &["*"], &[]), req(AUTHORIZATION, &["*"], &[])],
        ),
    ]
}

#[test]
fn a_stream_on_patched_snapshots_sends_what_it_sends_on_whole_ones() {
    let steps = steps();
    let whole_snaps: Vec<Snapshot> = steps.iter().map(|s| whole(s)).collect();
    let mut patched_snaps = vec![whole(&steps[0])];
    for i in 1..steps.len() {
        let next = patched(&patched_snaps[i - 1], &steps[i - 1], &steps[i]);
        assert!(next.changes().is_some());
        assert_eq!(next.version(), whole_snaps[i].version(), "step {i}");
        patched_snaps.push(next);
    }
    // Every step in order, then one that skips a snapshot (the stream was
    // busy and the watch channel coalesced two): the patch then does not
    // follow what the stream saw, and the whole path must be taken.
    let orders: [&[usize]; 2] = [&[1, 2, 3, 4, 5], &[1, 3, 4, 5]];
    for (who, caller, first) in subscribers() {
        for order in orders {
            let mut inc = Stream::new(caller.clone(), "t");
            let mut full = Stream::new(caller.clone(), "t");
            for r in &first {
                let a = inc
                    .on_request(&patched_snaps[0], r.clone())
                    .expect("request");
                let b = full
                    .on_request(&whole_snaps[0], r.clone())
                    .expect("request");
                assert_eq!(a, b, "{who}: first requests");
            }
            let mut sent = 0;
            for &i in order {
                let a = inc.on_snapshot(&patched_snaps[i]);
                let b = full.on_snapshot(&whole_snaps[i]);
                assert_eq!(a, b, "{who}: step {i} of {order:?}");
                sent += a.responses.len();
                // An ACK of each response changes nothing and sends nothing.
                for r in &a.responses {
                    let out = inc
                        .on_request(&patched_snaps[i], ack(&r.type_url, &r.nonce))
                        .expect("ack");
                    assert!(out.responses.is_empty(), "{who}: ack at step {i}");
                }
            }
            assert!(sent > 0, "{who}: the steps must send something");
        }
    }
}
