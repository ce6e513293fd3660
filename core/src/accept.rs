//! The first steps of every HBONE server connection, shared by the node
//! proxy and the waypoint: refuse plaintext on the TLS port, run the TLS
//! handshake under a deadline, and read the client's SPIFFE identity.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbone::{Identity, ServerTls};
use tokio::net::TcpStream;

use crate::metrics::{ErrorReason, Metrics};

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A client that connects and then stalls must not hold a task (and delay
/// drain) forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("plaintext on the hbone port from {0}; only mTLS HBONE clients may use 15008")]
    Plaintext(SocketAddr),
    #[error("{0} did not complete the tls handshake within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout(SocketAddr),
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
/// required) and the client's verified identity. Refusals are counted in
/// `metrics` by reason.
pub async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    cfg: Arc<rustls::ServerConfig>,
    metrics: &Metrics,
) -> Result<(ServerTls, Identity), AcceptError> {
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first))
        .await
        .map_err(|_| AcceptError::HandshakeTimeout(peer))?
        .map_err(|source| AcceptError::Io { peer, source })?;
    if n == 1 && first[0] != TLS_HANDSHAKE_RECORD {
        metrics.record_error(ErrorReason::PlaintextOnHbonePort);
        return Err(AcceptError::Plaintext(peer));
    }
    // Boxed: the handshake state is large and only needed up front.
    let accept = tokio::time::timeout(HANDSHAKE_TIMEOUT, Box::pin(hbone::tls_accept(stream, cfg)));
    let tls = match accept
        .await
        .map_err(|_| AcceptError::HandshakeTimeout(peer))?
    {
        Ok(t) => t,
        Err(source) => {
            metrics.record_error(ErrorReason::UnknownIdentity);
            return Err(AcceptError::Handshake {
                peer,
                source: Box::new(source),
            });
        }
    };
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
