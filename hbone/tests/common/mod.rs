//! Shared fixtures: a dev CA, a real loopback HBONE server and client helpers.
#![allow(dead_code)] // each test binary uses a different subset

pub mod lite_server;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbone::{
    client_config, peer_identity, serve_with_shutdown, server_config, tls_accept, tls_connect,
    ClientConn, ClientTls, ConnectRequest, DevCa, H2Settings, H2Stream, HboneError, Identity,
    IncomingRequest, TrustBundle, WorkloadCert,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Trust domain used by every test identity.
pub const TD: &str = "cluster.local";
/// Upper bound for any single wait in a test; generous for slow debug builds.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A test identity in the default namespace.
pub fn id(sa: &str) -> Identity {
    Identity::new(TD, "default", sa)
}

/// Awaits `fut`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("test step exceeded its deadline")
}

/// Polls `cond` until it holds, failing the test after [`DEADLINE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let wait = async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(DEADLINE, wait).await.is_err() {
        panic!("condition never became true: {what}");
    }
}

/// A CA and its trust bundle.
pub struct Pki {
    pub ca: DevCa,
    pub bundle: TrustBundle,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = DevCa::generate(TD).expect("generate ca");
        let bundle = ca.trust_bundle();
        Pki { ca, bundle }
    }

    pub fn cert(&self, sa: &str) -> WorkloadCert {
        self.ca
            .issue(&id(sa), Duration::from_secs(3600))
            .expect("issue cert")
    }

    /// Starts a server as `server` with default HTTP/2 settings.
    pub async fn serve(&self, handler: Handler) -> TestServer {
        self.serve_as("server", handler).await
    }

    /// Starts a server presenting a certificate for `sa`, with default HTTP/2 settings.
    pub async fn serve_as(&self, sa: &str, handler: Handler) -> TestServer {
        start_server(&self.cert(sa), &self.bundle, H2Settings::default(), handler).await
    }

    /// TLS config for `client` expecting `server`.
    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.cert("client"), &self.bundle, &[id("server")]).expect("client config")
    }

    /// Connects to `addr` as `client` expecting `server`, within the deadline.
    pub async fn dial(&self, addr: SocketAddr) -> Result<ClientConn, HboneError> {
        self.dial_expecting(addr, &[id("server")]).await
    }

    /// Connects to `addr` as `client` expecting one of `expected`, within the deadline.
    pub async fn dial_expecting(
        &self,
        addr: SocketAddr,
        expected: &[Identity],
    ) -> Result<ClientConn, HboneError> {
        within(client_conn(
            addr,
            &self.cert("client"),
            &self.bundle,
            expected,
        ))
        .await
    }
}

/// What the test server observed.
#[derive(Debug)]
pub enum ServerEvent {
    /// TLS completed; the client's identity.
    Accepted(Identity),
    /// TLS failed.
    TlsFailed(HboneError),
    /// `serve` returned.
    Served(Result<(), HboneError>),
}

/// Per-request behaviour of the test server.
pub type Handler = Arc<dyn Fn(IncomingRequest) + Send + Sync>;

/// A running loopback HBONE server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub events: mpsc::UnboundedReceiver<ServerEvent>,
    shutdown: watch::Sender<bool>,
}

impl TestServer {
    /// Starts graceful shutdown (GOAWAY) on every connection.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// The next event, within the deadline.
    pub async fn next_event(&mut self) -> ServerEvent {
        within(self.events.recv())
            .await
            .expect("server event channel closed")
    }

    /// The next event, which must be a completed TLS handshake; the client's identity.
    pub async fn expect_accepted(&mut self) -> Identity {
        match self.next_event().await {
            ServerEvent::Accepted(peer) => peer,
            other => panic!("expected Accepted, got {other:?}"),
        }
    }

    /// The next event, which must be a failed TLS handshake; its error.
    pub async fn expect_tls_failure(&mut self) -> HboneError {
        match self.next_event().await {
            ServerEvent::TlsFailed(e) => e,
            other => panic!("expected TlsFailed, got {other:?}"),
        }
    }

