//! TrafficPolicies attached to route rules: by route and by rule name,
//! merged field by field, conflicts reported on the loser.

use trellis_api::config::l7::{RateLimit, TrafficPolicy};

use super::routes::{http, http_route, REVIEWS, SERVICES};
use super::*;
use crate::objects::kinds::{Kind, ObjectKey};

const TWO_RULES: &str = "  - name: split\n    backendRefs: [{name: reviews-v1, port: 9080, weight: 90}, {name: reviews-v2, port: 9080, weight: 10}]\n  - name: admin\n    matches: [{path: {value: /admin}}]\n    backendRefs: [{name: reviews-v1, port: 9080}]\n  - backendRefs: [{name: reviews-v2, port: 9080}]\n";

/// A policy `name` created at minute `minute` (None: no timestamp).
fn policy(name: &str, minute: Option<u32>, target: &str, body: &str) -> String {
    let created = minute
        .map(|m| format!(", creationTimestamp: \"2025-01-01T00:{m:02}:00Z\""))
        .unwrap_or_default();
    format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {name}, namespace: demo{created}}}\nspec:\n  targetRefs: [{target}]\n{body}---\n"
    )
}

fn route_target(section: Option<&str>) -> String {
    match section {
        Some(s) => format!(
            "{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r, sectionName: {s}}}"
        ),
        None => "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}".into(),
    }
}

fn rps(p: &Option<TrafficPolicy>) -> Option<f64> {
    p.as_ref()?.rate_limit.map(|r| r.requests_per_second)
}

fn retries(p: &Option<TrafficPolicy>) -> Option<u32> {
    p.as_ref()?.retry.as_ref().map(|r| r.attempts)
}

#[test]
fn a_policy_attaches_to_every_rule_or_to_the_rule_it_names() {
    let yaml = format!(
        "{SERVICES}{}{}{}",
        http_route("r", REVIEWS, TWO_RULES),
        policy(
            "all",
            None,
            &route_target(None),
            "  rateLimit: {requestsPerSecond: 100, burst: 10}\n"
        ),
        policy(
            "admin-only",
            None,
            &route_target(Some("admin")),
            "  retry: {attempts: 3}\n"
        ),
    );
    let t = run(&yaml);
    assert!(t.errors.is_empty(), "{:?}", msgs(&t));
    let rules = &http(&t, "r").rules;
    assert_eq!(
        rules[0].policy.as_ref().and_then(|p| p.rate_limit),
        Some(RateLimit {
            requests_per_second: 100.0,
            burst: 10
        })
    );
    let got: Vec<(Option<f64>, Option<u32>)> = rules
        .iter()
        .map(|r| (rps(&r.policy), retries(&r.policy)))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(100.0), None),
            (Some(100.0), Some(3)),
            (Some(100.0), None)
        ]
    );
}

#[test]
fn precedence_between_policies_on_one_rule() {
    // (policies as (name, minute, section), each setting rateLimit at
    //  minute*10+1 rps; the rate the split rule gets; the error, if any)
    type Case<'a> = (
        &'a [(&'a str, Option<u32>, Option<&'a str>)],
        f64,
        Option<&'a [&'a str]>,
    );
    let cases: &[Case] = &[
        // The oldest wins; the loser is told which fields and who won.
        (
            &[("b", Some(1), None), ("a", Some(2), None)],
            11.0,
            Some(&[
                "TrafficPolicy demo/a: spec.rateLimit for HTTPRoute demo/r",
                "also set by TrafficPolicy demo/b",
                "rule \"split\", rule \"admin\", rules[2]",
            ]),
        ),
        // As old: the first by name.
        (
            &[("b", Some(1), None), ("a", Some(1), None)],
            11.0,
            Some(&[
                "TrafficPolicy demo/b: spec.rateLimit",
                "also set by TrafficPolicy demo/a",
            ]),
        ),
        // No timestamp (a manifest file) counts as oldest.
        (
            &[("z", None, None), ("a", Some(1), None)],
            1.0,
            Some(&["TrafficPolicy demo/a:"]),
        ),
        // Naming the rule overrides the route-wide one, whatever the age: no error.
        (
            &[("old", Some(1), None), ("new", Some(5), Some("split"))],
            51.0,
            None,
        ),
        // Two policies naming the rule conflict like two on the route.
        (
            &[("x", Some(3), Some("split")), ("y", Some(2), Some("split"))],
            21.0,
            Some(&[
                "TrafficPolicy demo/x: spec.rateLimit for HTTPRoute demo/r (rule \"split\")",
                "demo/y",
            ]),
        ),
    ];
    for (policies, want, err) in cases {
        let mut yaml = format!("{SERVICES}{}", http_route("r", REVIEWS, TWO_RULES));
        for (name, minute, section) in *policies {
            let body = format!(
                "  rateLimit: {{requestsPerSecond: {}}}\n",
                minute.unwrap_or(0) * 10 + 1
            );
            yaml.push_str(&policy(name, *minute, &route_target(*section), &body));
        }
        let t = run(&yaml);
        assert_eq!(
            rps(&http(&t, "r").rules[0].policy),
            Some(*want),
            "{policies:?}"
        );
        let m = msgs(&t);
        match err {
            None => assert!(m.is_empty(), "{policies:?}: {m:?}"),
            Some(parts) => {
                assert_eq!(m.len(), 1, "{policies:?}: {m:?}");
                for p in *parts {
                    assert!(m[0].contains(p), "{policies:?}: {:?} lacks {p:?}", m[0]);
                }
            }
        }
    }
}

