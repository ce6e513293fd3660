//! Checks on traffic policies, L7 authorization policies, waypoint addresses
//! and per-waypoint settings.

use std::net::IpAddr;

use ahash::{AHashMap, AHashSet};
use ipnet::IpNet;

use super::super::l7::{L7Condition, RateLimit, TrafficPolicy, WaypointAddress};
use super::super::validate::{non_empty, Refs};
use super::super::{LocalConfig, StringMatch};
use super::{service_ref, valid_header_name, Services};

/// More tries than this multiply an outage instead of hiding a blip.
const MAX_RETRY_ATTEMPTS: u32 = 10;

const CONDITION_KEYS: &str =
    "request.headers[<name>], source.principal, source.namespace or source.ip";

pub(super) fn traffic_policy(out: &mut Vec<String>, path: &str, p: &TrafficPolicy) {
    if let Some(r) = &p.retry {
        if r.attempts > MAX_RETRY_ATTEMPTS {
            out.push(format!(
                "{path}.retry.attempts: {} is above the maximum {MAX_RETRY_ATTEMPTS}; retries multiply load on a failing backend",
                r.attempts
            ));
        }
        if r.retry_on.is_empty() {
            out.push(format!(
                "{path}.retry.retryOn: empty, so nothing would be retried; list e.g. connect-failure, reset"
            ));
        }
        percent(
            out,
            &format!("{path}.retry.budget.percent"),
            r.budget.percent,
        );
    }
    if let Some(rl) = &p.rate_limit {
        rate_limit(out, &format!("{path}.rateLimit"), rl);
    }
    if let Some(rl) = &p.per_caller_rate_limit {
        rate_limit(out, &format!("{path}.perCallerRateLimit"), rl);
    }
    if let Some(a) = &p.adaptive_concurrency {
        let p = format!("{path}.adaptiveConcurrency");
        if a.min_limit < 1 {
            out.push(format!(
                "{p}.minLimit: must be at least 1, or no request could ever pass"
            ));
        }
        if !(a.min_limit <= a.initial_limit && a.initial_limit <= a.max_limit) {
            out.push(format!(
                "{p}: limits must satisfy minLimit <= initialLimit <= maxLimit, got {} <= {} <= {}",
                a.min_limit, a.initial_limit, a.max_limit
            ));
        }
        if !(a.tolerance.is_finite() && a.tolerance >= 1.0) {
            out.push(format!(
                "{p}.tolerance: {} must be a number of at least 1.0 (1.5 tolerates 50% queueing)",
                a.tolerance
            ));
        }
    }
    if let Some(cb) = &p.circuit_breaker {
        if cb.max_requests < 1 {
            out.push(format!(
                "{path}.circuitBreaker.maxRequests: must be at least 1, or no request could ever pass"
            ));
        }
    }
    if let Some(o) = &p.outlier_detection {
        if o.max_ejection_percent > 100 {
            out.push(format!(
                "{path}.outlierDetection.maxEjectionPercent: {} is above 100",
                o.max_ejection_percent
            ));
        }
        if o.base_ejection_time.0.is_zero() {
            out.push(format!(
                "{path}.outlierDetection.baseEjectionTime: must be above 0s, or ejection would do nothing; e.g. 30s"
            ));
        }
    }
    if let Some(f) = &p.fault {
        if let Some(d) = &f.delay {
            percent(out, &format!("{path}.fault.delay.percent"), d.percent);
        }
        if let Some(a) = &f.abort {
            percent(out, &format!("{path}.fault.abort.percent"), a.percent);
            if !(200..=599).contains(&a.http_status) {
                out.push(format!(
                    "{path}.fault.abort.httpStatus: {} is not an HTTP status to answer with; use 200 to 599",
                    a.http_status
                ));
            }
        }
    }
}

fn percent(out: &mut Vec<String>, path: &str, v: f64) {
    if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
        out.push(format!("{path}: {v} is not a percentage from 0 to 100"));
    }
}

fn rate_limit(out: &mut Vec<String>, path: &str, rl: &RateLimit) {
    if !(rl.requests_per_second.is_finite() && rl.requests_per_second > 0.0) {
        out.push(format!(
            "{path}.requestsPerSecond: {} must be a number above 0; use e.g. 0.5 for one request every 2s",
            rl.requests_per_second
        ));
    }
    if rl.burst < 1 {
        out.push(format!(
            "{path}.burst: must be at least 1, or no request could ever pass"
        ));
    }
}

