//! Builds and runs a node proxy: workers on their cores, and the admin thread
//! (admin API, metrics, readiness, config source, drain).
//!
//! `start` returns the addresses it actually bound, so tests and the demo can
//! ask for port 0 and never collide.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use trellis_core::admin::{bind_std, wait_for_stop, write_bound_addrs, BindError, Running};
use trellis_core::drain::{self, DrainOutcome};
use trellis_core::logging::LogControl;
use trellis_core::metrics::{AccessLogFormat, Metrics};
use trellis_core::source::{self, OnDemand, SourceError, SourceSpec};
use trellis_core::startup::{self, CertSource, LoadError};

use crate::admin::{self, AdminCtx, Server};
use crate::context::{ListenerKind, ProxyCtx};
use crate::handover::session::{Bundle, HandoverError};
use crate::handover::{self, Giver};
use crate::instance::{InstanceLock, LockError};
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
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("taking over from the running node proxy failed, and it serves on: {0}")]
    Takeover(#[from] HandoverError),
    #[error("cannot use the admin listener handed over: {0}")]
    HandedListener(std::io::Error),
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Thread)?;

    // One shared-mode proxy per node: take the node's lock, or take over
    // from the proxy holding it. Before binding anything, so a second proxy
    // is told about the first, not about a busy admin port.
    let takeover_path = match (s.mode, s.takeover_path()) {
        (Mode::Shared, None) => match InstanceLock::acquire(&s.runtime_dir) {
            Ok(lock) => Err(lock),
            // Held, and the holder offers a hand-over: take it (a DaemonSet
            // rollout's new pod starts beside the old one).
            Err(e @ crate::instance::LockError::Held { .. }) => match s.auto_takeover_path() {
                Some(path) => {
                    info!(socket = %path.display(), "another node proxy serves this node and offers a hand-over: taking over (--auto-takeover)");
                    Ok(Some(path))
                }
                None => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        },
        (Mode::Shared, path) => Ok(path),
        (Mode::Dedicated, _) => Ok(None),
    };
    let (lock, mut takeover) = match (s.mode, takeover_path) {
        (_, Err(lock)) => (Some(lock), None),
        (Mode::Shared, Ok(Some(path))) => {
            let (bundle, conn) = rt.block_on(handover::take(&path))?;
            info!(old_pid = bundle.old_pid, pods = bundle.pods.len(), socket = %path.display(), "received the running node proxy's listeners");
            let Bundle {
                lock, admin, pods, ..
            } = bundle;
            (
                Some(InstanceLock::adopt(lock, &s.runtime_dir)),
                Some((admin, pods, conn)),
            )
        }
        (_, Ok(_)) => (None, None),
    };

    // Bind the admin-thread sockets before anything runs, so errors surface
    // here; taking over, they are the old process's.
    let [admin_l, metrics_l, ready_l] = match takeover.as_mut() {
        Some((admin, _, _)) => {
            let [a, m, r] = std::mem::replace(admin, handed_placeholder()?);
            [handed(a)?, handed(m)?, handed(r)?]
        }
        None => [
            bind_std("admin api", s.common.admin_addr)?,
            bind_std("metrics", s.common.metrics_addr)?,
            bind_std("readiness", s.common.readiness_addr)?,
        ],
    };
    let admin_dups = match &lock {
        Some(_) => Some(
            [&admin_l, &metrics_l, &ready_l]
                .map(|l| l.as_fd().try_clone_to_owned())
                .into_iter()
                .collect::<std::io::Result<Vec<OwnedFd>>>()
                .map_err(StartError::Thread)?,
        ),
        None => None,
    };
    let mut addrs = BoundAddrs {
        admin: admin_l.local_addr().ok(),
        metrics: metrics_l.local_addr().ok(),
        readiness: ready_l.local_addr().ok(),
        ..Default::default()
    };

    // The config source and certificate prefetch run on the admin runtime;
    // spawned now, they start with it (a hand-over waits on them below).
    {
        let _in_rt = rt.enter();
        source::spawn(
            &spec,
            proxy.state.clone(),
            Some(proxy.metrics.config_metrics()),
            on_demand.clone(),
        );
        tokio::spawn(prefetch_local_certs(proxy.clone()));
    }

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
            if let Some((_, handed_pods, conn)) = takeover {
                take_over(&rt, &proxy, &pods, handed_pods, &conn)?;
            }
            // Pods handed over are enrolled already: the same netns again is a no-op.
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
    let giver = match (lock, admin_dups) {
        (Some(lock), Some(dups)) => {
            let [a, m, r]: [OwnedFd; 3] = dups
                .try_into()
                .map_err(|_| StartError::Thread(std::io::Error::other("three admin listeners")))?;
            Some(Giver {
                pods: pods.clone(),
                lock,
                admin: [a, m, r],
                draining: proxy.drain.clone(),
            })
        }
        _ => None,
    };
    let thread = std::thread::Builder::new()
        .name("trellis-admin".into())
        .spawn({
            let stop = stop.clone();
            move || {
                run_admin(
                    rt,
                    admin,
                    pods,
                    giver,
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

/// A listener handed over by the old process, ready for the admin runtime.
fn handed(fd: OwnedFd) -> Result<std::net::TcpListener, StartError> {
    let l = std::net::TcpListener::from(fd);
    l.set_nonblocking(true)
        .map_err(StartError::HandedListener)?;
    Ok(l)
}

/// Fds to leave in place of the admin listeners taken out of a bundle.
fn handed_placeholder() -> Result<[OwnedFd; 3], StartError> {
    let null = || -> Result<OwnedFd, StartError> {
        Ok(std::fs::File::open("/dev/null")
            .map_err(StartError::HandedListener)?
            .into())
    };
    Ok([null()?, null()?, null()?])
}

/// Serves the pods handed over, then tells the old process to stop
/// accepting. Before serving it waits for this process's first config (from
/// the controller it may take a moment): a connection accepted without it
/// would fail. Any failure up to `ready` is told to the old process, which
/// then keeps serving.
fn take_over(
    rt: &tokio::runtime::Runtime,
    proxy: &Arc<ProxyCtx>,
    pods: &Pods,
    handed: Vec<crate::handover::session::PodBundle>,
    conn: &trellis_netns::seqpacket::SeqpacketConn,
) -> Result<(), StartError> {
    let synced = rt.block_on(async {
        let mut versions = proxy.state.subscribe();
        tokio::time::timeout(handover::SYNC_TIMEOUT, async {
            while !proxy.state.is_synced() {
                if versions.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false)
    });
    if !synced {
        let reason = format!(
            "no config from the controller within {}s; cannot serve yet",
            handover::SYNC_TIMEOUT.as_secs()
        );
        rt.block_on(handover::abort(conn, &reason));
        return Err(HandoverError::Local(reason).into());
    }
    for pod in handed {
        if let Err(e) = pods.adopt(pod) {
            rt.block_on(handover::abort(conn, &e.to_string()));
            return Err(e.into());
        }
    }
    match rt.block_on(handover::confirm(conn)) {
        Ok(()) => info!("took over: the old node proxy stopped accepting and drains"),
        // We accept on every listener already; if the old process did not
        // answer, it has died or will drain on its own side.
        Err(e) => {
            warn!(error = %e, "the old node proxy did not confirm the hand-over; serving anyway")
        }
    }
    Ok(())
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
    rt: tokio::runtime::Runtime,
    ctx: Arc<AdminCtx>,
    pods: Arc<Pods>,
    giver: Option<Giver>,
    trigger: drain::DrainTrigger,
    stop: CancellationToken,
    listeners: [std::net::TcpListener; 3],
) -> DrainOutcome {
    let outcome = rt.block_on(async {
        let proxy = &ctx.proxy;
        if let (Some(socket), Some(seen)) = (&proxy.settings.zds_socket, &ctx.zds_snapshot) {
            let client = crate::zds::ZdsClient {
                socket: socket.clone(),
                cluster_id: proxy.settings.cluster_id.clone(),
                pods: pods.clone(),
                snapshot_seen: seen.clone(),
                retries: Default::default(),
            };
            tokio::spawn(client.run(stop.clone()));
        }
        let handed_over = Arc::new(AtomicBool::new(false));
        if let Some(giver) = giver {
            let path = proxy.settings.handover_socket_path();
            // Bound only now, after any take-over of ours is complete: the
            // path then moves from the old process to us.
            match trellis_netns::seqpacket::SeqpacketListener::bind_private(&path, 0o600) {
                Ok(l) => {
                    info!(socket = %path.display(), "offering hand-over to a new node proxy (--takeover)");
                    tokio::spawn(trellis_netns::handover::serve(
                        l,
                        giver,
                        stop.clone(),
                        handed_over.clone(),
                    ));
                }
                Err(e) => {
                    warn!(socket = %path.display(), error = %e, "cannot offer hand-over; an upgrade of this proxy will not be hitless")
                }
            }
        }
        let servers_stop = CancellationToken::new();
        for (l, which) in listeners
            .into_iter()
            .zip([Server::Admin, Server::Metrics, Server::Readiness])
        {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    let handler = admin::handler(which, ctx.clone());
                    tokio::spawn(trellis_core::admin::serve(l, handler, servers_stop.clone()));
                }
                Err(e) => error!(error = %e, "cannot register admin listener"),
            }
        }
        wait_for_stop(&stop).await;
        let handed = handed_over.load(Ordering::Acquire);
        // Handed over: the new process serves admin, metrics and readiness
        // on these very sockets; ours stop now. Our connections get the
        // long hand-over deadline to end on their own.
        let deadline = if handed {
            servers_stop.cancel();
            proxy.settings.handover_drain_deadline
        } else {
            proxy.settings.drain_deadline
        };
        pods.close_listener_dups();
        info!(?deadline, handed_over = handed, "draining");
        let outcome = trigger.drain(deadline).await;
        match &outcome {
            DrainOutcome::Completed => info!("drain complete"),
            DrainOutcome::DeadlineExceeded { remaining } => {
                warn!(remaining, "drain deadline passed; closing what is still open")
            }
        }
        servers_stop.cancel();
        outcome
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
