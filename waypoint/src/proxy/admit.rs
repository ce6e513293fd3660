//! The checks a request passes before any upstream work: authorization,
//! the route decision, rate limits, fault injection and the concurrency
//! guards. Each returns the [`Reject`] that ends the request, or lets it on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, LOCATION, RETRY_AFTER};
use http::StatusCode;

use super::reply::Reject;
use super::until;
use crate::authz::{AuthzDecision, AuthzRequest, PolicySet};
use crate::metrics::RequestRecord;
use crate::proxy::App;
use crate::resilience::adaptive::AdaptivePermit;
use crate::resilience::circuit::{CircuitPermit, CircuitRejected};
use crate::resilience::fault::{self, FaultAction};
use crate::resilience::ratelimit::retry_after_secs;
use crate::route::{Decision, Rule};
use crate::state::{BackendRuntime, Compiled, RuleRuntime};

/// L7 authorization, on what the caller asked for, before any rewrite.
pub fn authorize(
    authz: &PolicySet,
    ns: &str,
    name: &str,
    req: &AuthzRequest<'_>,
) -> Result<(), Box<Reject>> {
    match authz.evaluate(ns, name, req) {
        AuthzDecision::Allow => Ok(()),
        AuthzDecision::Deny { policy } => {
            tracing::debug!(%policy, "request denied");
            let mut r = Reject::new(StatusCode::FORBIDDEN, "-", "RBAC: access denied");
            r.denied_by = Some(policy);
            Err(r)
        }
    }
}

/// The rule, the index of its chosen backend, and the matched path prefix.
pub type Routed = (Arc<Rule>, usize, Option<Arc<str>>);

/// What the route table decided, or the local answer it calls for.
pub fn routed(decision: Decision) -> Result<Routed, Box<Reject>> {
    match decision {
        Decision::Forward {
            rule,
            backend,
            prefix,
        } => Ok((rule, backend, prefix)),
        Decision::Redirect {
            status,
            location,
            rule,
        } => {
            let mut r = Reject::new(status, "-", "redirect").on_route(&rule.key);
            r.plain = true;
            if let Ok(v) = HeaderValue::from_str(&location) {
                r = r.with_header(LOCATION, v);
            }
            Err(r)
        }
        Decision::NoRoute => Err(Reject::new(StatusCode::NOT_FOUND, "NR", "no route matched")),
        Decision::NoBackend { rule } => Err(Reject::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "NR",
            "route has no backends",
        )
        .on_route(&rule.key)),
    }
}

/// Rate limits: the caller's, the route's, then the waypoint's total.
/// Each check that passes takes a token, so the narrowest goes first: a
/// caller flooding past its own limit must not drain the buckets that every
/// other caller shares.
pub fn rate_limit(
    app: &App,
    compiled: &Compiled,
    rule: &Rule,
    rt: &RuleRuntime,
    caller: &str,
) -> Result<(), Box<Reject>> {
    if rt.per_caller.is_none() && rt.rate.is_none() && compiled.total_limit.is_none() {
        // Most routes have no limit: skip even the clock read.
        return Ok(());
    }
    let now = Instant::now();
    let limited = rt
        .per_caller
        .as_ref()
        .and_then(|g| g.check(caller, now).err().map(|d| ("caller", d)))
        .or_else(|| {
            rt.rate
                .as_ref()
                .and_then(|g| g.check(now).err().map(|d| ("route", d)))
        })
        .or_else(|| {
            app.runtimes
                .total(compiled.total_limit)
                .and_then(|g| g.check(now).err().map(|d| ("total", d)))
        });
    let Some((limit, wait)) = limited else {
        return Ok(());
    };
    app.metrics
        .rate_limited
        .with_label_values(&[&*rule.key, limit])
        .inc();
    Err(
        Reject::new(StatusCode::TOO_MANY_REQUESTS, "RL", "rate limit exceeded")
            .with_header(RETRY_AFTER, retry_after_secs(wait).into()),
    )
}

/// The caller's key for per-caller limits: its principal, else its address.
pub fn caller_key(principal: Option<&str>, source: Option<SocketAddr>) -> String {
    principal
        .map(str::to_string)
        .or_else(|| source.map(|a| a.ip().to_string()))
        .unwrap_or_default()
}

/// Fault injection: a delay, an abort, or both.
pub async fn inject_fault(
    rule: &Rule,
    rng: &mut fastrand::Rng,
    rec: &mut RequestRecord,
) -> Result<(), Box<Reject>> {
    let Some(f) = &rule.policy.fault else {
        return Ok(());
    };
    let (delay, abort) = match fault::decide(f, rng.f64(), rng.f64()) {
        FaultAction::None => (None, None),
        FaultAction::Delay(d) => (Some(d), None),
        FaultAction::Abort(s) => (None, Some(s)),
        FaultAction::DelayThenAbort(d, s) => (Some(d), Some(s)),
    };
    if let Some(d) = delay {
        rec.flags = "DI";
        tokio::time::sleep(d).await;
    }
    match abort {
        Some(s) => {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            Err(Reject::new(status, "FI", "fault filter abort"))
        }
        None => Ok(()),
    }
}

/// A slot under the rule's adaptive concurrency limit, if it has one.
pub fn adaptive_slot(
    app: &App,
    rule: &Rule,
    rt: &RuleRuntime,
) -> Result<Option<AdaptivePermit>, Box<Reject>> {
    let Some(a) = &rt.adaptive else {
        return Ok(None);
    };
    match a.try_acquire() {
        Some(p) => Ok(Some(p)),
        None => {
            app.metrics
                .overloaded
                .with_label_values(&[&*rule.key, "adaptive"])
                .inc();
            Err(Reject::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UO",
                "concurrency limit exceeded",
            ))
        }
    }
}

/// A slot under the backend's circuit breaker, if it has one. The request
/// timeout covers the wait: time queued is time the caller waits.
pub async fn circuit_slot(
    app: &App,
    rule: &Rule,
    brt: &BackendRuntime,
    deadline: Option<Instant>,
) -> Result<Option<CircuitPermit>, Box<Reject>> {
    let Some(c) = &brt.circuit else {
        return Ok(None);
    };
    match until(deadline, c.acquire()).await {
        None => Err(Reject::new(
            StatusCode::GATEWAY_TIMEOUT,
            "UT",
            "upstream request timeout",
        )),
        Some(Ok(p)) => Ok(Some(p)),
        Some(Err(e)) => {
            let cause = match e {
                CircuitRejected::Overflow => "circuit_breaker",
                CircuitRejected::PendingTimeout => "pending_timeout",
            };
            app.metrics
                .overloaded
                .with_label_values(&[&*rule.key, cause])
                .inc();
            Err(Reject::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UO",
                e.to_string(),
            ))
        }
    }
}
