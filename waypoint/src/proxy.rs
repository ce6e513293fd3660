//! One HTTP request through the waypoint: authorization, routing, limits,
//! fault injection, concurrency control, endpoint choice and retries.
//!
//! Every decision is made by a pure module (`authz`, `route`, `resilience`,
//! `lb`); this file sequences them and does the I/O. Each local answer
//! (403, 404, 429, 503, 504) sets the Envoy response flag an operator would
//! look for in metrics and the access log.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone::Identity;
use http::header::{HeaderValue, CONTENT_TYPE, HOST, LOCATION, RETRY_AFTER, UPGRADE};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use trellis_core::drain::DrainWatcher;
use trellis_core::metrics::ConnectionLabels;

use crate::authz::{AuthzDecision, AuthzRequest};
use crate::body::{self, grpc_status, header_size, Hold, ReplayBody, RespBody, ResponseBody};
use crate::headers;
use crate::metrics::{RequestRecord, WaypointMetrics};
use crate::resilience::fault::{self, FaultAction};
use crate::resilience::outlier::Outcome;
use crate::resilience::ratelimit::retry_after_secs;
use crate::resilience::retry::{self, AttemptOutcome};
use crate::route::{Decision, RequestView, Rule};
use crate::settings::Settings;
use crate::state::{RuleRuntime, Runtimes, Snapshot};
use crate::upstream::{Endpoint, Proto, Upstream, UpstreamError};
use trellis_core::certs::CertManager;
use trellis_core::state::StateStore;

/// Everything shared by all connections.
pub struct App {
    pub settings: Settings,
    pub identity: Identity,
    pub store: Arc<StateStore>,
    pub snapshot: Arc<Snapshot>,
    pub runtimes: Runtimes,
    pub metrics: Arc<WaypointMetrics>,
    pub upstream: Upstream,
    pub certs: Arc<CertManager>,
    pub drain: DrainWatcher,
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
}

/// Upper bound on how long a client may hold a request before the
/// waypoint's own local reply; keeps retry backoff sleeps bounded too.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub async fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let host = host_of(&req);
    let grpc = is_grpc(&req);
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut rec = RequestRecord::new(
        ctx.app.metrics.clone(),
        ctx.labels.clone(),
        req.method().clone(),
        path,
        host.clone(),
    );
    rec.protocol = if grpc { "grpc" } else { "http" };
    rec.request_bytes = header_size(req.headers());
    Ok(serve(&ctx, req, host, grpc, rec).await)
}

