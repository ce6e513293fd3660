//! Objects → config → xDS snapshot, published on two watch channels: the
//! config for the CA's authorization, the snapshot for the xDS streams.
//! Both are replaced together, and only when the config changed, so an
//! edit that changes nothing (or a rejected manifest whose last good
//! version is kept) pushes nothing to the proxies.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};
use trellis_api::config::LocalConfig;

use super::metrics::Metrics;
use crate::objects::{translate, ObjectStore, ScanResult, TranslateOptions};
use crate::xds::{Snapshot, SnapshotError};

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
        }
    }

    pub fn mesh(&self) -> watch::Receiver<Arc<LocalConfig>> {
        self.mesh.subscribe()
    }

    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.subscribe()
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

        let translation = translate(store, &self.opts);
        let current: BTreeSet<String> = translation.errors.iter().map(|e| e.to_string()).collect();
        for e in current.difference(&self.reported) {
            warn!(error = %e, "object not translated (or translated in part)");
        }
        self.metrics
            .set(&self.metrics.translation_errors, current.len());
        self.reported = current;

        if self.last.as_deref() == Some(&translation.config) {
            return Outcome::Unchanged;
        }
        let snapshot = match build_snapshot(&translation.config, &self.opts.network) {
            Ok(s) => s,
            Err(e) => {
                self.metrics
                    .snapshot_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "cannot build the xds snapshot; the last published config stays");
                return Outcome::Failed;
            }
        };
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
        self.mesh.send_replace(config.clone());
        self.snapshots.send_replace(Arc::new(snapshot));
        self.last = Some(config);
        Outcome::Published(version)
    }
}

fn build_snapshot(config: &LocalConfig, network: &str) -> Result<Snapshot, SnapshotError> {
    let mut builder = Snapshot::builder();
    builder.add_all(trellis_api::xds::encode_config(config, network))?;
    Ok(builder.build())
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
}
