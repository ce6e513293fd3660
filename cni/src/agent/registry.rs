//! The pods the agent has enrolled on this node, each with its netns handle
//! and where its capture stands. The ZDS server reads it to send a new node
//! proxy its snapshot; the plugin handler waits on a pod's state.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing::{info, warn};
use trellis_netns::NetNs;

use super::state::{self, SavedPod, StateError};
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
    /// `CNI_NETNS`, saved so a restarted agent can reopen it.
    pub netns_path: PathBuf,
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
    /// Where every change is saved (see [`state`](super::state)); none in unit tests.
    state_file: Option<PathBuf>,
}

/// What [`Registry::insert`] did.
pub enum Inserted {
    /// A new pod (or a new netns for the uid): wait on this.
    New(watch::Receiver<Capture>),
    /// Already known with the same netns: its current state.
    Existing(watch::Receiver<Capture>),
}

impl Registry {
    /// A registry saved to `state_file`, starting with the pods saved there
    /// whose netns still opens.
    pub fn restore(state_file: PathBuf) -> Result<Registry, StateError> {
        let saved = state::load(&state_file)?;
        let reg = Registry {
            pods: Mutex::default(),
            state_file: Some(state_file),
        };
        {
            let mut pods = reg.lock();
            for s in saved {
                let opened = NetNs::open(&s.netns).and_then(|ns| Ok((netns_id(&ns)?, ns)));
                match opened {
                    Ok((id, ns)) => {
                        info!(pod = %s.pod.uid, netns = %s.netns.display(), "pod restored from the agent state");
                        let (state, _) = watch::channel(Capture::Pending);
                        pods.insert(
                            s.pod.uid.clone(),
                            Entry {
                                pod: s.pod,
                                netns: Arc::new(ns),
                                netns_path: s.netns,
                                netns_id: id,
                                // The previous agent installed them after the proxy's Ack.
                                rules_installed: s.captured,
                                state,
                            },
                        );
                    }
                    Err(e) => {
                        info!(pod = %s.pod.uid, error = %e, "pod gone while the agent was away; forgotten")
                    }
                }
            }
            reg.persist(&pods);
        }
        Ok(reg)
    }

    /// Saves the pods; a failure is logged, not fatal: the pods are still
    /// served, only a restart of this agent would forget them.
    fn persist(&self, pods: &BTreeMap<String, Entry>) {
        let Some(path) = &self.state_file else {
            return;
        };
        let saved = pods
            .values()
            .map(|e| SavedPod {
                pod: e.pod.clone(),
                netns: e.netns_path.clone(),
                captured: e.rules_installed && *e.state.borrow() == Capture::Captured,
            })
            .collect();
        if let Err(e) = state::save(path, saved) {
            warn!(error = %e, "agent state not saved");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(
        &self,
        pod: PodRef,
        netns: NetNs,
        netns_path: PathBuf,
        netns_id: (u64, u64),
    ) -> Inserted {
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
                netns_path,
                netns_id,
                rules_installed: false,
                state,
            },
        );
        self.persist(&pods);
        Inserted::New(rx)
    }

    pub fn remove(&self, uid: &str) -> Option<Entry> {
        let mut pods = self.lock();
        let e = pods.remove(uid);
        if e.is_some() {
            self.persist(&pods);
        }
        e
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
        let pods = self.lock();
        if let Some(e) = pods.get(uid) {
            if Arc::ptr_eq(&e.netns, netns) {
                e.state.send_replace(state);
                self.persist(&pods);
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
