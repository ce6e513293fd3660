//! Builds and runs a waypoint: thread-per-core data-path workers and the
//! admin thread (admin API, metrics, readiness, config source, snapshot
//! compiler, drain).
//!
//! Each worker is an OS thread with its own current-thread runtime, its own
//! SO_REUSEPORT HBONE listener and its own upstream pools. Rate limiters,
//! breakers, ejections and metrics are shared through `Arc`s and atomics.
//! Why not one multi-threaded runtime: there, a task woken by another runs
//! next (tokio's LIFO slot), so every response woke the HBONE connection task
//! and cost its own TLS record and `writev`. On a current-thread runtime the
//! connection task runs after the other ready tasks and flushes their frames
//! together; on one core that was 25-40% more requests per CPU-second.
//! Workers are not pinned: several waypoints may share a node, and pinning
//! each to the first CPUs would stack them on the same cores.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use trellis_core::admin::{
    bind_std, serve_until_drained, write_bound_addrs, BindError, DrainDeadlines, Running,
};
use trellis_core::drain::{self, DrainOutcome};
use trellis_core::logging::LogControl;
use trellis_core::source::{self, SourceError, SourceSpec};
use trellis_core::startup::{self, CertSource, LoadError};

use crate::admin::{self, AdminCtx, Server};
use crate::handover::{self, session::HandoverError, session::Msg};
use crate::metrics::WaypointMetrics;
use crate::proxy::App;
use crate::settings::Settings;
use crate::state::{Runtimes, Snapshot};
use crate::upstream::Upstream;
use trellis_core::listen::bind_reuseport;
use trellis_netns::handover as frame;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid settings:\n  {}", .0.join("\n  "))]
    Settings(Vec<String>),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot start threads: {0}")]
    Thread(std::io::Error),
    #[error("taking over from the running waypoint failed, and it serves on: {0}")]
    Takeover(#[from] HandoverError),
    #[error("cannot use a listener handed over: {0}")]
    HandedListener(std::io::Error),
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BoundAddrs {
    pub hbone: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub readiness: Option<SocketAddr>,
}

/// A running waypoint.
pub struct WaypointHandle {
    pub addrs: BoundAddrs,
    running: Running,
    _gate: tokio::sync::watch::Sender<Gate>,
}

impl WaypointHandle {
    /// Starts a graceful drain (as SIGTERM does).
    pub fn stop(&self) {
        self.running.stop();
    }

    /// Waits until the waypoint has drained and stopped.
    pub fn wait(self) -> DrainOutcome {
        self.running.wait()
    }
}

pub fn start(settings: Settings, log: Option<LogControl>) -> Result<WaypointHandle, StartError> {
    settings.validate().map_err(StartError::Settings)?;
    let identity = settings
        .identity()
        .map_err(|e| StartError::Settings(vec![e]))?;
    let (namespace, name) = {
        let (ns, n) = settings
            .namespace_name()
            .map_err(|e| StartError::Settings(vec![e]))?;
        (ns.to_string(), n.to_string())
    };
    let spec = settings
        .common
        .source(&XDS_TYPES, &format!("trellis~waypoint~{namespace}/{name}"))?;
    let store = Arc::new(source::initial_store(&spec)?);
    if !store
        .snapshot()
        .config()
        .waypoints
        .iter()
        .any(|w| w.namespace == namespace && w.name == name)
    {
        info!(waypoint = %settings.name, "no `waypoints` entry for this waypoint; no total rate limit");
    }
    let cert_source = settings.common.cert_source()?;
    let dev_ca = matches!(cert_source, CertSource::DevCa(_));
    let metrics = WaypointMetrics::new(settings.access_log);
    let certs = Arc::new(startup::cert_manager(
        cert_source,
        false,
        None,
        metrics.core.registry(),
    )?);
    let (trigger, watcher) = drain::new();
    let limits = settings.common.conn_limits(metrics.core.registry());
    let snapshot = Arc::new(Snapshot::new(&store, &namespace, &name));

    // Taking over: the running waypoint's sockets, one worker per HBONE
    // socket it had. Else our own.
    let (takeover, hbone_ls, [admin_l, metrics_l, ready_l]) = match &settings.takeover {
        Some(path) => {
            let (t, (hbone, admin)) = take(path)?;
            (Some(t), hbone, admin)
        }
        None => {
            let workers = if settings.workers == 0 {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            } else {
                settings.workers
            };
            (
                None,
                bind_reuseport("hbone", settings.listen, workers)?,
                [
                    bind_std("admin api", settings.common.admin_addr)?,
                    bind_std("metrics", settings.common.metrics_addr)?,
                    bind_std("readiness", settings.common.readiness_addr)?,
                ],
            )
        }
    };
    let workers = hbone_ls.len();
    // Dups of every listener, for a later hand-over of ours.
    let giver = match &settings.handover_socket {
        Some(_) => Some(handover::Giver {
            hbone: hbone_ls.iter().map(dup).collect::<Result<_, _>>()?,
            admin: [dup(&admin_l)?, dup(&metrics_l)?, dup(&ready_l)?],
            draining: watcher.clone(),
        }),
        None => None,
    };
    // Workers accept, and a hand-over of ours is offered, once the gate
    // says so: at once, or after a take-over has its config and certificate.
    let (gate, gate_rx) = tokio::sync::watch::channel(if takeover.is_some() {
        Gate::Wait
    } else {
        Gate::HandedOver
    });
    let addrs = BoundAddrs {
        hbone: hbone_ls.first().and_then(|l| l.local_addr().ok()),
        admin: admin_l.local_addr().ok(),
        metrics: metrics_l.local_addr().ok(),
        readiness: ready_l.local_addr().ok(),
    };
    let runtimes = Arc::new(Runtimes::default());
    // One App per worker (its own upstream pools) plus one for the admin
    // thread; everything else in it is shared.
    let new_app = || {
        Arc::new(App {
            upstream: Upstream::new(identity.clone(), certs.clone()),
            identity: identity.clone(),
            store: store.clone(),
            snapshot: snapshot.clone(),
            runtimes: runtimes.clone(),
            metrics: metrics.clone(),
            certs: certs.clone(),
            drain: watcher.clone(),
            limits: limits.clone(),
            settings: settings.clone(),
        })
    };
    let app = new_app();
    // Issue the certificate now, so a CA problem shows at start, not on the
    // first connection. A remote CA answers in its own time: ask now, and
    // the client retries (and logs) until it does.
    app.certs.prefetch(std::slice::from_ref(&app.identity));
    if dev_ca {
        if let Err(e) = app.certs.server_config(&app.identity) {
            return Err(StartError::Settings(vec![e.to_string()]));
        }
    }
    let data = hbone_ls
        .into_iter()
        .enumerate()
        .map(|(index, listener)| {
            let app = new_app();
            let gate = gate_rx.clone();
            std::thread::Builder::new()
                .name(format!("trellis-wp-worker-{index}"))
                .spawn(move || run_worker(app, index, listener, gate))
                .map_err(StartError::Thread)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = &app.settings.common.bound_addrs_file {
        write_bound_addrs(path, &addrs);
    }
    let stop = CancellationToken::new();
    let ctx = Arc::new(AdminCtx {
        app: app.clone(),
        log,
        stop: stop.clone(),
    });
    let thread = std::thread::Builder::new()
        .name("trellis-wp-admin".into())
        .spawn({
            let stop = stop.clone();
            let offer = giver.map(|g| (g, gate_rx));
            move || {
                let listeners = [admin_l, metrics_l, ready_l];
                let outcome = run_admin(ctx, spec, trigger, stop, listeners, offer);
                for worker in data {
                    let _ = worker.join();
                }
                outcome
            }
        })
        .map_err(StartError::Thread)?;
    if let Some(conn) = takeover {
        take_over(&app, conn, &gate)?;
    }
    info!(waypoint = %app.settings.name, identity = %app.identity, workers, ?addrs, "waypoint started");
    // Without a take-over the gate was open from the start; keep its sender
    // alive with the handle, as a dropped one reads as "the take-over failed".
    Ok(WaypointHandle {
        addrs,
        running: Running::new(stop, thread),
        _gate: gate,
    })
}

/// Where start-up stands, for the workers and the hand-over offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Gate {
    /// Taking over, not yet ready: hold.
    Wait,
    /// Config and certificate in hand: accept.
    Serving,
    /// The old waypoint has released its listeners: offer ours.
    HandedOver,
}

/// A take-over in progress: the conversation with the old waypoint, and
/// the runtime its socket is registered with. Dropped before `ready`, it
/// closes the socket, and the old waypoint serves on.
struct TakeoverConn {
    rt: tokio::runtime::Runtime,
    conn: trellis_netns::seqpacket::SeqpacketConn,
}

type Listeners = (Vec<std::net::TcpListener>, [std::net::TcpListener; 3]);

/// Takes the running waypoint's listeners over its hand-over socket.
fn take(path: &std::path::Path) -> Result<(TakeoverConn, Listeners), StartError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Thread)?;
    let (bundle, conn) = rt.block_on(handover::take(path))?;
    info!(old_pid = bundle.old_pid, hbone = bundle.hbone.len(), socket = %path.display(), "received the running waypoint's listeners");
    let t = TakeoverConn { rt, conn };
    let [a, m, r] = bundle.admin;
    let listeners = (|| -> Result<Listeners, StartError> {
        let hbone = bundle
            .hbone
            .into_iter()
            .map(handed)
            .collect::<Result<_, _>>()?;
        Ok((hbone, [handed(a)?, handed(m)?, handed(r)?]))
    })();
    match listeners {
        Ok(l) => Ok((t, l)),
        Err(e) => {
            t.rt.block_on(frame::abort::<Msg>(&t.conn, &e.to_string()));
            Err(e)
        }
    }
}

