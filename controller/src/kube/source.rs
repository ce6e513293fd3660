//! The Kubernetes source: one list-then-watch task per resource, feeding
//! one applier that owns the [`ObjectStore`] and calls `on_change` after
//! each batch. The applier is the only writer, so the store needs no lock
//! and a batch is seen whole or not at all.
//!
//! Per resource, `trellis_kube::watch` lists then watches; a relist
//! replaces what the store held of that kind (objects deleted meanwhile
//! go). A CRD that is not installed (404) counts as an empty list, logged,
//! and is retried.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use trellis_kube::watch::{self, WatchEvent, WatchOptions};
use trellis_kube::Client;

use super::event::{key_of, to_doc};
use super::resources::{Resource, DEFAULT_RESOURCES};
use crate::objects::{Kind, ObjectError, ObjectStore};

/// Tuning of the source; the defaults suit a cluster, tests shorten them.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// How often a missing CRD is looked for again.
    pub missing_crd_retry: Duration,
    /// First and largest delay before retrying a failed list or watch.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The server ends each watch after this (it is resumed at once);
    /// with no byte for this plus a minute, the connection is taken as dead.
    pub watch_timeout: Duration,
    /// After a first change, wait this long for more, so that a burst (a
    /// list, a rollout) makes one batch.
    pub batch_window: Duration,
}

impl SourceOptions {
    fn watch(&self) -> WatchOptions {
        WatchOptions {
            missing_crd_retry: self.missing_crd_retry,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            watch_timeout: self.watch_timeout,
        }
    }
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            missing_crd_retry: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            watch_timeout: Duration::from_secs(290),
            batch_window: Duration::from_millis(50),
        }
    }
}

/// What one batch changed, given to `on_change`.
#[derive(Debug, Default)]
pub struct KubeChanges {
    /// Objects rejected in this batch (the store kept their last good
    /// version). [`ObjectStore::errors`] has every current problem.
    pub errors: Vec<ObjectError>,
    /// Sources added, replaced or removed in this batch.
    pub changed: usize,
}

/// Lists and watches the API server into an [`ObjectStore`].
pub struct KubeSource {
    client: Client,
    resources: Vec<Resource>,
    opts: SourceOptions,
}

/// What a resource's watch tells the applier.
type Msg = (Resource, WatchEvent);

impl KubeSource {
    /// Watches [`DEFAULT_RESOURCES`].
    pub fn new(client: Client) -> Self {
        Self::with_resources(client, DEFAULT_RESOURCES.to_vec(), SourceOptions::default())
    }

    pub fn with_resources(client: Client, resources: Vec<Resource>, opts: SourceOptions) -> Self {
        KubeSource {
            client,
            resources,
            opts,
        }
    }

    /// Runs until the returned future is dropped. `on_change` is first
    /// called once every resource has been listed (or found absent), so
    /// the first config published is whole, not a prefix of the cluster;
    /// then after each batch of changes.
    pub async fn run(self, store: ObjectStore, on_change: impl FnMut(&ObjectStore, KubeChanges)) {
        let (tx, rx) = mpsc::channel(1024);
        let mut tasks = tokio::task::JoinSet::new();
        for res in &self.resources {
            tasks.spawn(watch::run(
                self.client.clone(),
                res.target(),
                self.opts.watch(),
                *res,
                tx.clone(),
            ));
        }
        drop(tx);
        let kinds = self.resources.iter().map(|r| r.kind).collect();
        // Dropping this future drops `tasks`, which aborts the watchers.
        apply_loop(rx, store, kinds, self.opts.batch_window, on_change).await;
    }
}

/// The applier's bookkeeping: the sources it put in the store per kind
/// (to remove those a relist no longer has), and which kinds have been
/// listed once.
struct Applier {
    store: ObjectStore,
    known: BTreeMap<Kind, BTreeSet<String>>,
    listed: BTreeSet<Kind>,
}

impl Applier {
    fn apply(&mut self, (res, event): Msg, out: &mut KubeChanges) {
        match event {
            WatchEvent::Upsert(object) => self.upsert(&res, object, out),
            WatchEvent::Delete(object) => {
                if let Some((_, source)) = key_of(&res, &object) {
                    self.known.entry(res.kind).or_default().remove(&source);
                    if self.store.remove_source(&source) {
                        out.changed += 1;
                    }
                }
            }
            WatchEvent::Listed(items) => {
                self.listed.insert(res.kind);
                let mut now = BTreeSet::new();
                for object in items {
                    if let Some((_, source)) = key_of(&res, &object) {
                        now.insert(source);
                    }
                    self.upsert(&res, object, out);
                }
                let before = self.known.remove(&res.kind).unwrap_or_default();
                for gone in before.difference(&now) {
                    if self.store.remove_source(gone) {
                        out.changed += 1;
                    }
                }
                self.known.insert(res.kind, now);
            }
        }
    }

    fn upsert(&mut self, res: &Resource, object: Value, out: &mut KubeChanges) {
        let Some((key, source)) = key_of(res, &object) else {
            tracing::warn!(kind = %res.kind, "object without metadata.name ignored");
            return;
        };
        let doc = to_doc(res, object, key, &source);
        let errors = self.store.replace_docs(&source, vec![doc]);
        for e in &errors {
            tracing::warn!(error = %e, "object rejected; its last good version is kept");
        }
        out.errors.extend(errors);
        self.known.entry(res.kind).or_default().insert(source);
        out.changed += 1;
    }
}

async fn apply_loop(
    mut rx: mpsc::Receiver<Msg>,
    store: ObjectStore,
    kinds: BTreeSet<Kind>,
    window: Duration,
    mut on_change: impl FnMut(&ObjectStore, KubeChanges),
) {
    let mut a = Applier {
        store,
        known: BTreeMap::new(),
        listed: BTreeSet::new(),
    };
    let mut synced = false;
    // Errors of batches held back before the first sync, so they are
    // reported with it.
    let mut pending = KubeChanges::default();
    while let Some(first) = rx.recv().await {
        a.apply(first, &mut pending);
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            a.apply(m, &mut pending);
        }
        if !synced {
            if !kinds.is_subset(&a.listed) {
                continue;
            }
            synced = true;
            tracing::info!(objects = a.store.len(), "kubernetes objects synced");
        } else if pending.changed == 0 && pending.errors.is_empty() {
            continue;
        }
        on_change(&a.store, std::mem::take(&mut pending));
    }
}

#[cfg(test)]
mod tests;
