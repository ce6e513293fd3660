//! The plain-HTTP admin port (15014, as istiod's monitoring port):
//! `/healthz/ready` and `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::metrics::{render, Metrics};
use crate::xds::XdsMetrics;

/// What the admin endpoints read.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub xds: Arc<XdsMetrics>,
    pub ca: Arc<crate::ca::CaMetrics>,
    pub waypoints: Arc<crate::waypoints::WaypointMetrics>,
    /// Cancelled when the controller starts shutting down.
    pub draining: CancellationToken,
}

/// Serves until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let resp = handle(&state, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(peer.addr = %peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match req.uri().path() {
        "/healthz/ready" => {
            if state.draining.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if state.metrics.read().publishes == 0 {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "waiting for the first config to be published; see the log for manifest errors\n",
                )
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/metrics" => {
            let mut r = text(
                StatusCode::OK,
                render(
                    &state.metrics.read(),
                    &state.xds.read(),
                    &state.ca.read(),
                    &state.waypoints.read(),
                ),
            );
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        path => text(
            StatusCode::NOT_FOUND,
            format!("no endpoint {path}; try /healthz/ready or /metrics\n"),
        ),
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