fn handed(fd: std::os::fd::OwnedFd) -> Result<std::net::TcpListener, StartError> {
    let l = std::net::TcpListener::from(fd);
    l.set_nonblocking(true)
        .map_err(StartError::HandedListener)?;
    Ok(l)
}

/// A second descriptor of `l`, kept to hand over later.
fn dup(l: &std::net::TcpListener) -> Result<std::os::fd::OwnedFd, StartError> {
    Ok(l.try_clone().map_err(StartError::HandedListener)?.into())
}

/// The new waypoint's side after its workers are up (held at the gate):
/// waits for its config and certificate, so its first connection does not
/// fail, opens the gate, and tells the old one to stop accepting. A failure
/// before that is told to the old waypoint, which serves on.
fn take_over(
    app: &App,
    t: TakeoverConn,
    gate: &tokio::sync::watch::Sender<Gate>,
) -> Result<(), StartError> {
    let ready = t.rt.block_on(async {
        let wait = async {
            let mut versions = app.store.subscribe();
            while !app.store.is_synced() {
                if versions.changed().await.is_err() {
                    return Err("the config source stopped before its first config".to_string());
                }
            }
            app.certs
                .server_config_ready(&app.identity)
                .await
                .map(drop)
                .map_err(|e| format!("no certificate for {}: {e}", app.identity))
        };
        tokio::time::timeout(handover::SYNC_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no config and certificate within {}s; cannot serve yet",
                    handover::SYNC_TIMEOUT.as_secs()
                ))
            })
    });
    if let Err(reason) = ready {
        t.rt.block_on(frame::abort::<Msg>(&t.conn, &reason));
        return Err(HandoverError::Local(reason).into());
    }
    gate.send_replace(Gate::Serving);
    match t.rt.block_on(frame::confirm::<Msg>(&t.conn)) {
        Ok(()) => info!("took over: the old waypoint stopped accepting and drains"),
        // We accept on every listener already; if the old process did not
        // answer, it has died or will drain on its own side.
        Err(e) => {
            warn!(error = %e, "the old waypoint did not confirm the hand-over; serving anyway")
        }
    }
    gate.send_replace(Gate::HandedOver);
    Ok(())
}

