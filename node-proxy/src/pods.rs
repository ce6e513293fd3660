//! Enrolled pods (shared mode) and the dedicated workload's listeners.
//!
//! Enrolling a pod creates one SO_REUSEPORT listener per worker for each of
//! 15001, 15006 and 15008 inside its network namespace. Removing a pod
//! cancels its listeners and connections.
//!
//! Pods come from two places. From the CNI agent over ZDS (the normal
//! path): the agent hands over the netns fd and owns the capture rules, so
//! they outlive a proxy restart. From `--pod` or the admin API's `POST
//! /pods` (debugging, no CNI): the proxy opens the netns by path and, with
//! `--install-redirect`, installs and removes the rules itself.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ahash::AHashMap;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::context::{ListenerKind, ProxyCtx, Scope};
use crate::handover::session::PodBundle;
use crate::settings::{HBONE_PORT, INBOUND_PLAIN_PORT, OUTBOUND_PORT, PROXY_MARK};
use crate::worker::{ListenSpec, WorkerHandle};
use trellis_netns::inuse;
use trellis_netns::redirect::{self, RedirectConfig};
use trellis_netns::{self as netns, ListenOpts, NetNs};

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("cannot open network namespace {path}: {source}; is the pod still running?")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install capture rules in {path}: {source}")]
    Redirect {
        path: PathBuf,
        #[source]
        source: redirect::RedirectError,
    },
    #[error("cannot listen on {addr} ({kind}) for pod {uid}: {source}")]
    Listen {
        uid: String,
        kind: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} ({kind}) of pod {uid} is already listened on by {holders} in the pod's network namespace: another node proxy serves this pod. Stop it, or start this one with --takeover to take over from it")]
    InUse {
        uid: String,
        kind: &'static str,
        addr: SocketAddr,
        holders: String,
    },
    #[error("{addr} ({kind}) of pod {uid} is held by {sockets} closed connection(s) (TIME_WAIT or closing) of a process that has exited and bound the port without SO_REUSEADDR, as Istio's ztunnel does: the kernel frees it within 60 s of that process's exit; enroll the pod again then")]
    Lingering {
        uid: String,
        kind: &'static str,
        addr: SocketAddr,
        sockets: usize,
    },
    #[error("pod {0} is not enrolled")]
    NotEnrolled(String),
    #[error("pods cannot change now: this node proxy is handing its pods over to a new one; retry against the new one")]
    Frozen,
    #[error("cannot hand over pod {uid}: {source}")]
    Export {
        uid: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pod uid must not be empty")]
    EmptyUid,
}

/// Who enrolled a pod, and so who owns its capture rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The CNI agent over ZDS; the agent owns the rules.
    Zds,
    /// `--pod` or `POST /pods`; the proxy owns the rules it installed.
    Admin,
    /// The dedicated workload in the proxy's own network namespace
    /// (`--capture`, a VM or bare host); the proxy installed the rules.
    Host,
}

struct Enrolled {
    netns_path: PathBuf,
    /// (device, inode) of the netns: the same pod sent again is a no-op.
    netns_id: Option<(u64, u64)>,
    origin: Origin,
    cancel: CancellationToken,
    redirect_installed: bool,
    scope: Arc<Scope>,
    /// A dup of each listener the workers accept on, kept to hand over;
    /// closed at drain so the sockets close with the workers' copies.
    listeners: Vec<ListenerDup>,
}

/// A listener's kind, bound address, and a dup of its fd.
type ListenerDup = (ListenerKind, SocketAddr, OwnedFd);

/// A pod as shown by the admin API.
#[derive(Debug, Serialize)]
pub struct PodInfo {
    pub uid: String,
    /// The workload in the config this pod is served as.
    pub workload: String,
    pub netns: String,
    pub origin: Origin,
    /// Whether this proxy installed the capture rules (ZDS pods: the agent did).
    pub capture_rules: bool,
}

/// The set of enrolled pods and the workers serving them.
pub struct Pods {
    proxy: Arc<ProxyCtx>,
    workers: Vec<WorkerHandle>,
    enrolled: Mutex<AHashMap<String, Enrolled>>,
    /// Set while (and after) the pods are handed to a new process: no
    /// change may slip between the snapshot sent and the hand-over's end.
    frozen: AtomicBool,
}

