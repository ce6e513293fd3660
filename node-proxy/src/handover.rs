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
//! old side's [`READY_TIMEOUT`].
//!
//! Decisions are in [`session`], tested as tables; this module does the I/O.

pub mod proto;
pub mod session;

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trellis_netns::seqpacket::{SeqpacketConn, SeqpacketListener};

use crate::instance::InstanceLock;
use crate::pods::Pods;
use proto::{AdminServer, Msg, MAX_PACKET, VERSION};
use session::{Bundle, HandoverError, HelloDecision, Step, Taker};

/// The new process waits this long at most for its first config before it
/// gives up (and the old one keeps serving).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// The old process waits this long for `ready` after sending everything.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Any other message must come within this.
const MSG_TIMEOUT: Duration = Duration::from_secs(10);

async fn send(conn: &SeqpacketConn, msg: &Msg, fd: Option<&OwnedFd>) -> Result<(), HandoverError> {
    use std::io::ErrorKind as K;
    match conn.send(&msg.encode(), fd.map(|f| f.as_fd())).await {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind(), K::BrokenPipe | K::ConnectionReset) => {
            Err(HandoverError::Closed {
                when: "while we were sending",
            })
        }
        Err(e) => Err(e.into()),
    }
}

async fn recv(
    conn: &SeqpacketConn,
    timeout: Duration,
    when: &'static str,
) -> Result<(Msg, Option<OwnedFd>), HandoverError> {
    let packet = tokio::time::timeout(timeout, conn.recv(MAX_PACKET))
        .await
        .map_err(|_| HandoverError::Timeout {
            secs: timeout.as_secs(),
            when,
        })?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionReset => HandoverError::Closed { when },
            _ => e.into(),
        })?
        .ok_or(HandoverError::Closed { when })?;
    Ok(proto::decode(
        &packet.data,
        packet.fds,
        packet.truncated,
        packet.fds_truncated,
    )?)
}

/// The new process: connects to `path` and receives everything. The old
/// process keeps serving until [`confirm`].
pub async fn take(path: &Path) -> Result<(Bundle, SeqpacketConn), HandoverError> {
    let conn = SeqpacketConn::connect(path).map_err(|source| HandoverError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    let hello = Msg::Hello {
        version: VERSION,
        pid: std::process::id(),
    };
    send(&conn, &hello, None).await?;
    let mut taker = Taker::default();
    loop {
        let (msg, fd) = recv(&conn, MSG_TIMEOUT, "while receiving the listeners").await?;
        if let Step::Complete(bundle) = taker.on(msg, fd)? {
            return Ok((bundle, conn));
        }
    }
}

/// The new process gives up before serving: the old one keeps on.
pub async fn abort(conn: &SeqpacketConn, reason: &str) {
    let msg = Msg::Abort {
        reason: reason.into(),
    };
    if let Err(e) = send(conn, &msg, None).await {
        warn!(error = %e, "could not tell the old node proxy that the hand-over is off (it keeps serving anyway once the socket closes)");
    }
}

/// The new process, accepting on every listener now: tells the old one to
/// stop accepting, and waits for it to say it has.
pub async fn confirm(conn: &SeqpacketConn) -> Result<(), HandoverError> {
    send(conn, &Msg::Ready, None).await?;
    match recv(conn, MSG_TIMEOUT, "while waiting for released").await? {
        (Msg::Released, _) => Ok(()),
        (other, _) => Err(HandoverError::Unexpected {
            got: other.name(),
            when: "while waiting for released",
        }),
    }
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
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            c = listener.accept() => match c {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "hand-over socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = give(&conn, &giver) => r,
        };
        match outcome {
            Ok(new_pid) => {
                info!(
                    new_pid,
                    "handed over to the new node proxy; stopped accepting, draining"
                );
                handed_over.store(true, Ordering::Release);
                stop.cancel();
                return;
            }
            Err(e) => {
                giver.pods.thaw();
                warn!(error = %e, "hand-over failed; this node proxy serves on as before");
            }
        }
    }
}

/// One hand-over attempt; returns the new process's pid.
async fn give(conn: &SeqpacketConn, g: &Giver) -> Result<u32, HandoverError> {
    let (hello, _) = match recv(conn, MSG_TIMEOUT, "while waiting for hello").await {
        Ok(m) => m,
        Err(e) => {
            let _ = send(
                conn,
                &Msg::Refuse {
                    reason: e.to_string(),
                },
                None,
            )
            .await;
            return Err(e);
        }
    };
    let new_pid = match &hello {
        Msg::Hello { pid, .. } => *pid,
        _ => 0,
    };
    if let HelloDecision::Refuse(reason) = session::on_hello(&hello, g.draining.is_draining()) {
        let _ = send(
            conn,
            &Msg::Refuse {
                reason: reason.clone(),
            },
            None,
        )
        .await;
        return Err(HandoverError::Refused(reason));
    }
    info!(
        new_pid,
        "a new node proxy asks to take over; handing over the listeners"
    );
    let pods = match g.pods.freeze_and_export() {
        Ok(p) => p,
        Err(e) => {
            let reason = e.to_string();
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
    let lock = g.lock.as_fd().try_clone_to_owned()?;
    send(conn, &Msg::Lock, Some(&lock)).await?;
    let servers = [
        AdminServer::Admin,
        AdminServer::Metrics,
        AdminServer::Readiness,
    ];
    for (server, fd) in servers.into_iter().zip(&g.admin) {
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
    send(conn, &Msg::Done, None).await?;
    // Our copies of the fds close here; the new process holds its own.
    drop(pods);
    let (verdict, _) = recv(conn, READY_TIMEOUT, "while waiting for ready").await?;
    session::on_verdict(&verdict)?;
    // Best effort: the new process serves either way.
    let _ = send(conn, &Msg::Released, None).await;
    Ok(new_pid)
}