/// A reply made by the waypoint itself. gRPC callers get a trailers-only
/// answer with the matching grpc-status, as gRPC clients cannot read an HTTP error page.
fn local_reply(
    mut rec: RequestRecord,
    grpc: bool,
    status: StatusCode,
    flags: &'static str,
    msg: &str,
) -> Response<RespBody> {
    rec.flags = flags;
    let mut resp = if grpc {
        let code = fault::grpc_status_for_http(status.as_u16());
        let mut r = Response::new(body::empty());
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        r.headers_mut().insert("grpc-status", code.into());
        if let Ok(v) = HeaderValue::from_str(msg) {
            r.headers_mut().insert("grpc-message", v);
        }
        rec.grpc_status = Some(code);
        r
    } else {
        let mut r = Response::new(body::full(format!("{msg}\n")));
        *r.status_mut() = status;
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    rec.status = resp.status().as_u16();
    rec.response_bytes = header_size(resp.headers()) + msg.len() as u64 + 1;
    resp.headers_mut()
        .insert("server", HeaderValue::from_static("trellis-waypoint"));
    drop(rec);
    resp
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
            return local_reply(
                rec,
                grpc,
                StatusCode::SERVICE_UNAVAILABLE,
                "NR",
                "no service or workload at this address",
            )
        }
    };

    // Authorization, on what the caller asked for, before any rewrite.
    let principal = ctx.source_identity.as_ref().map(principal_of);
    let authz_req = AuthzRequest {
        source_principal: principal.as_deref(),
        source_namespace: ctx.source_identity.as_ref().map(|i| i.namespace()),
        source_ip: ctx
            .source_addr
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        host: &host,
        method: req.method().as_str(),
        path: req.uri().path(),
        port: ctx.target.port(),
        headers: req.headers(),
    };
    if let AuthzDecision::Deny { policy } = compiled.authz.evaluate(ns, name, &authz_req) {
        tracing::debug!(%policy, "request denied");
        rec.denied_by = Some(policy);
        return local_reply(rec, grpc, StatusCode::FORBIDDEN, "-", "RBAC: access denied");
    }

    let mut rng = fastrand::Rng::new();
    let ids = headers::propagate(req.headers_mut(), &mut rng);
    rec.request_id = ids.request_id.to_str().unwrap_or_default().to_string();
    rec.trace_id = headers::trace_id_hex(&ids);

    // A workload addressed directly has no routes: forward as is.
    let Some(service) = service else {
        let wl = target_workload.expect("checked above");
        let ep = Endpoint {
            addr: ctx.target,
            workload: wl,
        };
        return forward_direct(ctx, req, rec, grpc, ep).await;
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
    let (rule, backend_idx, prefix) = match decision {
        Decision::Forward {
            rule,
            backend,
            prefix,
        } => (rule, backend, prefix),
        Decision::Redirect {
            status,
            location,
            rule,
        } => {
            rec.route = rule.key.clone();
            let mut resp = local_reply(rec, false, status, "-", "redirect");
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(LOCATION, v);
            }
            return resp;
        }
        Decision::NoRoute => {
            return local_reply(rec, grpc, StatusCode::NOT_FOUND, "NR", "no route matched")
        }
        Decision::NoBackend { rule } => {
            rec.route = rule.key.clone();
            return local_reply(
                rec,
                grpc,
                StatusCode::INTERNAL_SERVER_ERROR,
                "NR",
                "route has no backends",
            );
        }
    };
    rec.route = rule.key.clone();
    let rt = app.runtimes.rule(&rule);
    let now = Instant::now();

    // Rate limits: the caller's, the route's, then the waypoint's total.
    // Each check that passes takes a token, so the narrowest goes first: a
    // caller flooding past its own limit must not drain the buckets that
    // every other caller shares.
    let caller_key = principal
        .clone()
        .or_else(|| ctx.source_addr.map(|a| a.ip().to_string()))
        .unwrap_or_default();
    let limited = rt
        .per_caller
        .as_ref()
        .and_then(|g| g.check(&caller_key, now).err().map(|d| ("caller", d)))
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
    if let Some((limit, wait)) = limited {
        app.metrics
            .rate_limited
            .with_label_values(&[&*rule.key, limit])
            .inc();
        let mut resp = local_reply(
            rec,
            grpc,
            StatusCode::TOO_MANY_REQUESTS,
            "RL",
            "rate limit exceeded",
        );
        resp.headers_mut()
            .insert(RETRY_AFTER, retry_after_secs(wait).into());
        return resp;
    }

    // Fault injection.
    if let Some(f) = &rule.policy.fault {
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
        if let Some(s) = abort {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return local_reply(rec, grpc, status, "FI", "fault filter abort");
        }
    }

    // Adaptive concurrency.
    let adaptive = match &rt.adaptive {
        Some(a) => match a.try_acquire() {
            Some(p) => Some(p),
            None => {
                app.metrics
                    .overloaded
                    .with_label_values(&[&*rule.key, "adaptive"])
                    .inc();
                return local_reply(
                    rec,
                    grpc,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UO",
                    "concurrency limit exceeded",
                );
            }
        },
        None => None,
    };

    // Filters: the rule's, then the chosen backend's.
    let Some(backend) = rule.backends.get(backend_idx) else {
        return local_reply(
            rec,
            grpc,
            StatusCode::INTERNAL_SERVER_ERROR,
            "NR",
            "route has no backends",
        );
    };
    let upgrade = is_upgrade(&req);
    let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    rule.filters.apply_request(&mut parts, prefix.as_deref());
    backend.filters.apply_request(&mut parts, prefix.as_deref());
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);

    let port = backend.port.unwrap_or(ctx.target.port());
    let endpoints: Vec<Endpoint> = state
        .endpoints(&backend.service, port)
        .into_iter()
        .map(|(workload, addr)| Endpoint { addr, workload })
        .collect();
    if endpoints.is_empty() {
        return local_reply(
            rec,
            grpc,
            StatusCode::SERVICE_UNAVAILABLE,
            "UH",
            "no healthy upstream",
        );
    }
    let brt = &rt.backends[backend_idx.min(rt.backends.len().saturating_sub(1))];
    // The request timeout covers the wait for a circuit breaker slot too:
    // time queued is time the caller waits.
    let deadline = rule.request_timeout.map(|t| Instant::now() + t);
    let circuit = match &brt.circuit {
        Some(c) => match until(deadline, c.acquire()).await {
            None => {
                return local_reply(
                    rec,
                    grpc,
                    StatusCode::GATEWAY_TIMEOUT,
                    "UT",
                    "upstream request timeout",
                )
            }
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                let cause = match e {
                    crate::resilience::circuit::CircuitRejected::Overflow => "circuit_breaker",
                    crate::resilience::circuit::CircuitRejected::PendingTimeout => {
                        "pending_timeout"
                    }
                };
                app.metrics
                    .overloaded
                    .with_label_values(&[&*rule.key, cause])
                    .inc();
                return local_reply(
                    rec,
                    grpc,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UO",
                    &e.to_string(),
                );
            }
        },
        None => None,
    };

    let proto = if parts.version == Version::HTTP_2 {
        Proto::Http2
    } else {
        Proto::Http1
    };
    let limit = if upgrade {
        0
    } else {
        rule.policy
            .retry
            .as_ref()
            .map(|r| r.max_body_bytes)
            .unwrap_or(0)
    };
    let body = ReplayBody::new(incoming, limit);
    let started = Instant::now();
    let attempt = Attempts {
        ctx,
        rule: &rule,
        rt: &rt,
        backend_idx,
        endpoints: &endpoints,
        proto,
        parts: &parts,
        grpc,
    };
    let result = until(deadline, attempt.run(body, &mut rec, &mut rng))
        .await
        .unwrap_or(Err(Failure::Timeout));
    let latency = started.elapsed();
    let (mut resp, body_deadline) = match result {
        Ok((resp, try_started)) => {
            // The timeouts cover the body too: the sooner of the two ends.
            let try_deadline = rule.per_try_timeout.map(|t| try_started + t);
            (resp, deadline.into_iter().chain(try_deadline).min())
        }
        Err(f) => {
            if let Some(p) = adaptive {
                p.record(latency, false);
            }
            let (status, flags, msg) = f.reply(rec.attempts);
            return local_reply(rec, grpc, status, flags, &msg);
        }
    };
    let status = resp.status();
    if let Some(p) = adaptive {
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
    let mut hold: Vec<Hold> = Vec::new();
    if let Some(c) = circuit {
        hold.push(Box::new(c));
    }
    let (rparts, rbody) = resp.into_parts();
    let body = ResponseBody::new(rbody, rec, header_bytes, hold).with_deadline(body_deadline);
    Response::from_parts(rparts, http_body_util::BodyExt::boxed(body))
}