impl Pods {
    pub fn new(proxy: Arc<ProxyCtx>, workers: Vec<WorkerHandle>) -> Self {
        Pods {
            proxy,
            workers,
            enrolled: Mutex::new(AHashMap::new()),
            frozen: AtomicBool::new(false),
        }
    }

    pub fn into_workers(self) -> Vec<WorkerHandle> {
        self.workers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AHashMap<String, Enrolled>> {
        self.enrolled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enrolls a pod by netns path (`--pod`, `POST /pods`); enrolling the
    /// same uid and netns again is a no-op, with a new netns it replaces the
    /// old enrollment (the pod was recreated).
    pub fn add(&self, uid: &str, netns_path: &Path) -> Result<(), PodError> {
        self.check_thawed()?;
        if uid.is_empty() {
            return Err(PodError::EmptyUid);
        }
        let ns = NetNs::open(netns_path).map_err(|source| PodError::Netns {
            path: netns_path.to_path_buf(),
            source,
        })?;
        let install = self.proxy.settings.install_redirect;
        self.enroll(uid, uid, ns, netns_path, Origin::Admin, install)
    }

    /// Enrolls a pod handed over by the CNI agent: `netns` is the fd that
    /// came with AddWorkload, `workload` the config uid it is served as.
    /// The agent owns the capture rules. The same pod and netns again is a
    /// no-op, so a reconnecting agent's snapshot keeps open connections.
    /// The fd is only borrowed (the pod opens its own handle to the
    /// netns), so the caller may keep it to try again.
    pub fn add_zds(
        &self,
        uid: &str,
        workload: &str,
        netns: BorrowedFd<'_>,
    ) -> Result<(), PodError> {
        self.check_thawed()?;
        if uid.is_empty() {
            return Err(PodError::EmptyUid);
        }
        // Reopening through /proc validates the fd is a netns, as for paths.
        let via = PathBuf::from(format!("/proc/self/fd/{}", netns.as_raw_fd()));
        let ns = NetNs::open(&via).map_err(|source| PodError::Netns {
            path: PathBuf::from(format!("<netns fd of pod {uid} from ZDS>")),
            source,
        })?;
        let label = PathBuf::from(format!("zds:{uid}"));
        self.enroll(uid, workload, ns, &label, Origin::Zds, false)
    }

    /// The uids of the pods the CNI agent enrolled.
    pub fn zds_uids(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.origin == Origin::Zds)
            .map(|(uid, _)| uid.clone())
            .collect()
    }

    fn enroll(
        &self,
        uid: &str,
        workload: &str,
        ns: NetNs,
        netns_path: &Path,
        origin: Origin,
        install_rules: bool,
    ) -> Result<(), PodError> {
        let netns_id = netns_id(&ns);
        if let Some(e) = self.lock().get(uid) {
            let same = match (e.netns_id, netns_id) {
                (Some(a), Some(b)) => a == b,
                _ => e.netns_path == netns_path,
            };
            if same && e.scope.uid == workload {
                return Ok(());
            }
        }
        let _ = self.remove(uid);
        let mut redirect_installed = false;
        if install_rules {
            redirect::install(&ns, &redirect_config()).map_err(|source| PodError::Redirect {
                path: netns_path.to_path_buf(),
                source,
            })?;
            redirect_installed = true;
        }
        // With the capture rules in place (ours or the agent's), replies
        // to foreign source IPs are routed back.
        let scope = Arc::new(Scope::new(
            workload.to_string(),
            Some(ns),
            self.proxy.settings.preserve_source_ip,
        ));
        let cancel = CancellationToken::new();
        let listeners = match self.start_listeners(&scope, &pod_listeners(), &cancel) {
            Ok((_, dups)) => dups,
            Err(e) => {
                cancel.cancel();
                if redirect_installed {
                    if let Some(ns) = &scope.netns {
                        let _ = redirect::remove(ns);
                    }
                }
                return Err(e);
            }
        };
        info!(pod = uid, workload, netns = %netns_path.display(), origin = ?origin, "pod enrolled");
        self.lock().insert(
            uid.to_string(),
            Enrolled {
                netns_path: netns_path.to_path_buf(),
                netns_id,
                origin,
                cancel,
                redirect_installed,
                scope,
                listeners,
            },
        );
        Ok(())
    }

    /// Serves the dedicated workload `uid` in the proxy's own network
    /// namespace, as a pod: the capture rules installed there, listeners on
    /// 15001, 15006 and 15008 of every address, and upstream sockets marked
    /// so the rules let them pass. Returns the listeners.
    pub fn capture_own(&self, uid: &str) -> Result<Vec<(ListenerKind, SocketAddr)>, PodError> {
        let own = PathBuf::from("/proc/self/ns/net");
        let ns = NetNs::current().map_err(|source| PodError::Netns {
            path: own.clone(),
            source,
        })?;
        self.enroll(uid, uid, ns, &own, Origin::Host, true)?;
        Ok(pod_listeners().to_vec())
    }

    /// Starts listeners for the dedicated workload on the configured addresses.
    /// Returns the bound address of each listener, in order.
    pub fn start_dedicated(
        &self,
        uid: &str,
        listeners: &[(ListenerKind, SocketAddr)],
    ) -> Result<Vec<SocketAddr>, PodError> {
        let scope = Arc::new(Scope::new(uid.to_string(), None, false));
        let cancel = CancellationToken::new();
        let (bound, dups) = self.start_listeners(&scope, listeners, &cancel)?;
        self.lock().insert(
            uid.to_string(),
            Enrolled {
                netns_path: PathBuf::new(),
                netns_id: None,
                origin: Origin::Admin,
                cancel,
                redirect_installed: false,
                scope,
                listeners: dups,
            },
        );
        Ok(bound)
    }

    fn start_listeners(
        &self,
        scope: &Arc<Scope>,
        listeners: &[(ListenerKind, SocketAddr)],
        cancel: &CancellationToken,
    ) -> Result<(Vec<SocketAddr>, Vec<ListenerDup>), PodError> {
        // Create every socket first so a failure leaves nothing half-started.
        let mut specs = Vec::new();
        let mut bound = Vec::new();
        for &(kind, mut addr) in listeners {
            ensure_free(scope, kind, addr)?;
            for _ in &self.workers {
                let opts = ListenOpts {
                    reuse_port: true,
                    transparent: false,
                    backlog: 1024,
                    // Every data-path socket: the capture listeners
                    // (15001, 15006) relay app bytes as they come.
                    nodelay: true,
                };
                let l =
                    netns::tcp_listener(scope.netns.as_ref(), addr, opts).map_err(|source| {
                        PodError::Listen {
                            uid: scope.uid.clone(),
                            kind: kind.name(),
                            addr,
                            source,
                        }
                    })?;
                // With port 0 the first socket picks the port; the other
                // workers' sockets must share it for SO_REUSEPORT to spread load.
                if addr.port() == 0 {
                    if let Ok(a) = l.local_addr() {
                        addr = a;
                    }
                }
                specs.push((kind, l));
            }
            bound.push(addr);
        }
        let mut dups = Vec::new();
        for (kind, l) in &specs {
            let dup = l
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| PodError::Listen {
                    uid: scope.uid.clone(),
                    kind: kind.name(),
                    addr: l.local_addr().unwrap_or(bound[0]),
                    source,
                })?;
            let addr = l.local_addr().unwrap_or(bound[0]);
            dups.push((*kind, addr, dup));
        }
        self.hand_to_workers(scope, specs, cancel);
        Ok((bound, dups))
    }