#[test]
fn settings_merge_field_by_field() {
    let yaml = format!(
        "{SERVICES}{}{}{}",
        http_route("r", REVIEWS, TWO_RULES),
        policy(
            "limits",
            Some(1),
            &route_target(None),
            "  rateLimit: {requestsPerSecond: 5}\n  retry: {attempts: 1}\n"
        ),
        policy(
            "retries",
            Some(2),
            &route_target(Some("split")),
            "  retry: {attempts: 4}\n  fault: {abort: {httpStatus: 503, percent: 1}}\n"
        ),
    );
    let t = run(&yaml);
    assert!(t.errors.is_empty(), "{:?}", msgs(&t));
    let p = &http(&t, "r").rules[0].policy;
    assert_eq!(rps(p), Some(5.0), "from the route-wide policy");
    assert_eq!(retries(p), Some(4), "the rule's own policy overrides");
    assert!(p.as_ref().is_some_and(|p| p.fault.is_some()));
    assert_eq!(retries(&http(&t, "r").rules[1].policy), Some(1));
}

#[test]
fn a_policy_whose_target_is_missing_says_so() {
    let grpc_target = "{group: gateway.networking.k8s.io, kind: GRPCRoute, name: r}";
    // (target, what the error says)
    let cases = [
        (
            "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: ratings}".to_string(),
            "TrafficPolicy demo/p: spec.targetRefs[0]: no HTTPRoute demo/ratings; the policy applies once it exists",
        ),
        (
            route_target(Some("canary")),
            "spec.targetRefs[0].sectionName: HTTPRoute demo/r has no rule named \"canary\"; its rule names are: \"split\", \"admin\"",
        ),
        (grpc_target.to_string(), "spec.targetRefs[0]: no GRPCRoute demo/r"),
    ];
    for (target, want) in cases {
        let yaml = format!(
            "{SERVICES}{}{}",
            http_route("r", REVIEWS, TWO_RULES),
            policy("p", None, &target, "  rateLimit: {requestsPerSecond: 1}\n")
        );
        let t = run(&yaml);
        assert!(
            http(&t, "r").rules.iter().all(|r| r.policy.is_none()),
            "{target}"
        );
        let m = msgs(&t);
        assert!(m.len() == 1 && m[0].contains(want), "{target}: {m:?}");
    }
}

#[test]
fn a_policy_on_a_route_left_out_waits_silently() {
    // The route's own error says why it is out; the policy adds nothing.
    let rules = "  - backendRefs: [{name: reviews-v9, port: 9080}]\n";
    let yaml = format!(
        "{SERVICES}{}{}",
        http_route("r", REVIEWS, rules),
        policy(
            "p",
            None,
            &route_target(None),
            "  rateLimit: {requestsPerSecond: 1}\n"
        )
    );
    let m = msgs(&run(&yaml));
    assert!(
        m.len() == 1 && m[0].starts_with("HTTPRoute demo/r:"),
        "{m:?}"
    );
}

#[test]
fn a_policy_attaches_to_a_grpc_route() {
    let yaml = format!(
        "{SERVICES}apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g, namespace: demo}}\nspec:\n  parentRefs: {REVIEWS}\n  rules: [{{name: all, backendRefs: [{{name: reviews-v1, port: 9080}}]}}]\n---\n{}",
        policy(
            "p",
            None,
            "{group: gateway.networking.k8s.io, kind: GRPCRoute, name: g, sectionName: all}",
            "  retry: {attempts: 2, retryOn: [grpc-unavailable]}\n"
        )
    );
    let t = run(&yaml);
    assert!(t.errors.is_empty(), "{:?}", msgs(&t));
    assert_eq!(retries(&t.config.grpc_routes[0].rules[0].policy), Some(2));
}

#[test]
fn merge_decides_as_a_table() {
    use super::super::traffic_policies::{merge, Attachment};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let key = |n: &str| ObjectKey {
        kind: Kind::TrafficPolicy,
        namespace: "demo".into(),
        name: n.into(),
    };
    let (a, b) = (key("a"), key("b"));
    let t1 = Time("2025-01-01T00:01:00Z".parse().expect("time"));
    let t2 = Time("2025-01-01T00:02:00Z".parse().expect("time"));
    let limit = |r: f64| TrafficPolicy {
        rate_limit: Some(RateLimit {
            requests_per_second: r,
            burst: 1,
        }),
        ..Default::default()
    };
    let (one, two) = (limit(1.0), limit(2.0));
    let at = |policy, created, section, body| Attachment {
        policy,
        created,
        section,
        body,
    };
    // (attachments, winning rate, (loser, winner) of each conflict)
    type Case<'a> = (Vec<Attachment<'a>>, Option<f64>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (vec![], None, vec![]),
        (vec![at(&a, None, false, &one)], Some(1.0), vec![]),
        (
            vec![
                at(&a, Some(&t2), false, &one),
                at(&b, Some(&t1), false, &two),
            ],
            Some(2.0),
            vec![("a", "b")],
        ),
        (
            vec![
                at(&b, Some(&t1), false, &two),
                at(&a, Some(&t1), false, &one),
            ],
            Some(1.0),
            vec![("b", "a")],
        ),
        (
            vec![
                at(&a, Some(&t1), false, &one),
                at(&b, Some(&t2), true, &two),
            ],
            Some(2.0),
            vec![],
        ),
        (
            vec![at(&a, None, true, &one), at(&b, None, true, &two)],
            Some(1.0),
            vec![("b", "a")],
        ),
    ];
    for (list, want, conflicts) in cases {
        let (merged, got) = merge(&list);
        assert_eq!(rps(&merged), want, "{list:?}");
        let got: Vec<(&str, &str)> = got
            .iter()
            .map(|c| (c.loser.name.as_str(), c.winner.name.as_str()))
            .collect();
        assert_eq!(got, conflicts, "{list:?}");
    }
}