/// Runs `fut` until `deadline`; None if the deadline came first.
async fn until<F: std::future::Future>(deadline: Option<Instant>, fut: F) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), fut).await.ok(),
        None => Some(fut.await),
    }
}

/// Connects the two upgraded halves (e.g. WebSocket) once both are ready.
fn splice_upgrade(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(down, up) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut down = TokioIo::new(down);
        let mut up = TokioIo::new(up);
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}

/// Why no upstream response could be returned.
enum Failure {
    Upstream(UpstreamError),
    /// The last attempt got a retryable answer we cannot pass on (none: we
    /// return the last answer itself), kept for symmetry with timeouts.
    Timeout,
    PerTryTimeout,
}

impl Failure {
    fn reply(&self, attempts: u32) -> (StatusCode, &'static str, String) {
        let retried = attempts > 1;
        match self {
            Failure::Upstream(e) if e.is_connect_failure() => (
                StatusCode::SERVICE_UNAVAILABLE,
                if retried { "URX" } else { "UF" },
                format!("upstream connect error: {e}"),
            ),
            Failure::Upstream(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                if retried { "URX" } else { "UC" },
                format!("upstream reset: {e}"),
            ),
            Failure::Timeout | Failure::PerTryTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "UT",
                "upstream request timeout".to_string(),
            ),
        }
    }
}

/// The retry loop's fixed inputs.
struct Attempts<'a> {
    ctx: &'a Arc<ConnCtx>,
    rule: &'a Arc<Rule>,
    rt: &'a Arc<RuleRuntime>,
    backend_idx: usize,
    endpoints: &'a [Endpoint],
    proto: Proto,
    parts: &'a http::request::Parts,
    grpc: bool,
}