    /// Gives listeners to the workers, round robin.
    fn hand_to_workers(
        &self,
        scope: &Arc<Scope>,
        specs: Vec<(ListenerKind, std::net::TcpListener)>,
        cancel: &CancellationToken,
    ) {
        for (i, (kind, listener)) in specs.into_iter().enumerate() {
            let worker = &self.workers[i % self.workers.len()];
            let spec = ListenSpec {
                listener,
                kind,
                scope: scope.clone(),
                cancel: cancel.clone(),
            };
            if let Err(e) = worker.listen(spec) {
                warn!(error = %e, "worker unavailable");
            }
        }
    }

    fn check_thawed(&self) -> Result<(), PodError> {
        if self.frozen.load(Ordering::Acquire) {
            Err(PodError::Frozen)
        } else {
            Ok(())
        }
    }

    /// Freezes the pods (no enrollment or removal until [`thaw`](Self::thaw))
    /// and returns each with dups of its netns and listener fds, for a
    /// hand-over. Dedicated listeners (no netns) are not included.
    pub fn freeze_and_export(&self) -> Result<Vec<PodBundle>, PodError> {
        let enrolled = self.lock();
        // Set under the lock: an enrollment in progress finishes first.
        self.frozen.store(true, Ordering::Release);
        let export = || -> Result<Vec<PodBundle>, PodError> {
            let mut out = Vec::new();
            for (uid, e) in enrolled.iter() {
                let Some(ns) = &e.scope.netns else { continue };
                let err = |source| PodError::Export {
                    uid: uid.clone(),
                    source,
                };
                let mut listeners = Vec::new();
                for (kind, addr, fd) in &e.listeners {
                    listeners.push((*kind, *addr, fd.try_clone().map_err(err)?));
                }
                out.push(PodBundle {
                    uid: uid.clone(),
                    workload: e.scope.uid.clone(),
                    origin: e.origin,
                    netns_label: e.netns_path.display().to_string(),
                    capture_rules: e.redirect_installed,
                    netns: ns.as_fd().try_clone_to_owned().map_err(err)?,
                    listeners,
                });
            }
            Ok(out)
        };
        let out = export();
        if out.is_err() {
            self.frozen.store(false, Ordering::Release);
        }
        out
    }

