//! An HTTP/1.1 and HTTP/2 server that describes each request back as JSON,
//! so a test can see what a waypoint forwarded (method, path, version,
//! authority, headers, body, peer) and which backend answered.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use trellis_netns::{self as netns, ListenOpts, NetNs};

use super::{lock, spawn_server, ServerThread};

/// How an [`HttpServer`] answers, switchable while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 with the JSON description (or what the path asks for).
    Ok,
    /// This status, with the JSON description as body.
    Status(u16),
    /// No response at all: HTTP/1 closes the connection, HTTP/2 resets the
    /// stream. What a crashing backend looks like to a proxy.
    Reset,
    /// Waits this long, then answers as in `Ok`.
    Delay(Duration),
    /// Sends the `Ok` answer's head at once and its body only after this
    /// long: a backend that stalls mid-response.
    SlowBody(Duration),
}

/// A header the server adds to every answer, naming itself, so a test sees
/// which backend answered even when the body was replaced on the way.
pub const SERVER_HEADER: &str = "x-server";

/// A running HTTP server; stops (and closes its connections) on drop.
pub struct HttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _thread: ServerThread,
}

struct Shared {
    name: String,
    mode: Mutex<Mode>,
    count: AtomicUsize,
    /// Connections accepted so far.
    connections: AtomicUsize,
    /// Requests being handled now, and the most ever handled at once.
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

/// Counts one request as in flight until dropped, however the handler ends.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why the service answered nothing: hyper turns a service error into a
/// closed HTTP/1 connection or an HTTP/2 stream reset, which is the point.
#[derive(Debug, thiserror::Error)]
#[error("no response on purpose (Mode::Reset)")]
struct ResetOnPurpose;

impl HttpServer {
    /// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on `addr` inside `ns`
    /// (None: the current netns). `name` is reported in every answer. Bind
    /// errors are returned here, not later on the server thread.
    pub fn start(ns: Option<&NetNs>, addr: SocketAddr, name: &str) -> io::Result<HttpServer> {
        let std_listener = netns::tcp_listener(ns, addr, ListenOpts::default())?;
        let addr = std_listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            mode: Mutex::new(Mode::Ok),
            count: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        });
        let served = shared.clone();
        let thread = spawn_server("http-server", addr.port(), move |stopped| {
            serve(std_listener, served, stopped)
        })?;
        Ok(HttpServer {
            addr,
            shared,
            _thread: thread,
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Applies to requests that arrive from now on.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.shared.mode) = mode;
    }

    pub fn mode(&self) -> Mode {
        *lock(&self.shared.mode)
    }

    /// Requests received so far, answered or not.
    pub fn count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Connections accepted so far (a proxy that pools its upstream
    /// connections opens few).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn reset_count(&self) {
        self.shared.count.store(0, Ordering::SeqCst);
    }

    /// Requests being handled right now (received, not yet answered).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests ever handled at once (what a concurrency limit
    /// in front of the server must bound).
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }
}

async fn serve(
    std_listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "http test server cannot register its listener");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(connection(stream, peer, shared.clone()));
                }
                // E.g. EMFILE: keep serving, the next accept may succeed.
                Err(e) => tracing::warn!(error = %e, "http test server accept failed"),
            },
        }
    }
}

async fn connection(stream: tokio::net::TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let svc = hyper::service::service_fn(move |req| respond(req, peer, shared.clone()));
    let result = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "http test server connection ended with an error");
    }
}

type Reply = Response<UnsyncBoxBody<Bytes, Infallible>>;

async fn respond(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Result<Reply, ResetOnPurpose> {
    shared.count.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(&shared);
    let mode = *lock(&shared.mode);
    match mode {
        Mode::Reset => return Err(ResetOnPurpose),
        Mode::Delay(d) => tokio::time::sleep(d).await,
        Mode::Ok | Mode::Status(_) | Mode::SlowBody(_) => {}
    }
    let path = req.uri().path().to_string();
    if let Some(ms) = path_number(&path, "/delay/") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = match (path_number(&path, "/status/"), mode) {
        (Some(code), _) => code_or_400(code),
        (None, Mode::Status(code)) => code_or_400(code.into()),
        _ => StatusCode::OK,
    };
    let upgrade = req.headers().get(UPGRADE).cloned();
    if let (Some(proto), StatusCode::OK) = (upgrade, status) {
        let upgraded = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match upgraded.await {
                Ok(up) => {
                    if let Err(e) = echo(TokioIo::new(up)).await {
                        tracing::debug!(error = %e, "upgraded echo ended with an error");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, proto)
            .header(SERVER_HEADER, shared.name.as_str())
            .body(Full::default().boxed_unsync())
            .unwrap_or_default());
    }
    let (parts, body) = req.into_parts();
    // A body the client never finishes is the client's problem; describe what came.
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let description = describe(&shared.name, &parts, peer, &body);
    let body = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Bytes::new()
    } else {
        Bytes::from(description.to_string())
    };
    Ok(Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header(SERVER_HEADER, shared.name.as_str())
        .body(match mode {
            Mode::SlowBody(d) => {
                let later = futures_util::stream::once(async move {
                    tokio::time::sleep(d).await;
                    Ok::<_, Infallible>(Frame::data(body))
                });
                StreamBody::new(later).boxed_unsync()
            }
            _ => Full::new(body).boxed_unsync(),
        })
        .unwrap_or_default())
}

/// `/status/503` → 503 for prefix "/status/"; None if the path is not of that shape.
fn path_number(path: &str, prefix: &str) -> Option<u64> {
    let rest = path.strip_prefix(prefix)?;
    rest.split('/').next()?.parse().ok()
}

/// The status a test asked for; 400 when it is not a valid HTTP status.
fn code_or_400(code: u64) -> StatusCode {
    u16::try_from(code)
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(|s| !s.is_informational())
        .unwrap_or(StatusCode::BAD_REQUEST)
}

/// The JSON body: what the server saw of the request.
fn describe(
    name: &str,
    parts: &http::request::Parts,
    peer: SocketAddr,
    body: &[u8],
) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        match headers.get_mut(k.as_str()) {
            // Repeated headers are joined as a proxy may legally fold them.
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                headers.insert(k.as_str().to_string(), v.into());
            }
        }
    }
    // HTTP/2 carries the authority in the URI, HTTP/1 in the Host header.
    let authority = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
        .unwrap_or_default();
    serde_json::json!({
        "server": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "version": format!("{:?}", parts.version),
        "authority": authority,
        "headers": headers,
        "body": String::from_utf8_lossy(body),
        "peer": peer.to_string(),
    })
}

/// Sends back what it reads on an upgraded connection, until the client closes.
async fn echo(mut io: TokioIo<hyper::upgrade::Upgraded>) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return io.shutdown().await;
        }
        io.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_numbers_and_codes() {
        let cases: &[(&str, &str, Option<u64>)] = &[
            ("/status/503", "/status/", Some(503)),
            ("/status/404/extra", "/status/", Some(404)),
            ("/status/abc", "/status/", None),
            ("/statusx/503", "/status/", None),
            ("/delay/250", "/delay/", Some(250)),
            ("/", "/delay/", None),
        ];
        for (path, prefix, want) in cases {
            assert_eq!(path_number(path, prefix), *want, "{path} with {prefix}");
        }
        let codes: &[(u64, u16)] = &[(200, 200), (503, 503), (101, 400), (70000, 400), (42, 400)];
        for (code, want) in codes {
            assert_eq!(code_or_400(*code).as_u16(), *want, "code {code}");
        }
    }
}
