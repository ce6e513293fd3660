//! TrafficPolicy documents through the real parser, and the CRD manifest
//! held against the model it describes.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use trellis_api::config::l7::{
    AdaptiveConcurrency, CircuitBreaker, Dur, Fault, FaultAbort, FaultDelay, LbAlgorithm,
    LoadBalancer, OutlierDetection, RateLimit, RetryBudget, RetryOn, RetryPolicy,
};

use super::super::{parse_text, Object};
use super::*;

const CRD: &str =
    include_str!("../../../../../deploy/daemonset/base/crds/trellis.dev_trafficpolicies.yaml");

fn parse(yaml: &str) -> Result<TrafficPolicyObject, String> {
    let mut docs = parse_text("p.yaml", yaml, false);
    assert_eq!(docs.len(), 1, "one document");
    match docs.remove(0) {
        Ok((_, _, Object::TrafficPolicy(p))) => Ok(*p),
        Ok((_, _, other)) => panic!("not a policy: {other:?}"),
        Err((_, rejected)) => Err(rejected.error.to_string()),
    }
}

fn policy(spec: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: p, namespace: demo}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}}]\n{spec}"
    )
}

const FULL: &str = r#"  retry:
    attempts: 2
    retryOn: [5xx, connect-failure]
    backoff: 50ms
    maxBodyBytes: 1024
    budget: {percent: 10, minRetriesPerSecond: 5}
  rateLimit: {requestsPerSecond: 100, burst: 20}
  perCallerRateLimit: {requestsPerSecond: 0.5}
  adaptiveConcurrency: {initialLimit: 10, minLimit: 2, maxLimit: 50, tolerance: 2}
  circuitBreaker: {maxRequests: 100, maxPending: 10, pendingTimeout: 250ms}
  outlierDetection: {consecutive5xx: 3, consecutiveConnectFailures: 2, baseEjectionTime: 10s, maxEjectionPercent: 30}
  loadBalancer: {algorithm: RoundRobin, slowStart: 30s}
  fault:
    delay: {fixedDelay: 1s, percent: 5}
    abort: {httpStatus: 503, percent: 1.5}
"#;

fn ms(n: u64) -> Dur {
    Dur(Duration::from_millis(n))
}

#[test]
fn every_setting_maps_onto_the_model() {
    let p = parse(&policy(FULL)).expect("valid");
    assert_eq!(p.target_refs.len(), 1);
    assert_eq!(p.target_refs[0].kind, "HTTPRoute");
    assert_eq!(p.created, None, "a manifest without a timestamp");
    let b = &p.policy;
    assert_eq!(
        b.retry,
        Some(RetryPolicy {
            attempts: 2,
            retry_on: vec![RetryOn::FiveXx, RetryOn::ConnectFailure],
            backoff: ms(50),
            max_body_bytes: 1024,
            budget: RetryBudget {
                percent: 10.0,
                min_retries_per_second: 5
            },
        })
    );
    assert_eq!(
        b.rate_limit,
        Some(RateLimit {
            requests_per_second: 100.0,
            burst: 20
        })
    );
    assert_eq!(
        b.per_caller_rate_limit,
        Some(RateLimit {
            requests_per_second: 0.5,
            burst: 1
        })
    );
    assert_eq!(
        b.adaptive_concurrency,
        Some(AdaptiveConcurrency {
            initial_limit: 10,
            min_limit: 2,
            max_limit: 50,
            tolerance: 2.0
        })
    );
    assert_eq!(
        b.circuit_breaker,
        Some(CircuitBreaker {
            max_requests: 100,
            max_pending: 10,
            pending_timeout: ms(250)
        })
    );
    assert_eq!(
        b.outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx: 3,
            consecutive_connect_failures: 2,
            base_ejection_time: ms(10_000),
            max_ejection_percent: 30,
        })
    );
    assert_eq!(
        b.load_balancer,
        Some(LoadBalancer {
            algorithm: LbAlgorithm::RoundRobin,
            slow_start: Some(ms(30_000))
        })
    );
    assert_eq!(
        b.fault,
        Some(Fault {
            delay: Some(FaultDelay {
                fixed_delay: ms(1000),
                percent: 5.0
            }),
            abort: Some(FaultAbort {
                http_status: 503,
                percent: 1.5
            }),
        })
    );
}

#[test]
fn the_creation_timestamp_is_kept_for_precedence() {
    let yaml = policy("  rateLimit: {requestsPerSecond: 1}\n").replace(
        "metadata: {name: p, namespace: demo}",
        "metadata: {name: p, namespace: demo, creationTimestamp: \"2025-03-01T10:00:00Z\"}",
    );
    let p = parse(&yaml).expect("valid");
    assert_eq!(
        p.created.map(|t| t.0.to_string()),
        Some("2025-03-01T10:00:00Z".to_string())
    );
}