    /// Lets pods change again after a hand-over that failed.
    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::Release);
    }

    /// Serves a pod handed over by the process we take over from: its
    /// listeners are already bound (and shared with that process, which
    /// keeps accepting until we say we are ready), so nothing is bound here
    /// and no rule is touched; the rules it installed are ours now.
    pub fn adopt(&self, pod: PodBundle) -> Result<(), PodError> {
        let via = PathBuf::from(format!("/proc/self/fd/{}", pod.netns.as_raw_fd()));
        let ns = NetNs::open(&via).map_err(|source| PodError::Netns {
            path: PathBuf::from(format!("<netns fd of pod {} handed over>", pod.uid)),
            source,
        })?;
        drop(pod.netns);
        let scope = Arc::new(Scope::new(
            pod.workload.clone(),
            Some(ns),
            self.proxy.settings.preserve_source_ip,
        ));
        let cancel = CancellationToken::new();
        let mut specs = Vec::new();
        let mut dups = Vec::new();
        for (kind, addr, fd) in pod.listeners {
            let dup = fd.try_clone().map_err(|source| PodError::Listen {
                uid: pod.uid.clone(),
                kind: kind.name(),
                addr,
                source,
            })?;
            specs.push((kind, std::net::TcpListener::from(fd)));
            dups.push((kind, addr, dup));
        }
        let netns_id = scope.netns.as_ref().and_then(netns_id);
        self.hand_to_workers(&scope, specs, &cancel);
        info!(pod = %pod.uid, workload = %pod.workload, netns = %pod.netns_label, origin = ?pod.origin, listeners = dups.len(), "pod taken over");
        self.lock().insert(
            pod.uid,
            Enrolled {
                netns_path: PathBuf::from(pod.netns_label),
                netns_id,
                origin: pod.origin,
                cancel,
                redirect_installed: pod.capture_rules,
                scope,
                listeners: dups,
            },
        );
        Ok(())
    }

    /// Closes the dups kept for a hand-over (at drain), so each socket
    /// closes when the workers close theirs.
    pub fn close_listener_dups(&self) {
        for e in self.lock().values_mut() {
            e.listeners.clear();
        }
    }

    /// Removes a pod: stops its listeners and connections and its capture rules.
    pub fn remove(&self, uid: &str) -> Result<(), PodError> {
        self.check_thawed()?;
        let entry = self
            .lock()
            .remove(uid)
            .ok_or_else(|| PodError::NotEnrolled(uid.to_string()))?;
        entry.cancel.cancel();
        if entry.redirect_installed {
            if let Some(ns) = &entry.scope.netns {
                // The netns may already be gone with the pod; nothing to clean then.
                if let Err(e) = redirect::remove(ns) {
                    warn!(pod = uid, error = %e, "could not remove capture rules");
                }
            }
        }
        info!(pod = uid, "pod removed");
        Ok(())
    }

    pub fn list(&self) -> Vec<PodInfo> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.scope.netns.is_some())
            .map(|(uid, e)| PodInfo {
                uid: uid.clone(),
                workload: e.scope.uid.clone(),
                netns: e.netns_path.display().to_string(),
                origin: e.origin,
                capture_rules: e.redirect_installed,
            })
            .collect();
        v.sort_by(|a, b| a.uid.cmp(&b.uid));
        v
    }
}

