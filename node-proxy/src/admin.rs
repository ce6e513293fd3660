//! Admin, metrics and readiness HTTP servers. They run on the admin thread,
//! away from the data path.
//!
//! Admin (localhost only): `GET /config_dump`, `GET|POST /logging?level=..`,
//! `POST /quitquitquit`, `GET /pods`, `POST /pods` (`{"uid":..,"netns":..}`),
//! `DELETE /pods/<uid>`. Metrics: `GET /metrics`. Readiness: `GET /healthz/ready`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::context::ProxyCtx;
use crate::logging::LogControl;
use crate::pods::Pods;

/// Admin request bodies are tiny; anything bigger is refused.
const MAX_BODY: usize = 64 * 1024;

/// What the admin handlers can reach.
pub struct AdminCtx {
    pub proxy: Arc<ProxyCtx>,
    pub pods: Arc<Pods>,
    pub log: Option<LogControl>,
    /// Cancelled to request a graceful shutdown (drain).
    pub stop: CancellationToken,
}

#[derive(Clone, Copy)]
pub enum Server {
    Admin,
    Metrics,
    Readiness,
}

/// Serves one of the admin-thread HTTP servers until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    which: Server,
    ctx: Arc<AdminCtx>,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(route(which, &ctx, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn route(which: Server, ctx: &AdminCtx, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (which, req.method().clone(), path.as_str()) {
        (Server::Metrics, Method::GET, "/metrics")
        | (Server::Metrics, Method::GET, "/stats/prometheus") => {
            let mut r = text(StatusCode::OK, ctx.proxy.metrics.encode_text());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (Server::Readiness, Method::GET, "/healthz/ready") => {
            if ctx.proxy.drain.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (Server::Admin, Method::GET, "/config_dump") => json(StatusCode::OK, &config_dump(ctx)),
        (Server::Admin, Method::GET, "/logging") | (Server::Admin, Method::POST, "/logging") => {
            logging(ctx, &req)
        }
        (Server::Admin, Method::POST, "/quitquitquit") => {
            info!("shutdown requested over the admin api");
            ctx.stop.cancel();
            text(StatusCode::OK, "draining\n")
        }
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
        _ => text(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {} {path}\n", req.method()),
        ),
    }
}

fn logging(ctx: &AdminCtx, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(log) = &ctx.log else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "logging is not controlled by this proxy\n",
        );
    };
    match (req.method(), query_param(req, "level")) {
        (&Method::POST, Some(level)) => match log.set(&level.replace("%2C", ",")) {
            Ok(()) => text(
                StatusCode::OK,
                format!("log filter now {}\n", log.current()),
            ),
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        },
        (&Method::POST, None) => text(StatusCode::BAD_REQUEST, "POST /logging?level=<filter>\n"),
        _ => text(StatusCode::OK, format!("{}\n", log.current())),
    }
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
        Err(e) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
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