impl Attempts<'_> {
    async fn run(
        &self,
        body: ReplayBody,
        rec: &mut RequestRecord,
        rng: &mut fastrand::Rng,
    ) -> Result<(Response<Incoming>, Instant), Failure> {
        let app = &self.ctx.app;
        let brt = &self.rt.backends[self.backend_idx.min(self.rt.backends.len() - 1)];
        let retry = self.rule.policy.retry.as_ref();
        let _budget_guard = self.rt.budget.as_ref().map(|b| b.request_started());
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut body = body;
        let mut retries = 0u32;
        loop {
            let keep = body.replay();
            let now = Instant::now();
            let ep = self.pick(brt, &tried, now, rng);
            tried.push(ep.addr);
            rec.attempts += 1;
            rec.upstream = Some(ep.addr);
            rec.destination_workload = Some(ep.workload.clone());
            let req = self.build_request(body);
            let load = brt.balancer.start(ep.addr);
            let sent = self
                .ctx
                .app
                .upstream
                .send(&ep, self.proto, req, self.ctx.source_addr);
            let res = match self.rule.per_try_timeout {
                Some(t) => match tokio::time::timeout(t, sent).await {
                    Ok(r) => r.map_err(Failure::Upstream),
                    Err(_) => Err(Failure::PerTryTimeout),
                },
                None => sent.await.map_err(Failure::Upstream),
            };
            let latency = now.elapsed();
            let (outcome, detector) = match &res {
                Ok(resp) => {
                    let s = resp.status().as_u16();
                    let o = match grpc_status(resp.headers()).filter(|_| self.grpc) {
                        Some(g) if g != 0 => AttemptOutcome::GrpcStatus(g),
                        _ => AttemptOutcome::Status(s),
                    };
                    let d = if s >= 500 {
                        Outcome::ServerError
                    } else {
                        Outcome::Success
                    };
                    load.finish(latency, s < 500);
                    (o, d)
                }
                Err(Failure::Upstream(e)) if e.is_connect_failure() => {
                    load.finish(latency, false);
                    (AttemptOutcome::ConnectFailure, Outcome::ConnectFailure)
                }
                Err(Failure::PerTryTimeout) => {
                    load.finish(latency, false);
                    (AttemptOutcome::Status(504), Outcome::ServerError)
                }
                Err(_) => {
                    load.finish(latency, false);
                    (AttemptOutcome::Reset, Outcome::ServerError)
                }
            };
            if let Some(o) = &brt.outlier {
                if let Some(for_) = o.report(ep.addr, detector, self.endpoints.len(), now) {
                    tracing::info!(endpoint = %ep.addr, rule = %self.rule.key, ejected_for = ?for_, "outlier ejected");
                    app.metrics
                        .ejections
                        .with_label_values(&[&*self.rule.key, ep.addr.to_string().as_str()])
                        .inc();
                }
            }
            let Some(policy) = retry else {
                return res.map(|r| (r, now));
            };
            let wants = retry::retryable(policy, &outcome);
            // Checked after the attempt: it may have read past the bound.
            let Some(again) = keep.filter(ReplayBody::can_replay) else {
                return res.map(|r| (r, now));
            };
            let allowed = wants
                && retries < policy.attempts
                && self
                    .rt
                    .budget
                    .as_ref()
                    .is_none_or(|b| b.try_retry(Instant::now()));
            if !allowed {
                return res.map(|r| (r, now));
            }
            retries += 1;
            app.metrics
                .retries
                .with_label_values(&[&*self.rule.key])
                .inc();
            drop(res);
            let wait = retry::backoff(policy, retries, rng.f64()).min(MAX_BACKOFF);
            tokio::time::sleep(wait).await;
            body = again;
        }
    }

    /// An endpoint for the next attempt: not ejected (unless all are, as
    /// Envoy's panic mode: some traffic beats none), and not one already
    /// tried when there is another.
    fn pick(
        &self,
        brt: &crate::state::BackendRuntime,
        tried: &[SocketAddr],
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Endpoint {
        let healthy: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| {
                brt.outlier
                    .as_ref()
                    .is_none_or(|o| !o.is_ejected(e.addr, now))
            })
            .collect();
        let pool: Vec<&Endpoint> = if healthy.is_empty() {
            self.endpoints.iter().collect()
        } else {
            healthy
        };
        let fresh: Vec<&Endpoint> = pool
            .iter()
            .copied()
            .filter(|e| !tried.contains(&e.addr))
            .collect();
        let cands = if fresh.is_empty() { pool } else { fresh };
        let addrs: Vec<SocketAddr> = cands.iter().map(|e| e.addr).collect();
        let i = brt.balancer.pick(&addrs, now, rng).unwrap_or(0);
        cands[i.min(cands.len() - 1)].clone()
    }

    fn build_request(&self, body: ReplayBody) -> Request<ReplayBody> {
        let p = self.parts;
        let mut req = Request::new(body);
        *req.method_mut() = p.method.clone();
        *req.version_mut() = p.version;
        *req.headers_mut() = p.headers.clone();
        *req.uri_mut() = upstream_uri(&p.uri, &p.headers, self.proto);
        if self.proto == Proto::Http1 && !req.headers().contains_key(HOST) {
            if let Some(a) = p.uri.authority() {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    req.headers_mut().insert(HOST, v);
                }
            }
        }
        req
    }
}

