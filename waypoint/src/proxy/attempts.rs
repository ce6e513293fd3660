//! The attempts of one request: endpoint choice (skipping ejected and
//! already-tried endpoints), the upstream call under the per-try timeout,
//! outcome reporting to the balancer and outlier detector, and retries
//! under the policy and budget with a replayable body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use super::reply::{Failure, Reject};
use super::request::{is_upgrade, splice_upgrade};
use super::{ConnCtx, MAX_BACKOFF};
use crate::body::{grpc_status, header_size, ReplayBody, RespBody, ResponseBody};
use crate::headers;
use crate::metrics::RequestRecord;
use crate::resilience::outlier::Outcome;
use crate::resilience::retry::{self, AttemptOutcome};
use crate::route::Rule;
use crate::state::{BackendRuntime, EndpointSet, RuleRuntime};
use crate::upstream::{Endpoint, Lease, Proto};

/// The retry loop's fixed inputs.
pub struct Attempts<'a> {
    pub ctx: &'a Arc<ConnCtx>,
    pub rule: &'a Arc<Rule>,
    pub rt: &'a Arc<RuleRuntime>,
    pub backend_idx: usize,
    pub endpoints: &'a EndpointSet,
    pub proto: Proto,
    /// The request head; moved into the only attempt when the rule cannot
    /// retry, cloned per attempt otherwise.
    pub parts: http::request::Parts,
    pub grpc: bool,
}