pub(super) fn l7_policies(cfg: &LocalConfig, svcs: &Services<'_>, out: &mut Vec<String>) {
    let mut keys: AHashMap<(&str, &str), usize> = AHashMap::new();
    for (i, p) in cfg.authorization_policies.iter().enumerate() {
        let path = format!("authorizationPolicies[{i}]");
        let name_ok = non_empty(out, &path, "name", &p.name);
        let ns_ok = non_empty(out, &path, "namespace", &p.namespace);
        if name_ok && ns_ok {
            if let Some(j) = keys.insert((&p.namespace, &p.name), i) {
                out.push(format!(
                    "{path}: \"{}/{}\" is already defined by authorizationPolicies[{j}]; namespace/name must be unique",
                    p.namespace, p.name
                ));
            }
        }
        for (k, t) in p.target_refs.iter().enumerate() {
            let tp = format!("{path}.targetRefs[{k}]");
            if t.namespace.as_deref().is_some_and(|ns| ns != p.namespace) {
                out.push(format!(
                    "{tp}.namespace: a policy applies only to services in its own namespace {:?}; move the policy or drop the namespace",
                    p.namespace
                ));
                continue;
            }
            service_ref(out, svcs, &tp, t, &p.namespace);
        }
        for (r, rule) in p.rules.iter().enumerate() {
            for (c, cond) in rule.when.iter().enumerate() {
                condition(out, &format!("{path}.rules[{r}].when[{c}]"), cond);
            }
        }
    }
}

fn condition(out: &mut Vec<String>, path: &str, c: &L7Condition) {
    let header = c
        .key
        .strip_prefix("request.headers[")
        .and_then(|r| r.strip_suffix(']'));
    match (header, c.key.as_str()) {
        (Some(name), _) if !valid_header_name(name) => out.push(format!(
            "{path}.key: {name:?} in {:?} is not an HTTP header name",
            c.key
        )),
        (Some(_), _) | (None, "source.principal" | "source.namespace") => {}
        (None, "source.ip") => {
            for (field, list) in [("values", &c.values), ("notValues", &c.not_values)] {
                for (k, v) in list.iter().enumerate() {
                    let ok = match v {
                        StringMatch::Exact(s) => {
                            s.parse::<IpNet>().is_ok() || s.parse::<IpAddr>().is_ok()
                        }
                        StringMatch::Presence => true,
                        _ => false,
                    };
                    if !ok {
                        out.push(format!(
                            "{path}.{field}[{k}]: {:?} is not an IP address or CIDR such as 10.0.0.0/8",
                            v.to_string()
                        ));
                    }
                }
            }
        }
        (None, key) => out.push(format!(
            "{path}.key: {key:?} is not supported; use {CONDITION_KEYS}"
        )),
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        out.push(format!(
            "{path}: needs values or notValues; a condition without either matches nothing useful"
        ));
    }
}

/// A waypoint address must belong to a workload: node proxies expect that
/// workload's identity from the waypoint, and without it they cannot tunnel.
/// With [`Refs::MayDangle`] the waypoint's workload may not have reached a
/// proxy yet (it is fetched on demand), so only the port is checked.
pub(super) fn waypoint_addresses(cfg: &LocalConfig, refs: Refs, out: &mut Vec<String>) {
    let addrs: AHashSet<IpAddr> = cfg
        .workloads
        .iter()
        .flat_map(|w| w.addresses.iter().map(|a| a.to_canonical()))
        .collect();
    let check = |out: &mut Vec<String>, path: String, wp: &WaypointAddress| {
        if refs == Refs::MustResolve && !addrs.contains(&wp.address.to_canonical()) {
            out.push(format!(
                "{path}.address: {} is not an address of any workload; add the waypoint's workload to workloads (node proxies expect its identity) or fix the address",
                wp.address
            ));
        }
        if wp.hbone_mtls_port == 0 {
            out.push(format!(
                "{path}.hboneMtlsPort: 0 is not a usable port; leave it out for 15008"
            ));
        }
    };
    for (i, w) in cfg.workloads.iter().enumerate() {
        if let Some(wp) = &w.waypoint {
            check(out, format!("workloads[{i}].waypoint"), wp);
        }
    }
    for (i, s) in cfg.services.iter().enumerate() {
        if let Some(wp) = &s.waypoint {
            check(out, format!("services[{i}].waypoint"), wp);
        }
    }
}

pub(super) fn waypoint_settings(cfg: &LocalConfig, out: &mut Vec<String>) {
    let mut keys: AHashMap<(&str, &str), usize> = AHashMap::new();
    for (i, w) in cfg.waypoints.iter().enumerate() {
        let path = format!("waypoints[{i}]");
        let name_ok = non_empty(out, &path, "name", &w.name);
        let ns_ok = non_empty(out, &path, "namespace", &w.namespace);
        if name_ok && ns_ok {
            if let Some(j) = keys.insert((&w.namespace, &w.name), i) {
                out.push(format!(
                    "{path}: \"{}/{}\" is already defined by waypoints[{j}]; a waypoint has one settings entry",
                    w.namespace, w.name
                ));
            }
        }
        if let Some(rl) = &w.total_rate_limit {
            rate_limit(out, &format!("{path}.totalRateLimit"), rl);
        }
    }
}
