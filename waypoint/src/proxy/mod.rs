//! One HTTP request through the waypoint: authorization, routing, limits,
//! fault injection, concurrency control, endpoint choice and retries.
//!
//! Every decision is made by a pure module (`authz`, `route`, `resilience`,
//! `lb`); this module sequences them and does the I/O:
//! - [`admit`]: the checks before any upstream work;
//! - [`attempts`]: endpoint choice, the upstream call and retries;
//! - [`reply`]: the waypoint's own answers and their response flags;
//! - [`request`]: facts read off the request, and upgrade splicing.

mod admit;
mod attempts;
mod reply;
mod request;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone::Identity;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use trellis_core::certs::CertManager;
use trellis_core::drain::DrainWatcher;
use trellis_core::metrics::ConnectionLabels;
use trellis_core::state::StateStore;

use crate::authz::{AuthzRequest, TcpAuthzRequest};
use crate::body::{grpc_status, header_size, Hold, ReplayBody, RespBody, ResponseBody};
use crate::headers;
use crate::metrics::{RequestRecord, WaypointMetrics};
use crate::route::RequestView;
use crate::settings::Settings;
use crate::state::{Runtimes, Snapshot};
use crate::upstream::{Endpoint, Upstream};

use attempts::{forward_direct, proto_of, Attempts};
use reply::{Failure, Reject};
use request::principal_of;
use request::{host_of, is_grpc, is_upgrade, splice_upgrade, wants_trailers};

/// Everything shared by all connections.
pub struct App {
    pub settings: Settings,
    pub identity: Identity,
    pub store: Arc<StateStore>,
    pub snapshot: Arc<Snapshot>,
    pub runtimes: Arc<Runtimes>,
    pub metrics: Arc<WaypointMetrics>,
    pub upstream: Upstream,
    pub certs: Arc<CertManager>,
    pub drain: DrainWatcher,
    /// Bounds on connections and pending handshakes, shared by every worker.
    pub limits: Arc<trellis_core::limits::ConnLimits>,
}

/// One tunnelled downstream connection: who is calling, and what they dialled.
pub struct ConnCtx {
    pub app: Arc<App>,
    /// The caller's verified identity (the HBONE peer: the client's node
    /// proxy presents the client workload's certificate).
    pub source_identity: Option<Identity>,
    /// The original client address from the CONNECT `forwarded` header.
    pub source_addr: Option<SocketAddr>,
    /// The CONNECT authority: a service VIP:port or a workload ip:port.
    pub target: SocketAddr,
    pub labels: Arc<ConnectionLabels>,
    /// `WaypointMetrics::labels_key` of `labels`.
    pub labels_key: u64,
    /// The caller as policies write it (`td/ns/x/sa/y`), computed once per connection.
    pub principal: Option<String>,
    /// The per-caller rate-limit key: the principal, else the source IP.
    pub caller_key: String,
}

impl ConnCtx {
    pub fn new(
        app: Arc<App>,
        source_identity: Option<Identity>,
        source_addr: Option<SocketAddr>,
        target: SocketAddr,
        labels: Arc<ConnectionLabels>,
    ) -> ConnCtx {
        let principal = source_identity.as_ref().map(principal_of);
        let caller_key = admit::caller_key(principal.as_deref(), source_addr);
        ConnCtx {
            labels_key: app.metrics.labels_key(&labels),
            app,
            source_identity,
            source_addr,
            target,
            labels,
            principal,
            caller_key,
        }
    }

    /// What policy knows of this connection's caller and destination port;
    /// an unknown source address matches no IP block.
    pub fn tcp_authz(&self) -> TcpAuthzRequest<'_> {
        TcpAuthzRequest {
            source_principal: self.principal.as_deref(),
            source_namespace: self.source_identity.as_ref().map(|i| i.namespace()),
            source_ip: self
                .source_addr
                .map(|a| a.ip())
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            port: self.target.port(),
        }
    }
}

