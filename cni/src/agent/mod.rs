//! The Trellis CNI node agent (`trellis-cni-agent`): long-running, one per
//! node. It serves Istio's ZDS to the node proxy (the proxy connects, as
//! ztunnel does to Istio's agent) and a small JSON socket to the plugin,
//! which it answers only once the node proxy has acknowledged the pod.
//!
//! - [`enroll`]: which pods join the mesh (pure).
//! - [`kube`]: what the API server says of a pod (Kubernetes mode).
//! - [`admin`]: `/healthz/ready` and `/metrics`.
//! - [`installer`]: keeps the plugin chained in the node's CNI config.
//! - [`relabel`]: a namespace labelled after its pods started (Kubernetes mode).
//! - [`protocol`]: ZDS messages as bytes, the node proxy's answers (pure).
//! - [`registry`]: the enrolled pods and their capture state.
//! - [`state`]: the pods on disk, for a restarted agent.
//! - [`zds_server`]: the connection to the node proxy, snapshot, capture rules.
//! - [`plugin_server`]: the plugin's requests.

pub mod admin;
pub mod enroll;
pub mod installer;
pub mod kube;
pub mod plugin_server;
pub mod protocol;
pub mod registry;
pub mod relabel;
pub mod state;
pub mod zds_server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::{mpsc, watch};
use trellis_netns::seqpacket::SeqpacketListener;

use crate::wire::{DEFAULT_PLUGIN_SOCKET, DEFAULT_ZDS_SOCKET};
use enroll::EnrollPolicy;
use registry::Registry;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "trellis-cni-agent",
    version,
    about = "Trellis CNI node agent: enrolls pods with the node proxy over Istio's ZDS"
)]
pub struct Settings {
    /// The ZDS socket the node proxy connects to (its --zds-socket).
    #[arg(long, env = "TRELLIS_ZDS_SOCKET", default_value = DEFAULT_ZDS_SOCKET)]
    pub zds_socket: PathBuf,
    /// The socket the plugin talks to (agentSocket in the CNI config).
    #[arg(long, default_value = DEFAULT_PLUGIN_SOCKET)]
    pub plugin_socket: PathBuf,
    /// A namespace whose pods join the mesh (repeat for more). Without an
    /// API server only; with one, the labels decide.
    #[arg(long = "ambient-namespace", conflicts_with_all = ["kubeconfig", "in_cluster"])]
    pub ambient_namespaces: Vec<String>,
    /// Enroll the pods of every namespace but the system ones (without an
    /// API server only).
    #[arg(long, conflicts_with_all = ["kubeconfig", "in_cluster"])]
    pub all_namespaces: bool,
    /// Kubernetes mode with this kubeconfig: a pod is enrolled when its
    /// namespace is labelled trellis.dev/dataplane-mode=ambient (and the pod
    /// does not say none), read from the API server at ADD.
    #[arg(long, conflicts_with = "in_cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes mode with the pod's service account.
    #[arg(long)]
    pub in_cluster: bool,
    /// Also honour Istio's istio.io/dataplane-mode label.
    #[arg(long)]
    pub istio_labels: bool,
    /// This node's name (the downward API's spec.nodeName), for logs.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
    /// Where /healthz/ready and /metrics are served.
    #[arg(long, default_value = "127.0.0.1:15023")]
    pub admin_addr: std::net::SocketAddr,
    /// Copy the plugin into --cni-bin-dir and chain it into the first
    /// network config of --cni-conf-dir, and keep it there.
    #[arg(long)]
    pub install_cni: bool,
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The plugin binary to install (default: trellis-cni beside this binary).
    #[arg(long)]
    pub cni_plugin: Option<PathBuf>,
    /// The chained entry's failOpen: a pod whose capture is not confirmed
    /// (no agent or node proxy) starts uncaptured instead of failing.
    #[arg(long)]
    pub cni_fail_open: bool,
    /// The chained entry's captureTimeoutMs.
    #[arg(long, default_value_t = 10_000)]
    pub cni_capture_timeout_ms: u64,
    /// Kubernetes mode: the agent's DaemonSet, NAMESPACE/NAME. At exit the
    /// entry is removed from the CNI config only if the DaemonSet is gone
    /// or being deleted (an uninstall); during a rolling update it stays,
    /// so new pods wait for the next agent instead of starting uncaptured.
    /// Without an API server the entry is removed at every exit.
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "install_cni")]
    pub daemonset: Option<String>,
    /// How long the node proxy may take to acknowledge one ZDS message
    /// before its connection is considered broken.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub ack_timeout: Duration,
    /// Where the enrolled pods are saved, so a restarted agent still knows them.
    #[arg(long, default_value = DEFAULT_STATE_FILE)]
    pub state_file: PathBuf,
}

