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
use trellis_core::metrics::{ConnectionGuard, CountedOwned, ErrorReason, Side};
use trellis_core::state::ProxyState;

use crate::context::{Scope, WorkerCtx};
use crate::settings::HboneEngine;
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

    let drain = async move { proxy.drain.signaled().await };
    let result = match ctx.proxy.settings.hbone_engine {
        HboneEngine::H2 => {
            let on_request =
                on_request::<hbone::IncomingRequest>(&ctx, &scope, &src_id, dst_wl, peer);
            hbone::serve_with_shutdown(tls, &ctx.proxy.h2, on_request, drain).await
        }
        HboneEngine::Lite => {
            let on_request = on_request::<LiteRequest>(&ctx, &scope, &src_id, dst_wl, peer);
            hbone::lite::serve(tls, &ctx.proxy.h2, on_request, drain).await
        }
    };
    result.map_err(|source| InboundError::Session { peer, source })
}

/// What `--hbone-engine lite` hands over per stream.
type LiteRequest = hbone::lite::Request<CountedOwned<TcpStream>>;

/// The per-stream callback of the connection's serve loop: admission to
/// the connection limit, then the stream's own task.
fn on_request<R: Incoming>(
    ctx: &Arc<WorkerCtx>,
    scope: &Arc<Scope>,
    src_id: &hbone::Identity,
    dst_wl: Arc<Workload>,
    peer: SocketAddr,
) -> impl FnMut(R) + Send + 'static {
    let (ctx, scope, src_id) = (ctx.clone(), scope.clone(), src_id.clone());
    move |req: R| {
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
}

/// A CONNECT stream as an engine hands it over.
trait Incoming: Send + 'static {
    fn parsed(&self) -> &Result<hbone::ConnectRequest, hbone::RequestError>;
    fn reject(self, status: StatusCode);
    /// Whether the peer already reset the stream (never waits).
    fn reset_by_peer(&mut self) -> bool;
    /// Answers 200 with `headers` and relays with `app` until both sides
    /// end, counting the bytes into `guard` as they flow.
    fn relay(
        self,
        app: TcpStream,
        guard: &mut ConnectionGuard,
        headers: http::HeaderMap,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

impl Incoming for hbone::IncomingRequest {
    fn parsed(&self) -> &Result<hbone::ConnectRequest, hbone::RequestError> {
        &self.parsed
    }

    fn reject(self, status: StatusCode) {
        hbone::IncomingRequest::reject(self, status)
    }

    fn reset_by_peer(&mut self) -> bool {
        hbone::IncomingRequest::reset_by_peer(self)
    }

    async fn relay(
        self,
        mut app: TcpStream,
        guard: &mut ConnectionGuard,
        headers: http::HeaderMap,
    ) -> Result<(), String> {
        let stream = self
            .accept_with_headers(headers)
            .map_err(|e| e.to_string())?;
        // Counted on the app's end as they flow (what it reads goes back to
        // the client), so an error keeps the bytes moved before it.
        hbone::copy_bidirectional(&mut guard.counted(&mut app, Side::Upstream), stream)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

impl Incoming for LiteRequest {
    fn parsed(&self) -> &Result<hbone::ConnectRequest, hbone::RequestError> {
        &self.parsed
    }

    fn reject(self, status: StatusCode) {
        hbone::lite::Request::reject(self, status)
    }

    fn reset_by_peer(&mut self) -> bool {
        hbone::lite::Request::reset_by_peer(self)
    }

    async fn relay(
        self,
        app: TcpStream,
        guard: &mut ConnectionGuard,
        headers: http::HeaderMap,
    ) -> Result<(), String> {
        let app = guard.counted_owned(app, Side::Upstream);
        self.accept(app, headers)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

fn local_workload(state: &ProxyState, scope: &Scope, ip: IpAddr) -> Option<Arc<Workload>> {
    // A listener serves its own pod (or dedicated workload) only.
    state
        .workload_by_ip(ip)
        .filter(|w| w.uid == scope.uid)
        .cloned()
}

async fn stream_task<R: Incoming>(
    ctx: Arc<WorkerCtx>,
    scope: Arc<Scope>,
    dst_wl: Arc<Workload>,
    src_id: hbone::Identity,
    peer: SocketAddr,
    mut req: R,
    _held: (
        trellis_core::drain::DrainGuard,
        trellis_core::limits::ConnPermit,
    ),
) {
    let proxy = &ctx.proxy;
    let creq = match req.parsed() {
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
    // Not held while the tunnel lasts (hours, for some): the request's
    // copy and its headers.
    drop(creq);
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
    let app = match Box::pin(upstream::connect(
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
    let headers = trellis_core::baggage::headers(&dst_wl);
    if let Err(e) = req.relay(app, &mut guard, headers).await {
        debug!(error = %e, "hbone stream ended with an error");
        guard.set_error(e);
    }
}
