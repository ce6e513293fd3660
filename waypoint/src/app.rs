//! Builds and runs a waypoint: the data-path runtime (multi-threaded: rate
//! limiters, breakers and ejections are shared by all requests, so the
//! waypoint is not thread-per-core like the node proxy) and the admin thread
//! (admin API, metrics, readiness, config watcher, snapshot compiler, drain).

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use trellis_core::admin::{bind_std, serve_until_drained, write_bound_addrs, BindError, Running};
use trellis_core::certs::CertManager;
use trellis_core::drain::{self, DrainOutcome};
use trellis_core::logging::LogControl;
use trellis_core::startup::{load_ca, load_state, LoadError};
use trellis_core::state::StateStore;
use trellis_core::watch;

use crate::admin::{self, AdminCtx, Server};
use crate::metrics::WaypointMetrics;
use crate::proxy::App;
use crate::settings::Settings;
use crate::state::{Runtimes, Snapshot};
use crate::upstream::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid settings:\n  {}", .0.join("\n  "))]
    Settings(Vec<String>),
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
    let state = load_state(&settings.config)?;
    let store = Arc::new(StateStore::new(state));
    if !store
        .snapshot()
        .config()
        .waypoints
        .iter()
        .any(|w| w.namespace == namespace && w.name == name)
    {
        info!(waypoint = %settings.name, "no `waypoints` entry for this waypoint; no total rate limit");
    }
    let ca = load_ca(&settings.ca_dir)?;
    let certs = Arc::new(CertManager::new(ca, None));
    let metrics = WaypointMetrics::new(settings.access_log);
    let (trigger, watcher) = drain::new();
    let snapshot = Arc::new(Snapshot::new(&store, &namespace, &name));

    let hbone_l = bind_std("hbone", settings.listen)?;
    let admin_l = bind_std("admin api", settings.admin_addr)?;
    let metrics_l = bind_std("metrics", settings.metrics_addr)?;
    let ready_l = bind_std("readiness", settings.readiness_addr)?;
    let addrs = BoundAddrs {
        hbone: hbone_l.local_addr().ok(),
        admin: admin_l.local_addr().ok(),
        metrics: metrics_l.local_addr().ok(),
        readiness: ready_l.local_addr().ok(),
    };
    let workers = if settings.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        settings.workers
    };
    let app = Arc::new(App {
        upstream: Upstream::new(identity.clone(), certs.clone()),
        identity,
        store: store.clone(),
        snapshot: snapshot.clone(),
        runtimes: Runtimes::default(),
        metrics: metrics.clone(),
        certs,
        drain: watcher,
        settings,
    });
    // Issue the certificate now, so a CA problem shows at start, not on the first connection.
    if let Err(e) = app.certs.server_config(&app.identity) {
        return Err(StartError::Settings(vec![e.to_string()]));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("trellis-wp-worker")
        .enable_all()
        .build()
        .map_err(StartError::Thread)?;
    let data = {
        let app = app.clone();
        std::thread::Builder::new()
            .name("trellis-wp-main".into())
            .spawn(move || {
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(hbone_l) {
                        Ok(l) => crate::inbound::run(app.clone(), l).await,
                        Err(e) => error!(error = %e, "cannot register the hbone listener"),
                    }
                    // Let in-flight requests finish; the admin thread enforces the deadline.
                    app.drain.signaled().await;
                    while app.drain.in_flight() > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                });
                rt.shutdown_timeout(std::time::Duration::from_millis(100));
            })
            .map_err(StartError::Thread)?
    };
    if let Some(path) = &app.settings.bound_addrs_file {
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
                let outcome = run_admin(ctx, trigger, stop, [admin_l, metrics_l, ready_l]);
                let _ = data.join();
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

fn run_admin(
    ctx: Arc<AdminCtx>,
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
        tokio::spawn(watch::watch_file(
            app.settings.config.clone(),
            app.store.clone(),
            app.settings.config_poll,
            Some(app.metrics.core.config_metrics()),
        ));
        tokio::spawn(app.snapshot.clone().follow(app.store.clone()));
        let servers = listeners
            .into_iter()
            .zip([Server::Admin, Server::Metrics, Server::Readiness])
            .map(|(l, which)| (l, admin::handler(which, ctx.clone())))
            .collect();
        serve_until_drained(servers, trigger, &stop, app.settings.drain_deadline).await
    })
}
