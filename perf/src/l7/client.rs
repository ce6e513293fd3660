//! The load generator's clients: one connection, made inside a pod's netns,
//! and one call on it, for each protocol. HTTP/1.1 and HTTP/2 are hyper's
//! client connections; gRPC is tonic's client codec straight on a hyper
//! HTTP/2 connection (no `Channel`, whose buffer task would add a hop per
//! call). Every call checks the answer: status 200 (gRPC OK) and the
//! expected body, so a proxy's local reply is an error, not a fast success.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::codegen::Service;
use tonic_prost::ProstCodec;
use trellis_netns::{self as netns, NetNs, SocketOpts};

use super::grpc::{Payload, SAY_PATH};
use super::{GRPC_PAYLOAD_BYTES, HTTP_BODY_BYTES};

/// The protocols measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// HTTP/1.1 keep-alive, one request at a time per connection.
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
    /// gRPC unary calls over HTTP/2.
    Grpc,
}

impl Proto {
    pub const ALL: [Proto; 3] = [Proto::Http1, Proto::Http2, Proto::Grpc];

    /// Short name for JSON keys and file names.
    pub fn key(self) -> &'static str {
        match self {
            Proto::Http1 => "http1",
            Proto::Http2 => "http2",
            Proto::Grpc => "grpc",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Proto::Http1 => "HTTP/1.1",
            Proto::Http2 => "HTTP/2",
            Proto::Grpc => "gRPC unary",
        }
    }

    /// Whether one connection carries concurrent requests.
    pub fn multiplexed(self) -> bool {
        self != Proto::Http1
    }
}

/// What a call got instead of the expected answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("status {0}")]
    Status(StatusCode),
    #[error("body of {0} bytes, expected {1}")]
    Body(usize, usize),
    #[error("grpc: {0:?} {1}")]
    Grpc(tonic::Code, String),
    #[error("timed out")]
    Timeout,
}

impl CallError {
    /// A short, stable kind for counting errors by cause.
    pub fn kind(&self) -> String {
        match self {
            CallError::Connect(e) => format!("connect {:?}", e.kind()),
            CallError::Http(_) => "http error".into(),
            CallError::Status(s) => format!("status {}", s.as_u16()),
            CallError::Body(..) => "bad body".into(),
            CallError::Grpc(c, _) => format!("grpc {c:?}"),
            CallError::Timeout => "timeout".into(),
        }
    }
}

/// Where the client connects and what it asks for.
#[derive(Clone, Debug)]
pub struct Target {
    /// What the client dials: the proxy's address, or a service VIP that the
    /// client pod's capture rules send through the mesh.
    pub dst: SocketAddr,
    /// `Host` / `:authority` of every request.
    pub authority: String,
    pub proto: Proto,
}

/// HTTP path of the HTTP requests (the route and the policy match it).
pub const HTTP_PATH: &str = "/bench";

/// One client connection.
pub enum Client {
    /// Origin-form path, and the `Host` header.
    H1(http1::SendRequest<Empty<Bytes>>, Uri, http::HeaderValue),
    H2(http2::SendRequest<Empty<Bytes>>, Uri),
    Grpc(tonic::client::Grpc<H2Service>, Payload),
}

async fn dial(ns: &NetNs, dst: SocketAddr) -> Result<TokioIo<tokio::net::TcpStream>, CallError> {
    let opts = SocketOpts {
        nodelay: true,
        ..SocketOpts::default()
    };
    let socket = netns::tcp_socket(Some(ns), dst, opts).map_err(CallError::Connect)?;
    let tcp = socket.connect(dst).await.map_err(CallError::Connect)?;
    Ok(TokioIo::new(tcp))
}

