//! The pods the agent has enrolled on this node, each with its netns handle
//! and where its capture stands. The ZDS server reads it to send a new node
//! proxy its snapshot; the plugin handler waits on a pod's state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use trellis_netns::NetNs;

use crate::wire::PodRef;

/// Where a pod's capture stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capture {
    /// Not confirmed by a node proxy yet (none connected, or not answered).
    Pending,
    /// The node proxy serves the pod and the capture rules are installed.
    Captured,
    /// The node proxy answered with this error.
    Refused(String),
    /// The node proxy serves the pod but the agent could not install the rules.
    RulesFailed(String),
}

pub struct Entry {
    pub pod: PodRef,
    pub netns: Arc<NetNs>,
    /// (device, inode) of the netns: the same pod added again is a no-op.
    pub netns_id: (u64, u64),
    pub rules_installed: bool,
    pub state: watch::Sender<Capture>,
}

/// A pod as the snapshot needs it.
#[derive(Clone)]
pub struct SnapshotItem {
    pub pod: PodRef,
    pub netns: Arc<NetNs>,
}

#[derive(Default)]
pub struct Registry {
    pods: Mutex<BTreeMap<String, Entry>>,
}

/// What [`Registry::insert`] did.
pub enum Inserted {
    /// A new pod (or a new netns for the uid): wait on this.
    New(watch::Receiver<Capture>),
    /// Already known with the same netns: its current state.
    Existing(watch::Receiver<Capture>),
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, pod: PodRef, netns: NetNs, netns_id: (u64, u64)) -> Inserted {
        let mut pods = self.lock();
        if let Some(e) = pods.get(&pod.uid) {
            if e.netns_id == netns_id {
                return Inserted::Existing(e.state.subscribe());
            }
        }
        let (state, rx) = watch::channel(Capture::Pending);
        pods.insert(
            pod.uid.clone(),
            Entry {
                pod,
                netns: Arc::new(netns),
                netns_id,
                rules_installed: false,
                state,
            },
        );
        Inserted::New(rx)
    }

    pub fn remove(&self, uid: &str) -> Option<Entry> {
        self.lock().remove(uid)
    }

    pub fn snapshot(&self) -> Vec<SnapshotItem> {
        self.lock()
            .values()
            .map(|e| SnapshotItem {
                pod: e.pod.clone(),
                netns: e.netns.clone(),
            })
            .collect()
    }

    pub fn get(&self, uid: &str) -> Option<SnapshotItem> {
        self.lock().get(uid).map(|e| SnapshotItem {
            pod: e.pod.clone(),
            netns: e.netns.clone(),
        })
    }

    pub fn state(&self, uid: &str) -> Option<Capture> {
        self.lock().get(uid).map(|e| e.state.borrow().clone())
    }

    /// Puts a refused or failed pod back to pending; true if it was.
    pub fn retry(&self, uid: &str) -> bool {
        let pods = self.lock();
        let Some(e) = pods.get(uid) else { return false };
        let failed = matches!(
            *e.state.borrow(),
            Capture::Refused(_) | Capture::RulesFailed(_)
        );
        if failed {
            e.state.send_replace(Capture::Pending);
        }
        failed
    }

    /// Whether the pod still needs its rules; false if it is gone.
    pub fn needs_rules(&self, uid: &str) -> bool {
        self.lock().get(uid).is_some_and(|e| !e.rules_installed)
    }

    pub fn set_rules_installed(&self, uid: &str) {
        if let Some(e) = self.lock().get_mut(uid) {
            e.rules_installed = true;
        }
    }

    /// Sets a pod's state, if the pod (with this netns) is still there.
    pub fn set_state(&self, uid: &str, netns: &Arc<NetNs>, state: Capture) {
        if let Some(e) = self.lock().get(uid) {
            if Arc::ptr_eq(&e.netns, netns) {
                e.state.send_replace(state);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The (device, inode) pair that identifies a namespace, whatever path or
/// fd it was reached by.
pub fn netns_id(ns: &NetNs) -> std::io::Result<(u64, u64)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    // The fd's /proc link resolves to the nsfs inode itself.
    let m = std::fs::metadata(format!("/proc/self/fd/{}", ns.as_raw_fd()))?;
    Ok((m.dev(), m.ino()))
}
