//! The upstream servers both proxies forward to: a hyper HTTP/1.1 + HTTP/2
//! (prior knowledge) server answering every request with a fixed
//! [`HTTP_BODY_BYTES`] body, and the tonic gRPC [`EchoService`].
//!
//! The HTTP server answers the way real servers do: the response head in one
//! write, then a body larger than one TCP segment in another. A server that
//! answers in a single write hides a proxy that leaves Nagle on (the next
//! write then waits for the client's delayed ACK, about 40 ms). One instance
//! serves every listener it is given (one per server pod), on one
//! current-thread runtime on one pinned thread, so the nginx path and the
//! waypoint path reach literally the same server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tonic::transport::server::TcpIncoming;
use trellis_netns::{self as netns, ListenOpts, NetNs};

use super::grpc::EchoService;
use super::{HTTP_BODY_BYTES, ROUTE_HEADER};
use crate::harness::sys;

static BODY: [u8; HTTP_BODY_BYTES] = [b'x'; HTTP_BODY_BYTES];

/// The body only after one turn of the runtime: hyper has then nothing
/// but the head to send, so it flushes the head on its own (HTTP/1.1: one
/// write; HTTP/2: a HEADERS frame) before the body's DATA follows.
fn body_after_head() -> BoxBody<Bytes, Infallible> {
    let data = futures_util::stream::once(async {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(&BODY)))
    });
    StreamBody::new(data).boxed()
}

/// Where the servers listen: one (HTTP, gRPC) address pair per netns.
pub struct Listen<'a> {
    pub ns: &'a NetNs,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
}

/// Requests the servers answered, and how many carried the header that
/// both proxies' routes add ([`super::ROUTE_HEADER`]): proof that the
/// traffic went through a proxy's route.
#[derive(Debug, Default)]
pub struct Counts {
    pub http: AtomicU64,
    pub http_routed: AtomicU64,
    pub grpc: AtomicU64,
    pub grpc_routed: AtomicU64,
}

impl Counts {
    /// (http, http routed, grpc, grpc routed).
    pub fn get(&self) -> [u64; 4] {
        [
            self.http.load(Ordering::Relaxed),
            self.http_routed.load(Ordering::Relaxed),
            self.grpc.load(Ordering::Relaxed),
            self.grpc_routed.load(Ordering::Relaxed),
        ]
    }
}

/// The running servers; stopped (and their connections closed) on drop.
pub struct Upstreams {
    counts: Arc<Counts>,
    _thread: sys::ServerThread,
}

impl Upstreams {
    /// Binds every listener here (errors are returned, not logged on the
    /// server thread), then serves them all from one thread pinned to `cpu`.
    pub fn start(listen: &[Listen<'_>], cpu: usize) -> Result<Upstreams> {
        let opts = ListenOpts {
            backlog: 4096,
            ..Default::default()
        };
        let mut http = Vec::new();
        let mut grpc = Vec::new();
        for l in listen {
            http.push(
                netns::tcp_listener(Some(l.ns), l.http, opts)
                    .with_context(|| format!("http server: listening on {}", l.http))?,
            );
            grpc.push(
                netns::tcp_listener(Some(l.ns), l.grpc, opts)
                    .with_context(|| format!("grpc server: listening on {}", l.grpc))?,
            );
        }
        let rt = sys::runtime()?;
        let counts = Arc::new(Counts::default());
        let count = counts.clone();
        let thread = sys::ServerThread::spawn("bench-upstream".into(), move |stopped| {
            if let Err(e) = sys::pin_current_thread(cpu) {
                eprintln!("upstream servers: cannot pin to CPU {cpu}: {e}");
            }
            rt.block_on(async move {
                for l in http {
                    match tokio::net::TcpListener::from_std(l) {
                        Ok(l) => drop(tokio::spawn(serve_http(l, count.clone()))),
                        Err(e) => eprintln!("http server: {e}"),
                    }
                }
                for l in grpc {
                    match tokio::net::TcpListener::from_std(l) {
                        Ok(l) => drop(tokio::spawn(serve_grpc(l, count.clone()))),
                        Err(e) => eprintln!("grpc server: {e}"),
                    }
                }
                // Dropping the runtime afterwards cancels every task and closes the sockets.
                let _ = stopped.await;
            });
        })?;
        Ok(Upstreams {
            counts,
            _thread: thread,
        })
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }
}

async fn serve_http(l: tokio::net::TcpListener, count: Arc<Counts>) {
    sys::accept_each(&l, |stream| {
        let count = count.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                count.http.fetch_add(1, Ordering::Relaxed);
                if req.headers().get(ROUTE_HEADER.0).map(|v| v.as_bytes())
                    == Some(ROUTE_HEADER.1.as_bytes())
                {
                    count.http_routed.fetch_add(1, Ordering::Relaxed);
                }
                async move {
                    let mut resp = Response::new(body_after_head());
                    let h = resp.headers_mut();
                    h.insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain"),
                    );
                    // A streamed body has no size hint; without this HTTP/1.1 would be chunked.
                    h.insert(
                        http::header::CONTENT_LENGTH,
                        http::HeaderValue::from(HTTP_BODY_BYTES),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    })
    .await
}

async fn serve_grpc(l: tokio::net::TcpListener, counts: Arc<Counts>) {
    let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(EchoService { counts })
        .serve_with_incoming(incoming)
        .await
    {
        eprintln!("grpc server stopped: {e}");
    }
}
