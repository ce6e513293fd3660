//! The Trellis CNI node agent (`trellis-cni-agent`): long-running, one per
//! node. It serves Istio's ZDS to the node proxy (the proxy connects, as
//! ztunnel does to Istio's agent) and a small JSON socket to the plugin,
//! which it answers only once the node proxy has acknowledged the pod.
//!
//! - [`enroll`]: which pods join the mesh (pure).
//! - [`protocol`]: ZDS messages as bytes, the node proxy's answers (pure).
//! - [`registry`]: the enrolled pods and their capture state.
//! - [`state`]: the pods on disk, for a restarted agent.
//! - [`zds_server`]: the connection to the node proxy, snapshot, capture rules.
//! - [`plugin_server`]: the plugin's requests.

pub mod enroll;
pub mod plugin_server;
pub mod protocol;
pub mod registry;
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
    /// A namespace whose pods join the mesh (repeat for more).
    #[arg(long = "ambient-namespace")]
    pub ambient_namespaces: Vec<String>,
    /// Enroll the pods of every namespace but the system ones.
    #[arg(long)]
    pub all_namespaces: bool,
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
pub fn start(settings: &Settings) -> Result<impl std::future::Future<Output = ()>, AgentError> {
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
    // A socket file left by a previous agent would make bind fail.
    if std::fs::symlink_metadata(&settings.plugin_socket)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
    {
        let _ = std::fs::remove_file(&settings.plugin_socket);
    }
    let plugin = tokio::net::UnixListener::bind(&settings.plugin_socket).map_err(|source| {
        AgentError::PluginSocket {
            path: settings.plugin_socket.clone(),
            source,
        }
    })?;
    let registry = Arc::new(Registry::restore(settings.state_file.clone())?);
    let (ops_tx, ops_rx) = mpsc::unbounded_channel();
    let (connected_tx, connected_rx) = watch::channel(false);
    let server = zds_server::ZdsServer {
        listener: zds,
        registry: registry.clone(),
        connected: connected_tx,
        ack_timeout: settings.ack_timeout,
    };
    let handler = plugin_server::Handler {
        policy: Arc::new(EnrollPolicy {
            namespaces: settings.ambient_namespaces.iter().cloned().collect(),
            all_namespaces: settings.all_namespaces,
        }),
        registry: registry.clone(),
        ops: ops_tx,
        connected: connected_rx,
    };
    tracing::info!(
        zds = %settings.zds_socket.display(),
        plugin = %settings.plugin_socket.display(),
        namespaces = ?settings.ambient_namespaces,
        all_namespaces = settings.all_namespaces,
        restored = registry.len(),
        "trellis-cni-agent listening"
    );
    Ok(async move {
        tokio::join!(server.run(ops_rx), plugin_server::serve(plugin, handler));
    })
}
