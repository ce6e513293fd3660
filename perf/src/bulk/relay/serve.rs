//! The relay's I/O: accept captured connections, decide where they go
//! ([`super::upstream`]), connect with the proxy mark, and copy; TLS
//! between the two relays in mode `tls`.

use std::net::SocketAddr;
use std::sync::Arc;

use hbone::{Identity, TrustBundle, WorkloadCert};
use rustls::pki_types::ServerName;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use trellis_netns::{sockopt, ListenOpts, SocketOpts};

use super::uring::UringRelay;
use super::uring_tls::TlsState;
use super::{Mode, RelayConfig, RelayError, Role, TlsFiles, RELAY_ALPN};

/// A peer that opens a connection and says nothing must not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed accept (e.g. out of file descriptors), before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// What a relay holds for its whole life: its flags and, in mode `tls`,
/// its side of the TLS configuration.
#[derive(Clone)]
pub struct Relay {
    pub cfg: RelayConfig,
    tls: Option<TlsSide>,
    /// Modes `uring*`: the ring's thread, shared by all connections.
    uring: Option<UringRelay>,
}

#[derive(Clone)]
enum TlsSide {
    Client(TlsConnector),
    Server(TlsAcceptor),
}

/// Bytes moved by one connection, each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Client to server.
    pub up: u64,
    /// Server to client.
    pub down: u64,
}

