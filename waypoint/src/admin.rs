//! The waypoint's admin, metrics and readiness endpoints (admin thread).
//!
//! Admin (localhost): `GET /config_dump`, `GET|POST /logging`, `POST /quitquitquit`.
//! Metrics: `GET /metrics`. Readiness: `GET /healthz/ready`.

use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use trellis_core::admin::{self, json, AdminFuture, AdminResponse};
use trellis_core::logging::LogControl;

use crate::proxy::App;

pub struct AdminCtx {
    pub app: Arc<App>,
    pub log: Option<LogControl>,
    pub stop: CancellationToken,
}

#[derive(Clone, Copy)]
pub enum Server {
    Admin,
    Metrics,
    Readiness,
}

pub fn handler(
    which: Server,
    ctx: Arc<AdminCtx>,
) -> Arc<impl Fn(Request<Incoming>) -> AdminFuture + Send + Sync + 'static> {
    Arc::new(move |req| {
        let ctx = ctx.clone();
        Box::pin(async move { route(which, &ctx, req) }) as AdminFuture
    })
}

fn route(which: Server, ctx: &AdminCtx, req: Request<Incoming>) -> AdminResponse {
    let app = &ctx.app;
    match (which, req.method(), req.uri().path()) {
        (Server::Metrics, &Method::GET, "/metrics" | "/stats/prometheus") => {
            for (rule, limit) in app.runtimes.adaptive_limits() {
                app.metrics
                    .adaptive_limit
                    .with_label_values(&[&rule])
                    .set(i64::from(limit));
            }
            admin::prometheus(app.metrics.encode_text())
        }
        (Server::Readiness, &Method::GET, "/healthz/ready") => {
            admin::readiness(app.drain.is_draining(), app.store.is_synced())
        }
        (Server::Admin, &Method::GET, "/config_dump") => json(StatusCode::OK, &config_dump(app)),
        (Server::Admin, &Method::GET | &Method::POST, "/logging") => {
            admin::logging(ctx.log.as_ref(), &req)
        }
        (Server::Admin, &Method::POST, "/quitquitquit") => admin::quit(&ctx.stop),
        _ => admin::not_found(&req),
    }
}

fn config_dump(app: &App) -> serde_json::Value {
    let compiled = app.snapshot.load();
    let adaptive: Vec<_> = app
        .runtimes
        .adaptive_limits()
        .into_iter()
        .map(|(rule, limit)| serde_json::json!({ "rule": &*rule, "limit": limit }))
        .collect();
    serde_json::json!({
        "waypoint": app.settings.name,
        "identity": app.identity.to_string(),
        "configVersion": compiled.state.version(),
        "config": compiled.state.config(),
        "adaptiveLimits": adaptive,
        "draining": app.drain.is_draining(),
        "inFlight": app.drain.in_flight(),
    })
}
