//! The Kubernetes source: one list-then-watch task per resource, feeding
//! one applier that owns the [`ObjectStore`] and calls `on_change` after
//! each batch. The applier is the only writer, so the store needs no lock
//! and a batch is seen whole or not at all.
//!
//! Per resource: list (paged), then watch from the list's
//! resourceVersion, moving it forward with every event and bookmark. A
//! watch the server ends is resumed from there; a broken one too, after a
//! jittered backoff; a 410 Gone lists again, and the list replaces what
//! the store held of that kind (objects deleted meanwhile go). A CRD that
//! is not installed (404) counts as an empty list, logged, and is
//! retried.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::backoff::Backoff;
use super::client::{Client, ClientError};
use super::event::{classify, key_of, to_doc, Step};
use super::resources::{Resource, DEFAULT_RESOURCES};
use crate::objects::{Kind, ObjectError, ObjectStore};

/// Items per list page.
const PAGE: usize = 500;

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

/// What a resource's task tells the applier.
enum Msg {
    /// The complete current set of a kind (a list, or an absent CRD).
    Listed {
        res: Resource,
        items: Vec<Value>,
    },
    Upsert {
        res: Resource,
        object: Value,
    },
    Delete {
        res: Resource,
        object: Value,
    },
}

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
            tasks.spawn(watch_resource(
                self.client.clone(),
                *res,
                self.opts.clone(),
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
    fn apply(&mut self, msg: Msg, out: &mut KubeChanges) {
        match msg {
            Msg::Upsert { res, object } => self.upsert(&res, object, out),
            Msg::Delete { res, object } => {
                if let Some((_, source)) = key_of(&res, &object) {
                    self.known.entry(res.kind).or_default().remove(&source);
                    if self.store.remove_source(&source) {
                        out.changed += 1;
                    }
                }
            }
            Msg::Listed { res, items } => {
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

/// Why a watch stopped.
enum WatchEnd {
    /// The server closed it (its timeout): resume.
    Closed,
    /// The resourceVersion is gone: list again.
    Relist(String),
    Failed(ClientError),
    /// The applier is gone: stop.
    Stopped,
}

async fn watch_resource(client: Client, res: Resource, opts: SourceOptions, tx: mpsc::Sender<Msg>) {
    let mut backoff = Backoff::new(opts.backoff_initial, opts.backoff_max);
    let mut absent_logged = false;
    loop {
        let mut rv = match list(&client, &res).await {
            Ok((items, rv)) => {
                if absent_logged {
                    tracing::info!(resource = %res.display(), "CRD is now installed");
                    absent_logged = false;
                }
                if tx.send(Msg::Listed { res, items }).await.is_err() {
                    return;
                }
                backoff.reset();
                rv
            }
            // Not installed (404), or not readable by the controller's
            // role (403): a missing optional kind must not hold back the
            // rest of the mesh's config.
            Err(e) if res.optional && matches!(e.status(), Some(404 | 403)) => {
                if !absent_logged {
                    tracing::info!(
                        resource = %res.display(),
                        error = %e,
                        retry_secs = opts.missing_crd_retry.as_secs(),
                        "CRD not installed or not readable; its objects are not watched until it is"
                    );
                    absent_logged = true;
                }
                let items = Vec::new();
                if tx.send(Msg::Listed { res, items }).await.is_err() {
                    return;
                }
                tokio::time::sleep(opts.missing_crd_retry).await;
                continue;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(resource = %res.display(), error = %e, retry_ms = delay.as_millis() as u64, "list failed");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        loop {
            match watch_once(&client, &res, &opts, &mut rv, &tx, &mut backoff).await {
                WatchEnd::Closed => continue,
                WatchEnd::Stopped => return,
                WatchEnd::Relist(message) => {
                    tracing::info!(resource = %res.display(), %message, "watch expired; listing again");
                    break;
                }
                WatchEnd::Failed(e) if e.status() == Some(410) => {
                    tracing::info!(resource = %res.display(), error = %e, "watch expired; listing again");
                    break;
                }
                WatchEnd::Failed(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(resource = %res.display(), error = %e, resource_version = %rv, retry_ms = delay.as_millis() as u64, "watch failed; resuming");
                    tokio::time::sleep(delay).await;
                    // A CRD removed meanwhile: its list says so.
                    if e.status() == Some(404) {
                        break;
                    }
                }
            }
        }
    }
}

/// Lists every page; returns the items and the list's resourceVersion.
async fn list(client: &Client, res: &Resource) -> Result<(Vec<Value>, String), ClientError> {
    let mut items = Vec::new();
    let mut cont = String::new();
    loop {
        let mut path = format!("{}?limit={PAGE}", res.path());
        if !cont.is_empty() {
            path.push_str("&continue=");
            path.push_str(&percent_encode(&cont));
        }
        let mut page = client.get(&path).await?;
        let meta = page.get("metadata").cloned().unwrap_or(Value::Null);
        if let Some(Value::Array(list)) = page.get_mut("items").map(Value::take) {
            items.extend(list);
        }
        cont = meta
            .get("continue")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if cont.is_empty() {
            let rv = meta
                .get("resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if rv.is_empty() {
                return Err(ClientError::Decode {
                    what: format!("list {}", res.display()),
                    message: "the list has no metadata.resourceVersion".into(),
                });
            }
            return Ok((items, rv));
        }
    }
}

async fn watch_once(
    client: &Client,
    res: &Resource,
    opts: &SourceOptions,
    rv: &mut String,
    tx: &mpsc::Sender<Msg>,
    backoff: &mut Backoff,
) -> WatchEnd {
    let path = format!(
        "{}?watch=1&allowWatchBookmarks=true&resourceVersion={}&timeoutSeconds={}",
        res.path(),
        percent_encode(rv),
        opts.watch_timeout.as_secs().max(1)
    );
    let mut lines = match client.watch(&path).await {
        Ok(l) => l,
        Err(e) => return WatchEnd::Failed(e),
    };
    let idle = opts.watch_timeout + Duration::from_secs(60);
    loop {
        let line = match lines.next_line(idle).await {
            Ok(Some(l)) => l,
            Ok(None) => return WatchEnd::Closed,
            Err(e) => return WatchEnd::Failed(e),
        };
        // An event arrived: the connection works again.
        backoff.reset();
        let msg = match classify(&line) {
            Step::Upsert { object, rv: new } => {
                if let Some(new) = new {
                    *rv = new;
                }
                Msg::Upsert { res: *res, object }
            }
            Step::Delete { object, rv: new } => {
                if let Some(new) = new {
                    *rv = new;
                }
                Msg::Delete { res: *res, object }
            }
            Step::Bookmark { rv: new } => {
                *rv = new;
                continue;
            }
            Step::Relist { message } => return WatchEnd::Relist(message),
            Step::Restart { message } => {
                return WatchEnd::Failed(ClientError::Decode {
                    what: format!("watch {}", res.display()),
                    message,
                })
            }
        };
        if tx.send(msg).await.is_err() {
            return WatchEnd::Stopped;
        }
    }
}

/// For query values the API server hands out (resourceVersions and
/// continue tokens: base64, digits).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
