//! Plumbing shared by the proxies' admin-thread HTTP servers (admin API,
//! metrics, readiness): the accept loop, small response helpers, the
//! `/logging` endpoint, and the stop signal (SIGTERM, SIGINT or an API call).
//! Each proxy keeps its own routing table of endpoints.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::logging::LogControl;

/// An admin response: bodies are small and built in memory.
pub type AdminResponse = Response<Full<Bytes>>;

/// A boxed handler future, so each proxy can route with its own async code.
pub type AdminFuture = Pin<Box<dyn Future<Output = AdminResponse> + Send>>;

#[derive(Debug, thiserror::Error)]
#[error("cannot bind {what} on {addr}: {source}; is another process using the port?")]
pub struct BindError {
    pub what: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds a non-blocking std listener, to be handed to a runtime later.
pub fn bind_std(what: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    let err = |source| BindError { what, addr, source };
    let l = std::net::TcpListener::bind(addr).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

/// Writes the bound addresses as JSON, atomically (write then rename), so a
/// reader never sees half a file.
pub fn write_bound_addrs(path: &Path, addrs: &impl serde::Serialize) {
    let body = serde_json::to_vec_pretty(addrs).unwrap_or_default();
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, path)) {
        warn!(path = %path.display(), error = %e, "cannot write bound addresses");
    }
}

/// Serves HTTP/1.1 on `listener` with `handler` until `stop` fires.
pub async fn serve<H>(listener: TcpListener, handler: Arc<H>, stop: CancellationToken)
where
    H: Fn(Request<Incoming>) -> AdminFuture + Send + Sync + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, Infallible>(fut.await) }
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

pub fn text(status: StatusCode, body: impl Into<String>) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn json(status: StatusCode, v: &serde_json::Value) -> AdminResponse {
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

/// Prometheus text exposition.
pub fn prometheus(body: String) -> AdminResponse {
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// Ready unless draining, and only once the config source has delivered
/// its first whole view (a proxy without its workloads would misroute).
pub fn readiness(draining: bool, synced: bool) -> AdminResponse {
    if draining {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !synced {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first config from the controller\n",
        )
    } else {
        text(StatusCode::OK, "ready\n")
    }
}

pub fn not_found(req: &Request<Incoming>) -> AdminResponse {
    text(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {} {}\n", req.method(), req.uri().path()),
    )
}

/// The raw (still percent-encoded) value of query parameter `name`.
pub fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Decodes a query value as a form does: `%XX` escapes and `+` for space.
/// `None` if an escape is malformed or the result is not UTF-8.
pub fn percent_decode(raw: &str) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = (bytes.next()? as char).to_digit(16)?;
                let lo = (bytes.next()? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// `GET /logging` shows the filter; `POST /logging?level=<filter>` changes it.
pub fn logging(log: Option<&LogControl>, req: &Request<Incoming>) -> AdminResponse {
    let Some(log) = log else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "logging is not controlled by this proxy\n",
        );
    };
    match (req.method(), query_param(req, "level")) {
        (&Method::POST, Some(raw)) => {
            let Some(level) = percent_decode(raw) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("level {raw:?} is not valid percent-encoded UTF-8; the log filter is unchanged\n"),
                );
            };
            match log.set(&level) {
                Ok(()) => {
                    info!(filter = %level, "log filter changed over the admin api");
                    text(
                        StatusCode::OK,
                        format!("log filter now {}\n", log.current()),
                    )
                }
                Err(e) => text(
                    StatusCode::BAD_REQUEST,
                    format!("{e}; the log filter is still {}\n", log.current()),
                ),
            }
        }
        (&Method::POST, None) => text(StatusCode::BAD_REQUEST, "POST /logging?level=<filter>\n"),
        _ => text(StatusCode::OK, format!("{}\n", log.current())),
    }
}

/// `POST /quitquitquit`: asks for a graceful drain.
pub fn quit(stop: &CancellationToken) -> AdminResponse {
    info!("shutdown requested over the admin api");
    stop.cancel();
    text(StatusCode::OK, "draining\n")
}

/// Resolves on `stop`, or SIGTERM/SIGINT.
pub async fn wait_for_stop(stop: &CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    tokio::select! {
        _ = stop.cancelled() => {}
        Some(_) = async { match term.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
            info!("sigterm received");
        }
        Some(_) = async { match int.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
            info!("sigint received");
        }
    }
}

/// How long the drain may take once a stop comes.
#[derive(Clone, Debug)]
pub struct DrainDeadlines {
    /// On SIGTERM, SIGINT or `/quitquitquit`.
    pub plain: std::time::Duration,
    /// When the stop came from a hand-over to a new process (the flag is
    /// set): this deadline instead, and the admin servers stop at once,
    /// since the new process serves them on the very same sockets.
    pub handed_over: Option<(Arc<std::sync::atomic::AtomicBool>, std::time::Duration)>,
}

/// The admin thread's life, shared by the proxies: serves each listener with
/// its handler, waits for SIGTERM, SIGINT or `stop`, then drains with the
/// deadline `deadlines` gives and stops the servers. Runs inside the admin
/// runtime; the caller spawns its own background tasks (config watcher) first.
pub async fn serve_until_drained<H>(
    servers: Vec<(std::net::TcpListener, Arc<H>)>,
    trigger: crate::drain::DrainTrigger,
    stop: &CancellationToken,
    deadlines: DrainDeadlines,
) -> crate::drain::DrainOutcome
where
    H: Fn(Request<Incoming>) -> AdminFuture + Send + Sync + 'static,
{
    use crate::drain::DrainOutcome;
    use std::sync::atomic::Ordering;
    let servers_stop = CancellationToken::new();
    for (l, handler) in servers {
        match TcpListener::from_std(l) {
            Ok(l) => {
                tokio::spawn(serve(l, handler, servers_stop.clone()));
            }
            Err(e) => tracing::error!(error = %e, "cannot register admin listener"),
        }
    }
    wait_for_stop(stop).await;
    let deadline = match &deadlines.handed_over {
        Some((handed, long)) if handed.load(Ordering::Acquire) => {
            servers_stop.cancel();
            *long
        }
        _ => deadlines.plain,
    };
    info!(?deadline, "draining");
    let outcome = trigger.drain(deadline).await;
    match &outcome {
        DrainOutcome::Completed => info!("drain complete"),
        DrainOutcome::DeadlineExceeded { remaining } => {
            warn!(
                remaining,
                "drain deadline passed; closing what is still open"
            )
        }
    }
    servers_stop.cancel();
    outcome
}

/// A started proxy's stop switch and its admin thread (which ends once the
/// proxy has drained).
pub struct Running {
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<crate::drain::DrainOutcome>>,
}

impl Running {
    pub fn new(
        stop: CancellationToken,
        thread: std::thread::JoinHandle<crate::drain::DrainOutcome>,
    ) -> Running {
        Running {
            stop,
            thread: Some(thread),
        }
    }

    /// Starts a graceful drain (as SIGTERM does).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits until the proxy has drained and stopped.
    pub fn wait(mut self) -> crate::drain::DrainOutcome {
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or(crate::drain::DrainOutcome::Completed)
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decode_by_input() {
        let cases = [
            ("info", Some("info")),
            ("info%2Ctrellis%3Ddebug", Some("info,trellis=debug")),
            ("info%2ctrellis%3ddebug", Some("info,trellis=debug")),
            ("a+b", Some("a b")),
            ("%", None),
            ("%2", None),
            ("%zz", None),
            ("%ff", None),
        ];
        for (raw, want) in cases {
            assert_eq!(percent_decode(raw).as_deref(), want, "{raw:?}");
        }
    }
}
