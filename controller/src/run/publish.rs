//! Objects → config → xDS snapshot, published on two watch channels: the
//! config for the CA's authorization, the snapshot for the xDS streams.
//! Both are replaced together, and only when the served resources changed,
//! so an edit that changes nothing (or a rejected manifest whose last good
//! version is kept) pushes nothing to the proxies.
//!
//! The translation runs whole; what follows it is incremental: the new
//! config is compared with the last published one ([`encode::diff`]), only
//! the resources that differ are encoded, and the new snapshot is the last
//! one patched with them, sharing every untouched entry.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};
use trellis_api::config::LocalConfig;

use super::metrics::Metrics;
use crate::objects::{translate, ObjectStore, ScanResult, TranslateOptions};
use crate::xds::{encode, Snapshot};

/// What one [`Publisher::update`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new config and snapshot went out; the snapshot's version.
    Published(String),
    /// The config is the one already published.
    Unchanged,
    /// The config could not be encoded; the last published one stays.
    Failed,
}

/// Where the last [`Publisher::update`] spent its time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    pub translate: Duration,
    /// Comparing with the last config and encoding what differs.
    pub encode: Duration,
    /// Patching the last snapshot.
    pub snapshot: Duration,
}

/// Holds the sending side of both channels and what was last published.
pub struct Publisher {
    opts: TranslateOptions,
    mesh: watch::Sender<Arc<LocalConfig>>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    /// The last config published, `None` before the first.
    last: Option<Arc<LocalConfig>>,
    /// Translation problems already logged: they are recomputed on every
    /// change, and repeating them all on each edit would bury the new ones.
    reported: BTreeSet<String>,
    metrics: Arc<Metrics>,
    timings: Timings,
}

impl Publisher {
    /// Channels start empty; nothing is ready until the first publish.
    pub fn new(opts: TranslateOptions, metrics: Arc<Metrics>) -> Publisher {
        Publisher {
            opts,
            mesh: watch::Sender::new(Arc::default()),
            snapshots: watch::Sender::new(Arc::default()),
            last: None,
            reported: BTreeSet::new(),
            metrics,
            timings: Timings::default(),
        }
    }

    pub fn mesh(&self) -> watch::Receiver<Arc<LocalConfig>> {
        self.mesh.subscribe()
    }

    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.subscribe()
    }

    /// The split of the last update's time.
    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// Logs the scan's problems, translates the store and publishes the
    /// result if it differs from the last one.
    pub fn update(&mut self, store: &ObjectStore, scan: ScanResult) -> Outcome {
        for e in &scan.errors {
            warn!(error = %e, "manifest problem; the last good version of the object is kept");
        }
        self.metrics.set(&self.metrics.objects, store.len());
        self.metrics
            .set(&self.metrics.object_errors, store.errors().len());

        let started = Instant::now();
        let translation = translate(store, &self.opts);
        let translated = Instant::now();
        let current: BTreeSet<String> = translation.errors.iter().map(|e| e.to_string()).collect();
        for e in current.difference(&self.reported) {
            warn!(error = %e, "object not translated (or translated in part)");
        }
        self.metrics
            .set(&self.metrics.translation_errors, current.len());
        self.reported = current;

        let empty = LocalConfig::default();
        let diff = encode::diff(
            self.last.as_deref().unwrap_or(&empty),
            &translation.config,
            &self.opts.network,
        );
        let encoded = Instant::now();
        self.timings = Timings {
            translate: translated - started,
            encode: encoded - translated,
            snapshot: Duration::ZERO,
        };
        // The first config is published even if empty: readiness waits on it.
        if self.last.is_some() && diff.is_empty() {
            return Outcome::Unchanged;
        }
        let mut patch = self.snapshots.borrow().patch();
        diff.apply_to(&mut patch);
        let snapshot = match patch.apply() {
            Ok(s) => s,
            Err(e) => {
                self.metrics
                    .snapshot_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "cannot build the xds snapshot; the last published config stays");
                return Outcome::Failed;
            }
        };
        self.timings.snapshot = encoded.elapsed();
        let config = Arc::new(translation.config);
        let version = snapshot.version().to_string();
        info!(
            version,
            workloads = config.workloads.len(),
            services = config.services.len(),
            policies = config.policies.len() + config.authorization_policies.len(),
            "config published"
        );
        self.metrics.published(&config, &version);
        // send_replace: the value must change even while no stream listens.
        let old_mesh = self.mesh.send_replace(config.clone());
        let old_snapshot = self.snapshots.send_replace(Arc::new(snapshot));
        let old_last = self.last.replace(config);
        retire((old_mesh, old_snapshot, old_last));
        Outcome::Published(version)
    }
}

