//! The `trellis.test.Echo` gRPC service, written by hand (messages with
//! `prost::Message`, the service on tonic's server codec) so the tests need
//! no protoc and no build script. Its proto would be:
//!
//! ```proto
//! package trellis.test;
//! message EchoRequest { string message = 1; uint32 count = 2; }
//! message EchoReply { string message = 1; string server = 2;
//!                     map<string, string> headers = 3; string authority = 4; }
//! service Echo {
//!   rpc Say(EchoRequest) returns (EchoReply);
//!   rpc Stream(EchoRequest) returns (stream EchoReply);
//! }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::{tokio_stream, BoxFuture, BoxStream, Service};
use tonic::metadata::MetadataMap;
use tonic::server::{Grpc, NamedService, ServerStreamingService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;
use trellis_netns::{self as netns, ListenOpts, NetNs};

use super::{lock, spawn_server, ServerThread};

pub const SERVICE: &str = "trellis.test.Echo";
pub const SAY_PATH: &str = "/trellis.test.Echo/Say";
pub const STREAM_PATH: &str = "/trellis.test.Echo/Stream";
/// Trailer metadata the streaming call ends with.
pub const TRAILER: (&str, &str) = ("x-trailer", "done");
/// Most replies one `Stream` call sends, so a typo in a test cannot make the
/// server loop for long.
pub const MAX_STREAM: u32 = 10_000;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// How many replies `Stream` sends; ignored by `Say`.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// `Say`: the request's message; `Stream`: `"<message> <i>"`.
    #[prost(string, tag = "1")]
    pub message: String,
    /// The name of the server that answered.
    #[prost(string, tag = "2")]
    pub server: String,
    /// The request metadata the server received (ASCII values only).
    #[prost(map = "string, string", tag = "3")]
    pub headers: HashMap<String, String>,
    /// The request's `:authority` as the server received it.
    #[prost(string, tag = "4")]
    pub authority: String,
}

/// How a [`GrpcServer`] answers, switchable while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcMode {
    Ok,
    /// Every call fails with `UNAVAILABLE`, the status retry policies retry.
    Unavailable,
    /// Every call fails with this code.
    Fail(Code),
    /// Waits this long, then answers as in `Ok`.
    Delay(Duration),
}

/// A running gRPC server; stops (and closes its connections) on drop.
pub struct GrpcServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _thread: ServerThread,
}

struct Shared {
    name: String,
    mode: Mutex<GrpcMode>,
    count: AtomicUsize,
}

