//! Outbound: connections the pod's application makes, captured on 15001.
//!
//! First `decide` computes a plain `Route`; then one `match` picks the I/O
//! path: a plain TCP passthrough, or an HBONE stream from the per-worker pool
//! (to the destination's node proxy or to its waypoint: the same I/O).

pub mod decide;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::{debug, warn};
use trellis_core::baggage;
use trellis_core::metrics::{ConnectionLabels, ErrorReason, Reporter, SecurityPolicy, Side};

use crate::context::{ProxyCtx, Scope, WorkerCtx};
use crate::settings::HboneEngine;
use crate::upstream;
use decide::Route;
use trellis_core::WorkloadIdentity;
use trellis_netns::sockopt;

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error(
        "no original destination for a captured connection: {0}; are the capture rules installed?"
    )]
    NoOrigDst(std::io::Error),
    #[error("source workload {0} is not in the config; enroll it or fix the config")]
    UnknownSource(String),
    #[error(transparent)]
    Decide(#[from] decide::DecideError),
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
    #[error("hbone tunnel to {tunnel}: {source}")]
    Hbone {
        tunnel: SocketAddr,
        #[source]
        source: hbone::HboneError,
    },
    #[error("connection loops back into the proxy ({0}); refusing it")]
    Loop(SocketAddr),
}

/// Asks the controller for what routing to `orig_dst` lacks: the
/// destination, then its waypoint (at most two lookups). A lookup that
/// times out or finds nothing leaves the decision to `decide` (passthrough
/// for an unknown address, an error for an unknown waypoint).
async fn fetch_missing(
    proxy: &ProxyCtx,
    on_demand: &trellis_core::source::OnDemand,
    orig_dst: SocketAddr,
) {
    for _ in 0..2 {
        let Some(ip) = decide::missing(&proxy.state.load(), orig_dst) else {
            return;
        };
        let name = trellis_api::xds::ip_alias(&proxy.settings.common.control.network, ip);
        debug!(%name, "destination not held; asking the controller");
        if !on_demand.fetch(name).await {
            return;
        }
        if decide::missing(&proxy.state.load(), orig_dst) == Some(ip) {
            // Answered, and the controller does not know it either.
            return;
        }
    }
}

/// Serves one captured outbound connection.
pub async fn handle(
    ctx: Arc<WorkerCtx>,
    stream: TcpStream,
    peer: SocketAddr,
    scope: Arc<Scope>,
    forward_target: Option<SocketAddr>,
) {
    if let Err(e) = proxy(&ctx, stream, peer, &scope, forward_target).await {
        warn!(src.addr = %peer, pod = %scope.uid, error = %e, "outbound connection failed");
    }
}

