//! Upgrading a waypoint in place: the running process hands its listening
//! sockets (each worker's HBONE socket, admin, metrics, readiness) to a new
//! process over a Unix SEQPACKET socket with SCM_RIGHTS, as the node proxy
//! does ([`session`] has the conversation and the decisions).
//!
//! The sockets are shared, not copied: the same listening socket, its
//! SO_REUSEPORT group and its accept queue. The new process starts
//! accepting on them first, then says `ready`; only then does the old one
//! stop accepting (closing its copies leaves the sockets open in the new
//! one, so no connection waiting in a queue is lost), tell its HBONE peers
//! to go away (GOAWAY, so their pools open new connections, which the new
//! process accepts) and drain what is in flight, up to
//! `--handover-drain-deadline`.
//!
//! Any failure before `ready` leaves the old process as it was (it never
//! stopped accepting), and the new one exits with the error. The new side
//! gives up on its config and certificate after [`SYNC_TIMEOUT`], well
//! inside the old side's wait for `ready`, so it always decides first. The
//! framing is shared with the node proxy (`trellis_netns::handover`).

pub mod session;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use trellis_netns::handover as frame;
use trellis_netns::seqpacket::SeqpacketConn;

use session::{Bundle, HandoverError, Listener, Msg, Taker, VERSION};

/// The new process waits this long at most for its config and certificate
/// before it gives up (and the old one keeps serving); well inside the old
/// side's wait for `ready` (`trellis_netns::handover::READY_TIMEOUT`).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// The new process: connects to `path` and receives everything. The old
/// process keeps serving until the new one confirms
/// (`trellis_netns::handover::confirm`).
pub async fn take(path: &Path) -> Result<(Bundle, SeqpacketConn), HandoverError> {
    frame::take::<Taker>(path).await
}

/// What the running process hands over: dups of its listeners.
pub struct Giver {
    pub hbone: Vec<OwnedFd>,
    /// Admin, metrics, readiness.
    pub admin: [OwnedFd; 3],
    pub draining: trellis_core::drain::DrainWatcher,
}

impl frame::Give for Giver {
    type Msg = Msg;
    type Error = HandoverError;
    const PROXY: &'static str = "waypoint";

    fn draining(&self) -> bool {
        self.draining.is_draining()
    }

    async fn hand(&self, conn: &SeqpacketConn) -> Result<(), HandoverError> {
        let offer = Msg::Offer {
            version: VERSION,
            pid: std::process::id(),
            hbone: self.hbone.len() as u32,
        };
        frame::send(conn, &offer, None).await?;
        let admin = [Listener::Admin, Listener::Metrics, Listener::Readiness];
        let all = self
            .hbone
            .iter()
            .map(|fd| (Listener::Hbone, fd))
            .chain(admin.into_iter().zip(&self.admin));
        for (server, fd) in all {
            frame::send(conn, &Msg::Listener { server }, Some(fd)).await?;
        }
        Ok(())
    }
}
