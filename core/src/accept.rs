//! The first steps of every HBONE server connection, shared by the node
//! proxy and the waypoint: refuse plaintext on the TLS port, run the TLS
//! handshake under a deadline, and read the client's SPIFFE identity.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbone::{Identity, ServerTls};
use tokio::net::TcpStream;

use crate::limits::ConnLimits;
pub use crate::limits::HANDSHAKE_TIMEOUT;
use crate::metrics::{ErrorReason, Metrics};

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("plaintext on the hbone port from {0}; only mTLS HBONE clients may use 15008")]
    Plaintext(SocketAddr),
    #[error("{0} did not complete the tls handshake within {1:?}")]
    HandshakeTimeout(SocketAddr, Duration),
    #[error(
        "handshake with {0} cut short: more handshakes were pending than --max-pending-handshakes \
         allows, and it was the oldest (a flood of idle connections, or the limit is too low)"
    )]
    Evicted(SocketAddr),
    #[error("tls handshake with {peer} failed: {source}")]
    Handshake {
        peer: SocketAddr,
        #[source]
        source: Box<hbone::HboneError>,
    },
    #[error("client {peer} presented no usable spiffe identity: {source}")]
    Identity {
        peer: SocketAddr,
        #[source]
        source: Box<hbone::TlsError>,
    },
    #[error("cannot read from {peer}: {source}")]
    Io {
        peer: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Accepts an HBONE client on `stream`: TLS with `cfg` (client certificate
/// required) and the client's verified identity, as one of the pending
/// handshakes `limits` bounds (which may cut it short, or give it a short
/// deadline under pressure). Refusals are counted in `metrics` by reason.
pub async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    cfg: Arc<rustls::ServerConfig>,
    metrics: &Metrics,
    limits: &Arc<ConnLimits>,
) -> Result<(ServerTls, Identity), AcceptError> {
    let pending = limits.begin_handshake();
    let timeout = pending.timeout();
    // Boxed: the handshake state is large and only needed up front.
    let handshake = Box::pin(handshake(stream, peer, cfg, metrics));
    let tls = tokio::select! {
        r = tokio::time::timeout(timeout, handshake) => match r {
            Ok(r) => r?,
            Err(_) => {
                limits.handshake_timed_out();
                return Err(AcceptError::HandshakeTimeout(peer, timeout));
            }
        },
        () = pending.evicted() => return Err(AcceptError::Evicted(peer)),
    };
    // The handshake is over: its slot goes to the next one.
    drop(pending);
    match hbone::peer_identity(tls.get_ref().1) {
        Ok(id) => Ok((tls, id)),
        Err(source) => {
            metrics.record_error(ErrorReason::UnknownIdentity);
            Err(AcceptError::Identity {
                peer,
                source: Box::new(source),
            })
        }
    }
}

/// Refuses plaintext, then runs the TLS handshake.
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    cfg: Arc<rustls::ServerConfig>,
    metrics: &Metrics,
) -> Result<ServerTls, AcceptError> {
    let mut first = [0u8; 1];
    let n = stream
        .peek(&mut first)
        .await
        .map_err(|source| AcceptError::Io { peer, source })?;
    if n == 1 && first[0] != TLS_HANDSHAKE_RECORD {
        metrics.record_error(ErrorReason::PlaintextOnHbonePort);
        return Err(AcceptError::Plaintext(peer));
    }
    hbone::tls_accept(stream, cfg).await.map_err(|source| {
        metrics.record_error(ErrorReason::UnknownIdentity);
        AcceptError::Handshake {
            peer,
            source: Box::new(source),
        }
    })
}
