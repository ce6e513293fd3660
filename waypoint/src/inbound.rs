//! The waypoint's HBONE listener: terminate mTLS as the waypoint, learn the
//! caller's identity, and for each CONNECT stream sniff the protocol: HTTP/1.1
//! and HTTP/2 go to the L7 path (`proxy`), anything else is relayed as TCP
//! with L4 policy only.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hbone::{H2Stream, Identity};
use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn, Instrument};
use trellis_core::accept::{self, AcceptError};
use trellis_core::metrics::{ConnectionLabels, ErrorReason, Reporter, SecurityPolicy, Side};

use crate::authz::AuthzDecision;
use crate::proxy::{App, ConnCtx};
use crate::sniff::{self, Sniffed};
use crate::upstream::Endpoint;
use trellis_core::WorkloadIdentity;

#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error(transparent)]
    Accept(#[from] AcceptError),
    #[error(transparent)]
    Certs(#[from] trellis_core::certs::CertError),
    #[error("hbone session with {peer}: {source}")]
    Session {
        peer: SocketAddr,
        #[source]
        source: hbone::HboneError,
    },
}

/// Accepts connections until the drain starts.
pub async fn run(app: Arc<App>, listener: TcpListener) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = app.drain.signaled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    if let Some(suppressed) = app.limits.log_accept_failed.check() {
                        warn!(error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Past the limit: accept-and-close (see trellis_core::limits for why).
        let Some(permit) = app.limits.try_connection() else {
            let _ = stream.set_zero_linger();
            drop(stream);
            if let Some(suppressed) = app.limits.log_refused.check() {
                warn!(src.addr = %peer, max_connections = app.limits.limits().max_connections, suppressed, "connection limit reached; closing new connections (see trellis_connections_refused_total)");
            }
            continue;
        };
        // Held from the accept: a connection still in its TLS handshake has
        // no stream yet, and a drain that counted only streams could end
        // (and the process exit) under it, resetting a client that was
        // sent here before the drain began.
        let guard = app.drain.track();
        let app = app.clone();
        // Debug level on purpose: an enabled span is entered and exited on
        // every poll of the task (per request here), a measurable cost; the
        // events below carry their own context fields instead.
        let span = tracing::debug_span!("hbone", %peer);
        tokio::spawn(
            async move {
                let _guard = guard;
                let _permit = permit;
                let limits = app.limits.clone();
                if let Err(e) = serve(app, stream, peer).await {
                    if let Some(suppressed) = limits.log_rejected.check() {
                        warn!(src.addr = %peer, error = %e, suppressed, "hbone connection rejected");
                    }
                }
            }
            .instrument(span),
        );
    }
}

async fn serve(app: Arc<App>, stream: TcpStream, peer: SocketAddr) -> Result<(), InboundError> {
    let cfg = app.certs.server_config_ready(&app.identity).await?;
    let (tls, src_id) = accept::accept(stream, peer, cfg, &app.metrics.core, &app.limits).await?;
    info!(src.addr = %peer, src.identity = %src_id, "hbone connection established");
    let drain = app.drain.clone();
    let h2 = hbone::H2Settings::default();
    let on_request = {
        let app = app.clone();
        move |req: hbone::IncomingRequest| {
            let guard = app.drain.track();
            let span = tracing::debug_span!("stream", src.identity = %src_id);
            tokio::spawn(
                stream_task(app.clone(), src_id.clone(), peer, req, guard).instrument(span),
            );
        }
    };
    hbone::serve_with_shutdown(tls, &h2, on_request, async move { drain.signaled().await })
        .await
        .map_err(|source| InboundError::Session { peer, source })
}

async fn stream_task(
    app: Arc<App>,
    src_id: Identity,
    peer: SocketAddr,
    req: hbone::IncomingRequest,
    _drain: trellis_core::drain::DrainGuard,
) {
    let creq = match &req.parsed {
        Ok(r) => r.clone(),
        Err(e) => {
            app.metrics.core.record_error(ErrorReason::MalformedConnect);
            warn!(src.identity = %src_id, error = %e, "malformed connect request");
            let status = e.status();
            req.reject(status);
            return;
        }
    };
    let target = creq.target;
    let compiled = app.snapshot.load();
    let state = &compiled.state;
    let service = state.service_by_vip(target.ip()).cloned();
    let dst_wl = state.workload_by_ip(target.ip()).cloned();
    if service.is_none() && dst_wl.is_none() {
        warn!(src.identity = %src_id, dst.addr = %target, "connect target is neither a service nor a workload in the config");
        req.reject(StatusCode::NOT_FOUND);
        return;
    }
    let src_wl = creq
        .forwarded_for
        .and_then(|a| state.workload_by_ip(a.ip()).cloned());
    let labels = Arc::new(ConnectionLabels::new(
        Reporter::Waypoint,
        src_wl.as_deref(),
        Some(src_id.clone()),
        dst_wl.as_deref(),
        dst_wl.as_ref().map(|w| w.identity()),
        service.as_deref(),
        SecurityPolicy::MutualTls,
    ));
    let mut stream = match req.accept() {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "could not accept the stream");
            return;
        }
    };
    let (kind, prefix) = match sniff::peek(&mut stream, app.settings.sniff_timeout).await {
        Ok(x) => x,
        Err(e) => {
            debug!(error = %e, "no protocol could be sniffed (stream ended or stalled mid-request)");
            return;
        }
    };
    let ctx = Arc::new(ConnCtx::new(
        app.clone(),
        Some(src_id),
        creq.forwarded_for.or(Some(peer)),
        target,
        labels,
    ));
    let io = Rewind::new(prefix, stream);
    match kind {
        Sniffed::Http1 | Sniffed::Http2 => serve_http(ctx, io).await,
        Sniffed::Tcp | Sniffed::NeedMore => relay_tcp(ctx, io).await,
    }
}

