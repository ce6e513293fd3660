//! Hitless upgrade of a shared-mode node proxy: the running process hands
//! every listening socket (admin, metrics, readiness, and each enrolled
//! pod's 15001, 15006 and 15008 inside its netns), each pod's netns and
//! enrollment, and the node lock to a new process over a Unix SEQPACKET
//! socket with SCM_RIGHTS ([`proto`] has the conversation).
//!
//! The sockets are shared, not copied: the same listening socket, its
//! SO_REUSEPORT group and its accept queue. The new process starts
//! accepting on them first, then says `ready`; only then does the old one
//! stop accepting (closing its copies leaves the sockets open in the new
//! one, so no connection waiting in a queue is lost) and drain its own
//! connections to their end, up to `--handover-drain-deadline`.
//!
//! Any failure before `ready` leaves the old process exactly as it was
//! (it never stopped accepting; its pods thaw), and the new one exits with
//! the error. The timeouts are ordered so that the new side always decides
//! first: it gives up on its config after [`SYNC_TIMEOUT`], well inside the
//! old side's wait for `ready`.
//!
//! The framing (hello, verdict, the serving loop, `done`) is shared with
//! the waypoint in `trellis_netns::handover`; what is handed over is decided
//! in [`session`], tested as tables; this module does the I/O.

pub mod proto;
pub mod session;

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use trellis_netns::handover as frame;
use trellis_netns::seqpacket::SeqpacketConn;

use crate::instance::InstanceLock;
use crate::pods::Pods;
use proto::{AdminServer, Msg, VERSION};
use session::{Bundle, HandoverError, Taker};

/// The new process waits this long at most for its first config before it
/// gives up (and the old one keeps serving); well inside the old side's
/// wait for `ready` (`trellis_netns::handover::READY_TIMEOUT`).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

async fn send(conn: &SeqpacketConn, msg: &Msg, fd: Option<&OwnedFd>) -> Result<(), HandoverError> {
    Ok(frame::send(conn, msg, fd).await?)
}

/// The new process: connects to `path` and receives everything. The old
/// process keeps serving until [`confirm`].
pub async fn take(path: &Path) -> Result<(Bundle, SeqpacketConn), HandoverError> {
    frame::take::<Taker>(path).await
}

/// The new process gives up before serving: the old one keeps on.
pub async fn abort(conn: &SeqpacketConn, reason: &str) {
    frame::abort::<Msg>(conn, reason).await
}

/// The new process, accepting on every listener now: tells the old one to
/// stop accepting, and waits for it to say it has.
pub async fn confirm(conn: &SeqpacketConn) -> Result<(), HandoverError> {
    Ok(frame::confirm::<Msg>(conn).await?)
}

/// What the running process hands over.
pub struct Giver {
    pub pods: Arc<Pods>,
    pub lock: InstanceLock,
    /// Dups of the admin, metrics and readiness listeners.
    pub admin: [OwnedFd; 3],
    pub draining: trellis_core::drain::DrainWatcher,
}

impl frame::Give for Giver {
    type Msg = Msg;
    type Error = HandoverError;
    const PROXY: &'static str = "node proxy";

    fn draining(&self) -> bool {
        self.draining.is_draining()
    }

    /// Freezes enrollment (a failed attempt thaws it) and sends the lock,
    /// the admin listeners, and each pod with its listeners.
    async fn hand(&self, conn: &SeqpacketConn) -> Result<(), HandoverError> {
        let pods = match self.pods.freeze_and_export() {
            Ok(p) => p,
            Err(e) => {
                let reason = e.to_string();
                // Best effort: the refusal stands whether or not it lands.
                let _ = send(
                    conn,
                    &Msg::Refuse {
                        reason: reason.clone(),
                    },
                    None,
                )
                .await;
                return Err(HandoverError::Local(reason));
            }
        };
        let listeners: usize = pods.iter().map(|p| p.listeners.len()).sum();
        let offer = Msg::Offer {
            version: VERSION,
            pid: std::process::id(),
            pods: pods.len() as u32,
            listeners: listeners as u32,
        };
        send(conn, &offer, None).await?;
        let lock = self.lock.as_fd().try_clone_to_owned()?;
        send(conn, &Msg::Lock, Some(&lock)).await?;
        let servers = [
            AdminServer::Admin,
            AdminServer::Metrics,
            AdminServer::Readiness,
        ];
        for (server, fd) in servers.into_iter().zip(&self.admin) {
            send(conn, &Msg::Admin { server }, Some(fd)).await?;
        }
        for p in &pods {
            let pod = Msg::Pod {
                uid: p.uid.clone(),
                workload: p.workload.clone(),
                origin: p.origin,
                netns: p.netns_label.clone(),
                capture_rules: p.capture_rules,
            };
            send(conn, &pod, Some(&p.netns)).await?;
            for (kind, addr, fd) in &p.listeners {
                let l = Msg::Listener {
                    pod: p.uid.clone(),
                    kind: (*kind).into(),
                    addr: *addr,
                };
                send(conn, &l, Some(fd)).await?;
            }
        }
        // Our copies of the fds close here; the new process holds its own.
        Ok(())
    }

    fn failed(&self, _: &HandoverError) {
        self.pods.thaw();
    }
}
