//! Blocking HTTP/1.1, HTTP/2, upgrade and gRPC clients that dial from inside
//! a netns. Each call opens its own connection (created in the namespace),
//! runs on a short-lived current-thread runtime and is bounded by
//! [`CLIENT_TIMEOUT`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};
use http::{HeaderMap, Method, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::codegen::Service;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::Status;
use tonic_prost::ProstCodec;
use trellis_netns::{NetNs, SocketOpts};

use super::grpc::{EchoReply, EchoRequest, SAY_PATH, STREAM_PATH};
use super::{lock, CLIENT_TIMEOUT};

/// An HTTP answer, body read in full.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: String,
}

impl HttpReply {
    /// A header's value, if present and readable as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The body as JSON (the test servers' description); Null if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Which test server answered: the body's `server`, else the `x-server` header.
    pub fn server(&self) -> Option<String> {
        self.json()["server"]
            .as_str()
            .map(str::to_string)
            .or_else(|| self.header(super::SERVER_HEADER).map(str::to_string))
    }
}

/// Why an HTTP client call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the client's runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("cannot connect to {dst}: {source}; is a server listening there, and does the route (capture rules, proxies, waypoint) exist?")]
    Connect {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot build the request for {dst}: {detail}; check the method, path and headers the test passes")]
    BadRequest { dst: SocketAddr, detail: String },
    #[error("http exchange with {dst} failed: {source}; a reset or an early close shows up here")]
    Http {
        dst: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("{dst} answered the upgrade with {status}, not 101 Switching Protocols; body: {body}")]
    NotUpgraded {
        dst: SocketAddr,
        status: u16,
        body: String,
    },
    #[error("upgraded connection to {dst}: {source}")]
    Io {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "no complete answer from {dst} within {after:?}; something on the path holds the request"
    )]
    Timeout { dst: SocketAddr, after: Duration },
}

