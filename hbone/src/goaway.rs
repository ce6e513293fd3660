//! Noticing a peer's GOAWAY on a client connection.
//!
//! h2 handles a GOAWAY internally (streams above its last id fail, new ones
//! are refused) but tells the client nothing while older streams are open.
//! A pool then keeps handing out the connection, and whoever keeps idle
//! streams on it (an HTTP keep-alive connection carried in a tunnel) holds
//! a draining peer open until its deadline. So the client's transport
//! wrapper reads the frame headers going by (a few integer operations per
//! frame, nothing per byte) and raises a [`GoAway`] signal that the pool
//! and the tunnels' owners can check or wait on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// HTTP/2 frame header length (RFC 9113 §4.1).
const HEADER_LEN: usize = 9;
/// Frame type of GOAWAY.
const GOAWAY: u8 = 0x7;

/// Set once the peer has sent GOAWAY on a connection; shared by the
/// connection, its pool entry and its tunnels.
#[derive(Debug, Default)]
pub struct GoAway {
    set: AtomicBool,
    notify: Notify,
}

impl GoAway {
    /// True once the peer has said it is going away.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Resolves once the peer has sent GOAWAY (at once if it already has).
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a fire in between is not lost.
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn fire(&self) {
        if !self.set.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }
}

/// A tunnel's handle on its connection's [`GoAway`] signal.
#[derive(Clone, Debug)]
pub struct GoAwaySignal(pub(crate) Arc<GoAway>);

impl GoAwaySignal {
    /// True once the tunnel's connection got GOAWAY: do not start new work on it.
    pub fn is_set(&self) -> bool {
        self.0.is_set()
    }

    /// Resolves once the tunnel's connection got GOAWAY.
    pub async fn wait(&self) {
        self.0.wait().await
    }
}

/// Follows frame boundaries in the bytes a client reads and fires the
/// signal on the first GOAWAY frame. A server's first bytes are a frame
/// (its SETTINGS), so scanning starts at byte 0.
#[derive(Debug)]
pub(crate) struct FrameScan {
    header: [u8; HEADER_LEN],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    signal: Arc<GoAway>,
}

impl FrameScan {
    pub(crate) fn new(signal: Arc<GoAway>) -> FrameScan {
        FrameScan {
            header: [0; HEADER_LEN],
            have: 0,
            skip: 0,
            signal,
        }
    }

    /// Feeds bytes just read, in order.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == HEADER_LEN {
                let h = &self.header;
                self.skip =
                    (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                self.have = 0;
                if h[3] == GOAWAY {
                    self.signal.fire();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