/// HTTP/1.1 upstreams get origin-form (`/path?q`); HTTP/2 needs scheme and
/// authority, taken from the URI or the Host header.
fn upstream_uri(uri: &Uri, headers: &http::HeaderMap, proto: Proto) -> Uri {
    let pq = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    match proto {
        Proto::Http1 => pq.parse().unwrap_or_else(|_| Uri::from_static("/")),
        Proto::Http2 => {
            let authority = uri
                .authority()
                .map(|a| a.as_str().to_string())
                .or_else(|| {
                    headers
                        .get(HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "localhost".into());
            Uri::builder()
                .scheme(uri.scheme_str().unwrap_or("http"))
                .authority(authority)
                .path_and_query(pq)
                .build()
                .unwrap_or_else(|_| uri.clone())
        }
    }
}

/// Forwards to a workload addressed directly (no service, no routes).
async fn forward_direct(
    ctx: &Arc<ConnCtx>,
    mut req: Request<Incoming>,
    mut rec: RequestRecord,
    grpc: bool,
    ep: Endpoint,
) -> Response<RespBody> {
    let upgrade = is_upgrade(&req);
    let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    let proto = if parts.version == Version::HTTP_2 {
        Proto::Http2
    } else {
        Proto::Http1
    };
    let mut out = Request::new(ReplayBody::new(incoming, 0));
    *out.method_mut() = parts.method.clone();
    *out.version_mut() = parts.version;
    *out.uri_mut() = upstream_uri(&parts.uri, &parts.headers, proto);
    *out.headers_mut() = parts.headers;
    rec.attempts = 1;
    rec.upstream = Some(ep.addr);
    rec.destination_workload = Some(ep.workload.clone());
    match ctx
        .app
        .upstream
        .send(&ep, proto, out, ctx.source_addr)
        .await
    {
        Ok(mut resp) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(down) = down_upgrade {
                    splice_upgrade(down, hyper::upgrade::on(&mut resp));
                }
            } else {
                headers::strip_hop_by_hop(resp.headers_mut(), false);
            }
            rec.status = resp.status().as_u16();
            if grpc {
                rec.grpc_status = grpc_status(resp.headers());
            }
            let header_bytes = header_size(resp.headers());
            let (p, b) = resp.into_parts();
            Response::from_parts(
                p,
                http_body_util::BodyExt::boxed(ResponseBody::new(b, rec, header_bytes, vec![])),
            )
        }
        Err(e) => {
            let (status, flags, msg) = Failure::Upstream(e).reply(1);
            local_reply(rec, grpc, status, flags, &msg)
        }
    }
}

/// `cluster.local/ns/x/sa/y`: how Istio policies write principals.
pub fn principal_of(id: &Identity) -> String {
    let s = id.to_string();
    s.strip_prefix("spiffe://").unwrap_or(&s).to_string()
}

/// The request's host without a port: Host header (HTTP/1) or :authority (HTTP/2).
fn host_of<B>(req: &Request<B>) -> String {
    let raw = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    strip_port(raw).to_ascii_lowercase()
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.split_once(']').map(|(a, _)| &a[1..]).unwrap_or(h);
    }
    match h.rsplit_once(':') {
        Some((a, p)) if p.bytes().all(|b| b.is_ascii_digit()) => a,
        _ => h,
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11 && req.headers().contains_key(UPGRADE)
        || req.method() == Method::CONNECT && req.version() == Version::HTTP_11
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port_and_case() {
        let cases = [
            ("Example.COM:8080", "example.com"),
            ("example.com", "example.com"),
            ("[::1]:80", "::1"),
            ("10.0.0.1:80", "10.0.0.1"),
            ("", ""),
        ];
        for (raw, want) in cases {
            let req = Request::builder().header(HOST, raw).body(()).unwrap();
            assert_eq!(host_of(&req), want, "{raw}");
        }
    }

    #[test]
    fn upstream_uris_fit_the_protocol() {
        let mut h = http::HeaderMap::new();
        h.insert(HOST, "svc.demo:80".parse().unwrap());
        let origin: Uri = "/a?b=1".parse().unwrap();
        assert_eq!(upstream_uri(&origin, &h, Proto::Http1), "/a?b=1");
        assert_eq!(
            upstream_uri(&origin, &h, Proto::Http2).to_string(),
            "http://svc.demo:80/a?b=1"
        );
        let abs: Uri = "http://x.y/z".parse().unwrap();
        assert_eq!(upstream_uri(&abs, &h, Proto::Http1), "/z");
        assert_eq!(
            upstream_uri(&abs, &h, Proto::Http2).to_string(),
            "http://x.y/z"
        );
    }
}
