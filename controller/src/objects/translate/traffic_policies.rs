//! TrafficPolicies → the `policy` of the route rules they target.
//!
//! A policy targets a route in its own namespace (`targetRefs`), all of its
//! rules or, with `sectionName`, the rule of that name. Settings merge field
//! by field (retry, rateLimit, perCallerRateLimit, adaptiveConcurrency,
//! circuitBreaker, outlierDetection, loadBalancer, fault); when two
//! policies set the same field of the same rule:
//! 1. a policy naming the rule (`sectionName`) beats one targeting the
//!    whole route: that is an override, not a conflict;
//! 2. otherwise the oldest `creationTimestamp` wins, then the name in
//!    alphabetical order, as Gateway API resolves policy conflicts (a
//!    policy from a manifest file, without a timestamp, counts as oldest).
//!    The loser's other fields still apply; the lost ones are reported as
//!    an error on the loser.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use trellis_api::config::l7::{GrpcRoute, HttpRoute, TrafficPolicy};

use super::workloads::translate_err;
use crate::objects::error::ObjectError;
use crate::objects::kinds::traffic_policy::PolicyTargetRef;
use crate::objects::kinds::{Kind, Object, ObjectKey};
use crate::objects::store::ObjectStore;

/// The body's fields, as the CRD names them.
pub(crate) const FIELDS: [&str; 8] = [
    "retry",
    "rateLimit",
    "perCallerRateLimit",
    "adaptiveConcurrency",
    "circuitBreaker",
    "outlierDetection",
    "loadBalancer",
    "fault",
];

fn is_set(p: &TrafficPolicy, field: usize) -> bool {
    match field {
        0 => p.retry.is_some(),
        1 => p.rate_limit.is_some(),
        2 => p.per_caller_rate_limit.is_some(),
        3 => p.adaptive_concurrency.is_some(),
        4 => p.circuit_breaker.is_some(),
        5 => p.outlier_detection.is_some(),
        6 => p.load_balancer.is_some(),
        _ => p.fault.is_some(),
    }
}

fn copy(from: &TrafficPolicy, to: &mut TrafficPolicy, field: usize) {
    match field {
        0 => to.retry.clone_from(&from.retry),
        1 => to.rate_limit = from.rate_limit,
        2 => to.per_caller_rate_limit = from.per_caller_rate_limit,
        3 => to.adaptive_concurrency = from.adaptive_concurrency,
        4 => to.circuit_breaker = from.circuit_breaker,
        5 => to.outlier_detection = from.outlier_detection,
        6 => to.load_balancer = from.load_balancer,
        _ => to.fault = from.fault,
    }
}

/// One policy attached to one rule.
#[derive(Clone, Debug)]
pub(crate) struct Attachment<'a> {
    pub policy: &'a ObjectKey,
    pub created: Option<&'a Time>,
    /// Attached by `sectionName` (more specific than the whole route).
    pub section: bool,
    pub body: &'a TrafficPolicy,
}

/// Fields a policy set that another, winning policy of the same
/// specificity also set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Conflict<'a> {
    pub loser: &'a ObjectKey,
    pub winner: &'a ObjectKey,
    pub fields: Vec<&'static str>,
}

/// The merged policy of one rule (None when nothing is attached) and the
/// conflicts, per the module's precedence.
pub(crate) fn merge<'a>(list: &[Attachment<'a>]) -> (Option<TrafficPolicy>, Vec<Conflict<'a>>) {
    let mut order: Vec<&Attachment> = list.iter().collect();
    order.sort_by(|a, b| {
        b.section
            .cmp(&a.section)
            .then_with(|| a.created.cmp(&b.created))
            .then_with(|| a.policy.name.cmp(&b.policy.name))
    });
    let mut merged = TrafficPolicy::default();
    let mut conflicts: Vec<Conflict> = Vec::new();
    for (field, name) in FIELDS.iter().enumerate() {
        let mut setters = order.iter().filter(|a| is_set(a.body, field));
        let Some(winner) = setters.next() else {
            continue;
        };
        copy(winner.body, &mut merged, field);
        for loser in setters.filter(|a| a.section == winner.section) {
            match conflicts
                .iter_mut()
                .find(|c| c.loser == loser.policy && c.winner == winner.policy)
            {
                Some(c) => c.fields.push(name),
                None => conflicts.push(Conflict {
                    loser: loser.policy,
                    winner: winner.policy,
                    fields: vec![name],
                }),
            }
        }
    }
    let merged = (merged != TrafficPolicy::default()).then_some(merged);
    (merged, conflicts)
}

/// A rule of a translated route: (kind, route index, rule index).
type RuleAt = (Kind, usize, usize);

