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
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ahash::AHashMap;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::context::{ListenerKind, ProxyCtx, Scope};
use crate::settings::{HBONE_PORT, INBOUND_PLAIN_PORT, OUTBOUND_PORT, PROXY_MARK};
use crate::worker::{ListenSpec, WorkerHandle};
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
    #[error("pod {0} is not enrolled")]
    NotEnrolled(String),
    #[error("pod uid must not be empty")]
    EmptyUid,
}

/// Who enrolled a pod, and so who owns its capture rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
}

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
}

impl Pods {
    pub fn new(proxy: Arc<ProxyCtx>, workers: Vec<WorkerHandle>) -> Self {
        Pods {
            proxy,
            workers,
            enrolled: Mutex::new(AHashMap::new()),
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
    pub fn add_zds(&self, uid: &str, workload: &str, netns: OwnedFd) -> Result<(), PodError> {
        if uid.is_empty() {
            return Err(PodError::EmptyUid);
        }
        // Reopening through /proc validates the fd is a netns, as for paths.
        let via = PathBuf::from(format!("/proc/self/fd/{}", netns.as_raw_fd()));
        let ns = NetNs::open(&via).map_err(|source| PodError::Netns {
            path: PathBuf::from(format!("<netns fd of pod {uid} from ZDS>")),
            source,
        })?;
        drop(netns);
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
        let scope = Arc::new(Scope {
            uid: workload.to_string(),
            netns: Some(ns),
            // With the capture rules in place (ours or the agent's), replies
            // to foreign source IPs are routed back.
            transparent: self.proxy.settings.preserve_source_ip,
        });
        let cancel = CancellationToken::new();
        if let Err(e) = self
            .start_listeners(&scope, &pod_listeners(), &cancel)
            .map(drop)
        {
            cancel.cancel();
            if redirect_installed {
                if let Some(ns) = &scope.netns {
                    let _ = redirect::remove(ns);
                }
            }
            return Err(e);
        }
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
        let scope = Arc::new(Scope {
            uid: uid.to_string(),
            netns: None,
            transparent: false,
        });
        let cancel = CancellationToken::new();
        let bound = self.start_listeners(&scope, listeners, &cancel)?;
        self.lock().insert(
            uid.to_string(),
            Enrolled {
                netns_path: PathBuf::new(),
                netns_id: None,
                origin: Origin::Admin,
                cancel,
                redirect_installed: false,
                scope,
            },
        );
        Ok(bound)
    }

    fn start_listeners(
        &self,
        scope: &Arc<Scope>,
        listeners: &[(ListenerKind, SocketAddr)],
        cancel: &CancellationToken,
    ) -> Result<Vec<SocketAddr>, PodError> {
        // Create every socket first so a failure leaves nothing half-started.
        let mut specs = Vec::new();
        let mut bound = Vec::new();
        for &(kind, mut addr) in listeners {
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
        Ok(bound)
    }

    /// Removes a pod: stops its listeners and connections and its capture rules.
    pub fn remove(&self, uid: &str) -> Result<(), PodError> {
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
