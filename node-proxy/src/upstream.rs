//! Opening upstream TCP connections from the right place: inside the pod's
//! netns (shared mode) with the proxy mark, so the capture rules let them
//! pass, and optionally from the original client's IP.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::context::{ProxyCtx, Scope};
use crate::settings::PROXY_MARK;
use trellis_netns::{self as netns, SocketOpts};

/// Upper bound for a TCP connect; a silently dropped SYN would otherwise hang for minutes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot create a socket for {dst} in the pod's network namespace: {source}; check the pod's netns still exists")]
    Socket {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connect to {dst} failed: {source}")]
    Connect {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connect to {dst} timed out after {CONNECT_TIMEOUT:?}; maybe a NetworkPolicy or firewall drops it")]
    Timeout { dst: SocketAddr },
}

/// Connects to `dst` from the scope's netns. With `client_ip`, tries to keep
/// that source address (IP_TRANSPARENT) and falls back to the pod's own.
pub async fn connect(
    proxy: &ProxyCtx,
    scope: &Scope,
    dst: SocketAddr,
    client_ip: Option<std::net::IpAddr>,
) -> Result<TcpStream, UpstreamError> {
    let transparent = scope.transparent && proxy.try_transparent();
    if let Some(ip) = client_ip.filter(|ip| transparent && ip.is_ipv4() == dst.is_ipv4()) {
        match connect_with(scope, dst, Some(SocketAddr::new(ip, 0))).await {
            Ok(s) => return Ok(s),
            // A refused or unreachable destination is not a transparency problem.
            Err(e @ UpstreamError::Connect { .. }) if !is_transparency_error(&e) => return Err(e),
            Err(UpstreamError::Timeout { dst }) => return Err(UpstreamError::Timeout { dst }),
            Err(e) => {
                tracing::debug!(error = %e, "transparent connect failed");
                proxy.transparent_failed();
            }
        }
    }
    connect_with(scope, dst, None).await
}

fn is_transparency_error(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Connect { source, .. } => matches!(
            source.raw_os_error(),
            Some(libc::EADDRNOTAVAIL) | Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EINVAL)
        ),
        _ => false,
    }
}

async fn connect_with(
    scope: &Scope,
    dst: SocketAddr,
    transparent_src: Option<SocketAddr>,
) -> Result<TcpStream, UpstreamError> {
    let opts = SocketOpts {
        mark: scope.netns.as_ref().map(|_| PROXY_MARK),
        transparent_src,
        nodelay: true,
    };
    let socket = netns::tcp_socket(scope.netns.as_ref(), dst, opts)
        .map_err(|source| UpstreamError::Socket { dst, source })?;
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(dst)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(UpstreamError::Connect { dst, source }),
        Err(_) => Err(UpstreamError::Timeout { dst }),
    }
}