pub(crate) fn apply(
    store: &ObjectStore,
    http: &mut [HttpRoute],
    grpc: &mut [GrpcRoute],
    errors: &mut Vec<ObjectError>,
) {
    let mut attached: BTreeMap<RuleAt, Vec<Attachment>> = BTreeMap::new();
    for (key, obj) in store.of_kind(Kind::TrafficPolicy) {
        let Object::TrafficPolicy(p) = obj else {
            continue;
        };
        for (i, t) in p.target_refs.iter().enumerate() {
            let rules = match targets(store, key, t, http, grpc) {
                Ok(rules) => rules,
                Err(msg) => {
                    errors.push(translate_err(key, format!("spec.targetRefs[{i}]{msg}")));
                    continue;
                }
            };
            for at in rules {
                let list = attached.entry(at).or_default();
                let a = Attachment {
                    policy: key,
                    created: p.created.as_ref(),
                    section: t.section_name.is_some(),
                    body: &p.policy,
                };
                // The same policy naming a rule twice (the route and the
                // rule) does not conflict with itself: the closer one counts.
                match list.iter_mut().find(|x| x.policy == key) {
                    Some(x) => x.section |= a.section,
                    None => list.push(a),
                }
            }
        }
    }
    // (loser, winner, route, fields) → the rules it happened on.
    let mut lost: BTreeMap<(&ObjectKey, &ObjectKey, String, String), Vec<String>> = BTreeMap::new();
    for ((kind, r, j), list) in &attached {
        let (merged, conflicts) = merge(list);
        let (route, rule_name) = match kind {
            Kind::GrpcRoute => {
                let rule = &mut grpc[*r].rules[*j];
                rule.policy = merged;
                (
                    format!("GRPCRoute {}/{}", grpc[*r].namespace, grpc[*r].name),
                    rule.name.clone(),
                )
            }
            _ => {
                let rule = &mut http[*r].rules[*j];
                rule.policy = merged;
                (
                    format!("HTTPRoute {}/{}", http[*r].namespace, http[*r].name),
                    rule.name.clone(),
                )
            }
        };
        let rule = match rule_name {
            Some(n) => format!("rule {n:?}"),
            None => format!("rules[{j}]"),
        };
        for c in conflicts {
            let fields: Vec<String> = c.fields.iter().map(|f| format!("spec.{f}")).collect();
            lost.entry((c.loser, c.winner, route.clone(), fields.join(", ")))
                .or_default()
                .push(rule.clone());
        }
    }
    for ((loser, winner, route, fields), rules) in lost {
        errors.push(translate_err(loser, format!(
            "{fields} for {route} ({}) also set by TrafficPolicy {}/{}, which wins (older creationTimestamp, or as old and first by name); not applied there",
            rules.join(", "),
            winner.namespace,
            winner.name
        )));
    }
}

/// The rules a targetRef names. `Err` is the rest of a message after the
/// targetRef's path.
fn targets(
    store: &ObjectStore,
    policy: &ObjectKey,
    t: &PolicyTargetRef,
    http: &[HttpRoute],
    grpc: &[GrpcRoute],
) -> Result<Vec<RuleAt>, String> {
    let ns = policy.namespace.as_str();
    let (kind, found) = match t.kind.as_str() {
        "GRPCRoute" => (
            Kind::GrpcRoute,
            grpc.iter()
                .position(|r| r.namespace == ns && r.name == t.name)
                .map(|i| {
                    (
                        i,
                        grpc[i]
                            .rules
                            .iter()
                            .map(|r| r.name.as_deref())
                            .collect::<Vec<_>>(),
                    )
                }),
        ),
        _ => (
            Kind::HttpRoute,
            http.iter()
                .position(|r| r.namespace == ns && r.name == t.name)
                .map(|i| {
                    (
                        i,
                        http[i]
                            .rules
                            .iter()
                            .map(|r| r.name.as_deref())
                            .collect::<Vec<_>>(),
                    )
                }),
        ),
    };
    let Some((idx, names)) = found else {
        let route = ObjectKey {
            kind,
            namespace: ns.into(),
            name: t.name.clone(),
        };
        if store.get(&route).is_some() {
            // The route exists but is left out of the config: its own
            // error says why; the policy comes back with it.
            tracing::debug!(policy = %policy, route = %route, "target route not in the config");
            return Ok(Vec::new());
        }
        return Err(format!(
            ": no {} {ns}/{}; the policy applies once it exists (a policy targets routes in its own namespace)",
            kind.name(),
            t.name
        ));
    };
    match &t.section_name {
        None => Ok((0..names.len()).map(|j| (kind, idx, j)).collect()),
        Some(section) => match names.iter().position(|n| *n == Some(section.as_str())) {
            Some(j) => Ok(vec![(kind, idx, j)]),
            None => {
                let named: Vec<String> = names.iter().flatten().map(|n| format!("{n:?}")).collect();
                Err(format!(
                    ".sectionName: {} {ns}/{} has no rule named {section:?}; its rule names are: {} (leave sectionName out to target every rule)",
                    kind.name(),
                    t.name,
                    if named.is_empty() { "none".to_string() } else { named.join(", ") }
                ))
            }
        },
    }
}