#[test]
fn bad_policies_are_refused_naming_the_field() {
    let target = |t: &str| {
        format!(
            "apiVersion: trellis.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: p, namespace: demo}}\nspec:\n  targetRefs: [{t}]\n  rateLimit: {{requestsPerSecond: 1}}\n"
        )
    };
    // (what, document, every part the message must hold)
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "a typo in the body",
            policy("  retry: {attemps: 2}\n"),
            &["TrafficPolicy demo/p", "spec.retry", "unknown field `attemps`"],
        ),
        (
            "a typo in the spec",
            policy("  ratelimit: {requestsPerSecond: 1}\n"),
            &["unknown field `ratelimit`"],
        ),
        (
            "a bad duration",
            policy("  circuitBreaker: {maxRequests: 1, pendingTimeout: 1.5s}\n"),
            &["spec.circuitBreaker.pendingTimeout", "not a duration"],
        ),
        (
            "an unknown enum value",
            policy("  loadBalancer: {algorithm: Random}\n"),
            &["spec.loadBalancer.algorithm", "unknown variant `Random`"],
        ),
        (
            "nothing set",
            policy(""),
            &["spec: sets nothing", "rateLimit"],
        ),
        (
            "limits out of order (the model's validator)",
            policy("  adaptiveConcurrency: {minLimit: 30, initialLimit: 20}\n"),
            &["spec.adaptiveConcurrency: limits must satisfy minLimit <= initialLimit <= maxLimit"],
        ),
        (
            "too many retries (the model's validator)",
            policy("  retry: {attempts: 50}\n"),
            &["spec.retry.attempts: 50 is above the maximum 10"],
        ),
        (
            "a percentage over 100",
            policy("  fault: {abort: {httpStatus: 503, percent: 150}}\n"),
            &["spec.fault.abort.percent: 150 is not a percentage"],
        ),
        (
            "a target of another kind",
            target("{group: \"\", kind: Service, name: reviews}"),
            &["spec.targetRefs[0]", "\"Service\"", "HTTPRoute or a GRPCRoute"],
        ),
        (
            "a target in another namespace",
            target("{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r, namespace: other}"),
            &["spec.targetRefs[0]", "unknown field `namespace`"],
        ),
        (
            "an empty section name",
            target("{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r, sectionName: \"\"}"),
            &["spec.targetRefs[0].sectionName: must not be empty"],
        ),
        (
            "no targets",
            policy("  rateLimit: {requestsPerSecond: 1}\n").replace(
                "targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]",
                "targetRefs: []",
            ),
            &["spec.targetRefs: must not be empty"],
        ),
    ];
    for (what, yaml, wants) in cases {
        let err = match parse(&yaml) {
            Err(e) => e,
            Ok(p) => panic!("{what}: accepted: {p:?}"),
        };
        for want in wants {
            assert!(err.contains(want), "{what}: {err:?} lacks {want:?}");
        }
    }
}

/// Paths of every property in a CRD schema node, `a.b.c`, arrays as `a[]`.
fn schema_paths(node: &Value, path: &str, out: &mut BTreeSet<String>) {
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            out.insert(p.clone());
            schema_paths(v, &p, out);
        }
    }
    if let Some(items) = node.get("items") {
        schema_paths(items, &format!("{path}[]"), out);
    }
}

/// The same for a JSON value.
fn value_paths(v: &Value, path: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                out.insert(p.clone());
                value_paths(v, &p, out);
            }
        }
        Value::Array(a) => {
            if let Some(first) = a.first() {
                value_paths(first, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_crd_describes_exactly_the_models_fields() {
    let crd: Value = serde_yaml_ng::from_str(CRD).expect("the CRD is YAML");
    assert_eq!(crd["spec"]["group"], "trellis.dev");
    assert_eq!(crd["spec"]["names"]["kind"], "TrafficPolicy");
    assert_eq!(crd["spec"]["names"]["plural"], "trafficpolicies");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(
        format!(
            "{}/{}",
            crd["spec"]["group"].as_str().unwrap_or(""),
            version["name"].as_str().unwrap_or("")
        ),
        crate::objects::Kind::TrafficPolicy.api_versions()[0]
    );
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut in_crd = BTreeSet::new();
    schema_paths(spec, "", &mut in_crd);

    // A policy with every field set, as the model writes it.
    let full = parse(&policy(FULL)).expect("valid");
    let mut in_model = BTreeSet::new();
    value_paths(
        &serde_json::to_value(&full.policy).expect("json"),
        "",
        &mut in_model,
    );
    for t in [
        "targetRefs",
        "targetRefs[].group",
        "targetRefs[].kind",
        "targetRefs[].name",
        "targetRefs[].sectionName",
    ] {
        in_model.insert(t.to_string());
    }
    let only_crd: Vec<_> = in_crd.difference(&in_model).collect();
    let only_model: Vec<_> = in_model.difference(&in_crd).collect();
    assert!(
        only_crd.is_empty() && only_model.is_empty(),
        "the CRD and the model disagree: only in the CRD {only_crd:?}, only in the model {only_model:?}"
    );
}

#[test]
fn the_crd_enums_are_the_models_values() {
    let crd: Value = serde_yaml_ng::from_str(CRD).expect("the CRD is YAML");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"];
    let retry_on: Vec<String> = spec["retry"]["properties"]["retryOn"]["items"]["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect();
    for v in &retry_on {
        let parsed: Result<RetryOn, _> = serde_json::from_value(Value::String(v.clone()));
        assert!(parsed.is_ok(), "retryOn {v} is not a model value");
    }
    assert_eq!(retry_on.len(), 9, "every RetryOn value is listed");
    for v in spec["loadBalancer"]["properties"]["algorithm"]["enum"]
        .as_array()
        .expect("enum")
    {
        let parsed: Result<LbAlgorithm, _> = serde_json::from_value(v.clone());
        assert!(parsed.is_ok(), "algorithm {v} is not a model value");
    }
}
