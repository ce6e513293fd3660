//! `trellis-controller run`: the manifests folder (or a Kubernetes API
//! server) in, xDS and certificates out on one TLS gRPC port, and an admin
//! port beside it.
//!
//! Start-up does everything that can fail on bad input first (CA, tokens,
//! serving certificate, first scan, binding), so a mistake ends the process
//! with one clear message before anything is served.
//!
//! - [`publish`]: objects → config → snapshot, published on change only.
//! - [`metrics`]: the counters and their Prometheus text.
//! - [`admin`]: `/healthz/ready` and `/metrics`.
//!
//! In Kubernetes mode the [`crate::waypoints`] manager runs beside the
//! source: after each batch the store's waypoint Gateways become plans,
//! handed over on a watch channel when they changed.

pub mod admin;
pub mod metrics;
pub mod publish;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::auth::{Authenticator, TokenFile, TokenFileError, TokenReview, TokenReviewConfig};
use crate::ca::{Ca, CaService, KeysError, ServingError};
use crate::cli::RunArgs;
use crate::kube::{ApiConfig, Client, KubeSource};
use crate::objects::{manifests, DirError, ManifestsDir, ObjectStore, ScanResult};
use crate::serve::{serve, ServeError};
use crate::waypoints::{self, Manager, ManagerOptions, Plans, WaypointMetrics};
use crate::xds::XdsService;

pub use metrics::{Metrics, MetricsSnapshot};
pub use publish::{Outcome, Publisher};

