//! The waypoint manager's counters.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct WaypointMetrics {
    /// Objects applied (server-side apply calls that succeeded).
    pub applies: AtomicU64,
    /// API calls that failed: applies, reads, deletes and status writes.
    pub apply_errors: AtomicU64,
    /// Left-over objects deleted.
    pub deletes: AtomicU64,
    /// Gateway status writes.
    pub status_writes: AtomicU64,
    /// Waypoint Gateways whose objects are all applied, with an address.
    pub programmed: AtomicU64,
}

/// A copy of [`WaypointMetrics`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaypointMetricsSnapshot {
    pub applies: u64,
    pub apply_errors: u64,
    pub deletes: u64,
    pub status_writes: u64,
    pub programmed: u64,
}

impl WaypointMetrics {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self) -> WaypointMetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WaypointMetricsSnapshot {
            applies: get(&self.applies),
            apply_errors: get(&self.apply_errors),
            deletes: get(&self.deletes),
            status_writes: get(&self.status_writes),
            programmed: get(&self.programmed),
        }
    }
}
