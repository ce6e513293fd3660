//! Graceful drain with a hard deadline: listeners stop on the signal,
//! in-flight connections finish on their own, and whatever is left when the
//! deadline passes is reported so the caller can close it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::debug;

/// Creates a linked trigger and watcher. Dropping the trigger without
/// calling [`DrainTrigger::drain`] never signals: there is then no drain.
pub fn new() -> (DrainTrigger, DrainWatcher) {
    let (signal, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        signal,
        in_flight: AtomicUsize::new(0),
        idle: Notify::new(),
    });
    (
        DrainTrigger {
            shared: shared.clone(),
        },
        DrainWatcher { shared },
    )
}

#[derive(Debug)]
struct Shared {
    /// `true` once draining. The sender lives here rather than in the
    /// trigger so watchers never see a closed channel.
    signal: watch::Sender<bool>,
    in_flight: AtomicUsize,
    /// Woken when `in_flight` drops to zero.
    idle: Notify,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every tracked connection finished before the deadline.
    Completed,
    /// The deadline passed with `remaining` connections still tracked.
    DeadlineExceeded { remaining: usize },
}

/// Starts the drain; held by whoever decides to shut down.
#[derive(Debug)]
pub struct DrainTrigger {
    shared: Arc<Shared>,
}

impl DrainTrigger {
    /// Signals every watcher, then waits until no connection is tracked or
    /// `deadline` has passed, whichever is first.
    pub async fn drain(self, deadline: Duration) -> DrainOutcome {
        self.shared.signal.send_replace(true);
        let until = tokio::time::Instant::now() + deadline;
        loop {
            // Register for the wake-up before checking the count, so a guard
            // dropped in between is not missed.
            let idle = self.shared.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let remaining = self.shared.in_flight.load(Ordering::Acquire);
            if remaining == 0 {
                return DrainOutcome::Completed;
            }
            debug!(remaining, "waiting for connections to finish");
            if tokio::time::timeout_at(until, idle).await.is_err() {
                let remaining = self.shared.in_flight.load(Ordering::Acquire);
                return if remaining == 0 {
                    DrainOutcome::Completed
                } else {
                    DrainOutcome::DeadlineExceeded { remaining }
                };
            }
        }
    }
}

/// Seen by listeners and connections: when to stop, and a way to be counted.
#[derive(Debug, Clone)]
pub struct DrainWatcher {
    shared: Arc<Shared>,
}

impl DrainWatcher {
    /// Resolves once the drain has started (at once if it already has).
    pub async fn signaled(&self) {
        let mut rx = self.shared.signal.subscribe();
        // The sender lives in `shared`, which we hold, so this cannot fail.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.shared.signal.borrow()
    }

    /// Counts one in-flight connection until the guard is dropped.
    pub fn track(&self) -> DrainGuard {
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        DrainGuard {
            shared: self.shared.clone(),
        }
    }

    /// Connections currently tracked.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }
}

/// One tracked connection; dropping it lets the drain finish sooner.
#[derive(Debug)]
#[must_use = "the connection is only counted while the guard is held"]
pub struct DrainGuard {
    shared: Arc<Shared>,
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        if self.shared.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests;