/// Refuses to listen on `addr` in the scope's netns when another process
/// already does (SO_REUSEPORT would let us share it silently, and take half
/// of its connections). Our own sockets there (a pod being re-enrolled,
/// whose old listeners are still closing) do not count.
fn ensure_free(scope: &Scope, kind: ListenerKind, addr: SocketAddr) -> Result<(), PodError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let ns = scope.netns.as_ref();
    let err = |source| PodError::Listen {
        uid: scope.uid.clone(),
        kind: kind.name(),
        addr,
        source,
    };
    // Twice: a socket of ours may be closing between the probe and the look-up.
    for _ in 0..2 {
        if !inuse::probe(ns, addr).map_err(err)? {
            return Ok(());
        }
        let me = std::process::id();
        let others: Vec<_> = inuse::listeners_of(ns, addr.port())
            .map_err(err)?
            .into_iter()
            .filter(|h| h.pid != me)
            .collect();
        if !others.is_empty() {
            return Err(PodError::InUse {
                uid: scope.uid.clone(),
                kind: kind.name(),
                addr,
                holders: others
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if inuse::listeners_of(ns, addr.port())
            .map_err(err)?
            .iter()
            .any(|h| h.pid == me)
        {
            return Ok(());
        }
    }
    // No listener anywhere: the connections of a proxy that has exited
    // (a ztunnel this node is migrating from) hold the port.
    let sockets = inuse::closing_on(ns, addr.port()).map_err(err)?;
    if sockets > 0 {
        return Err(PodError::Lingering {
            uid: scope.uid.clone(),
            kind: kind.name(),
            addr,
            sockets,
        });
    }
    Err(PodError::InUse {
        uid: scope.uid.clone(),
        kind: kind.name(),
        addr,
        holders: "a process this proxy cannot see".into(),
    })
}

/// The (device, inode) pair that identifies a namespace, whatever path or
/// fd it was reached by; None if /proc cannot tell.
fn netns_id(ns: &NetNs) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/self/fd/{}", ns.as_raw_fd())).ok()?;
    Some((m.dev(), m.ino()))
}

/// A captured netns's listeners: where its capture rules send traffic.
fn pod_listeners() -> [(ListenerKind, SocketAddr); 3] {
    let unspecified = std::net::Ipv4Addr::UNSPECIFIED.into();
    [
        (
            ListenerKind::Outbound,
            SocketAddr::new(unspecified, OUTBOUND_PORT),
        ),
        (
            ListenerKind::InboundPlain,
            SocketAddr::new(unspecified, INBOUND_PLAIN_PORT),
        ),
        (
            ListenerKind::Hbone,
            SocketAddr::new(unspecified, HBONE_PORT),
        ),
    ]
}

fn redirect_config() -> RedirectConfig {
    RedirectConfig {
        outbound_port: OUTBOUND_PORT,
        inbound_plain_port: INBOUND_PLAIN_PORT,
        hbone_port: HBONE_PORT,
        proxy_mark: PROXY_MARK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_held_by_an_exited_proxys_connections_is_named_as_such() {
        // What a node migrating from ztunnel meets for up to 60 s after
        // ztunnel exits: its TIME_WAIT sockets hold the capture port.
        let addr = inuse::leave_time_wait().unwrap();
        let scope = Scope::new("pod-a".into(), None, false);
        let e = ensure_free(&scope, ListenerKind::Outbound, addr).unwrap_err();
        assert!(
            matches!(&e, PodError::Lingering { sockets, .. } if *sockets >= 1),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("TIME_WAIT") && msg.contains("60 s"), "{msg}");
        // A free port is free.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        assert!(ensure_free(&scope, ListenerKind::Outbound, addr).is_ok());
    }
}
