//! The ZDS client: the node proxy connects to the CNI agent's socket (as
//! ztunnel connects to Istio's CNI agent), says hello, and serves the pods
//! the agent hands over: a snapshot of every enrolled pod on each new
//! connection, ended by SnapshotSent, then each new pod and each removal.
//! Every request gets an Ack, with the error text when it failed.
//!
//! It runs on the admin thread; the decisions are in [`session`], the I/O
//! here. A lost connection is retried with jittered backoff; the pods keep
//! being served meanwhile (their rules are the agent's and stay too).

pub mod retry;
pub mod session;

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use trellis_api::pb::istio::workload::zds::{
    workload_response::Payload, Ack, Version, WorkloadResponse, ZdsHello,
};
use trellis_netns::seqpacket::SeqpacketConn;

use crate::pods::{PodError, Pods};
use session::{Action, Request, Session, MAX_PACKET};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct ZdsClient {
    pub socket: PathBuf,
    pub cluster_id: String,
    pub pods: Arc<Pods>,
    /// Set at the first SnapshotSent: readiness waits for it.
    pub snapshot_seen: Arc<AtomicBool>,
    /// Pods whose enrolment waits for a lingering port (see [`retry`]).
    pub retries: retry::Retries,
}

impl ZdsClient {
    /// Connects, serves, reconnects, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        let mut warned = false;
        while !stop.is_cancelled() {
            match SeqpacketConn::connect(&self.socket) {
                Ok(conn) => {
                    info!(socket = %self.socket.display(), "connected to the CNI agent (ZDS)");
                    warned = false;
                    backoff = MIN_BACKOFF;
                    tokio::select! {
                        r = self.serve(&conn) => match r {
                            Ok(()) => info!("the CNI agent closed the ZDS connection; reconnecting"),
                            Err(e) => warn!(error = %e, "ZDS connection to the CNI agent failed; reconnecting"),
                        },
                        _ = stop.cancelled() => return,
                    }
                }
                Err(e) if !warned => {
                    warn!(socket = %self.socket.display(), error = %e, "cannot reach the CNI agent's ZDS socket; retrying (is trellis-cni-agent running on this node?)");
                    warned = true;
                }
                Err(e) => debug!(error = %e, "ZDS connect failed"),
            }
            let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
            backoff = (backoff * 2).min(MAX_BACKOFF);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn serve(&self, conn: &SeqpacketConn) -> std::io::Result<()> {
        let hello = ZdsHello {
            version: Version::V1 as i32,
        };
        conn.send(&hello.encode_to_vec(), None).await?;
        let mut session = Session::default();
        loop {
            let Some(packet) = conn.recv(MAX_PACKET).await? else {
                return Ok(());
            };
            let truncated = packet.truncated || packet.fds_truncated;
            let parsed = session::parse(&packet.data, packet.fds, truncated);
            let action = session.on(parsed.as_ref(), &self.cluster_id);
            let result = self.apply(action, parsed.ok());
            if let Err(e) = &result {
                warn!(error = %e, "ZDS request refused");
            }
            let ack = WorkloadResponse {
                payload: Some(Payload::Ack(Ack {
                    error: result.err().unwrap_or_default(),
                })),
            };
            conn.send(&ack.encode_to_vec(), None).await?;
        }
    }

    fn apply(&self, action: Action, req: Option<Request>) -> Result<(), String> {
        match action {
            Action::Add { uid, workload } => {
                let Some(Request::Add { netns, .. }) = req else {
                    return Err(format!("AddWorkload {uid} without its netns"));
                };
                self.retries.cancel(&uid);
                match self.pods.add_zds(&uid, &workload, netns.as_fd()) {
                    Ok(()) => Ok(()),
                    Err(e @ PodError::Lingering { .. }) => {
                        self.retries.start(self.pods.clone(), uid, workload, netns);
                        Err(format!(
                            "{e}. This proxy tries again every {:?} for {:?} and enrolls the pod once the port is free",
                            retry::EVERY,
                            retry::FOR
                        ))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Action::Keep { uid } => {
                debug!(pod = %uid, "kept by the agent's snapshot");
                Ok(())
            }
            Action::Del { uid } => {
                // Unknown is fine: the pod may have failed to enroll, or
                // been dropped by an earlier snapshot.
                self.retries.cancel(&uid);
                let _ = self.pods.remove(&uid);
                Ok(())
            }
            Action::Reconcile { keep } => {
                let stale: Vec<String> = self
                    .pods
                    .zds_uids()
                    .into_iter()
                    .filter(|u| !keep.contains(u))
                    .collect();
                for uid in &stale {
                    let _ = self.pods.remove(uid);
                }
                self.retries.cancel_unless(|uid| keep.contains(uid));
                info!(
                    kept = keep.len(),
                    dropped = stale.len(),
                    "ZDS snapshot complete"
                );
                self.snapshot_seen.store(true, Ordering::Relaxed);
                Ok(())
            }
            Action::Reject(e) => Err(e),
        }
    }
}
