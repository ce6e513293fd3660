//! Circuit breaking: caps on one destination's requests in flight and on the
//! requests waiting for a slot.
//!
//! Slots are a `tokio::sync::Semaphore`, which hands freed permits to waiters
//! in arrival order, so a request that just arrived cannot jump the queue.
//! Waiting is bounded twice: at most `maxPending` requests wait, each for at
//! most `pendingTimeout`. `maxPending: 0` or `pendingTimeout: 0s` means "do
//! not queue": an unbounded wait would turn an overload into a pile of
//! requests whose clients have long given up.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use trellis_api::config::l7::CircuitBreaker as CircuitBreakerCfg;

/// Why a request got no slot; both are answered 503 (upstream overloaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CircuitRejected {
    #[error(
        "circuit breaker open: maxRequests are in flight and maxPending are already waiting \
         for this destination; add endpoints, or raise circuitBreaker.maxRequests/maxPending \
         if the destination can take more"
    )]
    Overflow,
    #[error(
        "circuit breaker: no slot freed up within pendingTimeout; the destination answers \
         slowly, or circuitBreaker.maxRequests is too low for its traffic"
    )]
    PendingTimeout,
}

/// Caps for one destination service, shared by all worker threads.
#[derive(Debug)]
pub struct CircuitBreaker {
    max_requests: u32,
    max_pending: u32,
    pending_timeout: Duration,
    slots: Arc<Semaphore>,
    pending: AtomicU32,
}

impl CircuitBreaker {
    pub fn new(cfg: &CircuitBreakerCfg) -> Arc<Self> {
        Arc::new(CircuitBreaker {
            max_requests: cfg.max_requests,
            max_pending: cfg.max_pending,
            pending_timeout: cfg.pending_timeout.0,
            slots: Arc::new(Semaphore::new(cfg.max_requests as usize)),
            pending: AtomicU32::new(0),
        })
    }

    /// A slot now if one is free; else a place in the queue if there is one,
    /// for up to `pendingTimeout`; else [`CircuitRejected::Overflow`].
    /// Dropping the future leaves the queue.
    pub async fn acquire(self: &Arc<Self>) -> Result<CircuitPermit, CircuitRejected> {
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(CircuitPermit { _slot: slot });
        }
        let _queued = self.enter_queue().ok_or(CircuitRejected::Overflow)?;
        let wait = Arc::clone(&self.slots).acquire_owned();
        match tokio::time::timeout(self.pending_timeout, wait).await {
            Ok(Ok(slot)) => Ok(CircuitPermit { _slot: slot }),
            // The semaphore is private and never closed; if it somehow were,
            // there is no slot to wait for.
            Ok(Err(_closed)) => Err(CircuitRejected::Overflow),
            Err(_elapsed) => Err(CircuitRejected::PendingTimeout),
        }
    }

    /// Requests holding a slot.
    pub fn in_flight(&self) -> u32 {
        let free = u32::try_from(self.slots.available_permits()).unwrap_or(u32::MAX);
        self.max_requests.saturating_sub(free)
    }

    /// Requests waiting for a slot.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    fn enter_queue(&self) -> Option<QueueGuard<'_>> {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_pending).then_some(n + 1)
            })
            .ok()
            .map(|_| QueueGuard(&self.pending))
    }
}

/// Counts one waiting request until dropped, however the wait ends.
struct QueueGuard<'a>(&'a AtomicU32);

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A slot for one request; freed on drop.
#[derive(Debug)]
pub struct CircuitPermit {
    _slot: OwnedSemaphorePermit,
}
