//! The file source: loads the config file at start, then polls it and hands
//! each valid change to the store as an [`Update::Snapshot`].
//!
//! Polling rather than inotify: a Kubernetes ConfigMap is updated by
//! swapping a symlink (`..data`), which inotify on the file path misses,
//! and polling behaves the same on every filesystem. Each poll reads the
//! file and compares a content hash, so edits that keep the mtime (same
//! second) or the length are still seen.

use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};
use trellis_api::config::{self, ConfigError, LocalConfig};
use trellis_api::Update;

use super::{Source, UpdateSink};

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

/// Polls `path` every `interval` and applies valid changes. A broken file
/// is logged once (naming every problem) and the last good config stays.
#[derive(Debug)]
pub(super) struct FileSource {
    pub(super) path: PathBuf,
    pub(super) interval: Duration,
}

impl Source for FileSource {
    fn run(self: Box<Self>, sink: UpdateSink) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let FileSource { path, interval } = *self;
            let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut seen = Seen::Nothing;
            info!(path = %path.display(), ?interval, "watching config file");
            loop {
                tick.tick().await;
                poll_once(&path, &sink, &mut seen).await;
            }
        })
    }
}

async fn poll_once(path: &Path, sink: &UpdateSink, seen: &mut Seen) {
    let store = sink.store();
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
                sink.rejected();
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
    let applied = match config::parse(&text) {
        Ok(cfg) => sink.apply(Update::Snapshot(cfg)),
        Err(e) => {
            sink.rejected();
            Err(e)
        }
    };
    match applied {
        // Same config as already running (typically the first poll after
        // startup, or a file restored to the good version): not a reload.
        Ok(version) if version == before => {
            debug!(path = %path.display(), version, "config file unchanged");
        }
        Ok(version) => debug!(path = %path.display(), version, "config file loaded"),
        Err(e) => warn!(
            path = %path.display(),
            error = %e,
            version = store.version(),
            "config file rejected; keeping the last good config"
        ),
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