impl GrpcServer {
    /// Serves `trellis.test.Echo` on `addr` inside `ns` (None: the current
    /// netns). `name` is reported in every reply.
    pub fn start(ns: Option<&NetNs>, addr: SocketAddr, name: &str) -> io::Result<GrpcServer> {
        let std_listener = netns::tcp_listener(ns, addr, ListenOpts::default())?;
        let addr = std_listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            mode: Mutex::new(GrpcMode::Ok),
            count: AtomicUsize::new(0),
        });
        let served = shared.clone();
        let thread = spawn_server("grpc-server", addr.port(), move |stopped| async move {
            let listener = match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "grpc test server cannot register its listener");
                    return;
                }
            };
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let server = tonic::transport::Server::builder()
                .add_service(EchoService(served))
                .serve_with_incoming(incoming);
            // Not tonic's graceful shutdown: it would wait for connections a
            // proxy keeps pooled. Dropping the runtime closes them instead.
            tokio::select! {
                _ = stopped => {}
                result = server => {
                    if let Err(e) = result {
                        tracing::error!(error = %e, "grpc test server stopped");
                    }
                }
            }
        })?;
        Ok(GrpcServer {
            addr,
            shared,
            _thread: thread,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Applies to calls that arrive from now on.
    pub fn set_mode(&self, mode: GrpcMode) {
        *lock(&self.shared.mode) = mode;
    }

    /// Calls received so far (both methods), answered or not.
    pub fn count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    pub fn reset_count(&self) {
        self.shared.count.store(0, Ordering::SeqCst);
    }
}

impl Shared {
    /// Counts the call and applies the mode: Err is the status to answer with.
    async fn admit(&self) -> Result<(), Status> {
        self.count.fetch_add(1, Ordering::SeqCst);
        let mode = *lock(&self.mode);
        match mode {
            GrpcMode::Ok => Ok(()),
            GrpcMode::Unavailable => Err(Status::unavailable(format!(
                "{} is unavailable on purpose (GrpcMode::Unavailable)",
                self.name
            ))),
            GrpcMode::Fail(code) => Err(Status::new(
                code,
                format!("{} fails on purpose (GrpcMode::Fail)", self.name),
            )),
            GrpcMode::Delay(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        }
    }

    fn reply(&self, message: String, seen: &Seen) -> EchoReply {
        EchoReply {
            message,
            server: self.name.clone(),
            headers: seen.headers.clone(),
            authority: seen.authority.clone(),
        }
    }
}

/// What the server saw of a call besides the message.
#[derive(Clone, Default)]
struct Seen {
    headers: HashMap<String, String>,
    authority: String,
}

impl Seen {
    fn of<T>(req: &tonic::Request<T>) -> Seen {
        let headers = req
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let authority = req
            .extensions()
            .get::<Authority>()
            .map(|a| a.0.clone())
            .unwrap_or_default();
        Seen { headers, authority }
    }
}

/// The request URI's authority, carried from the HTTP layer to the call
/// (tonic keeps extensions but not the URI).
#[derive(Clone)]
struct Authority(String);

/// Stamps `x-server` on a successful answer, as the HTTP server does.
fn with_server<T>(name: &str, body: T) -> tonic::Response<T> {
    let mut resp = tonic::Response::new(body);
    if let Ok(v) = name.parse() {
        resp.metadata_mut().insert(super::SERVER_HEADER, v);
    }
    resp
}

/// The service as the router sees it: dispatches on the method path.
#[derive(Clone)]
struct EchoService(Arc<Shared>);

impl NamedService for EchoService {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let shared = self.0.clone();
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        req.extensions_mut().insert(Authority(authority));
        match req.uri().path() {
            SAY_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
                Ok(grpc.unary(Say(shared), req).await)
            }),
            STREAM_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
                Ok(grpc.server_streaming(Stream(shared), req).await)
            }),
            other => {
                let status = Status::unimplemented(format!("{SERVICE} has no method {other}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

struct Say(Arc<Shared>);

impl UnaryService<EchoRequest> for Say {
    type Response = EchoReply;
    type Future = BoxFuture<tonic::Response<EchoReply>, Status>;

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            shared.admit().await?;
            let seen = Seen::of(&req);
            let reply = shared.reply(req.into_inner().message, &seen);
            Ok(with_server(&shared.name, reply))
        })
    }
}

struct Stream(Arc<Shared>);

impl ServerStreamingService<EchoRequest> for Stream {
    type Response = EchoReply;
    type ResponseStream = BoxStream<EchoReply>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            shared.admit().await?;
            let seen = Seen::of(&req);
            let EchoRequest { message, count } = req.into_inner();
            let mut items: Vec<Result<EchoReply, Status>> = (0..count.min(MAX_STREAM))
                .map(|i| Ok(shared.reply(format!("{message} {i}"), &seen)))
                .collect();
            // tonic writes a final status's metadata into the trailers; an OK
            // status ends the stream normally with our trailer beside grpc-status.
            let mut trailer = MetadataMap::new();
            trailer.insert(
                TRAILER.0,
                tonic::metadata::MetadataValue::from_static(TRAILER.1),
            );
            items.push(Err(Status::with_metadata(Code::Ok, "", trailer)));
            let stream: BoxStream<EchoReply> = Box::pin(tokio_stream::iter(items));
            Ok(with_server(&shared.name, stream))
        })
    }
}