    /// The next event, which must be the end of a session; what `serve` returned.
    pub async fn expect_served(&mut self) -> Result<(), HboneError> {
        match self.next_event().await {
            ServerEvent::Served(result) => result,
            other => panic!("expected Served, got {other:?}"),
        }
    }

    /// Waits for `n` completed TLS handshakes, skipping other events.
    pub async fn wait_for_accepted(&mut self, n: usize) {
        let mut seen = 0;
        while seen < n {
            if let ServerEvent::Accepted(_) = self.next_event().await {
                seen += 1;
            }
        }
    }
}

/// Starts a server presenting `cert`, trusting `bundle`, answering with `handler`.
pub async fn start_server(
    cert: &WorkloadCert,
    bundle: &TrustBundle,
    settings: H2Settings,
    handler: Handler,
) -> TestServer {
    let cfg = server_config(cert, bundle).expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, events) = mpsc::unbounded_channel();
    let (shutdown, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (cfg, tx, handler, settings) =
                (cfg.clone(), tx.clone(), handler.clone(), settings.clone());
            let mut shutdown_rx = shutdown_rx.clone();
            tokio::spawn(async move {
                let tls = match tls_accept(tcp, cfg).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        let _ = tx.send(ServerEvent::TlsFailed(e));
                        return;
                    }
                };
                let peer = peer_identity(tls.get_ref().1).expect("verified client has an identity");
                let _ = tx.send(ServerEvent::Accepted(peer));
                let shutdown = async move {
                    let _ = shutdown_rx.wait_for(|s| *s).await;
                };
                let result =
                    serve_with_shutdown(tls, &settings, move |req| handler(req), shutdown).await;
                let _ = tx.send(ServerEvent::Served(result));
            });
        }
    });
    TestServer {
        addr,
        events,
        shutdown,
    }
}

/// Accepts every tunnel and echoes its bytes back, closing after the client does.
pub fn echo_handler() -> Handler {
    Arc::new(|req: IncomingRequest| {
        let Ok(stream) = req.accept() else { return };
        tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(stream);
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        });
    })
}

/// TLS + HTTP/2 client connection to `addr` with default settings.
pub async fn client_conn(
    addr: SocketAddr,
    cert: &WorkloadCert,
    bundle: &TrustBundle,
    expected: &[Identity],
) -> Result<ClientConn, HboneError> {
    let tls = tls_dial(addr, client_config(cert, bundle, expected)?).await?;
    ClientConn::handshake(tls, &H2Settings::default()).await
}

/// TCP connect to `addr`, then the client side of the TLS handshake.
pub async fn tls_dial(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<ClientTls, HboneError> {
    let tcp = TcpStream::connect(addr).await.map_err(HboneError::Io)?;
    tls_connect(tcp, cfg).await
}

/// A CONNECT request for `target` (`ip:port`).
pub fn request(target: &str) -> ConnectRequest {
    ConnectRequest::new(target.parse().expect("target addr"))
}

/// Opens a tunnel to `target` on `conn`, within the deadline.
pub async fn open_tunnel(conn: &ClientConn, target: &str) -> Result<H2Stream, HboneError> {
    within(conn.connect(&request(target))).await
}

/// Binds a loopback listener and runs `on_accept` on its first connection.
pub async fn accept_once<F, Fut>(on_accept: F) -> (SocketAddr, JoinHandle<Fut::Output>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.expect("accept");
        on_accept(sock).await
    });
    (addr, task)
}

/// Writes `payload` then half-closes, while reading until the peer's EOF; what was read.
pub async fn exchange(stream: impl AsyncRead + AsyncWrite, payload: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        w.write_all(payload).await.expect("write");
        w.shutdown().await.expect("shutdown");
    };
    let read = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.expect("read");
        got
    };
    tokio::join!(write, read).1
}

/// A connected loopback TCP pair: (client side, server side).
pub async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.expect("connect"), server.expect("accept").0)
}

/// Deterministic payload so corruption or reordering is detected.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}
