//! Thread-per-core workers.
//!
//! Each worker is an OS thread pinned to one allowed CPU, running its own
//! current-thread tokio runtime with its own SO_REUSEPORT listeners, HBONE
//! pool and balancer counts. Nothing on the data path is shared between
//! workers except read-only state snapshots and metric counters.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::context::{ListenerKind, ProxyCtx, Scope, WorkerCtx};
use crate::{inbound, inbound_plain, outbound};

/// A listener handed to one worker.
pub struct ListenSpec {
    pub listener: std::net::TcpListener,
    pub kind: ListenerKind,
    pub scope: Arc<Scope>,
    /// Cancelled when the pod is removed; ends the accept loop and the pod's connections.
    pub cancel: CancellationToken,
}

/// The admin thread's handle on one worker.
pub struct WorkerHandle {
    pub index: usize,
    tx: mpsc::UnboundedSender<ListenSpec>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Hands a listener to the worker. Fails only if the worker has exited.
    pub fn listen(&self, spec: ListenSpec) -> io::Result<()> {
        self.tx
            .send(spec)
            .map_err(|_| io::Error::other(format!("worker {} has exited", self.index)))
    }

    /// Waits for the worker thread to end (after drain).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub use trellis_netns::cpu::{allowed_cpus, pin_current_thread};

/// Starts `count` workers, worker i pinned to the i-th allowed CPU (wrapping).
pub fn spawn_workers(proxy: Arc<ProxyCtx>, count: usize) -> io::Result<Vec<WorkerHandle>> {
    let cpus = allowed_cpus();
    (0..count)
        .map(|index| {
            let (tx, rx) = mpsc::unbounded_channel();
            let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
            let proxy = proxy.clone();
            let thread = std::thread::Builder::new()
                .name(format!("trellis-worker-{index}"))
                .spawn(move || run_worker(proxy, index, cpu, rx))?;
            Ok(WorkerHandle {
                index,
                tx,
                thread: Some(thread),
            })
        })
        .collect()
}

fn run_worker(
    proxy: Arc<ProxyCtx>,
    index: usize,
    cpu: Option<usize>,
    mut rx: mpsc::UnboundedReceiver<ListenSpec>,
) {
    if let Some(cpu) = cpu {
        if let Err(e) = pin_current_thread(cpu) {
            warn!(worker = index, cpu, error = %e, "could not pin worker to its cpu; running unpinned");
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = index, error = %e, "could not start worker runtime");
            return;
        }
    };
    let ctx = Arc::new(WorkerCtx::new(proxy.clone(), index));
    rt.block_on(async move {
        debug!(worker = index, ?cpu, "worker started");
        let drain = proxy.drain.clone();
        loop {
            tokio::select! {
                spec = rx.recv() => match spec {
                    Some(spec) => start_accepting(ctx.clone(), spec),
                    None => break,
                },
                _ = drain.signaled() => break,
            }
        }
        // Draining: accept loops have stopped, but this worker's connections
        // keep running on this runtime until the admin thread ends the drain
        // (all connections done, or the hard deadline).
        proxy.shutdown.cancelled().await;
    });
    debug!(worker = index, "worker stopped");
}

fn start_accepting(ctx: Arc<WorkerCtx>, spec: ListenSpec) {
    let listener = match spec
        .listener
        .set_nonblocking(true)
        .and_then(|_| TcpListener::from_std(spec.listener))
    {
        Ok(l) => l,
        Err(e) => {
            warn!(kind = ?spec.kind, pod = %spec.scope.uid, error = %e, "could not register listener");
            return;
        }
    };
    tokio::spawn(accept_loop(
        ctx,
        listener,
        spec.kind,
        spec.scope,
        spec.cancel,
    ));
}

async fn accept_loop(
    ctx: Arc<WorkerCtx>,
    listener: TcpListener,
    kind: ListenerKind,
    scope: Arc<Scope>,
    cancel: CancellationToken,
) {
    let drain = ctx.proxy.drain.clone();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = drain.signaled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(permit) = ctx.proxy.limits.try_connection() else {
                    refuse(&ctx.proxy.limits, stream, peer, kind, &scope);
                    continue;
                };
                let ctx = ctx.clone();
                let scope = scope.clone();
                let cancel = cancel.clone();
                let guard = ctx.proxy.drain.track();
                // Debug level on purpose: an enabled span is entered and
                // exited on every poll of the connection task, which cost
                // ~4.8 us per proxied round trip (perf/results/analysis.md).
                // Events that matter at info and above carry their own
                // context fields instead.
                let span = tracing::debug_span!("conn", kind = kind.name(), pod = %scope.uid, src.addr = %peer);
                tokio::spawn(
                    async move {
                        let _guard = guard;
                        let _permit = permit;
                        // Pod removal ends the pod's connections too: its netns is going away.
                        // Biased and quiet: the token is not re-polled (a
                        // lock in `Notify`) on every wake-up of the data path.
                        tokio::select! {
                            biased;
                            _ = serve(ctx, stream, peer, kind, scope) => {}
                            _ = hbone::quiet(cancel.cancelled()) => debug!("pod removed; closing connection"),
                        }
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                // Out of file descriptors or similar: back off briefly instead of spinning.
                if let Some(suppressed) = ctx.proxy.limits.log_accept_failed.check() {
                    warn!(kind = kind.name(), pod = %scope.uid, error = %e, suppressed, "accept failed");
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    info!(kind = kind.name(), pod = %scope.uid, "listener closed");
}

/// Closes a connection accepted past the connection limit (see
/// `trellis_core::limits` for why accept-and-close): a zero linger sends
/// RST and leaves no TIME_WAIT entry behind, so a flood costs nothing after.
fn refuse(
    limits: &trellis_core::limits::ConnLimits,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    kind: ListenerKind,
    scope: &Scope,
) {
    let _ = stream.set_zero_linger();
    drop(stream);
    if let Some(suppressed) = limits.log_refused.check() {
        warn!(
            kind = kind.name(),
            pod = %scope.uid,
            src.addr = %peer,
            max_connections = limits.limits().max_connections,
            suppressed,
            "connection limit reached; closing new connections (see trellis_connections_refused_total)"
        );
    }
}

async fn serve(
    ctx: Arc<WorkerCtx>,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    kind: ListenerKind,
    scope: Arc<Scope>,
) {
    match kind {
        ListenerKind::Outbound => outbound::handle(ctx, stream, peer, scope, None).await,
        ListenerKind::OutboundForward(target) => {
            outbound::handle(ctx, stream, peer, scope, Some(target)).await
        }
        // Boxed: the HBONE session future (TLS + h2 server) is ~9 KB and would
        // otherwise size every outbound connection task too.
        ListenerKind::Hbone => Box::pin(inbound::handle(ctx, stream, peer, scope)).await,
        ListenerKind::InboundPlain => inbound_plain::handle(ctx, stream, peer, scope).await,
    }
}