/// Upper bound on one retry backoff sleep.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The hyper service: every request of a downstream connection comes here.
pub async fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let host = host_of(&req);
    let grpc = is_grpc(&req);
    let mut rec = RequestRecord::new(
        ctx.app.metrics.clone(),
        ctx.labels.clone(),
        ctx.labels_key,
        req.method().clone(),
    );
    if rec.logged() {
        // Only the access log reads these; skip the copies otherwise.
        rec.path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        rec.authority = host.clone();
    }
    rec.protocol = if grpc { "grpc" } else { "http" };
    rec.request_bytes = header_size(req.headers());
    Ok(serve(&ctx, req, host, grpc, rec).await)
}

/// Ends the request with a local answer when a stage rejects it.
macro_rules! or_reply {
    ($stage:expr, $rec:ident, $grpc:expr) => {
        match $stage {
            Ok(v) => v,
            Err(reject) => return Reject::reply(*reject, $rec, $grpc),
        }
    };
}

async fn serve(
    ctx: &Arc<ConnCtx>,
    mut req: Request<Incoming>,
    host: String,
    grpc: bool,
    mut rec: RequestRecord,
) -> Response<RespBody> {
    let app = &ctx.app;
    let compiled = app.snapshot.load();
    let state = &compiled.state;
    let service = state.service_by_vip(ctx.target.ip()).cloned();
    let target_workload = match &service {
        Some(_) => None,
        None => state.workload_by_ip(ctx.target.ip()).cloned(),
    };
    let (ns, name) = match (&service, &target_workload) {
        (Some(s), _) => (s.namespace.as_str(), s.name.as_str()),
        (None, Some(w)) => (w.namespace.as_str(), ""),
        (None, None) => {
            let r = Reject::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "NR",
                "no service or workload at this address",
            );
            return r.reply(rec, grpc);
        }
    };

    let authz_req = AuthzRequest {
        conn: ctx.tcp_authz(),
        host: &host,
        method: req.method().as_str(),
        path: req.uri().path(),
        headers: req.headers(),
    };
    or_reply!(
        admit::authorize(&compiled.authz, ns, name, &authz_req),
        rec,
        grpc
    );

    let mut rng = fastrand::Rng::new();
    let ids = headers::propagate(req.headers_mut(), &mut rng);
    if rec.logged() {
        rec.request_id = ids.request_id.to_str().unwrap_or_default().to_string();
        rec.trace_id = headers::trace_id_hex(&ids);
    }

    // A workload addressed directly has no routes: forward as is.
    let Some(service) = service else {
        let Some(workload) = target_workload else {
            return Reject::new(StatusCode::SERVICE_UNAVAILABLE, "NR", "no destination")
                .reply(rec, grpc);
        };
        let ep = Endpoint {
            addr: ctx.target,
            workload,
        };
        // Boxed: a rare path whose upstream call would otherwise add to every request's future.
        return Box::pin(forward_direct(ctx, req, rec, grpc, ep)).await;
    };

    let view = RequestView {
        method: req.method(),
        uri: req.uri(),
        headers: req.headers(),
        host: &host,
    };
    let decision = compiled
        .routes
        .decide(&service, ctx.target.port(), &view, rng.f64());
    let (rule, backend_idx, prefix) = or_reply!(admit::routed(decision), rec, grpc);
    rec.route = rule.key.clone();
    let rt = app.runtimes.rule(&rule);

    or_reply!(
        admit::rate_limit(app, &compiled, &rule, &rt, &ctx.caller_key),
        rec,
        grpc
    );
    or_reply!(
        admit::inject_fault(&rule, &mut rng, &mut rec).await,
        rec,
        grpc
    );
    let adaptive = or_reply!(admit::adaptive_slot(app, &rule, &rt), rec, grpc);

    let Some(backend) = rule.backends.get(backend_idx) else {
        let r = Reject::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "NR",
            "route has no backends",
        );
        return r.reply(rec, grpc);
    };
    // Filters: the rule's, then the chosen backend's.
    let upgrade = is_upgrade(&req);
    let trailers = wants_trailers(&req, grpc);
    let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    rule.filters.apply_request(&mut parts, prefix.as_deref());
    backend.filters.apply_request(&mut parts, prefix.as_deref());
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);

    let port = backend.port.unwrap_or(ctx.target.port());
    let Some(endpoints) = compiled
        .endpoints(&backend.service, port)
        .filter(|set| !set.endpoints.is_empty())
    else {
        let r = Reject::new(StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream");
        return r.reply(rec, grpc);
    };
    let brt = &rt.backends[backend_idx.min(rt.backends.len().saturating_sub(1))];
    let deadline = rule.request_timeout.map(|t| Instant::now() + t);
    let circuit = or_reply!(
        admit::circuit_slot(app, &rule, brt, deadline).await,
        rec,
        grpc
    );

    // Bodies are kept for replay only when a retry could use them; an
    // upgraded stream is never replayed.
    let limit = match (&rule.policy.retry, upgrade) {
        (Some(r), false) => r.max_body_bytes,
        _ => 0,
    };
    let body = ReplayBody::new(incoming, limit);
    // Only the adaptive limiter reads the upstream latency; skip the clock otherwise.
    let started = adaptive.is_some().then(Instant::now);
    let attempts = Attempts {
        ctx,
        rule: &rule,
        rt: &rt,
        backend_idx,
        endpoints,
        proto: proto_of(parts.version),
        parts,
        grpc,
    };
    // Boxed: the attempts (upstream send, timers, backoff) are most of the
    // request's state, and hyper moves the request future into a task per
    // HTTP/2 stream; a pointer moves for free.
    let result = until(deadline, Box::pin(attempts.run(body, &mut rec, &mut rng)))
        .await
        .unwrap_or(Err(Failure::Timeout));
    let latency = started.map(|s| s.elapsed());
    let (mut resp, body_deadline, lease) = match result {
        Ok((resp, try_started, lease)) => {
            // The timeouts cover the body too: the sooner of the two ends.
            let try_deadline = rule.per_try_timeout.map(|t| try_started + t);
            (resp, deadline.into_iter().chain(try_deadline).min(), lease)
        }
        Err(f) => {
            if let (Some(p), Some(latency)) = (adaptive, latency) {
                p.record(latency, false);
            }
            let attempts = rec.attempts;
            return Reject::from_failure(&f, attempts).reply(rec, grpc);
        }
    };
    let status = resp.status();
    if let (Some(p), Some(latency)) = (adaptive, latency) {
        p.record(latency, status.as_u16() < 500);
    }
    rule.filters.apply_response(resp.headers_mut());
    backend.filters.apply_response(resp.headers_mut());
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(down) = down_upgrade {
            splice_upgrade(down, hyper::upgrade::on(&mut resp));
        }
    } else {
        headers::strip_hop_by_hop(resp.headers_mut(), false);
    }
    rec.status = status.as_u16();
    if grpc {
        rec.grpc_status = grpc_status(resp.headers());
    }
    let header_bytes = header_size(resp.headers());
    let hold: Vec<Hold> = circuit.into_iter().map(|c| Box::new(c) as Hold).collect();
    let (rparts, rbody) = resp.into_parts();
    let body = ResponseBody::new(rbody, rec, header_bytes, hold)
        .with_deadline(body_deadline)
        .with_lease(lease)
        .ends_early(!trailers);
    Response::from_parts(rparts, http_body_util::BodyExt::boxed(body))
}

/// Runs `fut` until `deadline`; None if the deadline came first.
async fn until<F: std::future::Future>(deadline: Option<Instant>, fut: F) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), fut).await.ok(),
        None => Some(fut.await),
    }
}