/// Under /var/run: the pods' netns paths mean nothing after a reboot.
pub const DEFAULT_STATE_FILE: &str = "/var/run/trellis/cni-agent-state.json";

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .ok_or_else(|| format!("duration {s:?} needs a unit: ms or s"))?;
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} must start with a number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(format!("duration {s:?}: unit must be ms or s")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen for the node proxy on ZDS socket {path}: {source}; is another agent running, and does the directory exist?")]
    ZdsSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("Kubernetes config: {0}")]
    Kube(#[from] trellis_kube::ConfigError),
    #[error("cannot serve the admin port on {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("--cni-plugin not given and no trellis-cni beside this binary ({0}); pass --cni-plugin PATH")]
    NoPlugin(String),
    #[error("cannot listen for the plugin on {path}: {source}; is another agent running, and does the directory exist?")]
    PluginSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds both sockets and runs the agent until the future is dropped.
/// Must be called inside a tokio runtime; binding errors come first, so
/// the caller can report them before anything runs.
pub fn start(
    settings: &Settings,
) -> Result<Agent<impl std::future::Future<Output = ()>>, AgentError> {
    for p in [
        &settings.zds_socket,
        &settings.plugin_socket,
        &settings.state_file,
    ] {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
    }
    let zds =
        SeqpacketListener::bind(&settings.zds_socket).map_err(|source| AgentError::ZdsSocket {
            path: settings.zds_socket.clone(),
            source,
        })?;
    // Owner-only (0600): the plugin asks over it to capture pods.
    let plugin = trellis_netns::seqpacket::owner_only_stream_listener(&settings.plugin_socket)
        .and_then(tokio::net::UnixListener::from_std)
        .map_err(|source| AgentError::PluginSocket {
            path: settings.plugin_socket.clone(),
            source,
        })?;
    let registry = Arc::new(Registry::restore(settings.state_file.clone())?);
    let kube = kube_client(settings)?;
    let admin_listener = std::net::TcpListener::bind(settings.admin_addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|source| AgentError::Admin {
            addr: settings.admin_addr,
            source,
        })?;
    let install = match settings.install_cni {
        true => Some(installer::settings(settings)?),
        false => None,
    };
    let (ops_tx, ops_rx) = mpsc::unbounded_channel();
    let (connected_tx, connected_rx) = watch::channel(false);
    let server = zds_server::ZdsServer {
        listener: zds,
        registry: registry.clone(),
        connected: connected_tx,
        ack_timeout: settings.ack_timeout,
    };
    let policy = match kube {
        Some(_) => EnrollPolicy::Labels {
            istio_labels: settings.istio_labels,
        },
        None => EnrollPolicy::Flags {
            namespaces: settings.ambient_namespaces.iter().cloned().collect(),
            all_namespaces: settings.all_namespaces,
        },
    };
    let metrics = Arc::new(admin::AgentMetrics::default());
    let admin_state = Arc::new(admin::AdminState {
        metrics: metrics.clone(),
        registry: registry.clone(),
        proxy_connected: connected_rx.clone(),
        install_cni: install.is_some(),
    });
    let sandboxes = Arc::new(relabel::Sandboxes::default());
    for (pod, netns, container_id) in registry.sandboxes() {
        sandboxes.remember(relabel::Sandbox {
            pod,
            netns,
            container_id,
        });
    }
    let handler = plugin_server::Handler {
        policy: Arc::new(policy),
        kube: kube.clone().map(|client| kube::KubeFacts { client }),
        metrics: metrics.clone(),
        sandboxes: sandboxes.clone(),
        registry: registry.clone(),
        ops: ops_tx,
        connected: connected_rx,
    };
    let keeper = install.map(|s| installer::Keeper::new(s, metrics));
    tracing::info!(
        zds = %settings.zds_socket.display(),
        plugin = %settings.plugin_socket.display(),
        admin = %admin_listener.local_addr().map_or(settings.admin_addr, |a| a),
        node = %settings.node_name,
        enrollment = %match &kube {
            Some(c) => format!("namespace labels from the API server {}", c.server()),
            None => format!("flags: namespaces {:?}, all {}", settings.ambient_namespaces, settings.all_namespaces),
        },
        restored = registry.len(),
        "trellis-cni-agent listening"
    );
    let exit = installer::ExitPolicy {
        keeper: keeper.clone(),
        kube,
        daemonset: settings.daemonset.clone(),
    };
    let relabel = relabel::run(
        handler.clone(),
        sandboxes,
        settings.istio_labels,
        settings.node_name.clone(),
    );
    let run = async move {
        let install = async {
            if let Some(k) = &keeper {
                k.run().await
            }
        };
        tokio::join!(
            server.run(ops_rx),
            plugin_server::serve(plugin, handler),
            admin::serve(admin_listener, admin_state),
            install,
            relabel,
        );
    };
    Ok(Agent { run, exit })
}

/// A started agent: `run` serves until dropped; `exit` is what to do
/// after (remove the CNI entry on an uninstall).
pub struct Agent<F> {
    pub run: F,
    pub exit: installer::ExitPolicy,
}

fn kube_client(settings: &Settings) -> Result<Option<trellis_kube::Client>, AgentError> {
    let cfg = match (&settings.kubeconfig, settings.in_cluster) {
        (Some(path), _) => trellis_kube::ApiConfig::from_kubeconfig(path)?,
        (None, true) => trellis_kube::ApiConfig::in_cluster()?,
        (None, false) => return Ok(None),
    };
    Ok(Some(
        trellis_kube::Client::new(cfg).with_user_agent("trellis-cni-agent"),
    ))
}