async fn proxy(
    ctx: &WorkerCtx,
    mut stream: TcpStream,
    peer: SocketAddr,
    scope: &Scope,
    forward_target: Option<SocketAddr>,
) -> Result<(), OutboundError> {
    let proxy = &ctx.proxy;
    let orig_dst = match forward_target {
        Some(t) => t,
        None => {
            let local = stream.local_addr().map_err(OutboundError::NoOrigDst)?;
            let dst = sockopt::original_dst(&stream, local).map_err(OutboundError::NoOrigDst)?;
            // Without a redirect, SO_ORIGINAL_DST reports the listener itself.
            if dst == local {
                return Err(OutboundError::Loop(dst));
            }
            dst
        }
    };
    // The source first: a config that brings a new pod may bring its
    // destination too, and then no lookup is needed.
    let src = proxy
        .find_or_wait(scope, |st| st.workload_by_uid(&scope.uid).cloned())
        .await
        .ok_or_else(|| OutboundError::UnknownSource(scope.uid.clone()))?;
    if let Some(on_demand) = &proxy.on_demand {
        fetch_missing(proxy, on_demand, orig_dst).await;
    }
    // Take what we need from the snapshot and let it go before any await.
    let (src_wl, route) = {
        let state = proxy.state.load();
        let source = decide::Source {
            workload: &src,
            ip: peer.ip(),
        };
        let route = decide::decide(&state, source, orig_dst, |eps| ctx.lb.pick(eps, |e| e.1));
        (src, route)
    };
    let route = match route {
        Ok(r) => r,
        Err(e) => {
            // Every decide error (unknown port, no endpoint, unknown
            // waypoint) leaves the connection without a usable upstream.
            proxy.metrics.record_error(ErrorReason::NoHealthyEndpoint);
            return Err(e.into());
        }
    };
    let security = match route {
        Route::Hbone { .. } => SecurityPolicy::MutualTls,
        Route::Passthrough { .. } => SecurityPolicy::Unknown,
    };
    let labels = ConnectionLabels::new(
        Reporter::Source,
        Some(&src_wl),
        Some(src_wl.identity()),
        route.workload().map(|w| w.as_ref()),
        route.workload().map(|w| w.identity()),
        route.service().map(|s| s.as_ref()),
        security,
    );
    let mut guard = proxy
        .metrics
        .connection_opened(labels, peer, route.target(), "outbound");
    let _active = ctx.lb.track(route.target());
    debug!(dst.addr = %orig_dst, route = ?RouteKind(&route), "routing");

    let result = match &route {
        Route::Passthrough { dst, .. } => {
            match Box::pin(upstream::connect(proxy, scope, *dst, None)).await {
                Ok(mut up) => tokio::io::copy_bidirectional(
                    &mut guard.counted(&mut stream, Side::Client),
                    &mut up,
                )
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
                Err(e) => {
                    proxy
                        .metrics
                        .record_error(ErrorReason::UpstreamConnectFailed);
                    guard.set_error(e.to_string());
                    return Err(e.into());
                }
            }
        }
        Route::Hbone {
            target,
            tunnel,
            expected,
            ..
        } => {
            let tunnel = *tunnel;
            let src_id = src_wl.identity();
            let tls = proxy.certs.client_config_ready(&src_id, expected).await?;
            // The request and pool key are made inside the boxed connect
            // futures, so they take no room in the relay's future.
            // What ztunnel sends: the client, the service it addressed, a
            // fresh trace context and the source workload's baggage (which
            // the destination labels its metrics with if it does not hold
            // the source). The 200's baggage is not read: an HBONE route
            // always names its destination workload, and the state wins.
            let request = || hbone::ConnectRequest {
                target: *target,
                forwarded_for: Some(peer),
                forwarded_host: route.service().map(|s| s.hostname.clone()),
                traceparent: Some(trellis_core::traceparent::generate()),
                extra_headers: baggage::headers(&src_wl),
            };
            let key = || hbone::PoolKey::new(src_id.clone(), vec![expected.clone()], tunnel);
            let dial = || async move {
                let tcp = upstream::connect(proxy, scope, tunnel, None)
                    .await
                    .map_err(|e| hbone::HboneError::Io(std::io::Error::other(e.to_string())))?;
                hbone::tls_connect(tcp, tls).await
            };
            // Boxed: connection setup (TLS handshake, pool wait) is large and
            // short-lived; inline it would bloat the future for the whole connection.
            let relayed = match proxy.settings.hbone_engine {
                HboneEngine::H2 => {
                    match Box::pin(async { ctx.pool.connect(&key(), &request(), dial).await }).await
                    {
                        Ok(h2) => Ok(hbone::copy_bidirectional(
                            &mut guard.counted(&mut stream, Side::Client),
                            h2,
                        )
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())),
                        Err(e) => Err(e),
                    }
                }
                HboneEngine::Lite => {
                    // The connection's task takes the socket; it is counted
                    // on its way there.
                    let sock = guard.counted_owned(stream, Side::Client);
                    let opened = Box::pin(async {
                        ctx.lite_pool.open(&key(), &request(), sock, dial).await
                    })
                    .await;
                    match opened {
                        Ok(t) => Ok(t.finish().await.map(drop).map_err(|e| e.to_string())),
                        Err(e) => Err(e),
                    }
                }
            };
            match relayed {
                Ok(r) => r,
                Err(source) => {
                    // The peer's certificate is valid but names another
                    // workload: a config or impersonation problem, not reachability.
                    let reason = match source {
                        hbone::HboneError::IdentityMismatch { .. } => ErrorReason::IdentityMismatch,
                        _ => ErrorReason::UpstreamConnectFailed,
                    };
                    proxy.metrics.record_error(reason);
                    guard.set_error(source.to_string());
                    return Err(OutboundError::Hbone { tunnel, source });
                }
            }
        }
    };
    // The bytes were counted as they flowed, whatever the outcome.
    if let Err(e) = result {
        guard.set_error(e);
    }
    Ok(())
}

/// Compact Debug for logs: the route without the full workload records.
struct RouteKind<'a>(&'a Route);

impl std::fmt::Debug for RouteKind<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Route::Passthrough { dst, .. } => write!(f, "passthrough({dst})"),
            Route::Hbone {
                target,
                tunnel,
                via_waypoint: false,
                ..
            } => write!(f, "hbone({target} via {tunnel})"),
            Route::Hbone {
                target,
                tunnel,
                via_waypoint: true,
                ..
            } => write!(f, "hbone({target} via waypoint {tunnel})"),
        }
    }
}