/// Frees what the last publish replaced away from the caller: the old
/// config is a hundred thousand workloads at scale, tens of milliseconds
/// of frees that would otherwise delay the next change.
fn retire<T: Send + 'static>(old: T) {
    let spawned = std::thread::Builder::new()
        .name("retire".into())
        .spawn(move || drop(old));
    if let Err(e) = spawned {
        // Dropped here instead (the closure went with the error).
        debug!(error = %e, "cannot start a thread to free the old config; freed inline");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ManifestsDir;
    use crate::xds::ADDRESS;

    const POD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: { name: demo, labels: { trellis.dev/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Pod
metadata: { name: p1, namespace: demo }
spec: { nodeName: node-a, serviceAccountName: default, containers: [{ name: c, image: i }] }
status: { phase: Running, podIP: 10.0.0.1 }
"#;

    /// One poll: scan the folder, then update.
    fn step(p: &mut Publisher, dir: &mut ManifestsDir, store: &mut ObjectStore) -> Outcome {
        let result = dir.scan(store).expect("scan");
        p.update(store, result)
    }

    #[test]
    fn publishes_on_change_only_and_keeps_the_last_good_state() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("a.yaml"), POD).expect("write");
        let mut dir = ManifestsDir::new(tmp.path());
        let mut store = ObjectStore::new();
        let metrics = Arc::new(Metrics::default());
        let mut p = Publisher::new(TranslateOptions::default(), metrics.clone());
        let snapshots = p.snapshots();
        let mesh = p.mesh();

        let first = step(&mut p, &mut dir, &mut store);
        let Outcome::Published(version) = first else {
            panic!("first update must publish: {first:?}");
        };
        assert_eq!(mesh.borrow().workloads.len(), 1);
        assert_eq!(snapshots.borrow().table(ADDRESS).len(), 1);
        assert_eq!(snapshots.borrow().version(), version);
        assert_eq!(metrics.read().publishes, 1);

        // A comment changes the file but not the config.
        std::fs::write(tmp.path().join("a.yaml"), format!("# note\n{POD}")).expect("write");
        assert_eq!(step(&mut p, &mut dir, &mut store), Outcome::Unchanged);

        // A broken document keeps its last good object: nothing to publish.
        let broken = POD.replace("status: { phase", "status: [ phase");
        std::fs::write(tmp.path().join("a.yaml"), broken).expect("write");
        assert_eq!(step(&mut p, &mut dir, &mut store), Outcome::Unchanged);
        assert_eq!(mesh.borrow().workloads.len(), 1);
        let m = metrics.read();
        assert_eq!((m.publishes, m.objects), (1, 2));
        assert!(m.object_errors > 0);

        // Removing the file removes the pod.
        std::fs::remove_file(tmp.path().join("a.yaml")).expect("remove");
        assert!(matches!(
            step(&mut p, &mut dir, &mut store),
            Outcome::Published(_)
        ));
        assert!(mesh.borrow().workloads.is_empty());
        assert_eq!(metrics.read().publishes, 2);
        assert_eq!(metrics.read().object_errors, 0);
    }

    const SVC: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: s1, namespace: demo }
spec: { clusterIP: VIP, selector: { app: x }, ports: [{ port: 80 }] }
"#;

    #[test]
    fn a_snapshot_conflict_keeps_the_last_published_and_a_fix_patches_from_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("a.yaml"), POD).expect("write");
        let mut dir = ManifestsDir::new(tmp.path());
        let mut store = ObjectStore::new();
        let metrics = Arc::new(Metrics::default());
        let mut p = Publisher::new(TranslateOptions::default(), metrics.clone());
        let snapshots = p.snapshots();
        assert!(matches!(
            step(&mut p, &mut dir, &mut store),
            Outcome::Published(_)
        ));
        let first = snapshots.borrow().clone();
        let uid = "Kubernetes//Pod/demo/p1";
        let names = |s: &Snapshot| -> Vec<String> {
            let c = s.changes().expect("a published snapshot is a patch");
            c.names.values().flatten().cloned().collect()
        };
        assert_eq!(names(&first), vec![uid.to_string()]);

        // A service VIP equal to the pod's IP: both claim `/10.0.0.1`,
        // which a snapshot refuses; the last published one stays.
        std::fs::write(tmp.path().join("s.yaml"), SVC.replace("VIP", "10.0.0.1")).expect("write");
        assert_eq!(step(&mut p, &mut dir, &mut store), Outcome::Failed);
        assert_eq!(metrics.read().snapshot_failures, 1);
        assert_eq!(snapshots.borrow().version(), first.version());

        // Fixed: the new snapshot is patched from the last published one and
        // names only the service.
        std::fs::write(tmp.path().join("s.yaml"), SVC.replace("VIP", "10.96.0.1")).expect("write");
        assert!(matches!(
            step(&mut p, &mut dir, &mut store),
            Outcome::Published(_)
        ));
        let fixed = snapshots.borrow().clone();
        assert_eq!(
            fixed.changes().map(|c| c.parent.as_str()),
            Some(first.version())
        );
        assert_eq!(
            names(&fixed),
            vec!["demo/s1.demo.svc.cluster.local".to_string()]
        );
        let table = fixed.table(ADDRESS);
        assert_eq!(table.len(), 2);
        assert!(table.resolve("/10.0.0.1").is_some_and(|(n, _)| n == uid));
        assert!(table.resolve("/10.96.0.1").is_some());
        assert_eq!(metrics.read().publishes, 2);
    }
}