impl Relay {
    /// Loads the certificates (mode `tls`) and builds the TLS configuration
    /// with HBONE's builders, so the handshake and the cipher suites are
    /// HBONE's; only the ALPN differs (no HTTP/2 inside).
    pub fn new(cfg: RelayConfig) -> Result<Relay, RelayError> {
        let tls = match (&cfg.tls, cfg.mode) {
            (Some(files), m) if m.tls() => Some(tls_side(cfg.role, files)?),
            _ => None,
        };
        let uring = match cfg.mode.uring_io() {
            Some(io) => Some(
                UringRelay::start(
                    io,
                    cfg.buffer,
                    format!("{} {}", cfg.mode.name(), cfg.role.name()),
                )
                .map_err(|e| RelayError::Uring(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Relay { cfg, tls, uring })
    }

    /// Binds the listen address in the current netns (the relay is started in the pod's).
    pub fn listen(&self) -> Result<TcpListener, RelayError> {
        let addr = self.cfg.listen;
        let err = |source| RelayError::Listen { addr, source };
        let l = trellis_netns::tcp_listener(
            None,
            addr,
            ListenOpts {
                backlog: 1024,
                nodelay: true,
                ..Default::default()
            },
        )
        .map_err(err)?;
        TcpListener::from_std(l).map_err(err)
    }

    /// Accepts forever; each connection on its own task, its result on stderr.
    pub async fn run(self, listener: TcpListener) -> Result<(), RelayError> {
        let addr = self.cfg.listen;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // ECONNABORTED, EMFILE and the like: this connection is
                    // lost, the listener is not; pause so EMFILE does not spin.
                    eprintln!("relay: accepting on {addr}: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let relay = self.clone();
            tokio::spawn(async move {
                let (mode, role) = (relay.cfg.mode.name(), relay.cfg.role.name());
                match relay.captured(stream, peer).await {
                    Ok((dst, c)) => eprintln!(
                        "relay {mode} {role}: closed peer={peer} dst={dst} up={} down={}",
                        c.up, c.down
                    ),
                    // A peer closing while data is in flight (iperf3's server
                    // does at the end of a test) is how bulk flows often end;
                    // the bytes moved still count.
                    Err(RelayError::Copy {
                        dst,
                        up,
                        down,
                        source,
                    }) => eprintln!(
                        "relay {mode} {role}: closed peer={peer} dst={dst} up={up} down={down} error={source}"
                    ),
                    Err(e) => eprintln!("relay {mode} {role}: peer={peer}: {e}"),
                }
            });
        }
    }

    /// One captured connection: where it goes, then [`relay_to`](Self::relay_to).
    async fn captured(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<(SocketAddr, Copied), RelayError> {
        let local = stream.local_addr().map_err(RelayError::OriginalDst)?;
        let original = match sockopt::original_dst(&stream, local) {
            Ok(d) => Some(d),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(RelayError::OriginalDst(e)),
        };
        let dst = super::upstream(self.cfg.role, self.cfg.listen.port(), peer, local, original)?;
        let copied = self.relay_to(stream, peer, dst).await?;
        Ok((dst, copied))
    }

    /// Relays `down` (accepted from `peer`) to `dst` in this relay's mode and role.
    pub async fn relay_to(
        &self,
        down: TcpStream,
        peer: SocketAddr,
        dst: SocketAddr,
    ) -> Result<Copied, RelayError> {
        // Like the node proxy: small writes (iperf3's control channel) must not wait on Nagle.
        let _ = down.set_nodelay(true);
        match &self.tls {
            Some(TlsSide::Server(acceptor)) => {
                let tls = timeout(
                    HANDSHAKE_TIMEOUT,
                    acceptor.accept(transport(down, self.cfg.buffer)),
                )
                .await
                .map_err(|_| RelayError::HandshakeTimeout { peer })?
                .map_err(|source| RelayError::Handshake {
                    peer,
                    side: "server",
                    source,
                })?;
                let up = self.connect(dst).await?;
                if let Some(uring) = &self.uring {
                    let (io, conn) = tls.into_inner();
                    return self.on_ring(uring, io, up, peer, dst, 0, conn.into()).await;
                }
                let mut tls = tls;
                tls.get_mut().1.set_buffer_limit(Some(self.cfg.buffer));
                copy(self.cfg.buffer, tls, up, dst).await
            }
            Some(TlsSide::Client(connector)) => {
                let up = self.connect(dst).await?;
                // Never sent (no SNI) nor checked: HBONE's verifier checks the SPIFFE ID.
                let name = ServerName::IpAddress(dst.ip().into());
                let tls = timeout(
                    HANDSHAKE_TIMEOUT,
                    connector.connect(name, transport(up, self.cfg.buffer)),
                )
                .await
                .map_err(|_| RelayError::HandshakeTimeout { peer: dst })?
                .map_err(|source| RelayError::Handshake {
                    peer: dst,
                    side: "client",
                    source,
                })?;
                if let Some(uring) = &self.uring {
                    let (io, conn) = tls.into_inner();
                    return self
                        .on_ring(uring, down, io, peer, dst, 1, conn.into())
                        .await;
                }
                let mut tls = tls;
                tls.get_mut().1.set_buffer_limit(Some(self.cfg.buffer));
                copy(self.cfg.buffer, down, tls, dst).await
            }
            None if self.cfg.mode == Mode::Splice => {
                let up = self.connect(dst).await?;
                let buffer = self.cfg.buffer;
                let down = down.into_std().map_err(|source| copy_err(dst, source))?;
                let up = up.into_std().map_err(|source| copy_err(dst, source))?;
                tokio::task::spawn_blocking(move || super::splice::relay(down, up, buffer))
                    .await
                    .map_err(|e| copy_err(dst, std::io::Error::other(e)))?
                    .map_err(|(c, source)| RelayError::Copy {
                        dst,
                        up: c.up,
                        down: c.down,
                        source,
                    })
            }
            None => match &self.uring {
                Some(uring) => {
                    let up = self.connect(dst).await?;
                    let down = down.into_std().map_err(|source| copy_err(dst, source))?;
                    let up = up.into_std().map_err(|source| copy_err(dst, source))?;
                    uring
                        .relay(down, up, format!("peer={peer} dst={dst}"), None)
                        .await
                        .map_err(|(c, source)| RelayError::Copy {
                            dst,
                            up: c.up,
                            down: c.down,
                            source,
                        })
                }
                None => {
                    let up = self.connect(dst).await?;
                    copy(self.cfg.buffer, down, up, dst).await
                }
            },
        }
    }

    /// Mode `uring-tls`: hands an established TLS connection on socket
    /// `side` (0: `down`, 1: `up`) to the ring, with the ciphertext the
    /// handshake's read buffer holds past it.
    #[allow(clippy::too_many_arguments)]
    async fn on_ring<A: Transport, B: Transport>(
        &self,
        uring: &UringRelay,
        down: A,
        up: B,
        peer: SocketAddr,
        dst: SocketAddr,
        side: usize,
        conn: rustls::Connection,
    ) -> Result<Copied, RelayError> {
        let (down, down_left) = down.into_parts();
        let (up, up_left) = up.into_parts();
        let leftover = if side == 0 { down_left } else { up_left };
        let tls = TlsState::new(conn, side, leftover);
        let down = down.into_std().map_err(|source| copy_err(dst, source))?;
        let up = up.into_std().map_err(|source| copy_err(dst, source))?;
        uring
            .relay(down, up, format!("peer={peer} dst={dst}"), Some(tls))
            .await
            .map_err(|(c, source)| RelayError::Copy {
                dst,
                up: c.up,
                down: c.down,
                source,
            })
    }

    async fn connect(&self, dst: SocketAddr) -> Result<TcpStream, RelayError> {
        let err = |source| RelayError::Connect { dst, source };
        let opts = SocketOpts {
            mark: (self.cfg.mark != 0).then_some(self.cfg.mark),
            nodelay: true,
            ..Default::default()
        };
        let sock = trellis_netns::tcp_socket(None, dst, opts).map_err(err)?;
        sock.connect(dst).await.map_err(err)
    }
}

/// The socket under TLS: like `hbone::transport` (rustls on a bare socket
/// reads 4 KiB per syscall) but with the relay's buffer size, so TLS
/// costs as few syscalls per MB as plain TCP; with the same limit on what
/// rustls buffers for sending, one write moves up to `buffer` bytes of
/// records.
fn transport(tcp: TcpStream, buffer: usize) -> BufReader<TcpStream> {
    BufReader::with_capacity(buffer, tcp)
}

/// A socket as the TLS handshake left it: bare, or behind the read buffer
/// ([`transport`]), whose unread bytes must go to rustls.
trait Transport {
    fn into_parts(self) -> (TcpStream, Vec<u8>);
}

impl Transport for TcpStream {
    fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self, Vec::new())
    }
}

impl Transport for BufReader<TcpStream> {
    fn into_parts(self) -> (TcpStream, Vec<u8>) {
        let left = self.buffer().to_vec();
        (self.into_inner(), left)
    }
}

fn copy_err(dst: SocketAddr, source: std::io::Error) -> RelayError {
    RelayError::Copy {
        dst,
        up: 0,
        down: 0,
        source,
    }
}

/// Both directions until both ends close, with `buffer` bytes per
/// direction; the bytes moved are counted on `down`'s side, so an error
/// still reports how far the copy got.
async fn copy<A, B>(
    buffer: usize,
    down: A,
    mut up: B,
    dst: SocketAddr,
) -> Result<Copied, RelayError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut down = Counted {
        inner: down,
        copied: Copied::default(),
    };
    let r = tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, buffer, buffer).await;
    let Copied { up, down } = down.copied;
    r.map(|_| Copied { up, down })
        .map_err(|source| RelayError::Copy {
            dst,
            up,
            down,
            source,
        })
}

