//! The proxies' connection to the controller: one lazy gRPC channel over
//! TLS (ALPN h2), trusting the mesh roots, shared in shape by the CA client
//! and the xDS client, and the bearer token they both send.
//!
//! tonic is built without its TLS features, so the handshake is ours; it
//! uses the same rustls provider as HBONE.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hbone::TrustBundle;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};

mod token;
pub use token::{Token, TokenError};

/// How long a connection attempt to the controller may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a channel could not be set up (a configuration error, not a
/// connection failure: the channel connects lazily and retries).
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("server name {0:?} is not a valid dns name or ip")]
    ServerName(String),
    #[error("address {address:?} is not host:port: {detail}")]
    Address { address: String, detail: String },
    #[error("tls configuration rejected: {0}")]
    Tls(#[from] rustls::Error),
}

/// A lazy HTTP/2 channel to `address` over TLS, checking the server's
/// certificate for `server_name` against `bundle`. Call inside the tokio
/// runtime that will drive it: the channel spawns its connection task there.
///
/// `mark` sets SO_MARK on every connection: a proxy that captures its own
/// network namespace (a VM's dedicated node proxy) marks its sockets so the
/// capture rules let them pass; unmarked, its first connection to the
/// controller would be captured by itself, which has no config yet.
pub fn channel(
    address: &str,
    server_name: &str,
    bundle: &TrustBundle,
    mark: Option<u32>,
) -> Result<Channel, ChannelError> {
    let mut roots = rustls::RootCertStore::empty();
    for root in bundle.roots() {
        roots.add(root.clone())?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(hbone::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|_| ChannelError::ServerName(server_name.to_owned()))?;
    let endpoint =
        Endpoint::from_shared(format!("http://{address}")).map_err(|e| ChannelError::Address {
            address: address.to_owned(),
            detail: e.to_string(),
        })?;
    let connector = TlsConnector {
        address: address.to_owned(),
        mark,
        server_name: name,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
    };
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector_lazy(connector))
}

/// The `authorization` header value for `token`.
pub fn bearer(token: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, tonic::Status> {
    format!("Bearer {token}").parse().map_err(|_| {
        tonic::Status::invalid_argument("the token has characters not allowed in a header")
    })
}

/// Dials the controller's address and does the TLS handshake; tonic speaks
/// h2 on top.
#[derive(Clone)]
struct TlsConnector {
    address: String,
    mark: Option<u32>,
    server_name: rustls::pki_types::ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

type TlsIo = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tonic::codegen::Service<Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TlsIo, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = match this.mark {
                None => TcpStream::connect(&this.address).await?,
                Some(mark) => connect_marked(&this.address, mark).await?,
            };
            let _ = tcp.set_nodelay(true);
            let tls = this.tls.connect(this.server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Connects to the first address `address` resolves to that answers, from
/// a socket carrying `mark`.
async fn connect_marked(address: &str, mark: u32) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host(address).await? {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_mark(mark).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot mark the socket to the controller (SO_MARK {mark:#x}): {e}; the proxy needs CAP_NET_ADMIN"),
            )
        })?;
        socket.set_nonblocking(true)?;
        let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{address} resolves to no address"),
        )
    }))
}
