//! Config file loading and polling.
//!
//! Polling rather than inotify: a Kubernetes ConfigMap is updated by
//! swapping a symlink (`..data`), which inotify on the file path misses,
//! and polling behaves the same on every filesystem. Each poll reads the
//! file and compares a content hash, so edits that keep the mtime (same
//! second) or the length are still seen.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::state::StateStore;
use trellis_api::config::{self, ConfigError, LocalConfig};

/// `trellis_config_reloads_total{result="success"|"failure"}`.
#[derive(Debug)]
pub struct ConfigMetrics {
    success: IntCounter,
    failure: IntCounter,
}

impl ConfigMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn new(registry: &Registry) -> ConfigMetrics {
        let vec = IntCounterVec::new(
            Opts::new(
                "trellis_config_reloads_total",
                "Config file reloads, by result; a failure keeps the last good config",
            ),
            &["result"],
        )
        .expect("static metric definition is valid");
        crate::metrics::register(registry, &vec);
        ConfigMetrics {
            success: vec.with_label_values(&["success"]),
            failure: vec.with_label_values(&["failure"]),
        }
    }

    pub fn successes(&self) -> u64 {
        self.success.get()
    }

    pub fn failures(&self) -> u64 {
        self.failure.get()
    }
}

/// Reads and validates the config at startup. Unlike the watcher, any
/// problem here is the caller's to report: there is no last good config.
pub fn load_file(path: impl AsRef<Path>) -> Result<LocalConfig, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    config::parse(&text)
}

/// What the watcher last saw, so each change is acted on and logged once.
#[derive(Debug, PartialEq)]
enum Seen {
    Nothing,
    /// The file could not be read, with this error kind.
    Unreadable(std::io::ErrorKind),
    /// Content with this hash was read (applied or refused).
    Content(u64),
}

/// Polls `path` every `interval` and applies valid changes to `store`.
/// A broken file is logged once (naming every problem) and the last good
/// config stays. Runs until the task is dropped.
pub async fn watch_file(
    path: PathBuf,
    store: Arc<StateStore>,
    interval: Duration,
    metrics: Option<Arc<ConfigMetrics>>,
) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seen = Seen::Nothing;
    info!(path = %path.display(), ?interval, "watching config file");
    loop {
        tick.tick().await;
        poll_once(&path, &store, metrics.as_deref(), &mut seen).await;
    }
}

async fn poll_once(
    path: &Path,
    store: &StateStore,
    metrics: Option<&ConfigMetrics>,
    seen: &mut Seen,
) {
    let text = match read_stable(path).await {
        Ok(Some(text)) => text,
        // Changed while being read: a writer is busy, look again next tick.
        Ok(None) => return,
        Err(e) => {
            let now = Seen::Unreadable(e.kind());
            if *seen != now {
                warn!(
                    path = %path.display(),
                    error = %e,
                    version = store.version(),
                    "cannot read config file; keeping the last good config"
                );
                if let Some(m) = metrics {
                    m.failure.inc();
                }
                *seen = now;
            }
            return;
        }
    };
    let hash = content_hash(&text);
    if *seen == Seen::Content(hash) {
        return;
    }
    if matches!(seen, Seen::Unreadable(_)) {
        info!(path = %path.display(), "config file is readable again");
    }
    *seen = Seen::Content(hash);
    let before = store.version();
    match config::parse(&text).and_then(|cfg| store.apply(cfg)) {
        // Same config as already running (typically the first poll after
        // startup, or a file restored to the good version): not a reload.
        Ok(version) if version == before => {
            debug!(path = %path.display(), version, "config file unchanged");
        }
        Ok(version) => {
            debug!(path = %path.display(), version, "config file loaded");
            if let Some(m) = metrics {
                m.success.inc();
            }
        }
        Err(e) => {
            warn!(
                path = %path.display(),
                error = %e,
                version = store.version(),
                "config file rejected; keeping the last good config"
            );
            if let Some(m) = metrics {
                m.failure.inc();
            }
        }
    }
}

/// Reads the file, or `None` if its mtime or length changed during the read
/// (a torn read of a file being written in place).
async fn read_stable(path: &Path) -> std::io::Result<Option<String>> {
    let before = stamp(path).await?;
    let text = tokio::fs::read_to_string(path).await?;
    let after = stamp(path).await?;
    Ok((before == after && after.1 == text.len() as u64).then_some(text))
}

async fn stamp(path: &Path) -> std::io::Result<(Option<SystemTime>, u64)> {
    // metadata() follows symlinks, so a ConfigMap's swapped target is seen.
    let m = tokio::fs::metadata(path).await?;
    Ok((m.modified().ok(), m.len()))
}

fn content_hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests;