/// A stream that counts what is read from it (up) and written to it (down).
struct Counted<S> {
    inner: S,
    copied: Copied,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.copied.up += (buf.filled().len() - before) as u64;
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.copied.down += n as u64;
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn tls_side(role: Role, files: &TlsFiles) -> Result<TlsSide, RelayError> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map_err(|e| RelayError::Identity(format!("reading {}: {e}", p.display())))
    };
    let id_err = |e: hbone::TlsError| RelayError::Identity(e.to_string());
    let cert = WorkloadCert::from_pem(&read(&files.chain)?, &read(&files.key)?).map_err(id_err)?;
    let bundle = TrustBundle::from_pem(&read(&files.root)?).map_err(id_err)?;
    match role {
        Role::Outbound => {
            let peer = files
                .peer_id
                .as_deref()
                .ok_or_else(|| RelayError::Identity("the outbound relay needs --peer-id".into()))?;
            let peer: Identity = peer
                .parse()
                .map_err(|e| RelayError::Identity(format!("--peer-id {peer:?}: {e}")))?;
            let mut cfg = (*hbone::client_config(&cert, &bundle, &[peer]).map_err(id_err)?).clone();
            cfg.alpn_protocols = vec![RELAY_ALPN.to_vec()];
            Ok(TlsSide::Client(TlsConnector::from(Arc::new(cfg))))
        }
        Role::Inbound => {
            let mut cfg = (*hbone::server_config(&cert, &bundle).map_err(id_err)?).clone();
            cfg.alpn_protocols = vec![RELAY_ALPN.to_vec()];
            Ok(TlsSide::Server(TlsAcceptor::from(Arc::new(cfg))))
        }
    }
}