impl Attempts<'_> {
    /// Returns the response, when its attempt started (the per-try
    /// timeout covers the body too), and its connection's lease, to keep
    /// as long as the body.
    pub async fn run(
        mut self,
        body: ReplayBody,
        rec: &mut RequestRecord,
        rng: &mut fastrand::Rng,
    ) -> Result<(Response<Incoming>, Instant, Lease), Failure> {
        let (rule, rt) = (self.rule, self.rt);
        let app = &self.ctx.app;
        let brt = &rt.backends[self.backend_idx.min(rt.backends.len() - 1)];
        let retry = rule.policy.retry.as_ref();
        let _budget_guard = self.rt.budget.as_ref().map(|b| b.request_started());
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut body = body;
        let mut retries = 0u32;
        loop {
            let keep = body.replay();
            let now = Instant::now();
            let ep = self.pick(brt, &tried, now, rng);
            if retry.is_some() {
                // Only a retry looks at what was tried; no list otherwise.
                tried.push(ep.addr);
            }
            rec.attempts += 1;
            rec.upstream = Some(ep.addr);
            rec.destination_workload = Some(ep.workload.clone());
            let req = self.build_request(body, retry.is_none());
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
            // One clock read for the latency and the balancer's timestamp.
            let ended = Instant::now();
            let latency = ended - now;
            let (outcome, detector) = match &res {
                Ok((resp, _)) => {
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
                    load.finish_at(latency, s < 500, ended);
                    (o, d)
                }
                Err(Failure::Upstream(e)) if e.is_connect_failure() => {
                    load.finish_at(latency, false, ended);
                    (AttemptOutcome::ConnectFailure, Outcome::ConnectFailure)
                }
                Err(Failure::PerTryTimeout) => {
                    load.finish_at(latency, false, ended);
                    (AttemptOutcome::Status(504), Outcome::ServerError)
                }
                Err(_) => {
                    load.finish_at(latency, false, ended);
                    (AttemptOutcome::Reset, Outcome::ServerError)
                }
            };
            if let Some(o) = &brt.outlier {
                if let Some(for_) = o.report(ep.addr, detector, self.endpoints.endpoints.len(), now)
                {
                    tracing::info!(endpoint = %ep.addr, rule = %self.rule.key, ejected_for = ?for_, "outlier ejected");
                    app.metrics
                        .ejections
                        .with_label_values(&[&*self.rule.key, ep.addr.to_string().as_str()])
                        .inc();
                }
            }
            let Some(policy) = retry else {
                return res.map(|(r, lease)| (r, now, lease));
            };
            let wants = retry::retryable(policy, &outcome);
            // Checked after the attempt: it may have read past the bound.
            let Some(again) = keep.filter(ReplayBody::can_replay) else {
                return res.map(|(r, lease)| (r, now, lease));
            };
            let allowed = wants
                && retries < policy.attempts
                && self
                    .rt
                    .budget
                    .as_ref()
                    .is_none_or(|b| b.try_retry(Instant::now()));
            if !allowed {
                return res.map(|(r, lease)| (r, now, lease));
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
        brt: &BackendRuntime,
        tried: &[SocketAddr],
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Endpoint {
        let set = self.endpoints;
        let ejected = |e: &Endpoint| {
            brt.outlier
                .as_ref()
                .is_some_and(|o| o.is_ejected(e.addr, now))
        };
        // The common case (first try, nobody ejected) borrows the
        // precomputed set: no per-request candidate lists.
        if tried.is_empty() && !set.endpoints.iter().any(ejected) {
            let i = brt.balancer.pick(&set.addrs, now, rng).unwrap_or(0);
            return set.endpoints[i.min(set.endpoints.len() - 1)].clone();
        }
        let healthy: Vec<&Endpoint> = set.endpoints.iter().filter(|e| !ejected(e)).collect();
        let pool: Vec<&Endpoint> = if healthy.is_empty() {
            set.endpoints.iter().collect()
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

    /// The upstream request; `last` (no retry can follow) moves the headers
    /// out instead of cloning them.
    fn build_request(&mut self, body: ReplayBody, last: bool) -> Request<ReplayBody> {
        let uri = upstream_uri(&self.parts.uri, &self.parts.headers, self.proto);
        let p = &mut self.parts;
        let mut req = Request::new(body);
        *req.method_mut() = p.method.clone();
        *req.version_mut() = p.version;
        *req.headers_mut() = if last {
            std::mem::take(&mut p.headers)
        } else {
            p.headers.clone()
        };
        *req.uri_mut() = uri;
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
/// authority, taken from the URI or the Host header. Built from the URI's
/// parts, which share its buffer: no formatting or re-parsing per request.
pub fn upstream_uri(uri: &Uri, headers: &http::HeaderMap, proto: Proto) -> Uri {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    if proto == Proto::Http2 {
        let authority = uri
            .authority()
            .cloned()
            .or_else(|| {
                headers
                    .get(HOST)
                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            })
            .unwrap_or_else(|| Authority::from_static("localhost"));
        parts.scheme = Some(uri.scheme().cloned().unwrap_or(Scheme::HTTP));
        parts.authority = Some(authority);
    }
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// The upstream protocol: the one the client spoke (gRPC needs HTTP/2).
pub fn proto_of(version: Version) -> Proto {
    if version == Version::HTTP_2 {
        Proto::Http2
    } else {
        Proto::Http1
    }
}

/// Forwards to a workload addressed directly (no service, no routes).
pub async fn forward_direct(
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
    let proto = proto_of(parts.version);
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
        Ok((mut resp, lease)) => {
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
                http_body_util::BodyExt::boxed(
                    ResponseBody::new(b, rec, header_bytes, vec![]).with_lease(lease),
                ),
            )
        }
        Err(e) => Reject::from_failure(&Failure::Upstream(e), 1).reply(rec, grpc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uris_fit_the_protocol() {
        // (request URI, Host header, upstream protocol, expected URI)
        let cases = [
            ("/a?b=1", Some("svc.demo:80"), Proto::Http1, "/a?b=1"),
            (
                "/a?b=1",
                Some("svc.demo:80"),
                Proto::Http2,
                "http://svc.demo:80/a?b=1",
            ),
            ("http://x.y/z", Some("svc.demo:80"), Proto::Http1, "/z"),
            (
                "http://x.y/z",
                Some("svc.demo:80"),
                Proto::Http2,
                "http://x.y/z",
            ),
            ("https://x.y/z?q", None, Proto::Http2, "https://x.y/z?q"),
            ("http://x.y", None, Proto::Http1, "/"),
            ("/p", None, Proto::Http2, "http://localhost/p"),
            (
                "/p",
                Some("bad host\u{7f}"),
                Proto::Http2,
                "http://localhost/p",
            ),
            ("*", None, Proto::Http1, "*"),
        ];
        for (uri, host, proto, want) in cases {
            let mut h = http::HeaderMap::new();
            if let Some(v) = host.and_then(|v| HeaderValue::from_str(v).ok()) {
                h.insert(HOST, v);
            }
            let got = upstream_uri(&uri.parse().unwrap(), &h, proto);
            assert_eq!(
                got.to_string(),
                want,
                "{uri} with host {host:?} over {proto:?}"
            );
        }
    }
}
