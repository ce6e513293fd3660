//! Admin, metrics and readiness HTTP servers. They run on the admin thread,
//! away from the data path.
//!
//! Admin (localhost only): `GET /config_dump`, `GET|POST /logging?level=..`,
//! `POST /quitquitquit`, `GET /pods`, `POST /pods` (`{"uid":..,"netns":..}`),
//! `DELETE /pods/<uid>`. Metrics: `GET /metrics`. Readiness: `GET /healthz/ready`.
//!
//! `POST /pods` and `DELETE /pods/<uid>` stay for debugging and for nodes
//! without the CNI agent (the netns tests and the root demo use them);
//! with the agent, pods come over ZDS ([`crate::zds`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use trellis_core::admin::{self, json, text, AdminFuture};
use trellis_core::logging::LogControl;

use crate::context::ProxyCtx;
use crate::pods::{PodError, Pods};

/// Admin request bodies are tiny; anything bigger is refused.
const MAX_BODY: usize = 64 * 1024;

/// What the admin handlers can reach.
pub struct AdminCtx {
    pub proxy: Arc<ProxyCtx>,
    pub pods: Arc<Pods>,
    pub log: Option<LogControl>,
    /// Cancelled to request a graceful shutdown (drain).
    pub stop: CancellationToken,
    /// With --zds-socket: set once the CNI agent's first snapshot is served.
    pub zds_snapshot: Option<Arc<AtomicBool>>,
}

#[derive(Clone, Copy)]
pub enum Server {
    Admin,
    Metrics,
    Readiness,
}

/// The handler for one of the admin-thread HTTP servers.
pub fn handler(
    which: Server,
    ctx: Arc<AdminCtx>,
) -> Arc<impl Fn(Request<Incoming>) -> AdminFuture + Send + Sync + 'static> {
    Arc::new(move |req| {
        let ctx = ctx.clone();
        Box::pin(async move { route(which, &ctx, req).await }) as AdminFuture
    })
}

async fn route(which: Server, ctx: &AdminCtx, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (which, req.method().clone(), path.as_str()) {
        (Server::Metrics, Method::GET, "/metrics")
        | (Server::Metrics, Method::GET, "/stats/prometheus") => {
            admin::prometheus(ctx.proxy.metrics.encode_text())
        }
        (Server::Readiness, Method::GET, "/healthz/ready") => readiness(ctx),
        (Server::Admin, Method::GET, "/config_dump") => json(StatusCode::OK, &config_dump(ctx)),
        (Server::Admin, Method::GET, "/logging") | (Server::Admin, Method::POST, "/logging") => {
            admin::logging(ctx.log.as_ref(), &req)
        }
        (Server::Admin, Method::POST, "/quitquitquit") => admin::quit(&ctx.stop),
        (Server::Admin, Method::GET, "/pods") => json(
            StatusCode::OK,
            &serde_json::json!({ "pods": ctx.pods.list() }),
        ),
        (Server::Admin, Method::POST, "/pods") => add_pod(ctx, req).await,
        (Server::Admin, Method::DELETE, p) if p.starts_with("/pods/") => {
            let uid = &p["/pods/".len()..];
            match ctx.pods.remove(uid) {
                Ok(()) => text(StatusCode::OK, format!("removed {uid}\n")),
                Err(e) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
            }
        }
        _ => admin::not_found(&req),
    }
}

/// A proxy fed by the CNI agent is ready once it serves the pods the agent
/// had: until then a restarted proxy would leave them without listeners
/// (a rolling update waits on this). Afterwards it stays ready while the
/// agent is away: the pods it has are still served.
fn readiness(ctx: &AdminCtx) -> Response<Full<Bytes>> {
    let draining = ctx.proxy.drain.is_draining();
    let waiting_for_pods = ctx
        .zds_snapshot
        .as_ref()
        .is_some_and(|seen| !seen.load(Ordering::Relaxed));
    if !draining && waiting_for_pods {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first pod snapshot from the CNI agent (--zds-socket)\n",
        );
    }
    admin::readiness(draining, ctx.proxy.state.is_synced())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddPod {
    uid: String,
    netns: std::path::PathBuf,
}

async fn add_pod(ctx: &AdminCtx, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("cannot read body: {e}\n")),
    };
    let add: AddPod = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("body must be {{\"uid\": .., \"netns\": ..}}: {e}\n"),
            )
        }
    };
    if !ctx.proxy.shared_mode() {
        return text(
            StatusCode::CONFLICT,
            "pods are enrolled only in shared mode\n",
        );
    }
    match ctx.pods.add(&add.uid, &add.netns) {
        Ok(()) => text(StatusCode::OK, format!("enrolled {}\n", add.uid)),
        Err(e) => {
            let (status, retry_after) = add_refused(&e);
            let mut r = text(status, format!("{e}\n"));
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
            }
            r
        }
    }
}

/// The status of a refused `POST /pods`, and the seconds after which a
/// retry may succeed (Retry-After) when the refusal passes by itself: the
/// closed connections of a proxy that has exited free the capture ports
/// within 60 s, so an enrolling agent should retry rather than give up.
fn add_refused(e: &PodError) -> (StatusCode, Option<u32>) {
    match e {
        PodError::Lingering { .. } => (StatusCode::SERVICE_UNAVAILABLE, Some(10)),
        _ => (StatusCode::UNPROCESSABLE_ENTITY, None),
    }
}

fn config_dump(ctx: &AdminCtx) -> serde_json::Value {
    let state = ctx.proxy.state.load();
    let certs: Vec<_> = ctx
        .proxy
        .certs
        .dump()
        .into_iter()
        .map(|(id, not_after)| {
            let secs = not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            serde_json::json!({ "identity": id, "notAfterUnix": secs })
        })
        .collect();
    serde_json::json!({
        "node": ctx.proxy.settings.node,
        "mode": format!("{:?}", ctx.proxy.settings.mode).to_lowercase(),
        "configVersion": state.version(),
        "config": state.config(),
        "pods": ctx.pods.list(),
        "certificates": certs,
        "draining": ctx.proxy.drain.is_draining(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_that_passes_by_itself_asks_for_a_retry() {
        let addr: std::net::SocketAddr = "0.0.0.0:15001".parse().unwrap();
        // (refusal, status, Retry-After)
        let cases = [
            (
                PodError::Lingering {
                    uid: "a".into(),
                    kind: "outbound",
                    addr,
                    sockets: 3,
                },
                StatusCode::SERVICE_UNAVAILABLE,
                Some(10),
            ),
            (
                PodError::InUse {
                    uid: "a".into(),
                    kind: "outbound",
                    addr,
                    holders: "pid 7 (ztunnel)".into(),
                },
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
            ),
            (PodError::EmptyUid, StatusCode::UNPROCESSABLE_ENTITY, None),
        ];
        for (e, status, retry) in cases {
            assert_eq!(add_refused(&e), (status, retry), "{e}");
        }
    }
}