/// Why the controller could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Ca(#[from] KeysError),
    #[error(transparent)]
    CaSecret(#[from] crate::ca::SecretError),
    #[error("--ca-secret reads the CA through the Kubernetes API: add --kubeconfig or --in-cluster, or use --ca-dir")]
    SecretWithoutKube,
    #[error("no CA: pass --ca-dir DIR or --ca-secret NAMESPACE/NAME")]
    NoCa,
    #[error(transparent)]
    Tokens(#[from] TokenFileError),
    #[error("serving certificate: {0}; check --server-name")]
    Serving(#[from] ServingError),
    #[error(transparent)]
    Manifests(#[from] DirError),
    #[error("kubernetes api: {0}")]
    Kube(#[from] crate::kube::ConfigError),
    #[error("cannot bind the {what} port on {addr}: {source}; is another process using it?")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the bound addresses to {}: {source}", path.display())]
    BoundAddrs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("no object source: pass --manifests DIR, --kubeconfig FILE or --in-cluster")]
    NoSource,
    #[error("{0}; fix the file given to --waypoint-template")]
    WaypointTemplate(#[from] crate::waypoints::template::TemplateError),
}

/// The addresses actually bound (`--bound-addrs-file` holds them as JSON:
/// `{"grpc": "127.0.0.1:15012", "admin": "127.0.0.1:15014"}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BoundAddrs {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

/// A started controller.
pub struct Running {
    addrs: BoundAddrs,
    done: Pin<Box<dyn Future<Output = Result<(), RunError>> + Send>>,
}

impl Running {
    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// Serves until the shutdown future given to [`start`] completes and
    /// open streams have drained (at most [`crate::serve::DRAIN_DEADLINE`]).
    pub async fn wait(self) -> Result<(), RunError> {
        self.done.await
    }
}

/// Aborts a background task when the controller stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Loads everything, publishes the first config, binds both ports (and
/// writes `--bound-addrs-file`). Serving starts at once; [`Running::wait`]
/// returns after `shutdown` completes.
pub async fn start(
    args: &RunArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, RunError> {
    let kube = match (&args.kubeconfig, args.in_cluster) {
        (Some(path), _) => Some(ApiConfig::from_kubeconfig(path)?),
        (None, true) => Some(ApiConfig::in_cluster()?),
        (None, false) => None,
    }
    .map(|cfg| Client::new(cfg).with_user_agent("trellis-controller"));
    let ca = Arc::new(match (&args.ca_dir, &args.ca_secret, &kube) {
        (Some(dir), _, _) => Ca::load(dir)?,
        (None, Some(secret), Some(client)) => crate::ca::secret::load(client, secret).await?,
        (None, Some(_), None) => return Err(RunError::SecretWithoutKube),
        // clap requires one of them; kept as an error, not a panic.
        (None, None, _) => return Err(RunError::NoCa),
    });
    let auth: Arc<dyn Authenticator> = match (&kube, &args.tokens) {
        (Some(client), _) => Arc::new(TokenReview::new(
            client.clone(),
            TokenReviewConfig {
                trust_domain: args.trust_domain.clone(),
                audiences: args.token_audiences.clone(),
                ..Default::default()
            },
        )),
        (None, Some(tokens)) => Arc::new(TokenFile::load(tokens)?),
        // clap requires one of them; kept as an error, not a panic.
        (None, None) => return Err(RunError::NoSource),
    };
    let tls = ca.serving_config(&args.server_names())?;
    let roots_pem = ca.roots_pem();

    let metrics = Arc::new(Metrics::default());
    let waypoint_metrics = Arc::new(WaypointMetrics::default());
    let mut publisher = Publisher::new(args.translate_options(), metrics.clone());
    // Manifests mode loads the folder before serving, so a bad path fails
    // the start; Kubernetes mode publishes once every kind has been listed
    // (readiness says 503 until then).
    let manifests = match (&kube, &args.manifests) {
        (None, Some(path)) => {
            let mut dir = ManifestsDir::new(path);
            let mut store = ObjectStore::new();
            let first = dir.scan(&mut store)?;
            info!(manifests = %path.display(), objects = store.len(), "manifests loaded");
            publisher.update(&store, first);
            Some((dir, store))
        }
        _ => None,
    };

    let grpc = bind("grpc", args.listen).await?;
    let admin = bind("admin", args.admin_addr).await?;
    let addrs = BoundAddrs {
        grpc: local_addr("grpc", args.listen, &grpc)?,
        admin: local_addr("admin", args.admin_addr, &admin)?,
    };
    if let Some(path) = &args.bound_addrs_file {
        write_bound_addrs(path, &addrs)?;
    }

    let xds = XdsService::new(auth.clone(), publisher.snapshots());
    let ca_service = CaService::new(ca, auth, publisher.mesh(), args.max_cert_validity);
    let draining = CancellationToken::new();
    let admin_state = Arc::new(admin::AdminState {
        metrics,
        xds: xds.metrics(),
        ca: ca_service.metrics(),
        waypoints: waypoint_metrics.clone(),
        draining: draining.clone(),
    });
    let router = tonic::transport::Server::builder()
        .add_service(ca_service.into_server())
        .add_service(xds.into_server());

    let poll = args.poll;
    let mut waypoint_task = None;
    let watcher = match (kube, manifests) {
        (Some(client), _) => {
            info!("watching the kubernetes api server");
            // Read before anything starts: a broken template is a start-up
            // error, not a stream of failed applies.
            let waypoint_opts = match args.manage_waypoints {
                true => Some(args.waypoint_options(roots_pem.clone())?),
                false => None,
            };
            let waypoints = waypoint_opts.map(|opts| {
                let (tx, rx) = watch::channel(Arc::new(Plans::new()));
                let manager = Manager::new(
                    client.clone(),
                    ManagerOptions {
                        resync: args.waypoint_resync,
                        istio_labels: args.istio_labels,
                        ..Default::default()
                    },
                    waypoint_metrics.clone(),
                );
                waypoint_task = Some(AbortOnDrop(tokio::spawn(manager.run(rx))));
                info!(image = %args.waypoint_image, xds.addr = %args.waypoint_xds_address, "managing waypoints for Gateways");
                (tx, opts)
            });
            AbortOnDrop(tokio::spawn(KubeSource::new(client).run(
                ObjectStore::new(),
                move |store, changes| {
                    let scan = ScanResult {
                        changed: changes.changed > 0,
                        errors: changes.errors,
                    };
                    publisher.update(store, scan);
                    if let Some((tx, opts)) = &waypoints {
                        let new = waypoints::plans(store, opts);
                        // Only Gateways (and their status) change the plans;
                        // a pod's churn does not wake the manager.
                        tx.send_if_modified(|cur| {
                            let changed = **cur != new;
                            if changed {
                                *cur = Arc::new(new);
                            }
                            changed
                        });
                    }
                },
            )))
        }
        (None, Some((dir, store))) => AbortOnDrop(tokio::spawn(manifests::poll(
            dir,
            store,
            poll,
            move |store, scan| {
                publisher.update(store, scan);
            },
        ))),
        (None, None) => return Err(RunError::NoSource),
    };
    let admin_task = AbortOnDrop(tokio::spawn(admin::serve(admin, admin_state)));
    info!(grpc.addr = %addrs.grpc, admin.addr = %addrs.admin, "controller serving");

    let done = async move {
        let signal = async move {
            shutdown.await;
            draining.cancel();
        };
        let result = serve(grpc, tls, router, signal).await;
        drop(watcher);
        drop(waypoint_task);
        drop(admin_task);
        info!("controller stopped");
        result.map_err(RunError::from)
    };
    Ok(Running {
        addrs,
        done: Box::pin(done),
    })
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { what, addr, source })
}

fn local_addr(
    what: &'static str,
    addr: SocketAddr,
    listener: &TcpListener,
) -> Result<SocketAddr, RunError> {
    listener
        .local_addr()
        .map_err(|source| RunError::Bind { what, addr, source })
}

/// Writes the JSON atomically (write, then rename), so a reader polling for
/// the file never sees half of it.
fn write_bound_addrs(path: &Path, addrs: &BoundAddrs) -> Result<(), RunError> {
    let err = |source| RunError::BoundAddrs {
        path: path.to_path_buf(),
        source,
    };
    let body = serde_json::to_vec_pretty(addrs).map_err(|e| err(e.into()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(err)
}