impl ClientError {
    /// Whether the connection or stream ended without an answer (what a
    /// server in `Mode::Reset` causes), as opposed to a refused connect or a timeout.
    pub fn is_aborted(&self) -> bool {
        match self {
            ClientError::Http { .. } => true,
            ClientError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// One HTTP/1.1 request on a new connection. A `host` in `headers` replaces
/// the default `Host: <dst>`.
pub fn http1_request(
    ns: Option<&NetNs>,
    dst: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl AsRef<[u8]>,
) -> Result<HttpReply, ClientError> {
    let req = build(dst, Version::HTTP_11, method, path, headers, body.as_ref())?;
    block_on(dst, async {
        let mut conn = Conn::open(ns, dst, Version::HTTP_11).await?;
        conn.send(req).await
    })
}

/// `n` HTTP/1.1 requests one after the other on one kept-alive connection.
/// Fails at the first request without an answer.
pub fn http1_keepalive(
    ns: Option<&NetNs>,
    dst: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> Result<Vec<HttpReply>, ClientError> {
    let reqs = (0..n)
        .map(|_| build(dst, Version::HTTP_11, method, path, headers, b""))
        .collect::<Result<Vec<_>, _>>()?;
    block_on(dst, async {
        let mut conn = Conn::open(ns, dst, Version::HTTP_11).await?;
        let mut replies = Vec::with_capacity(n);
        for req in reqs {
            replies.push(conn.send(req).await?);
        }
        Ok(replies)
    })
}

/// One HTTP/2 request (cleartext, prior knowledge) on a new connection. A
/// `host` in `headers` becomes the `:authority` instead of `dst`.
pub fn http2_request(
    ns: Option<&NetNs>,
    dst: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl AsRef<[u8]>,
) -> Result<HttpReply, ClientError> {
    let req = build(dst, Version::HTTP_2, method, path, headers, body.as_ref())?;
    block_on(dst, async {
        let mut conn = Conn::open(ns, dst, Version::HTTP_2).await?;
        conn.send(req).await
    })
}

/// An HTTP/1.1 `GET path` with `Upgrade: websocket` (WebSocket-style; no
/// WebSocket framing): expects 101, then writes `payload` on the upgraded
/// connection and reads as many bytes back. Returns the 101 answer and the
/// bytes read.
pub fn upgrade_echo(
    ns: Option<&NetNs>,
    dst: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    payload: &[u8],
) -> Result<(HttpReply, Vec<u8>), ClientError> {
    let mut req = build(dst, Version::HTTP_11, "GET", path, headers, b"")?;
    req.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    req.headers_mut()
        .entry(UPGRADE)
        .or_insert(HeaderValue::from_static("websocket"));
    block_on(dst, async {
        let mut conn = Conn::open(ns, dst, Version::HTTP_11).await?;
        let resp = conn.send_raw(req).await?;
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            let reply = read_reply(dst, resp).await?;
            return Err(ClientError::NotUpgraded {
                dst,
                status: reply.status,
                body: reply.body,
            });
        }
        let head = HttpReply {
            status: resp.status().as_u16(),
            version: resp.version(),
            headers: resp.headers().clone(),
            body: String::new(),
        };
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|source| ClientError::Http { dst, source })?;
        let mut io = TokioIo::new(upgraded);
        let io_err = |source| ClientError::Io { dst, source };
        io.write_all(payload).await.map_err(io_err)?;
        let mut back = vec![0u8; payload.len()];
        io.read_exact(&mut back).await.map_err(io_err)?;
        let _ = io.shutdown().await;
        Ok((head, back))
    })
}

/// Options of a gRPC call beyond the message.
#[derive(Debug, Clone, Default)]
pub struct GrpcOpts {
    /// The `:authority` to send instead of `dst` (what a waypoint routes on).
    pub authority: Option<String>,
    /// Request metadata (ASCII values).
    pub metadata: Vec<(String, String)>,
}

/// `trellis.test.Echo/Say` on a new connection. Transport failures come back
/// as statuses too (`UNAVAILABLE` for a connect failure, `DEADLINE_EXCEEDED`
/// at [`CLIENT_TIMEOUT`]).
pub fn grpc_say(ns: Option<&NetNs>, dst: SocketAddr, message: &str) -> Result<EchoReply, Status> {
    grpc_say_with(ns, dst, message, &GrpcOpts::default()).map(tonic::Response::into_inner)
}

/// [`grpc_say`] with options; the answer keeps its response metadata.
pub fn grpc_say_with(
    ns: Option<&NetNs>,
    dst: SocketAddr,
    message: &str,
    opts: &GrpcOpts,
) -> Result<tonic::Response<EchoReply>, Status> {
    let req = grpc_request(message, 0, opts)?;
    grpc_block_on(dst, async {
        let mut grpc = grpc_client(ns, dst, opts).await?;
        let codec = ProstCodec::<EchoRequest, EchoReply>::default();
        grpc.unary(req, http::uri::PathAndQuery::from_static(SAY_PATH), codec)
            .await
    })
}

/// `trellis.test.Echo/Stream` asking for `count` replies: all the replies and
/// the trailers (where the server puts `x-trailer: done`), or the status the
/// stream ended with.
pub fn grpc_stream(
    ns: Option<&NetNs>,
    dst: SocketAddr,
    message: &str,
    count: u32,
) -> Result<(Vec<EchoReply>, MetadataMap), Status> {
    let opts = GrpcOpts::default();
    let req = grpc_request(message, count, &opts)?;
    grpc_block_on(dst, async {
        let mut grpc = grpc_client(ns, dst, &opts).await?;
        let codec = ProstCodec::<EchoRequest, EchoReply>::default();
        let path = http::uri::PathAndQuery::from_static(STREAM_PATH);
        let mut stream = grpc.server_streaming(req, path, codec).await?.into_inner();
        let mut replies = Vec::new();
        while let Some(reply) = stream.message().await? {
            replies.push(reply);
        }
        let trailers = stream.trailers().await?.unwrap_or_default();
        Ok((replies, trailers))
    })
}

// ------------------------------------------------------------------ internals

/// Runs `fut` on a fresh current-thread runtime, bounded by [`CLIENT_TIMEOUT`].
/// The socket is created when `fut` first runs, on this thread, so inside `ns`.
fn block_on<T>(
    dst: SocketAddr,
    fut: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)?;
    rt.block_on(async {
        tokio::time::timeout(CLIENT_TIMEOUT, fut)
            .await
            .unwrap_or(Err(ClientError::Timeout {
                dst,
                after: CLIENT_TIMEOUT,
            }))
    })
}

fn grpc_block_on<T>(
    dst: SocketAddr,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Status::internal(format!("cannot build the client's runtime: {e}")))?;
    rt.block_on(async {
        tokio::time::timeout(CLIENT_TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "no complete answer from {dst} within {CLIENT_TIMEOUT:?}"
                )))
            })
    })
}

async fn dial(ns: Option<&NetNs>, dst: SocketAddr) -> io::Result<TcpStream> {
    let opts = SocketOpts {
        nodelay: true,
        ..SocketOpts::default()
    };
    crate::servers::connect_async(ns, dst, opts, CLIENT_TIMEOUT).await
}

