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
//! The framing (hello, verdict, the serving loop) is shared with the
//! waypoint in `trellis_netns::handover`; what is handed over is decided in
//! [`session`], tested as tables; this module does the I/O.

pub mod proto;
pub mod session;

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trellis_netns::handover as frame;
use trellis_netns::seqpacket::{SeqpacketConn, SeqpacketListener};

use crate::instance::InstanceLock;
use crate::pods::Pods;
use proto::{AdminServer, Msg, VERSION};
use session::{Bundle, HandoverError, Step, Taker};

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
    let mut taker = Taker::default();
    frame::take::<Msg, _, _>(path, |msg, fd| match taker.on(msg, fd)? {
        Step::Complete(bundle) => Ok(Some(bundle)),
        Step::More => Ok(None),
    })
    .await
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

/// The running process: serves hand-over requests on `listener` until one
/// succeeds (then sets `handed_over` and cancels `stop`, which starts the
/// drain) or `stop` fires.
pub async fn serve(
    listener: SeqpacketListener,
    giver: Giver,
    stop: CancellationToken,
    handed_over: Arc<AtomicBool>,
) {
    let handed = frame::serve(
        listener,
        stop.cancelled(),
        &handed_over,
        |conn| give(conn, &giver),
        |e: HandoverError| {
            giver.pods.thaw();
            warn!(error = %e, "hand-over failed; this node proxy serves on as before");
        },
    )
    .await;
    if let Some(new_pid) = handed {
        info!(
            new_pid,
            "handed over to the new node proxy; stopped accepting, draining"
        );
        stop.cancel();
    }
}

/// One hand-over attempt; returns the new process's pid.
async fn give(conn: SeqpacketConn, g: &Giver) -> Result<u32, HandoverError> {
    let new_pid = frame::greet::<Msg>(&conn, g.draining.is_draining()).await?;
    info!(
        new_pid,
        "a new node proxy asks to take over; handing over the listeners"
    );
    let pods = match g.pods.freeze_and_export() {
        Ok(p) => p,
        Err(e) => {
            let reason = e.to_string();
            // Best effort: the refusal stands whether or not it lands.
            let _ = send(
                &conn,
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
    send(&conn, &offer, None).await?;
    let lock = g.lock.as_fd().try_clone_to_owned()?;
    send(&conn, &Msg::Lock, Some(&lock)).await?;
    let servers = [
        AdminServer::Admin,
        AdminServer::Metrics,
        AdminServer::Readiness,
    ];
    for (server, fd) in servers.into_iter().zip(&g.admin) {
        send(&conn, &Msg::Admin { server }, Some(fd)).await?;
    }
    for p in &pods {
        let pod = Msg::Pod {
            uid: p.uid.clone(),
            workload: p.workload.clone(),
            origin: p.origin,
            netns: p.netns_label.clone(),
            capture_rules: p.capture_rules,
        };
        send(&conn, &pod, Some(&p.netns)).await?;
        for (kind, addr, fd) in &p.listeners {
            let l = Msg::Listener {
                pod: p.uid.clone(),
                kind: (*kind).into(),
                addr: *addr,
            };
            send(&conn, &l, Some(fd)).await?;
        }
    }
    send(&conn, &Msg::Done, None).await?;
    // Our copies of the fds close here; the new process holds its own.
    drop(pods);
    frame::finish::<Msg>(&conn).await?;
    Ok(new_pid)
}
