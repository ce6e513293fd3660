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
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use trellis_core::admin::{bind_std, serve_until_drained, write_bound_addrs, BindError, Running};
use trellis_core::drain::{self, DrainOutcome};
use trellis_core::logging::LogControl;
use trellis_core::source::{self, SourceError, SourceSpec};
use trellis_core::startup::{self, CertSource, LoadError};

use crate::admin::{self, AdminCtx, Server};
use crate::metrics::WaypointMetrics;
use crate::proxy::App;
use crate::settings::Settings;
use crate::state::{Runtimes, Snapshot};
use crate::upstream::Upstream;
use trellis_core::listen::bind_reuseport;

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

    let workers = if settings.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        settings.workers
    };
    let hbone_ls = bind_reuseport("hbone", settings.listen, workers)?;
    let admin_l = bind_std("admin api", settings.common.admin_addr)?;
    let metrics_l = bind_std("metrics", settings.common.metrics_addr)?;
    let ready_l = bind_std("readiness", settings.common.readiness_addr)?;
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
            std::thread::Builder::new()
                .name(format!("trellis-wp-worker-{index}"))
                .spawn(move || run_worker(app, index, listener))
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
            move || {
                let outcome = run_admin(ctx, spec, trigger, stop, [admin_l, metrics_l, ready_l]);
                for worker in data {
                    let _ = worker.join();
                }
                outcome
            }
        })
        .map_err(StartError::Thread)?;
    info!(waypoint = %app.settings.name, identity = %app.identity, workers, ?addrs, "waypoint started");
    Ok(WaypointHandle {
        addrs,
        running: Running::new(stop, thread),
    })
}

/// A waypoint subscribes to everything it serves: addresses, policies, and
/// its L7 config (routes, L7 policies, settings) as Trellis config objects.
const XDS_TYPES: [&str; 3] = trellis_api::xds::TYPES;

/// One data-path worker: accepts HBONE on its own listener until drain, then
/// lets its in-flight requests finish (the admin thread enforces the deadline).
fn run_worker(app: Arc<App>, index: usize, listener: std::net::TcpListener) {
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
        let servers = listeners
            .into_iter()
            .zip([Server::Admin, Server::Metrics, Server::Readiness])
            .map(|(l, which)| (l, admin::handler(which, ctx.clone())))
            .collect();
        serve_until_drained(servers, trigger, &stop, app.settings.drain_deadline).await
    })
}
