//! Builds and runs a node proxy: workers on their cores, and the admin thread
//! (admin API, metrics, readiness, config source, drain).
//!
//! `start` returns the addresses it actually bound, so tests and the demo can
//! ask for port 0 and never collide.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use trellis_core::admin::{bind_std, serve_until_drained, write_bound_addrs, BindError, Running};
use trellis_core::drain::{self, DrainOutcome};
use trellis_core::logging::LogControl;
use trellis_core::metrics::{AccessLogFormat, Metrics};
use trellis_core::source::{self, OnDemand, SourceError, SourceSpec};
use trellis_core::startup::{self, CertSource, LoadError};

use crate::admin::{self, AdminCtx, Server};
use crate::context::{ListenerKind, ProxyCtx};
use crate::pods::Pods;
use crate::settings::{parse_pod_arg, LogFormat, Mode, Settings, PROXY_MARK};
use crate::worker;
use trellis_core::WorkloadIdentity;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid settings:\n  {}", .0.join("\n  "))]
    Settings(Vec<String>),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("trust bundle {path}: {source}")]
    TrustBundle {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Pod(#[from] crate::pods::PodError),
    #[error("cannot start threads: {0}")]
    Thread(std::io::Error),
}

/// The addresses the proxy really listens on.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BoundAddrs {
    pub admin: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub readiness: Option<SocketAddr>,
    pub hbone: Option<SocketAddr>,
    pub outbound: Option<SocketAddr>,
    pub inbound_plain: Option<SocketAddr>,
    pub forwards: Vec<SocketAddr>,
}

/// A running proxy.
pub struct ProxyHandle {
    pub addrs: BoundAddrs,
    pub metrics: Arc<Metrics>,
    running: Running,
}

impl ProxyHandle {
    /// Starts a graceful drain (as SIGTERM does).
    pub fn stop(&self) {
        self.running.stop();
    }

    /// Waits until the proxy has drained and stopped.
    pub fn wait(self) -> DrainOutcome {
        self.running.wait()
    }
}

/// Starts a proxy. `log` lets /logging change the process's filter.
pub fn start(settings: Settings, log: Option<LogControl>) -> Result<ProxyHandle, StartError> {
    settings.validate().map_err(StartError::Settings)?;
    let mut spec = settings
        .common
        .source(&XDS_TYPES, &format!("trellis~{}", settings.node))?;
    let mut cert_source = settings.common.cert_source()?;
    if settings.capture {
        mark_control_sockets(&mut spec, &mut cert_source);
    }
    let store = Arc::new(source::initial_store(&spec)?);
    let on_demand = matches!(spec, SourceSpec::Xds(_)).then(OnDemand::default);
    let extra = match &settings.trust_bundle {
        Some(p) => {
            let pem = std::fs::read_to_string(p).map_err(|e| StartError::TrustBundle {
                path: p.display().to_string(),
                source: Box::new(e),
            })?;
            Some(
                hbone::TrustBundle::from_pem(&pem).map_err(|e| StartError::TrustBundle {
                    path: p.display().to_string(),
                    source: Box::new(e),
                })?,
            )
        }
        None => None,
    };
    let metrics = Metrics::new();
    metrics.set_access_log_format(match settings.access_log {
        LogFormat::Text => AccessLogFormat::Text,
        LogFormat::Json => AccessLogFormat::Json,
    });
    let (trigger, watcher) = drain::new();
    let workers = if settings.workers == 0 {
        worker::allowed_cpus().len().max(1)
    } else {
        settings.workers
    };
    let proxy = Arc::new(ProxyCtx {
        state: store.clone(),
        metrics: metrics.clone(),
        certs: Arc::new(startup::cert_manager(
            cert_source,
            true,
            extra,
            metrics.registry(),
        )?),
        drain: watcher,
        limits: settings.common.conn_limits(metrics.registry()),
        shutdown: CancellationToken::new(),
        h2: hbone::H2Settings::default(),
        transparent_ok: AtomicBool::new(true),
        on_demand: on_demand.clone(),
        settings,
    });
    let s = &proxy.settings;

    // Bind the admin-thread sockets before anything runs, so errors surface here.
    let admin_l = bind_std("admin api", s.common.admin_addr)?;
    let metrics_l = bind_std("metrics", s.common.metrics_addr)?;
    let ready_l = bind_std("readiness", s.common.readiness_addr)?;
    let mut addrs = BoundAddrs {
        admin: admin_l.local_addr().ok(),
        metrics: metrics_l.local_addr().ok(),
        readiness: ready_l.local_addr().ok(),
        ..Default::default()
    };

    let handles = worker::spawn_workers(proxy.clone(), workers).map_err(StartError::Thread)?;
    let pods = Arc::new(Pods::new(proxy.clone(), handles));
    match s.mode {
        Mode::Dedicated => {
            let uid = s.workload_uid.clone().unwrap_or_default();
            // From the controller, the first config is still on its way:
            // readiness says so, and a warning now would be noise.
            if proxy.state.is_synced() && proxy.state.load().workload_by_uid(&uid).is_none() {
                warn!(workload = %uid, "dedicated workload is not in the config yet; connections fail until it is");
            }
            let listening = if s.capture {
                pods.capture_own(&uid)?
            } else {
                let wanted = dedicated_listeners(s);
                let bound = pods.start_dedicated(&uid, &wanted)?;
                wanted.iter().map(|(kind, _)| *kind).zip(bound).collect()
            };
            for (kind, addr) in listening {
                match kind {
                    ListenerKind::Hbone => addrs.hbone = Some(addr),
                    ListenerKind::Outbound => addrs.outbound = Some(addr),
                    ListenerKind::InboundPlain => addrs.inbound_plain = Some(addr),
                    ListenerKind::OutboundForward(_) => addrs.forwards.push(addr),
                }
            }
        }
        Mode::Shared => {
            for p in &s.pods {
                let (uid, path) = parse_pod_arg(p).map_err(|e| StartError::Settings(vec![e]))?;
                pods.add(&uid, &path)?;
            }
        }
    }
    if let Some(path) = &s.common.bound_addrs_file {
        write_bound_addrs(path, &addrs);
    }

    let stop = CancellationToken::new();
    let admin = Arc::new(AdminCtx {
        proxy: proxy.clone(),
        pods: pods.clone(),
        log,
        stop: stop.clone(),
        zds_snapshot: s
            .zds_socket
            .as_ref()
            .map(|_| Arc::new(AtomicBool::new(false))),
    });
    let thread = std::thread::Builder::new()
        .name("trellis-admin".into())
        .spawn({
            let stop = stop.clone();
            move || {
                let source = (spec, on_demand);
                run_admin(
                    admin,
                    pods,
                    source,
                    trigger,
                    stop,
                    [admin_l, metrics_l, ready_l],
                )
            }
        })
        .map_err(StartError::Thread)?;
    info!(node = %proxy.settings.node, mode = ?proxy.settings.mode, workers, ?addrs, "node proxy started");
    Ok(ProxyHandle {
        addrs,
        metrics,
        running: Running::new(stop, thread),
    })
}

