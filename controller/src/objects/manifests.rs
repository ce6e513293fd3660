//! A folder of manifests as a source of objects: `*.yaml`, `*.yml` and
//! `*.json` files found recursively (hidden files and folders skipped),
//! watched by polling. A scan reads every file and compares a hash of its
//! content (an mtime has a coarse granularity on some filesystems, and an
//! edit can keep the length), re-parsing only files whose content changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::ObjectError;
use super::kinds::parse_text;
use super::store::ObjectStore;

/// Bounds per scan, against a folder that is not what the operator meant
/// (a home directory, a symlink loop).
const MAX_FILES: usize = 10_000;
const MAX_DEPTH: usize = 16;
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot read manifests folder {}: {source}; check that it exists and is readable", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifests folder {} holds more than {MAX_FILES} manifest files; point it at the folder of mesh manifests only", path.display())]
    TooManyFiles { path: PathBuf },
}

/// What one scan did.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// A file was added, changed or removed since the last scan.
    pub changed: bool,
    /// Problems found in the files (re)read by this scan, and every
    /// duplicate definition in the store. [`ObjectStore::errors`] has all
    /// current problems, including those of files not re-read.
    pub errors: Vec<ObjectError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
}

fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() uses fixed keys: stable across scans.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The folder, and what was seen of each file at the last scan.
#[derive(Debug)]
pub struct ManifestsDir {
    root: PathBuf,
    /// Content hash of each file at the last scan.
    seen: BTreeMap<PathBuf, u64>,
}

impl ManifestsDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ManifestsDir {
            root: root.into(),
            seen: BTreeMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Walks the folder and brings `store` up to date with it. A file that
    /// cannot be read is reported and its last good objects are kept.
    pub fn scan(&mut self, store: &mut ObjectStore) -> Result<ScanResult, DirError> {
        let mut files = Vec::new();
        walk(&self.root, 0, &mut files)?;
        if files.len() > MAX_FILES {
            return Err(DirError::TooManyFiles {
                path: self.root.clone(),
            });
        }
        let mut result = ScanResult::default();
        let current: BTreeMap<PathBuf, Stamp> = files.into_iter().collect();
        let gone: Vec<PathBuf> = self
            .seen
            .keys()
            .filter(|p| !current.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            self.seen.remove(&path);
            store.remove_source(&self.source_name(&path));
            result.changed = true;
        }
        for (path, stamp) in current {
            let source = self.source_name(&path);
            let bytes = if stamp.len > MAX_FILE_BYTES {
                Err(format!("it is larger than {MAX_FILE_BYTES} bytes"))
            } else {
                std::fs::read(&path).map_err(|e| e.to_string())
            };
            let hash = match &bytes {
                Ok(b) => content_hash(b),
                Err(_) => 0,
            };
            if self.seen.get(&path) == Some(&hash) {
                continue;
            }
            let text = bytes
                .and_then(|b| String::from_utf8(b).map_err(|_| "it is not UTF-8 text".to_string()));
            match text {
                Ok(text) => {
                    let json = path.extension().is_some_and(|e| e == "json");
                    let docs = parse_text(&source, &text, json);
                    result.errors.extend(store.replace_docs(&source, docs));
                }
                Err(message) => {
                    let error = ObjectError::Malformed {
                        doc: super::DocRef {
                            source: source.clone(),
                            index: 0,
                        },
                        message: format!("cannot read the file: {message}"),
                    };
                    store.source_failed(&source, error.clone());
                    result.errors.push(error);
                }
            }
            self.seen.insert(path, hash);
            result.changed = true;
        }
        // Duplicates can involve files not re-read this time; report them
        // once per scan that changed something, not once per file.
        if result.changed {
            result.errors.extend(store.duplicates().iter().cloned());
        }
        Ok(result)
    }

    /// Paths relative to the folder read best in messages and sort stably.
    fn source_name(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

fn hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, Stamp)>) -> Result<(), DirError> {
    let read_err = |source| DirError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if hidden(&path) || out.len() > MAX_FILES {
            continue;
        }
        // A file that vanished between listing and stat is simply gone.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, out)?;
            }
        } else if meta.is_file() && is_manifest(&path) {
            out.push((path, Stamp { len: meta.len() }));
        }
    }
    Ok(())
}

/// Scans every `interval` and calls `on_change` after each scan that
/// changed something (and after the first). Runs until the task is dropped.
pub async fn poll(
    mut dir: ManifestsDir,
    mut store: ObjectStore,
    interval: Duration,
    mut on_change: impl FnMut(&ObjectStore, ScanResult),
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match dir.scan(&mut store) {
            Ok(r) if r.changed => on_change(&store, r),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "manifests scan failed; keeping the last good objects")
            }
        }
    }
}

#[cfg(test)]
mod tests;