impl Client {
    /// Connects from inside `ns`; the connection's driver is spawned on the
    /// current runtime (which must be the one the calls run on).
    pub async fn connect(ns: &NetNs, t: &Target) -> Result<Client, CallError> {
        let io = dial(ns, t.dst).await?;
        match t.proto {
            Proto::Http1 => {
                let (send, conn) = http1::handshake(io).await?;
                tokio::spawn(conn);
                let host = http::HeaderValue::from_str(&t.authority)
                    .map_err(|_| CallError::Status(StatusCode::BAD_REQUEST))?;
                Ok(Client::H1(send, Uri::from_static(HTTP_PATH), host))
            }
            Proto::Http2 => {
                let (send, conn) = h2_builder().handshake(io).await?;
                tokio::spawn(conn);
                let uri = format!("http://{}{HTTP_PATH}", t.authority)
                    .parse()
                    .map_err(|_| CallError::Status(StatusCode::BAD_REQUEST))?;
                Ok(Client::H2(send, uri))
            }
            Proto::Grpc => {
                let (send, conn) = h2_builder().handshake(io).await?;
                tokio::spawn(conn);
                let origin: Uri = format!("http://{}", t.authority)
                    .parse()
                    .map_err(|_| CallError::Status(StatusCode::BAD_REQUEST))?;
                let grpc = tonic::client::Grpc::with_origin(H2Service(send), origin);
                let payload = Payload {
                    data: Bytes::from_static(&[b'x'; GRPC_PAYLOAD_BYTES]),
                };
                Ok(Client::Grpc(grpc, payload))
            }
        }
    }

    /// Another handle on the same connection, for concurrent requests on
    /// it (HTTP/2, gRPC); None for HTTP/1.1.
    pub fn share(&self) -> Option<Client> {
        match self {
            Client::H1(..) => None,
            Client::H2(s, u) => Some(Client::H2(s.clone(), u.clone())),
            Client::Grpc(g, p) => Some(Client::Grpc(g.clone(), p.clone())),
        }
    }

    /// One request; Ok only for the expected answer, body read in full.
    pub async fn call(&mut self) -> Result<(), CallError> {
        match self {
            Client::H1(send, uri, host) => {
                send.ready().await?;
                let mut req = get(uri);
                req.headers_mut().insert(http::header::HOST, host.clone());
                let resp = send.send_request(req).await?;
                check_http(resp).await
            }
            Client::H2(send, uri) => {
                send.ready().await?;
                let resp = send.send_request(get(uri)).await?;
                check_http(resp).await
            }
            Client::Grpc(grpc, payload) => {
                grpc.ready().await.map_err(|e| {
                    CallError::Grpc(tonic::Code::Unavailable, format!("not ready: {e}"))
                })?;
                let codec = ProstCodec::<Payload, Payload>::default();
                let reply = grpc
                    .unary(
                        tonic::Request::new(payload.clone()),
                        PathAndQuery::from_static(SAY_PATH),
                        codec,
                    )
                    .await
                    .map_err(|s| CallError::Grpc(s.code(), s.message().to_string()))?;
                let n = reply.get_ref().data.len();
                if n != GRPC_PAYLOAD_BYTES {
                    return Err(CallError::Body(n, GRPC_PAYLOAD_BYTES));
                }
                Ok(())
            }
        }
    }
}

fn get(uri: &Uri) -> Request<Empty<Bytes>> {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = uri.clone();
    req
}

fn h2_builder() -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20);
    b
}

async fn check_http(resp: http::Response<Incoming>) -> Result<(), CallError> {
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        return Err(CallError::Status(status));
    }
    if body.len() != HTTP_BODY_BYTES {
        return Err(CallError::Body(body.len(), HTTP_BODY_BYTES));
    }
    Ok(())
}

/// tonic's client codec on a hyper HTTP/2 connection. The request body
/// (one unary message) is collected and sent as a single DATA frame with
/// END_STREAM, as most gRPC clients send a unary call; tonic's own body
/// would add an empty DATA frame carrying END_STREAM (see perf/README.md,
/// "Findings", for what the waypoint does with that one).
#[derive(Clone)]
pub struct H2Service(http2::SendRequest<Full<Bytes>>);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RespFuture = Pin<Box<dyn Future<Output = Result<http::Response<Incoming>, BoxError>> + Send>>;

impl Service<http::Request<tonic::body::Body>> for H2Service {
    type Response = http::Response<Incoming>;
    type Error = BoxError;
    type Future = RespFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let mut send = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|s| Box::new(s) as BoxError)?
                .to_bytes();
            let resp = send
                .send_request(http::Request::from_parts(parts, Full::new(bytes)))
                .await?;
            Ok(resp)
        })
    }
}
