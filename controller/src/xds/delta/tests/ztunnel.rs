//! The requests a stock Istio ztunnel (1.28) sends, replayed step by step
//! as a table, with what it needs back. Checked against a real ztunnel
//! (README, "Istio ztunnel"); each row names the ztunnel behaviour it pins.

use super::*;

/// One step of a session: a request (or a new snapshot), then the names
/// the response must carry, sorted: (sent, removed).
enum Step<'a> {
    // Boxed: a request is large next to a snapshot reference.
    Request(Box<DeltaDiscoveryRequest>),
    Snapshot(&'a Snapshot),
}

type Row<'a> = (&'a str, Step<'a>, &'a [&'a str], &'a [&'a str]);

/// Runs `rows` on one stream of `caller`; each step must give exactly one
/// response with those names.
fn run(caller: Caller, start: &Snapshot, rows: Vec<Row>) {
    let mut st = Stream::new(caller, "zt");
    let mut current = start;
    for (what, step, sent, removed) in rows {
        let out = match step {
            Step::Request(r) => st.on_request(current, *r).unwrap(),
            Step::Snapshot(s) => {
                current = s;
                st.on_snapshot(s)
            }
        };
        let r = one(&out);
        let (mut got_sent, mut got_removed) = names(r);
        got_sent.sort();
        got_removed.sort();
        assert_eq!(
            (got_sent, got_removed),
            (sent.to_vec(), removed.to_vec()),
            "{what}"
        );
    }
}

/// ztunnel's first request of a type: `XDS_ON_DEMAND=true` subscribes and
/// unsubscribes "*" together (Address); otherwise it names nothing.
fn first(type_url: &str, on_demand: bool, held: &[&str]) -> DeltaDiscoveryRequest {
    let star: &[&str] = if on_demand { &["*"] } else { &[] };
    let mut r = req(type_url, star, star);
    // ztunnel sends what it holds with empty versions ("we don't care").
    r.initial_resource_versions = held
        .iter()
        .map(|n| (n.to_string(), String::new()))
        .collect();
    r
}

/// A mesh: a1 on node-a, b1 and b2 on node-b, the service web (VIP
/// 10.96.0.1, endpoints b1 and b2) and one policy.
fn mesh(b1_revision: &str) -> Snapshot {
    let mut b = Snapshot::builder();
    for (uid, node, ip, rev) in [
        A1,
        ("b1", "node-b", [10, 0, 1, 1], b1_revision),
        ("b2", "node-b", [10, 0, 1, 2], "v1"),
    ] {
        let alias = format!("net/{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]);
        b.add(
            ADDRESS,
            uid,
            Some(node.into()),
            vec![alias],
            workload(uid, node, ip, rev),
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
        vec!["b1".into(), "b2".into()],
    )
    .unwrap();
    b.add(AUTHORIZATION, "default/allow", None, vec![], authz("allow"))
        .unwrap();
    b.build()
}

const WEB: &str = "default/web.default.svc";

#[test]
fn on_demand_session() {
    let s = mesh("v1");
    let s2 = mesh("v2");
    run(
        node("node-a"),
        &s,
        vec![
            (
                "Address first request: the node's own pod, which ztunnel waits for and never asks for",
                Step::Request(Box::new(first(ADDRESS, true, &[]))),
                &["a1"],
                &[],
            ),
            (
                "Authorization is always a wildcard: every policy",
                Step::Request(Box::new(first(AUTHORIZATION, false, &[]))),
                &["default/allow"],
                &[],
            ),
            (
                "a pod of another node by <network>/<ip>: sent under its uid, the ip echoed as removed to release the lookup",
                Step::Request(Box::new(req(ADDRESS, &["net/10.0.1.1"], &[]))),
                &["b1"],
                &["net/10.0.1.1"],
            ),
            (
                "a service by <namespace>/<hostname>: its canonical name, with the endpoint not yet held",
                Step::Request(Box::new(req(ADDRESS, &[WEB], &[]))),
                &["b2", WEB],
                &[],
            ),
            (
                "a workload by uid",
                Step::Request(Box::new(req(ADDRESS, &["b2"], &[]))),
                &["b2"],
                &[],
            ),
            (
                "an address nobody has: answered as removed",
                Step::Request(Box::new(req(ADDRESS, &["net/10.9.9.9"], &[]))),
                &[],
                &["net/10.9.9.9"],
            ),
            (
                "a change of a looked-up pod is pushed, without the alias echo",
                Step::Snapshot(&s2),
                &["b1"],
                &[],
            ),
        ],
    );
}

#[test]
fn on_demand_reconnect_keeps_what_ztunnel_holds() {
    let s = mesh("v1");
    let s2 = mesh("v2");
    run(
        node("node-a"),
        &s,
        vec![
            (
                "reconnect: what ztunnel holds is resent (its versions are empty), with the service's endpoints, nothing removed",
                Step::Request(Box::new(first(ADDRESS, true, &["a1", "b1", WEB]))),
                &["a1", "b1", "b2", WEB],
                &[],
            ),
            (
                "the names held before the reconnect are still subscribed",
                Step::Snapshot(&s2),
                &["b1"],
                &[],
            ),
        ],
    );
}

#[test]
fn wildcard_session_and_empty_first_responses() {
    let s = mesh("v1");
    run(
        node("node-a"),
        &s,
        vec![(
            "without XDS_ON_DEMAND: the node's workloads only",
            Step::Request(Box::new(first(ADDRESS, false, &[]))),
            &["a1"],
            &[],
        )],
    );
    // A node with no pods still gets one (empty) response per type, which
    // ztunnel needs before it reports ready.
    for on_demand in [false, true] {
        run(
            node("node-empty"),
            &s,
            vec![(
                "an empty first Address response",
                Step::Request(Box::new(first(ADDRESS, on_demand, &[]))),
                &[],
                &[],
            )],
        );
    }
    run(
        node("node-empty"),
        &Snapshot::builder().build(),
        vec![(
            "an empty first Authorization response",
            Step::Request(Box::new(first(AUTHORIZATION, false, &[]))),
            &[],
            &[],
        )],
    );
}
