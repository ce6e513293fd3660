//! Shared fixtures: a dev CA, a real loopback HBONE server and client helpers.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbone::{
    client_config, peer_identity, serve_with_shutdown, server_config, tls_accept, tls_connect,
    ClientConn, DevCa, H2Settings, HboneError, Identity, IncomingRequest, TrustBundle,
    WorkloadCert,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

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
    let cfg = client_config(cert, bundle, expected)?;
    let tcp = TcpStream::connect(addr).await.map_err(HboneError::Io)?;
    let tls = tls_connect(tcp, cfg).await?;
    ClientConn::handshake(tls, &H2Settings::default()).await
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
