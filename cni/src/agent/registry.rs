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
    /// The sandbox (`CNI_CONTAINERID`) this enrollment belongs to: a late
    /// DEL of a pod's previous sandbox must not release its new one.
    pub container_id: String,
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

/// A pod to enroll, as ADD gives it.
pub struct NewPod {
    pub pod: PodRef,
    pub netns: NetNs,
    pub netns_path: PathBuf,
    pub netns_id: (u64, u64),
    pub container_id: String,
}

/// What [`Registry::remove`] did.
pub enum Removed {
    Removed(Entry),
    /// The pod is enrolled with another (newer) sandbox; left alone.
    OtherSandbox(String),
    Unknown,
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
                                container_id: s.container_id,
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
                container_id: e.container_id.clone(),
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

    pub fn insert(&self, new: NewPod) -> Inserted {
        let NewPod {
            pod,
            netns,
            netns_path,
            netns_id,
            container_id,
        } = new;
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
                container_id,
                netns_id,
                rules_installed: false,
                state,
            },
        );
        self.persist(&pods);
        Inserted::New(rx)
    }

    /// Removes the pod if this sandbox is the one enrolled.
    pub fn remove(&self, uid: &str, container_id: &str) -> Removed {
        let mut pods = self.lock();
        match pods.get(uid) {
            None => return Removed::Unknown,
            Some(e) if e.container_id != container_id => {
                return Removed::OtherSandbox(e.container_id.clone())
            }
            Some(_) => {}
        }
        let e = pods.remove(uid);
        self.persist(&pods);
        e.map_or(Removed::Unknown, Removed::Removed)
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

    /// Every enrolled pod as its sandbox: (pod, netns path, container id).
    pub fn sandboxes(&self) -> Vec<(PodRef, PathBuf, String)> {
        self.lock()
            .values()
            .map(|e| (e.pod.clone(), e.netns_path.clone(), e.container_id.clone()))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "/proc/self/ns/net";

    fn new_pod(uid: &str, container: &str) -> NewPod {
        let netns = NetNs::open(OWN).unwrap();
        NewPod {
            netns_id: netns_id(&netns).unwrap(),
            pod: PodRef {
                namespace: "demo".into(),
                name: uid.into(),
                uid: uid.into(),
                service_account: String::new(),
            },
            netns,
            netns_path: OWN.into(),
            container_id: container.into(),
        }
    }

    fn removed(r: Removed) -> String {
        match r {
            Removed::Removed(e) => format!("removed {}", e.container_id),
            Removed::OtherSandbox(c) => format!("other {c}"),
            Removed::Unknown => "unknown".into(),
        }
    }

    #[test]
    fn sandboxes_own_their_enrollment() {
        let r = Registry::default();
        assert!(matches!(r.insert(new_pod("a", "c1")), Inserted::New(_)));
        assert!(
            matches!(r.insert(new_pod("a", "c1")), Inserted::Existing(_)),
            "same pod, same netns: nothing new"
        );
        assert_eq!(
            removed(r.remove("a", "c0")),
            "other c1",
            "a late DEL of an old sandbox"
        );
        assert_eq!(r.len(), 1);
        assert_eq!(removed(r.remove("a", "c1")), "removed c1");
        assert_eq!(removed(r.remove("a", "c1")), "unknown");
        assert!(r.is_empty());
    }

    #[test]
    fn a_refused_pod_is_retried_a_captured_one_is_not() {
        let r = Registry::default();
        let _ = r.insert(new_pod("a", "c1"));
        let ns = r.get("a").unwrap().netns;
        r.set_state("a", &ns, Capture::Refused("no config".into()));
        assert!(r.retry("a"));
        assert_eq!(r.state("a"), Some(Capture::Pending));
        r.set_state("a", &ns, Capture::Captured);
        assert!(!r.retry("a"));
        assert_eq!(r.state("a"), Some(Capture::Captured));
    }

    #[test]
    fn restore_keeps_pods_whose_netns_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        let saved = |uid: &str, netns: &str, captured| SavedPod {
            pod: PodRef {
                namespace: "demo".into(),
                name: uid.into(),
                uid: uid.into(),
                service_account: String::new(),
            },
            netns: netns.into(),
            container_id: format!("c-{uid}"),
            captured,
        };
        state::save(
            &file,
            vec![
                saved("alive", OWN, true),
                saved("gone", "/nonexistent/netns", true),
            ],
        )
        .unwrap();
        let r = Registry::restore(file.clone()).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.state("alive"),
            Some(Capture::Pending),
            "until a proxy confirms"
        );
        assert!(!r.needs_rules("alive"), "the previous agent installed them");
        let on_disk = state::load(&file).unwrap();
        assert_eq!(on_disk.len(), 1, "the gone pod is forgotten on disk too");
        assert!(
            !on_disk[0].captured,
            "pending again until the proxy confirms"
        );
    }
}
