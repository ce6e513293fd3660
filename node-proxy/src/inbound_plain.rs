//! Inbound plaintext (15006): connections from clients outside the mesh,
//! redirected by the pod's capture rules. Policy applies with no identity,
//! so policies that need a principal deny.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::{info, warn};
use trellis_core::authz::{self, ConnContext, Decision};
use trellis_core::metrics::{ConnectionLabels, ErrorReason, Reporter, SecurityPolicy};

use crate::context::{Scope, WorkerCtx};
use crate::settings::{HBONE_PORT, INBOUND_PLAIN_PORT, OUTBOUND_PORT};
use crate::{sockopt, upstream};

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
        warn!(error = %e, "plaintext inbound connection rejected");
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
    let (dst_wl, src_wl, decision, service) = {
        let state = proxy.state.load();
        let wl = state
            .workload_by_uid(&scope.uid)
            .filter(|w| w.addresses.contains(&dst.ip()))
            .cloned()
            .ok_or_else(|| PlainError::NotThisPod(dst, scope.uid.clone()))?;
        let decision = authz::evaluate(
            state.policies_for(&wl),
            &ConnContext {
                src_identity: None,
                src_ip: peer.ip(),
                dst_ip: dst.ip(),
                dst_port: dst.port(),
            },
        );
        let src = state.workload_by_ip(peer.ip()).cloned();
        let service = state.service_for_workload_port(&wl, dst.port());
        (wl, src, decision, service)
    };
    let labels = ConnectionLabels::new(
        Reporter::Destination,
        src_wl.as_deref(),
        None,
        Some(&dst_wl),
        Some(dst_wl.identity()),
        service.as_deref(),
        SecurityPolicy::Unknown,
    );
    let mut guard = proxy
        .metrics
        .connection_opened(labels, peer, dst, "inbound_plain");
    if let Decision::Deny(reason) = decision {
        proxy.metrics.record_error(ErrorReason::PolicyDenied);
        info!(dst.addr = %dst, %reason, "plaintext connection denied by policy");
        guard.set_error(format!("denied: {reason}"));
        return Err(PlainError::Denied(reason.to_string()));
    }
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
    match tokio::io::copy_bidirectional_with_sizes(stream, &mut app, 64 << 10, 64 << 10).await {
        Ok((from_client, to_client)) => guard.set_bytes(to_client, from_client),
        Err(e) => guard.set_error(e.to_string()),
    }
    Ok(())
}
