//! Inbound HBONE (15008): terminate mTLS as the destination workload, verify
//! the caller's SPIFFE identity, apply L4 authorization per CONNECT stream,
//! and connect to the pod.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::StatusCode;
use tokio::net::TcpStream;
use tracing::{debug, info, warn, Instrument};
use trellis_api::config::Workload;
use trellis_core::accept::{self, AcceptError};
use trellis_core::metrics::{ErrorReason, Side};
use trellis_core::state::ProxyState;

use crate::context::{Scope, WorkerCtx};
use crate::{admission, upstream};
use trellis_core::WorkloadIdentity;

#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error(
        "no workload with address {0} is served here; check the config and the pod's enrollment"
    )]
    UnknownDestination(IpAddr),
    #[error(transparent)]
    Accept(#[from] AcceptError),
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
    #[error("hbone session with {peer}: {source}")]
    Session {
        peer: SocketAddr,
        #[source]
        source: hbone::HboneError,
    },
    #[error("cannot read from {peer}: {source}")]
    Io {
        peer: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub async fn handle(ctx: Arc<WorkerCtx>, stream: TcpStream, peer: SocketAddr, scope: Arc<Scope>) {
    let limits = ctx.proxy.limits.clone();
    if let Err(e) = serve(ctx, stream, peer, scope.clone()).await {
        // A flood of bad or idle connections must not write a line each.
        if let Some(suppressed) = limits.log_rejected.check() {
            warn!(src.addr = %peer, pod = %scope.uid, error = %e, suppressed, "hbone connection rejected");
        }
    }
}

async fn serve(
    ctx: Arc<WorkerCtx>,
    stream: TcpStream,
    peer: SocketAddr,
    scope: Arc<Scope>,
) -> Result<(), InboundError> {
    let proxy = ctx.proxy.clone();
    let local = stream
        .local_addr()
        .map_err(|source| InboundError::Io { peer, source })?;
    let dst_wl = proxy
        .find_or_wait(&scope, |st| local_workload(st, &scope, local.ip()))
        .await
        .ok_or(InboundError::UnknownDestination(local.ip()))?;

    let dst_id = dst_wl.identity();
    let tls_cfg = proxy.certs.server_config_ready(&dst_id).await?;
    let (tls, src_id) =
        accept::accept(stream, peer, tls_cfg, &proxy.metrics, &proxy.limits).await?;
    info!(src.addr = %peer, src.identity = %src_id, dst.identity = %dst_id, "hbone connection established");

    let drain = proxy.drain.clone();
    let on_request = {
        let ctx = ctx.clone();
        let scope = scope.clone();
        let src_id = src_id.clone();
        move |req: hbone::IncomingRequest| {
            // Each stream opens a socket to the pod: it counts as a connection.
            let Some(permit) = ctx.proxy.limits.try_connection() else {
                if let Some(suppressed) = ctx.proxy.limits.log_refused.check() {
                    warn!(src.identity = %src_id, max_connections = ctx.proxy.limits.limits().max_connections, suppressed, "connection limit reached; refusing hbone streams with 503");
                }
                req.reject(StatusCode::SERVICE_UNAVAILABLE);
                return;
            };
            // Debug level: see the `conn` span in worker.rs.
            let span = tracing::debug_span!("stream", src.identity = %src_id);
            let guard = ctx.proxy.drain.track();
            tokio::spawn(
                stream_task(
                    ctx.clone(),
                    scope.clone(),
                    dst_wl.clone(),
                    src_id.clone(),
                    peer,
                    req,
                    (guard, permit),
                )
                .instrument(span),
            );
        }
    };
    hbone::serve_with_shutdown(
        tls,
        &proxy.h2,
        on_request,
        async move { drain.signaled().await },
    )
    .await
    .map_err(|source| InboundError::Session { peer, source })
}

fn local_workload(state: &ProxyState, scope: &Scope, ip: IpAddr) -> Option<Arc<Workload>> {
    // A listener serves its own pod (or dedicated workload) only.
    state
        .workload_by_ip(ip)
        .filter(|w| w.uid == scope.uid)
        .cloned()
}

async fn stream_task(
    ctx: Arc<WorkerCtx>,
    scope: Arc<Scope>,
    dst_wl: Arc<Workload>,
    src_id: hbone::Identity,
    peer: SocketAddr,
    mut req: hbone::IncomingRequest,
    _held: (
        trellis_core::drain::DrainGuard,
        trellis_core::limits::ConnPermit,
    ),
) {
    let proxy = &ctx.proxy;
    let creq = match &req.parsed {
        Ok(r) => r.clone(),
        Err(e) => {
            proxy.metrics.record_error(ErrorReason::MalformedConnect);
            warn!(src.addr = %peer, src.identity = %src_id, error = %e, "malformed connect request");
            let status = e.status();
            req.reject(status);
            return;
        }
    };
    let target = creq.target;
    // Policy and labels follow the config current for this stream, not the
    // one the (pooled, long-lived) connection was accepted under.
    let Some(dst_wl) = local_workload(&ctx.proxy.state.load(), &scope, target.ip()) else {
        proxy.metrics.record_error(ErrorReason::MalformedConnect);
        warn!(src.identity = %src_id, dst.addr = %target, workload = %dst_wl.uid, "connect target is not the workload this tunnel reached");
        req.reject(StatusCode::BAD_REQUEST);
        return;
    };
    let client_addr = creq.forwarded_for.unwrap_or(peer);
    let (mut guard, admitted) = admission::admit(
        proxy,
        &dst_wl,
        Some(&src_id),
        client_addr,
        peer,
        target,
        Some(&creq.extra_headers),
        "inbound",
    );
    if admitted.is_err() {
        req.reject(StatusCode::UNAUTHORIZED);
        return;
    }
    // The serve loop drops streams reset before they were handed out; one
    // reset read since then still saves a connect to the pod (and the
    // TIME_WAIT it leaves behind) for a stream nobody waits for.
    if req.reset_by_peer() {
        guard.set_error("the peer reset the stream before it was answered");
        return;
    }
    let mut app = match Box::pin(upstream::connect(
        proxy,
        &scope,
        target,
        Some(client_addr.ip()),
    ))
    .await
    {
        Ok(s) => s,
        Err(e) => {
            proxy
                .metrics
                .record_error(ErrorReason::UpstreamConnectFailed);
            warn!(src.identity = %src_id, dst.addr = %target, error = %e, "cannot reach the destination pod");
            guard.set_error(e.to_string());
            req.reject(StatusCode::SERVICE_UNAVAILABLE);
            return;
        }
    };
    // As ztunnel: the 200 carries this workload's baggage, so a source
    // proxy that does not hold it can still label its metrics.
    let stream = match req.accept_with_headers(trellis_core::baggage::headers(&dst_wl)) {
        Ok(s) => s,
        Err(e) => {
            guard.set_error(e.to_string());
            return;
        }
    };
    // Counted on the app's end as they flow (what it reads goes back to
    // the client), so an error keeps the bytes moved before it.
    let copied =
        hbone::copy_bidirectional(&mut guard.counted(&mut app, Side::Upstream), stream).await;
    if let Err(e) = copied {
        debug!(error = %e, "hbone stream ended with an error");
        guard.set_error(e.to_string());
    }
}
