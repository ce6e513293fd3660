//! Trellis `TrafficPolicy` (trellis.dev/v1alpha1): the per-route settings
//! Gateway API lacks, attached Gateway API style (`targetRefs` to an
//! HTTPRoute or GRPCRoute in the policy's namespace, `sectionName` naming
//! one rule). The body is the waypoint model's `TrafficPolicy` as it is, so
//! the CRD (deploy/daemonset/base/crds/trellis.dev_trafficpolicies.yaml) and the model
//! share one set of field names; it is checked by the model's own validator
//! when read, so a policy the waypoint would refuse is rejected here and
//! its last good version stays.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Deserialize;
use serde_json::Value;
use trellis_api::config::l7::{
    AdaptiveConcurrency, CircuitBreaker, Fault, HttpRoute, HttpRouteRule, LoadBalancer,
    OutlierDetection, RateLimit, RetryPolicy, TrafficPolicy,
};
use trellis_api::config::LocalConfig;

use super::gateway::GROUP;
use super::routes::{stand_ins, validated};

#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicyDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: TrafficPolicySpec,
    #[serde(default)]
    pub status: Option<Value>,
}

/// The model's fields, written out rather than flattened: serde cannot
/// refuse unknown fields through a flattened struct.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    pub target_refs: Vec<PolicyTargetRef>,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub per_caller_rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub adaptive_concurrency: Option<AdaptiveConcurrency>,
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default)]
    pub fault: Option<Fault>,
}

/// Gateway API `LocalPolicyTargetReferenceWithSectionName`.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTargetRef {
    pub group: String,
    pub kind: String,
    pub name: String,
    /// A rule's name; the whole route when absent.
    #[serde(default)]
    pub section_name: Option<String>,
}

/// A policy as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficPolicyObject {
    /// Decides between two policies setting the same field of the same rule.
    pub created: Option<Time>,
    pub target_refs: Vec<PolicyTargetRef>,
    pub policy: TrafficPolicy,
}

const ROUTE_KINDS: [&str; 2] = ["HTTPRoute", "GRPCRoute"];

/// Every problem of the spec, each starting with its field's path.
pub(crate) fn check(doc: TrafficPolicyDoc, ns: &str) -> Result<TrafficPolicyObject, Vec<String>> {
    let mut out = Vec::new();
    let spec = doc.spec;
    if spec.target_refs.is_empty() {
        out.push(
            "spec.targetRefs: must not be empty; name the HTTPRoute or GRPCRoute the policy applies to"
                .into(),
        );
    }
    for (i, t) in spec.target_refs.iter().enumerate() {
        let p = format!("spec.targetRefs[{i}]");
        if t.group != GROUP || !ROUTE_KINDS.contains(&t.kind.as_str()) {
            out.push(format!(
                "{p}: kind {:?} in group {:?} is not supported; a TrafficPolicy targets an HTTPRoute or a GRPCRoute (group {GROUP})",
                t.kind, t.group
            ));
        }
        if t.name.is_empty() {
            out.push(format!("{p}.name: must not be empty"));
        }
        if t.section_name.as_deref() == Some("") {
            out.push(format!(
                "{p}.sectionName: must not be empty; leave it out to target every rule of the route"
            ));
        }
    }
    let policy = TrafficPolicy {
        retry: spec.retry,
        rate_limit: spec.rate_limit,
        per_caller_rate_limit: spec.per_caller_rate_limit,
        adaptive_concurrency: spec.adaptive_concurrency,
        circuit_breaker: spec.circuit_breaker,
        outlier_detection: spec.outlier_detection,
        load_balancer: spec.load_balancer,
        fault: spec.fault,
    };
    if policy == TrafficPolicy::default() {
        out.push("spec: sets nothing; add at least one of retry, rateLimit, perCallerRateLimit, adaptiveConcurrency, circuitBreaker, outlierDetection, loadBalancer, fault".into());
    }
    // The body is checked where the waypoint would meet it: on a rule.
    let cfg = LocalConfig {
        services: stand_ins(ns, "policy-target", std::iter::empty()),
        http_routes: vec![HttpRoute {
            name: "policy-target".into(),
            namespace: ns.into(),
            parent_refs: vec![trellis_api::config::l7::ParentRef {
                kind: "Service".into(),
                group: None,
                name: "policy-target".into(),
                namespace: None,
                port: None,
            }],
            hostnames: Vec::new(),
            rules: vec![HttpRouteRule {
                policy: Some(policy.clone()),
                ..HttpRouteRule::default()
            }],
        }],
        ..LocalConfig::default()
    };
    validated(&cfg, "httpRoutes[0].rules[0].policy", &mut out);
    if out.is_empty() {
        Ok(TrafficPolicyObject {
            created: doc.metadata.creation_timestamp,
            target_refs: spec.target_refs,
            policy,
        })
    } else {
        Err(out)
    }
}

#[cfg(test)]
mod tests;