/// A waypoint subscribes to everything it serves: addresses, policies, and
/// its L7 config (routes, L7 policies, settings) as Trellis config objects.
const XDS_TYPES: [&str; 3] = trellis_api::xds::TYPES;

/// One data-path worker: accepts HBONE on its own listener until drain, then
/// lets its in-flight requests finish (the admin thread enforces the deadline).
fn run_worker(
    app: Arc<App>,
    index: usize,
    listener: std::net::TcpListener,
    mut gate: tokio::sync::watch::Receiver<Gate>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(worker = index, error = %e, "cannot start the worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        // A take-over that fails before the gate opens ends the process;
        // this worker never accepted (the old waypoint did, and does).
        if gate.wait_for(|g| *g >= Gate::Serving).await.is_err() {
            return;
        }
        match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => crate::inbound::run(app.clone(), l).await,
            Err(e) => error!(worker = index, error = %e, "cannot register the hbone listener"),
        }
        app.drain.signaled().await;
        while app.drain.in_flight() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
}

fn run_admin(
    ctx: Arc<AdminCtx>,
    spec: SourceSpec,
    trigger: drain::DrainTrigger,
    stop: CancellationToken,
    listeners: [std::net::TcpListener; 3],
    offer: Option<(handover::Giver, tokio::sync::watch::Receiver<Gate>)>,
) -> DrainOutcome {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the admin runtime");
            return DrainOutcome::Completed;
        }
    };
    rt.block_on(async {
        let app = &ctx.app;
        source::spawn(
            &spec,
            app.store.clone(),
            Some(app.metrics.core.config_metrics()),
            None,
        );
        tokio::spawn(app.snapshot.clone().follow(app.store.clone()));
        let handed_over = Arc::new(AtomicBool::new(false));
        if let (Some((giver, gate)), Some(path)) = (offer, app.settings.handover_socket.clone()) {
            tokio::spawn(offer_handover(
                path,
                giver,
                gate,
                stop.clone(),
                handed_over.clone(),
            ));
        }
        let deadlines = DrainDeadlines {
            plain: app.settings.drain_deadline,
            handed_over: Some((handed_over, app.settings.handover_drain_deadline)),
        };
        let servers = listeners
            .into_iter()
            .zip([Server::Admin, Server::Metrics, Server::Readiness])
            .map(|(l, which)| (l, admin::handler(which, ctx.clone())))
            .collect();
        serve_until_drained(servers, trigger, &stop, deadlines).await
    })
}

/// Offers this waypoint's listeners on `path` once it serves them itself
/// (after its own take-over, if any: the path then moves from the old
/// process to this one).
async fn offer_handover(
    path: std::path::PathBuf,
    giver: handover::Giver,
    mut gate: tokio::sync::watch::Receiver<Gate>,
    stop: CancellationToken,
    handed_over: Arc<AtomicBool>,
) {
    if gate.wait_for(|g| *g >= Gate::HandedOver).await.is_err() {
        return;
    }
    match trellis_netns::seqpacket::SeqpacketListener::bind_private(&path, 0o600) {
        Ok(l) => {
            info!(socket = %path.display(), "offering hand-over to a new waypoint (--takeover)");
            frame::serve(l, giver, stop, handed_over).await;
        }
        Err(e) => {
            warn!(socket = %path.display(), error = %e, "cannot offer hand-over; an upgrade of this waypoint will not be hitless")
        }
    }
}