/// A request in the shape hyper's client wants for `version`: origin-form
/// URI plus `Host` for HTTP/1, absolute URI (the authority) for HTTP/2.
fn build(
    dst: SocketAddr,
    version: Version,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Request<Full<Bytes>>, ClientError> {
    let bad = |detail: String| ClientError::BadRequest { dst, detail };
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| bad(format!("method: {e}")))?;
    let host = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| dst.to_string());
    let uri = match version {
        Version::HTTP_2 => format!("http://{host}{path}"),
        _ => path.to_string(),
    };
    let mut req = Request::builder()
        .method(method)
        .uri(&uri)
        .version(version)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| bad(format!("uri {uri:?}: {e}")))?;
    let map = req.headers_mut();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| bad(format!("{k}: {e}")))?;
        if name == HOST {
            continue;
        }
        let value = HeaderValue::from_str(v).map_err(|e| bad(format!("{k}: {e}")))?;
        map.append(name, value);
    }
    if version != Version::HTTP_2 {
        let value = HeaderValue::from_str(&host).map_err(|e| bad(format!("host: {e}")))?;
        map.insert(HOST, value);
    }
    Ok(req)
}

/// One client connection, HTTP/1 or HTTP/2; its driver runs as a task.
struct Conn {
    dst: SocketAddr,
    send: Sender,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    async fn open(
        ns: Option<&NetNs>,
        dst: SocketAddr,
        version: Version,
    ) -> Result<Conn, ClientError> {
        let tcp = dial(ns, dst)
            .await
            .map_err(|source| ClientError::Connect { dst, source })?;
        let io = TokioIo::new(tcp);
        let http = |source| ClientError::Http { dst, source };
        let send = if version == Version::HTTP_2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(http)?;
            tokio::spawn(conn);
            Sender::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(http)?;
            tokio::spawn(conn.with_upgrades());
            Sender::H1(send)
        };
        Ok(Conn { dst, send })
    }

    async fn send_raw(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let result = match &mut self.send {
            Sender::H1(s) => match s.ready().await {
                Ok(()) => s.send_request(req).await,
                Err(e) => Err(e),
            },
            Sender::H2(s) => match s.ready().await {
                Ok(()) => s.send_request(req).await,
                Err(e) => Err(e),
            },
        };
        let dst = self.dst;
        result.map_err(|source| ClientError::Http { dst, source })
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<HttpReply, ClientError> {
        let resp = self.send_raw(req).await?;
        read_reply(self.dst, resp).await
    }
}

async fn read_reply(
    dst: SocketAddr,
    resp: http::Response<Incoming>,
) -> Result<HttpReply, ClientError> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|source| ClientError::Http { dst, source })?
        .to_bytes();
    Ok(HttpReply {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn grpc_request(
    message: &str,
    count: u32,
    opts: &GrpcOpts,
) -> Result<tonic::Request<EchoRequest>, Status> {
    let mut req = tonic::Request::new(EchoRequest {
        message: message.to_string(),
        count,
    });
    for (k, v) in &opts.metadata {
        let key = MetadataKey::from_bytes(k.as_bytes())
            .map_err(|e| Status::invalid_argument(format!("metadata key {k:?}: {e}")))?;
        let value = MetadataValue::try_from(v.as_str())
            .map_err(|e| Status::invalid_argument(format!("metadata value of {k}: {e}")))?;
        req.metadata_mut().append(key, value);
    }
    Ok(req)
}

async fn grpc_client(
    ns: Option<&NetNs>,
    dst: SocketAddr,
    opts: &GrpcOpts,
) -> Result<tonic::client::Grpc<tonic::transport::Channel>, Status> {
    let tcp = dial(ns, dst)
        .await
        .map_err(|e| Status::unavailable(format!("cannot connect to {dst}: {e}")))?;
    let invalid = |e: &dyn std::fmt::Display| Status::invalid_argument(e.to_string());
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("http://{dst}"))
        .map_err(|e| invalid(&e))?;
    if let Some(a) = &opts.authority {
        let origin: http::Uri = format!("http://{a}").parse().map_err(|e| invalid(&e))?;
        endpoint = endpoint.origin(origin);
    }
    let channel = endpoint
        .connect_with_connector(Preconnected(Arc::new(Mutex::new(Some(tcp)))))
        .await
        .map_err(|e| Status::unavailable(format!("grpc connection to {dst}: {e}")))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("grpc connection to {dst}: {e}")))?;
    Ok(grpc)
}

/// Hands tonic the connection already made inside the netns: tonic's own
/// connector would dial from whatever namespace its runtime thread is in.
#[derive(Clone)]
struct Preconnected(Arc<Mutex<Option<TcpStream>>>);

impl Service<http::Uri> for Preconnected {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<TokioIo<TcpStream>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        std::future::ready(lock(&self.0).take().map(TokioIo::new).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "the test client's one connection is closed; each call makes a new client",
            )
        }))
    }
}
