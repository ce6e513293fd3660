//! The node proxy's side of one ZDS connection, as decisions: what a packet
//! means, and what to do about it given what came before. No sockets; the
//! I/O loop in the parent module does what [`Session::on`] returns.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;

use prost::Message as _;
use trellis_api::pb::istio::workload::zds::{
    workload_request::Payload, WorkloadInfo, WorkloadRequest,
};

/// The longest request read; an AddWorkload is a uid and three names.
pub const MAX_PACKET: usize = 16 * 1024;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ZdsError {
    #[error("packet is not a ZDS WorkloadRequest: {0}")]
    Decode(String),
    #[error("WorkloadRequest has no payload")]
    Empty,
    #[error("packet longer than {MAX_PACKET} bytes (or with too many fds) was cut; the agent sent something this proxy does not understand")]
    Truncated,
    #[error("AddWorkload for {0:?} came without its netns fd")]
    NoFd(String),
    #[error("{what} came with {count} fd(s); only AddWorkload carries one")]
    UnexpectedFds { what: &'static str, count: usize },
    #[error("{0} with an empty uid")]
    EmptyUid(&'static str),
}

/// A request, parsed.
#[derive(Debug)]
pub enum Request {
    Add {
        uid: String,
        info: Option<WorkloadInfo>,
        netns: OwnedFd,
    },
    Keep {
        uid: String,
    },
    Del {
        uid: String,
    },
    SnapshotSent,
}

/// Parses one packet. The fds it came with are taken in any case, so a
/// rejected packet's fds are closed when the error is dropped.
pub fn parse(data: &[u8], mut fds: Vec<OwnedFd>, truncated: bool) -> Result<Request, ZdsError> {
    if truncated {
        return Err(ZdsError::Truncated);
    }
    let req = WorkloadRequest::decode(data).map_err(|e| ZdsError::Decode(e.to_string()))?;
    let payload = req.payload.ok_or(ZdsError::Empty)?;
    let no_fds = |what: &'static str, fds: &Vec<OwnedFd>| {
        if fds.is_empty() {
            Ok(())
        } else {
            Err(ZdsError::UnexpectedFds {
                what,
                count: fds.len(),
            })
        }
    };
    let uid = |what: &'static str, uid: String| {
        if uid.is_empty() {
            Err(ZdsError::EmptyUid(what))
        } else {
            Ok(uid)
        }
    };
    match payload {
        Payload::Add(a) => {
            let uid = uid("AddWorkload", a.uid)?;
            if fds.len() > 1 {
                return Err(ZdsError::UnexpectedFds {
                    what: "AddWorkload",
                    count: fds.len(),
                });
            }
            let netns = fds.pop().ok_or_else(|| ZdsError::NoFd(uid.clone()))?;
            Ok(Request::Add {
                uid,
                info: a.workload_info,
                netns,
            })
        }
        Payload::Keep(k) => {
            no_fds("KeepWorkload", &fds)?;
            Ok(Request::Keep {
                uid: uid("KeepWorkload", k.uid)?,
            })
        }
        Payload::Del(d) => {
            no_fds("DelWorkload", &fds)?;
            Ok(Request::Del {
                uid: uid("DelWorkload", d.uid)?,
            })
        }
        Payload::SnapshotSent(_) => {
            no_fds("SnapshotSent", &fds)?;
            Ok(Request::SnapshotSent)
        }
    }
}

/// The uid of the pod's workload in the proxy's config (Istio's
/// `<cluster>//Pod/<namespace>/<name>`, as the controller writes it); the
/// ZDS uid when the agent sent no name, so a non-Kubernetes agent can name
/// the workload directly.
pub fn workload_uid(cluster_id: &str, zds_uid: &str, info: Option<&WorkloadInfo>) -> String {
    match info {
        Some(i) if !i.name.is_empty() && !i.namespace.is_empty() => {
            format!("{cluster_id}//Pod/{}/{}", i.namespace, i.name)
        }
        _ => zds_uid.to_string(),
    }
}

/// What the I/O loop does for one request; each ends in an Ack (or a nack
/// with the error text).
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Serve the pod (the fd is handed over alongside).
    Add {
        uid: String,
        workload: String,
    },
    /// Nothing to do; acknowledge.
    Keep {
        uid: String,
    },
    Del {
        uid: String,
    },
    /// Drop every ZDS pod not in `keep`.
    Reconcile {
        keep: BTreeSet<String>,
    },
    /// Answer with this error.
    Reject(String),
}

/// One connection's state: which pods the snapshot named.
#[derive(Debug, Default)]
pub struct Session {
    snapshot_done: bool,
    named: BTreeSet<String>,
}

impl Session {
    pub fn snapshot_done(&self) -> bool {
        self.snapshot_done
    }

    /// Decides what a request (or a parse error) leads to. The fd of an Add
    /// stays with the caller.
    pub fn on(&mut self, req: Result<&Request, &ZdsError>, cluster_id: &str) -> Action {
        let req = match req {
            Ok(r) => r,
            Err(e) => return Action::Reject(e.to_string()),
        };
        match req {
            Request::Add { uid, info, .. } => {
                if !self.snapshot_done {
                    self.named.insert(uid.clone());
                }
                Action::Add {
                    uid: uid.clone(),
                    workload: workload_uid(cluster_id, uid, info.as_ref()),
                }
            }
            Request::Keep { uid } if self.snapshot_done => Action::Reject(format!(
                "KeepWorkload for {uid} after SnapshotSent; keep is only part of a snapshot"
            )),
            Request::Keep { uid } => {
                self.named.insert(uid.clone());
                Action::Keep { uid: uid.clone() }
            }
            Request::Del { uid } => {
                self.named.remove(uid);
                Action::Del { uid: uid.clone() }
            }
            Request::SnapshotSent if self.snapshot_done => {
                Action::Reject("a second SnapshotSent on one connection".to_string())
            }
            Request::SnapshotSent => {
                self.snapshot_done = true;
                Action::Reconcile {
                    keep: std::mem::take(&mut self.named),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
