//! List-then-watch of one collection, as a stream of [`WatchEvent`]s on a
//! channel: the shape every Kubernetes informer has, kept small.
//!
//! List (paged), then watch from the list's resourceVersion, moving it
//! forward with every event and bookmark. A watch the server ends is
//! resumed from there; a broken one too, after a jittered backoff; a 410
//! Gone lists again, and the new [`WatchEvent::Listed`] replaces all the
//! receiver held (objects deleted meanwhile go). An optional collection (a
//! CRD) that is not installed or not readable (404, 403) is an empty list,
//! logged once, and looked for again.

pub mod step;

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::client::{Client, ClientError};
use crate::percent_encode;
use step::{classify, Step};

/// Items per list page.
const PAGE: usize = 500;

/// One collection to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchTarget {
    /// The collection path, e.g. `/api/v1/namespaces`.
    pub path: String,
    /// More query parameters, already encoded (e.g.
    /// `fieldSelector=spec.nodeName%3Dnode-a`), or empty.
    pub query: String,
    /// For logs: `pods`, `httproutes.gateway.networking.k8s.io`.
    pub display: String,
    /// A CRD that may not be installed: its absence is an empty list.
    pub optional: bool,
}

impl WatchTarget {
    fn url(&self, params: &str) -> String {
        if self.query.is_empty() {
            format!("{}?{params}", self.path)
        } else {
            format!("{}?{}&{params}", self.path, self.query)
        }
    }
}

/// What the receiver is told.
#[derive(Debug, PartialEq)]
pub enum WatchEvent {
    /// The complete current set (a list, or an absent CRD).
    Listed(Vec<Value>),
    /// ADDED or MODIFIED: the object's new state.
    Upsert(Value),
    /// DELETED: its last state.
    Delete(Value),
}

/// Tuning; the defaults suit a cluster, tests shorten them.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// How often a missing CRD is looked for again.
    pub missing_crd_retry: Duration,
    /// First and largest delay before retrying a failed list or watch.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The server ends each watch after this (it is resumed at once);
    /// with no byte for this plus a minute, the connection is taken as dead.
    pub watch_timeout: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            missing_crd_retry: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            watch_timeout: Duration::from_secs(290),
        }
    }
}

/// Why a watch stopped.
enum WatchEnd {
    /// The server closed it (its timeout): resume.
    Closed,
    /// The resourceVersion is gone: list again.
    Relist(String),
    Failed(ClientError),
    /// The receiver is gone: stop.
    Stopped,
}

/// Lists and watches `target` until the receiver of `tx` is dropped. Each
/// event goes out with `tag`, so one receiver can serve several targets.
pub async fn run<T: Clone>(
    client: Client,
    target: WatchTarget,
    opts: WatchOptions,
    tag: T,
    tx: mpsc::Sender<(T, WatchEvent)>,
) {
    let mut backoff = Backoff::new(opts.backoff_initial, opts.backoff_max);
    let mut absent_logged = false;
    let send = |ev: WatchEvent| tx.send((tag.clone(), ev));
    loop {
        let mut rv = match list(&client, &target).await {
            Ok((items, rv)) => {
                if absent_logged {
                    tracing::info!(resource = %target.display, "CRD is now installed");
                    absent_logged = false;
                }
                if send(WatchEvent::Listed(items)).await.is_err() {
                    return;
                }
                backoff.reset();
                rv
            }
            // Not installed (404), or not readable by this role (403): a
            // missing optional kind must not hold back the rest.
            Err(e) if target.optional && matches!(e.status(), Some(404 | 403)) => {
                if !absent_logged {
                    tracing::info!(
                        resource = %target.display,
                        error = %e,
                        retry_secs = opts.missing_crd_retry.as_secs(),
                        "CRD not installed or not readable; its objects are not watched until it is"
                    );
                    absent_logged = true;
                }
                if send(WatchEvent::Listed(Vec::new())).await.is_err() {
                    return;
                }
                tokio::time::sleep(opts.missing_crd_retry).await;
                continue;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(resource = %target.display, error = %e, retry_ms = delay.as_millis() as u64, "list failed");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        loop {
            match watch_once(&client, &target, &opts, &mut rv, &send, &mut backoff).await {
                WatchEnd::Closed => continue,
                WatchEnd::Stopped => return,
                WatchEnd::Relist(message) => {
                    tracing::info!(resource = %target.display, %message, "watch expired; listing again");
                    break;
                }
                WatchEnd::Failed(e) if e.status() == Some(410) => {
                    tracing::info!(resource = %target.display, error = %e, "watch expired; listing again");
                    break;
                }
                WatchEnd::Failed(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(resource = %target.display, error = %e, resource_version = %rv, retry_ms = delay.as_millis() as u64, "watch failed; resuming");
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
async fn list(client: &Client, target: &WatchTarget) -> Result<(Vec<Value>, String), ClientError> {
    let mut items = Vec::new();
    let mut cont = String::new();
    loop {
        let mut params = format!("limit={PAGE}");
        if !cont.is_empty() {
            params.push_str("&continue=");
            params.push_str(&percent_encode(&cont));
        }
        let mut page = client.get(&target.url(&params)).await?;
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
                    what: format!("list {}", target.display),
                    message: "the list has no metadata.resourceVersion".into(),
                });
            }
            return Ok((items, rv));
        }
    }
}

async fn watch_once<F, Fut, E>(
    client: &Client,
    target: &WatchTarget,
    opts: &WatchOptions,
    rv: &mut String,
    send: &F,
    backoff: &mut Backoff,
) -> WatchEnd
where
    F: Fn(WatchEvent) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let path = target.url(&format!(
        "watch=1&allowWatchBookmarks=true&resourceVersion={}&timeoutSeconds={}",
        percent_encode(rv),
        opts.watch_timeout.as_secs().max(1)
    ));
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
        let ev = match classify(&line) {
            Step::Upsert { object, rv: new } => {
                if let Some(new) = new {
                    *rv = new;
                }
                WatchEvent::Upsert(object)
            }
            Step::Delete { object, rv: new } => {
                if let Some(new) = new {
                    *rv = new;
                }
                WatchEvent::Delete(object)
            }
            Step::Bookmark { rv: new } => {
                *rv = new;
                continue;
            }
            Step::Relist { message } => return WatchEnd::Relist(message),
            Step::Restart { message } => {
                return WatchEnd::Failed(ClientError::Decode {
                    what: format!("watch {}", target.display),
                    message,
                })
            }
        };
        if send(ev).await.is_err() {
            return WatchEnd::Stopped;
        }
    }
}