async fn serve_http(ctx: Arc<ConnCtx>, io: Rewind) {
    let s = &ctx.app.settings;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .max_buf_size(s.max_header_bytes.max(8192))
        .header_read_timeout(Duration::from_secs(30))
        .timer(hyper_util::rt::TokioTimer::new());
    b.http2()
        .max_concurrent_streams(s.max_concurrent_streams)
        .max_header_list_size(s.max_header_bytes as u32)
        // Bounds the work a client can cause with RST_STREAM floods
        // ("rapid reset") and with streams we had to reset.
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(1024)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .timer(hyper_util::rt::TokioTimer::new());
    // Boxed: a request's future is several KiB, and hyper moves it a few
    // times on its way into a task per HTTP/2 stream (and into its HTTP/1
    // in-flight slot); one allocation is cheaper than copying it.
    let svc = {
        let ctx = ctx.clone();
        service_fn(move |req| Box::pin(crate::proxy::handle(ctx.clone(), req)))
    };
    let conn = b.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let drain = ctx.app.drain.clone();
    // Biased and quiet: the drain signal is not re-polled on each of the
    // connection's wake-ups (see hbone::quiet).
    tokio::select! {
        biased;
        r = conn.as_mut() => if let Err(e) = r {
            debug!(error = %e, "http connection ended with an error");
        },
        _ = hbone::quiet(drain.signaled()) => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                debug!(error = %e, "http connection ended with an error while draining");
            }
        }
    }
}

/// Not HTTP: L4 policy only (HTTP conditions cannot match), then a byte relay
/// to one endpoint of the service, or to the workload dialled.
async fn relay_tcp(ctx: Arc<ConnCtx>, mut io: Rewind) {
    let app = &ctx.app;
    let compiled = app.snapshot.load();
    let state = &compiled.state;
    let service = state.service_by_vip(ctx.target.ip()).cloned();
    let (ns, name) = match &service {
        Some(s) => (s.namespace.clone(), s.name.clone()),
        None => match state.workload_by_ip(ctx.target.ip()) {
            Some(w) => (w.namespace.clone(), String::new()),
            None => return,
        },
    };
    let areq = ctx.tcp_authz();
    if let AuthzDecision::Deny { policy } = compiled.authz.evaluate_tcp(&ns, &name, &areq) {
        info!(src.principal = ctx.principal.as_deref().unwrap_or("-"), dst.addr = %ctx.target, %policy, "tcp stream denied");
        app.metrics.core.record_error(ErrorReason::PolicyDenied);
        return;
    }
    let ep = match &service {
        Some(svc) => {
            let eps = state.endpoints(svc, ctx.target.port());
            if eps.is_empty() {
                warn!(src.principal = ctx.principal.as_deref().unwrap_or("-"), service = %svc.hostname, "no healthy endpoint for tcp stream");
                return;
            }
            let (workload, addr) = eps[fastrand::usize(..eps.len())].clone();
            Endpoint { addr, workload }
        }
        None => match state.workload_by_ip(ctx.target.ip()) {
            Some(w) => Endpoint {
                addr: ctx.target,
                workload: w.clone(),
            },
            None => return,
        },
    };
    let mut guard = app.metrics.core.connection_opened(
        (*ctx.labels).clone(),
        ctx.source_addr.unwrap_or(ctx.target),
        ep.addr,
        "waypoint",
    );
    let mut up = match app.upstream.connect(&ep, ctx.source_addr).await {
        Ok(u) => u,
        Err(e) => {
            warn!(src.principal = ctx.principal.as_deref().unwrap_or("-"), endpoint = %ep.addr, error = %e, "cannot reach endpoint for tcp stream");
            guard.set_error(e.to_string());
            return;
        }
    };
    // Counted on the tunnel's (client's) end as they flow, so an error
    // keeps the bytes moved before it.
    let copied =
        tokio::io::copy_bidirectional(&mut guard.counted(&mut io, Side::Client), &mut up).await;
    if let Err(e) = copied {
        debug!(error = %e, "tcp relay ended with an error");
        guard.set_error(e.to_string());
    }
}

/// The tunnel stream with the sniffed bytes put back in front.
pub struct Rewind {
    prefix: Bytes,
    inner: H2Stream,
}

impl Rewind {
    pub fn new(prefix: Bytes, inner: H2Stream) -> Rewind {
        Rewind { prefix, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    // Forwarded so hyper's codecs hand over a frame (HTTP/2) or a head and
    // body (HTTP/1.1) in one write, which the tunnel sends as one DATA frame.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
