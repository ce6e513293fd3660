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
//! A running pod's own label is watched too (the node's pods, by
//! `spec.nodeName`, when `--node-name` is given). Sandboxes that were not
//! enrolled are remembered in memory only: after an agent restart, only
//! enrolled pods are known again (from the state file).

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

    /// The sandbox of pod `namespace/name`.
    fn named(&self, key: &str) -> Option<Sandbox> {
        self.lock()
            .values()
            .find(|s| format!("{}/{}", s.pod.namespace, s.pod.name) == key)
            .cloned()
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

/// The key and dataplane mode of a namespace (`name`) or pod
/// (`namespace/name`).
fn mode_of(obj: &Value, istio_labels: bool) -> Option<(String, Mode)> {
    let meta = obj.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let key = match meta.get("namespace").and_then(Value::as_str) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    };
    let labels = super::kube::labels_of(obj);
    Some((key, labels::mode(Some(&labels), istio_labels)))
}

/// The view after one watch event.
fn next_view(view: &BTreeMap<String, Mode>, ev: WatchEvent, istio: bool) -> BTreeMap<String, Mode> {
    let mut next = view.clone();
    match ev {
        WatchEvent::Listed(items) => {
            next = items.iter().filter_map(|o| mode_of(o, istio)).collect();
        }
        WatchEvent::Upsert(o) => {
            if let Some((k, m)) = mode_of(&o, istio) {
                next.insert(k, m);
            }
        }
        WatchEvent::Delete(o) => {
            if let Some((k, _)) = mode_of(&o, istio) {
                next.remove(&k);
            }
        }
    }
    next
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Watched {
    Namespaces,
    /// The pods of this node (`spec.nodeName`): a running pod's own label.
    Pods,
}

/// Watches namespaces (and this node's pods when its name is known) until
/// dropped, re-deciding sandboxes as their enrollment labels change.
pub async fn run(handler: Handler, sandboxes: Arc<Sandboxes>, istio_labels: bool, node: String) {
    let Some(kube) = handler.kube.clone() else {
        return;
    };
    let (tx, mut rx) = mpsc::channel(64);
    let namespaces = watch::run(
        kube.client.clone(),
        WatchTarget {
            path: "/api/v1/namespaces".into(),
            query: String::new(),
            display: "namespaces".into(),
            optional: false,
        },
        WatchOptions::default(),
        Watched::Namespaces,
        tx.clone(),
    );
    let pods = async {
        if node.is_empty() {
            tracing::info!("no --node-name: a running pod's own dataplane-mode label is read only at its next sandbox");
            return;
        }
        let selector = format!("spec.nodeName={node}");
        let target = WatchTarget {
            path: "/api/v1/pods".into(),
            query: format!("fieldSelector={}", trellis_kube::percent_encode(&selector)),
            display: format!("pods on {node}"),
            optional: false,
        };
        watch::run(
            kube.client.clone(),
            target,
            WatchOptions::default(),
            Watched::Pods,
            tx,
        )
        .await
    };
    let apply = async move {
        let mut views: BTreeMap<Watched, (BTreeMap<String, Mode>, bool)> = BTreeMap::new();
        while let Some((which, ev)) = rx.recv().await {
            let (view, listed) = views.entry(which).or_default();
            let next = next_view(view, ev, istio_labels);
            let todo: Vec<Sandbox> = match (which, *listed) {
                // The first list of namespaces decides every known sandbox
                // again: labels may have changed while the agent was away.
                (Watched::Namespaces, false) => next
                    .keys()
                    .flat_map(|ns| sandboxes.in_namespace(ns))
                    .collect(),
                (Watched::Namespaces, true) => changed(view, &next)
                    .iter()
                    .flat_map(|ns| sandboxes.in_namespace(ns))
                    .collect(),
                (Watched::Pods, false) => Vec::new(),
                (Watched::Pods, true) => changed(view, &next)
                    .iter()
                    .filter_map(|key| sandboxes.named(key))
                    .collect(),
            };
            *view = next;
            *listed = true;
            for s in todo {
                let h = handler.clone();
                tokio::spawn(async move { redecide(&h, s).await });
            }
        }
    };
    tokio::join!(namespaces, pods, apply);
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
    fn views_follow_events_keyed_by_namespace_or_pod() {
        use serde_json::json;
        let ns = |labels: Value| json!({"metadata": {"name": "demo", "labels": labels}});
        let pod = json!({"metadata": {"name": "p", "namespace": "demo",
                          "labels": {"istio.io/dataplane-mode": "none"}}});
        let v = next_view(
            &BTreeMap::new(),
            WatchEvent::Listed(vec![ns(json!({}))]),
            false,
        );
        assert_eq!(v.get("demo"), Some(&Mode::Unset));
        let amb = json!({"trellis.dev/dataplane-mode": "ambient"});
        let v = next_view(&v, WatchEvent::Upsert(ns(amb.clone())), false);
        assert_eq!(v.get("demo"), Some(&Mode::Ambient));
        let v = next_view(&v, WatchEvent::Delete(ns(amb)), false);
        assert!(v.is_empty());
        let v = next_view(&v, WatchEvent::Upsert(pod.clone()), false);
        assert_eq!(v.get("demo/p"), Some(&Mode::Unset), "istio label ignored");
        let v = next_view(&v, WatchEvent::Upsert(pod), true);
        assert_eq!(v.get("demo/p"), Some(&Mode::Excluded));
        let v = next_view(&v, WatchEvent::Upsert(json!({"metadata": {}})), true);
        assert_eq!(v.len(), 1, "an object without a name changes nothing");
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
