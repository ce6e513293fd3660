//! Kubernetes mode: a namespace labelled (or unlabelled) after its pods
//! started. Ambient enrollment needs no pod restart: the agent remembers
//! every sandbox it was asked to ADD on this node (its netns path lives as
//! long as the sandbox), watches namespaces, and when a namespace's
//! `dataplane-mode` changes it decides each of that namespace's sandboxes
//! again, with fresh facts from the API server, through the plugin's own
//! ADD and DEL paths: a pod now in the mesh is handed to the node proxy
//! and captured (its open connections stay outside the mesh; new ones are
//! captured), a pod now out of it is released and its rules removed.
//!
//! Not watched: a pod's own label changing while it runs (it is decided
//! again when its namespace changes, or at its next sandbox). Sandboxes
//! that were not enrolled are remembered in memory only: after an agent
//! restart, only enrolled pods are known again (from the state file).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::mpsc;
use trellis_kube::labels::{self, Mode};
use trellis_kube::watch::{self, WatchEvent, WatchOptions, WatchTarget};

use super::plugin_server::Handler;
use crate::wire::{PluginCommand, PluginRequest, PodRef};

/// How long a re-decided ADD waits for the node proxy.
const RELABEL_WAIT_MS: u64 = 10_000;

/// A sandbox the runtime added on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    pub pod: PodRef,
    pub netns: PathBuf,
    pub container_id: String,
}

/// The sandboxes of this node, by pod uid.
#[derive(Debug, Default)]
pub struct Sandboxes(Mutex<BTreeMap<String, Sandbox>>);

impl Sandboxes {
    pub fn remember(&self, s: Sandbox) {
        self.lock().insert(s.pod.uid.clone(), s);
    }

    /// Forgets the pod's sandbox, unless a newer one replaced it.
    pub fn forget(&self, uid: &str, container_id: &str) {
        let mut m = self.lock();
        if m.get(uid).is_some_and(|s| s.container_id == container_id) {
            m.remove(uid);
        }
    }

    fn in_namespace(&self, ns: &str) -> Vec<Sandbox> {
        self.lock()
            .values()
            .filter(|s| s.pod.namespace == ns)
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Sandbox>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The namespaces whose enrollment changed between two views (pure). A
/// namespace absent from a view is `Unset`.
pub fn changed(
    before: &BTreeMap<String, Mode>,
    after: &BTreeMap<String, Mode>,
) -> BTreeSet<String> {
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter(|n| {
            before.get(*n).copied().unwrap_or(Mode::Unset)
                != after.get(*n).copied().unwrap_or(Mode::Unset)
        })
        .cloned()
        .collect()
}

fn mode_of(ns: &Value, istio_labels: bool) -> Option<(String, Mode)> {
    let name = ns.pointer("/metadata/name")?.as_str()?.to_string();
    let labels = super::kube::labels_of(ns);
    Some((name, labels::mode(Some(&labels), istio_labels)))
}

/// Watches namespaces until dropped, re-deciding sandboxes as their
/// namespace's enrollment changes.
pub async fn run(handler: Handler, sandboxes: Arc<Sandboxes>, istio_labels: bool) {
    let Some(kube) = handler.kube.clone() else {
        return;
    };
    let target = WatchTarget {
        path: "/api/v1/namespaces".into(),
        query: String::new(),
        display: "namespaces".into(),
        optional: false,
    };
    let (tx, mut rx) = mpsc::channel(64);
    let watcher = watch::run(kube.client, target, WatchOptions::default(), (), tx);
    let apply = async move {
        let mut modes: BTreeMap<String, Mode> = BTreeMap::new();
        let mut first = true;
        while let Some(((), ev)) = rx.recv().await {
            let mut next = modes.clone();
            match ev {
                WatchEvent::Listed(items) => {
                    next = items
                        .iter()
                        .filter_map(|n| mode_of(n, istio_labels))
                        .collect();
                }
                WatchEvent::Upsert(n) => {
                    if let Some((name, mode)) = mode_of(&n, istio_labels) {
                        next.insert(name, mode);
                    }
                }
                WatchEvent::Delete(n) => {
                    if let Some((name, _)) = mode_of(&n, istio_labels) {
                        next.remove(&name);
                    }
                }
            }
            // The first list decides every known sandbox again: labels
            // may have changed while the agent was away.
            let todo: BTreeSet<String> = if first {
                next.keys().cloned().collect()
            } else {
                changed(&modes, &next)
            };
            first = false;
            modes = next;
            for ns in todo {
                for s in sandboxes.in_namespace(&ns) {
                    let h = handler.clone();
                    tokio::spawn(async move { redecide(&h, s).await });
                }
            }
        }
    };
    tokio::join!(watcher, apply);
}

/// Runs the sandbox through ADD (enrolls it if it now belongs in the
/// mesh) or DEL (releases it if it no longer does), as the plugin would.
async fn redecide(h: &Handler, s: Sandbox) {
    let enrolled = h.registry.state(&s.pod.uid).is_some();
    let wants = h.wants(&s.pod).await;
    let who = format!("{}/{}", s.pod.namespace, s.pod.name);
    let command = match (wants, enrolled) {
        (Some(true), false) => PluginCommand::Add,
        (Some(false), true) => PluginCommand::Del,
        _ => return,
    };
    let req = PluginRequest {
        command,
        container_id: s.container_id,
        netns: Some(s.netns.display().to_string()),
        pod: Some(s.pod),
        timeout_ms: RELABEL_WAIT_MS,
    };
    let reply = match command {
        PluginCommand::Del => h.release(req).await,
        _ => h.handle(req).await,
    };
    tracing::info!(pod = %who, ?command, ?reply, "namespace enrollment changed; pod decided again");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_table() {
        let m = |pairs: &[(&str, Mode)]| -> BTreeMap<String, Mode> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let cases = [
            (
                "labelled",
                m(&[("a", Mode::Unset)]),
                m(&[("a", Mode::Ambient)]),
                vec!["a"],
            ),
            (
                "unlabelled",
                m(&[("a", Mode::Ambient)]),
                m(&[("a", Mode::Unset)]),
                vec!["a"],
            ),
            (
                "same",
                m(&[("a", Mode::Ambient)]),
                m(&[("a", Mode::Ambient)]),
                vec![],
            ),
            ("new and unset", m(&[]), m(&[("b", Mode::Unset)]), vec![]),
            (
                "new and ambient",
                m(&[]),
                m(&[("b", Mode::Ambient)]),
                vec!["b"],
            ),
            (
                "deleted ambient",
                m(&[("a", Mode::Ambient)]),
                m(&[]),
                vec!["a"],
            ),
            (
                "ambient to none",
                m(&[("a", Mode::Ambient)]),
                m(&[("a", Mode::Excluded)]),
                vec!["a"],
            ),
        ];
        for (name, before, after, want) in cases {
            let got: Vec<String> = changed(&before, &after).into_iter().collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_newer_sandbox_is_not_forgotten_by_an_old_del() {
        let pod = PodRef {
            namespace: "demo".into(),
            name: "p".into(),
            uid: "u".into(),
            service_account: String::new(),
        };
        let s = Sandboxes::default();
        s.remember(Sandbox {
            pod: pod.clone(),
            netns: "/n1".into(),
            container_id: "c1".into(),
        });
        s.remember(Sandbox {
            pod,
            netns: "/n2".into(),
            container_id: "c2".into(),
        });
        s.forget("u", "c1");
        assert_eq!(s.in_namespace("demo").len(), 1);
        s.forget("u", "c2");
        assert!(s.in_namespace("demo").is_empty());
    }
}