/// The listeners `--hbone-addr`, `--outbound-addr`, `--inbound-plain-addr`
/// and `--outbound-forward` ask for.
fn dedicated_listeners(s: &Settings) -> Vec<(ListenerKind, SocketAddr)> {
    let mut wanted = Vec::new();
    if let Some(a) = s.hbone_addr {
        wanted.push((ListenerKind::Hbone, a));
    }
    if let Some(a) = s.outbound_addr {
        wanted.push((ListenerKind::Outbound, a));
    }
    if let Some(a) = s.inbound_plain_addr {
        wanted.push((ListenerKind::InboundPlain, a));
    }
    for f in &s.outbound_forwards {
        wanted.push((ListenerKind::OutboundForward(f.target), f.listen));
    }
    wanted
}

/// A proxy capturing its own network namespace (`--capture`) marks its
/// connections to the controller, so its capture rules let them pass.
fn mark_control_sockets(spec: &mut SourceSpec, certs: &mut CertSource) {
    if let SourceSpec::Xds(x) = spec {
        x.socket_mark = Some(PROXY_MARK);
    }
    if let CertSource::Remote(c) = certs {
        c.socket_mark = Some(PROXY_MARK);
    }
}

/// The config types a node proxy subscribes to by wildcard: its node's
/// workloads and every authorization policy; other destinations on demand.
const XDS_TYPES: [&str; 2] = [
    trellis_api::xds::ADDRESS_TYPE,
    trellis_api::xds::AUTHORIZATION_TYPE,
];

/// Keeps certificates for this node's workloads on their way before a
/// connection needs them (a no-op with a dev CA): a remote CA answers in
/// its own time, and the data path never waits on it.
async fn prefetch_local_certs(proxy: Arc<ProxyCtx>) {
    let mut versions = proxy.state.subscribe();
    loop {
        // A dedicated proxy serves one workload: asking for its node's other
        // identities would only load the CA (and be refused for no reason
        // if a node token were per workload).
        let state = proxy.state.load();
        let ids: Vec<_> = match (&proxy.settings.mode, &proxy.settings.workload_uid) {
            (Mode::Dedicated, Some(uid)) => state
                .workload_by_uid(uid)
                .map(|w| w.identity())
                .into_iter()
                .collect(),
            _ => state
                .workloads_on_node(&proxy.settings.node)
                .iter()
                .map(|w| w.identity())
                .collect(),
        };
        drop(state);
        proxy.certs.prefetch(&ids);
        if versions.changed().await.is_err() {
            return;
        }
    }
}

fn run_admin(
    ctx: Arc<AdminCtx>,
    pods: Arc<Pods>,
    (spec, on_demand): (SourceSpec, Option<OnDemand>),
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
            ctx.proxy.shutdown.cancel();
            return DrainOutcome::Completed;
        }
    };
    let outcome = rt.block_on(async {
        let proxy = &ctx.proxy;
        source::spawn(
            &spec,
            proxy.state.clone(),
            Some(proxy.metrics.config_metrics()),
            on_demand,
        );
        tokio::spawn(prefetch_local_certs(proxy.clone()));
        if let (Some(socket), Some(seen)) = (&proxy.settings.zds_socket, &ctx.zds_snapshot) {
            let client = crate::zds::ZdsClient {
                socket: socket.clone(),
                cluster_id: proxy.settings.cluster_id.clone(),
                pods: pods.clone(),
                snapshot_seen: seen.clone(),
            };
            tokio::spawn(client.run(stop.clone()));
        }
        let servers = listeners
            .into_iter()
            .zip([Server::Admin, Server::Metrics, Server::Readiness])
            .map(|(l, which)| (l, admin::handler(which, ctx.clone())))
            .collect();
        serve_until_drained(servers, trigger, &stop, proxy.settings.drain_deadline).await
    });
    ctx.proxy.shutdown.cancel();
    // Drop the admin tasks and our reference so the workers' handles can be joined.
    drop(rt);
    drop(ctx);
    if let Ok(pods) = Arc::try_unwrap(pods) {
        for w in pods.into_workers() {
            w.join();
        }
    }
    outcome
}
