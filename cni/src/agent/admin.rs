//! The agent's admin port (`--admin-addr`): `/healthz/ready` for the
//! kubelet and `/metrics` for Prometheus. Counters are plain atomics
//! bumped where things happen; the page is rendered on request.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::registry::Registry;

/// What ADD and DEL ended in, counted.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    pub add_captured: AtomicU64,
    pub add_not_enrolled: AtomicU64,
    pub add_failed: AtomicU64,
    pub del: AtomicU64,
    /// `--install-cni`: the entry is in the node's CNI config.
    pub cni_installed: AtomicBool,
}

/// What the admin pages read.
pub struct AdminState {
    pub metrics: Arc<AgentMetrics>,
    pub registry: Arc<Registry>,
    pub proxy_connected: watch::Receiver<bool>,
    /// Readiness waits for the CNI entry only when the agent installs it.
    pub install_cni: bool,
}

/// Status and body of one admin request (pure, so it is tested as is).
pub fn respond(state: &AdminState, method: &Method, path: &str) -> (StatusCode, String) {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    match path {
        "/healthz/ready" => {
            if state.install_cni && !state.metrics.cni_installed.load(Relaxed) {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the trellis-cni entry is not in the node's CNI config yet; see the log\n"
                        .into(),
                )
            } else {
                (StatusCode::OK, "ready\n".into())
            }
        }
        "/metrics" => (StatusCode::OK, render(state)),
        other => (
            StatusCode::NOT_FOUND,
            format!("no endpoint {other}; try /healthz/ready or /metrics\n"),
        ),
    }
}

fn render(state: &AdminState) -> String {
    let m = &state.metrics;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP trellis_cni_add_total CNI ADD requests by outcome."
    );
    let _ = writeln!(out, "# TYPE trellis_cni_add_total counter");
    for (outcome, v) in [
        ("captured", &m.add_captured),
        ("not_enrolled", &m.add_not_enrolled),
        ("failed", &m.add_failed),
    ] {
        let _ = writeln!(
            out,
            "trellis_cni_add_total{{outcome=\"{outcome}\"}} {}",
            v.load(Relaxed)
        );
    }
    let gauges = [
        (
            "trellis_cni_del_total",
            "counter",
            "CNI DEL requests.",
            m.del.load(Relaxed),
        ),
        (
            "trellis_cni_enrolled_pods",
            "gauge",
            "Pods the agent holds for the node proxy.",
            state.registry.len() as u64,
        ),
        (
            "trellis_cni_node_proxy_connected",
            "gauge",
            "1 while a node proxy is connected over ZDS.",
            u64::from(*state.proxy_connected.borrow()),
        ),
        (
            "trellis_cni_config_installed",
            "gauge",
            "1 while the trellis-cni entry is in the node's CNI config (--install-cni).",
            u64::from(m.cni_installed.load(Relaxed)),
        ),
    ];
    for (name, ty, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}\n{name} {v}");
    }
    out
}

/// Serves until the future is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of fds and the like: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (status, body) = respond(&state, req.method(), req.uri().path());
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = status;
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let (_tx, rx) = watch::channel(true);
        let state = AdminState {
            metrics: Arc::default(),
            registry: Arc::default(),
            proxy_connected: rx,
            install_cni: true,
        };
        state.metrics.add_captured.fetch_add(3, Relaxed);
        let get = Method::GET;
        assert_eq!(
            respond(&state, &get, "/healthz/ready").0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.metrics.cni_installed.store(true, Relaxed);
        assert_eq!(respond(&state, &get, "/healthz/ready").0, StatusCode::OK);
        let (status, body) = respond(&state, &get, "/metrics");
        assert_eq!(status, StatusCode::OK);
        for line in [
            "trellis_cni_add_total{outcome=\"captured\"} 3",
            "trellis_cni_add_total{outcome=\"failed\"} 0",
            "trellis_cni_node_proxy_connected 1",
            "trellis_cni_enrolled_pods 0",
            "trellis_cni_config_installed 1",
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "missing {line:?} in\n{body}"
            );
        }
        assert_eq!(respond(&state, &get, "/nope").0, StatusCode::NOT_FOUND);
        assert_eq!(
            respond(&state, &Method::POST, "/metrics").0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
