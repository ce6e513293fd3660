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

use crate::frames::{FrameHeaders, GOAWAY};

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

/// Fires the signal on the first GOAWAY frame in the bytes a client reads.
#[derive(Debug)]
pub(crate) struct FrameScan {
    headers: FrameHeaders,
    signal: Arc<GoAway>,
}

impl FrameScan {
    pub(crate) fn new(signal: Arc<GoAway>) -> FrameScan {
        FrameScan {
            headers: FrameHeaders::from_server(),
            signal,
        }
    }

    /// Feeds bytes just read, in order.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        let signal = &self.signal;
        let _ = self.headers.feed(bytes, |h| {
            if h.kind == GOAWAY {
                signal.fire();
            }
            Ok::<_, std::convert::Infallible>(())
        });
    }
}

#[cfg(test)]
mod tests;
