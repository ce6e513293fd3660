//! Inbound plaintext (15006): connections from clients outside the mesh,
//! redirected by the pod's capture rules. Policy applies with no identity,
//! so policies that need a principal deny.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::warn;
use trellis_core::metrics::{ErrorReason, Side};

use crate::context::{Scope, WorkerCtx};
use crate::settings::{HBONE_PORT, INBOUND_PLAIN_PORT, OUTBOUND_PORT};
use crate::{admission, upstream};
use trellis_netns::sockopt;

#[derive(Debug, thiserror::Error)]
pub enum PlainError {
    #[error("no original destination: {0}; plaintext inbound needs the pod's capture rules")]
    NoOrigDst(std::io::Error),
    #[error("destination {0} is not an address of pod {1}")]
    NotThisPod(SocketAddr, String),
    #[error("destination {0} is one of the proxy's own ports; refusing a loop")]
    ProxyPort(SocketAddr),
    #[error("denied by policy: {0}")]
    Denied(String),
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
}

pub async fn handle(
    ctx: Arc<WorkerCtx>,
    mut stream: TcpStream,
    peer: SocketAddr,
    scope: Arc<Scope>,
) {
    if let Err(e) = serve(&ctx, &mut stream, peer, &scope).await {
        warn!(src.addr = %peer, pod = %scope.uid, error = %e, "plaintext inbound connection rejected");
    }
}

async fn serve(
    ctx: &WorkerCtx,
    stream: &mut TcpStream,
    peer: SocketAddr,
    scope: &Scope,
) -> Result<(), PlainError> {
    let proxy = &ctx.proxy;
    let local = stream.local_addr().map_err(PlainError::NoOrigDst)?;
    let dst = sockopt::original_dst(stream, local).map_err(PlainError::NoOrigDst)?;
    if [OUTBOUND_PORT, INBOUND_PLAIN_PORT, HBONE_PORT].contains(&dst.port()) {
        return Err(PlainError::ProxyPort(dst));
    }
    let dst_wl = proxy
        .find_or_wait(scope, |st| {
            st.workload_by_uid(&scope.uid)
                .filter(|w| w.addresses.contains(&dst.ip()))
                .cloned()
        })
        .await
        .ok_or_else(|| PlainError::NotThisPod(dst, scope.uid.clone()))?;
    let (mut guard, admitted) =
        admission::admit(proxy, &dst_wl, None, peer, peer, dst, None, "inbound_plain");
    admitted.map_err(|reason| PlainError::Denied(reason.to_string()))?;
    let mut app = match Box::pin(upstream::connect(proxy, scope, dst, Some(peer.ip()))).await {
        Ok(s) => s,
        Err(e) => {
            proxy
                .metrics
                .record_error(ErrorReason::UpstreamConnectFailed);
            guard.set_error(e.to_string());
            return Err(e.into());
        }
    };
    // Counted as they flow, so an error keeps the bytes moved before it.
    let copied =
        tokio::io::copy_bidirectional(&mut guard.counted(stream, Side::Client), &mut app).await;
    if let Err(e) = copied {
        guard.set_error(e.to_string());
    }
    Ok(())
}
