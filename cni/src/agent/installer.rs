//! Keeps the plugin chained in the node's CNI config while the agent runs
//! (`--install-cni`), and decides at exit whether to take it out.
//!
//! The primary CNI may write its config after the agent starts, or rewrite
//! it later (dropping the entry): the keeper looks again every few seconds
//! and repairs it. [`crate::install`] does the file work.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use trellis_kube::Client;

use super::admin::AgentMetrics;
use super::{AgentError, Settings};
use crate::install::{self, InstallError, InstallSettings, Installed, PLUGIN_TYPE};

/// How often the CNI config is checked.
const RECHECK: Duration = Duration::from_secs(2);

/// The installer's settings from the agent's flags.
pub fn settings(s: &Settings) -> Result<InstallSettings, AgentError> {
    let plugin = match &s.cni_plugin {
        Some(p) => p.clone(),
        None => {
            let exe = std::env::current_exe().unwrap_or_default();
            let beside = exe.with_file_name(PLUGIN_TYPE);
            if !beside.is_file() {
                return Err(AgentError::NoPlugin(beside.display().to_string()));
            }
            beside
        }
    };
    Ok(InstallSettings {
        bin_dir: s.cni_bin_dir.clone(),
        conf_dir: s.cni_conf_dir.clone(),
        plugin,
        agent_socket: s.plugin_socket.clone(),
        fail_open: s.cni_fail_open,
        capture_timeout_ms: s.cni_capture_timeout_ms,
    })
}

pub struct Keeper {
    settings: InstallSettings,
    metrics: Arc<AgentMetrics>,
}

impl Keeper {
    pub fn new(settings: InstallSettings, metrics: Arc<AgentMetrics>) -> Arc<Keeper> {
        Arc::new(Keeper { settings, metrics })
    }

    /// Installs, then keeps the entry in place, until dropped.
    pub async fn run(&self) {
        // The same error every 2 s is logged once, until it changes.
        let mut last_error = String::new();
        loop {
            match install::install(&self.settings) {
                Ok(Installed::Chained(path)) => {
                    tracing::info!(config = %path.display(), bin = %self.settings.bin_dir.display(), "trellis-cni chained into the node's CNI config");
                    last_error.clear();
                    self.metrics.cni_installed.store(true, Relaxed);
                }
                Ok(Installed::Unchanged(_)) => self.metrics.cni_installed.store(true, Relaxed),
                Err(e) => {
                    self.metrics.cni_installed.store(false, Relaxed);
                    let msg = e.to_string();
                    if msg != last_error {
                        match e {
                            InstallError::NoConfig(_) => {
                                tracing::info!(error = %msg, "waiting for the primary CNI")
                            }
                            _ => tracing::warn!(error = %msg, "cannot install the CNI plugin"),
                        }
                        last_error = msg;
                    }
                }
            }
            tokio::time::sleep(RECHECK).await;
        }
    }

    fn uninstall(&self) {
        match install::uninstall(&self.settings.conf_dir) {
            Ok(files) if files.is_empty() => {}
            Ok(files) => {
                tracing::info!(files = ?files, "trellis-cni entry removed from the node's CNI config")
            }
            Err(e) => tracing::warn!(error = %e, "cannot remove the trellis-cni entry"),
        }
    }
}

/// What happens to the CNI entry when the agent stops.
pub struct ExitPolicy {
    pub keeper: Option<Arc<Keeper>>,
    pub kube: Option<Client>,
    /// `NAMESPACE/NAME` of the agent's DaemonSet.
    pub daemonset: Option<String>,
}

/// Whether an exiting agent removes the entry (pure).
#[derive(Debug, PartialEq, Eq)]
pub enum OnExit {
    Remove(&'static str),
    Keep(&'static str),
}

/// `daemonset`: None without an API server; Some(None) when it could not
/// be read; Some(Some(deleting)) when it exists.
pub fn on_exit(kube: bool, daemonset: Option<Option<bool>>) -> OnExit {
    match (kube, daemonset) {
        (false, _) => OnExit::Remove("no API server: every exit is an uninstall"),
        (true, None) => OnExit::Keep("no --daemonset to tell an uninstall from an update"),
        (true, Some(None)) => OnExit::Remove("the agent's DaemonSet is gone: an uninstall"),
        (true, Some(Some(true))) => OnExit::Remove("the agent's DaemonSet is being deleted: an uninstall"),
        (true, Some(Some(false))) => OnExit::Keep(
            "the agent's DaemonSet remains (an update or a node drain): new pods wait for the next agent",
        ),
    }
}

impl ExitPolicy {
    pub async fn run(self) {
        let Some(keeper) = self.keeper else {
            return;
        };
        let ds = match (&self.kube, &self.daemonset) {
            (Some(client), Some(name)) => Some(daemonset_deleting(client, name).await),
            _ => None,
        };
        let decision = on_exit(self.kube.is_some(), ds);
        tracing::info!(?decision, "agent exiting");
        if let OnExit::Remove(_) = decision {
            keeper.uninstall();
        }
    }
}

/// None when the DaemonSet is gone (404); its deletionTimestamp otherwise.
/// A failed read keeps the entry (Some(false)): uninstalling by mistake
/// would let new pods start uncaptured.
async fn daemonset_deleting(client: &Client, name: &str) -> Option<bool> {
    let (ns, n) = name.split_once('/').unwrap_or(("trellis-system", name));
    let path = format!("/apis/apps/v1/namespaces/{ns}/daemonsets/{n}");
    match tokio::time::timeout(Duration::from_secs(5), client.get(&path)).await {
        Ok(Ok(v)) => Some(v.pointer("/metadata/deletionTimestamp").is_some()),
        Ok(Err(e)) if e.status() == Some(404) => None,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the agent's DaemonSet; keeping the CNI entry");
            Some(false)
        }
        Err(_) => {
            tracing::warn!("the API server did not answer in 5 s; keeping the CNI entry");
            Some(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_table() {
        let cases = [
            (false, None, true),
            (false, Some(Some(false)), true),
            (true, None, false),
            (true, Some(None), true),
            (true, Some(Some(true)), true),
            (true, Some(Some(false)), false),
        ];
        for (kube, ds, remove) in cases {
            let got = on_exit(kube, ds);
            assert_eq!(
                matches!(got, OnExit::Remove(_)),
                remove,
                "{kube} {ds:?}: {got:?}"
            );
        }
    }
}
