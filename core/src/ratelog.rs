//! Rate-limited log lines: under a flood (thousands of refused or failed
//! connections a second) one WARN per event filled disks (7 MB of log for
//! one flood of idle connections, issue 16). A [`LogLimiter`] lets the
//! first event through at once and then one per interval, carrying how many
//! were held back since, so the log stays short and still says how much
//! happened.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Default interval between two lines of one kind.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One kind of log line, limited to one per interval; cheap to check from
/// any thread (two atomics, no lock).
#[derive(Debug)]
pub struct LogLimiter {
    origin: Instant,
    interval_ms: u64,
    /// Milliseconds since `origin` before which nothing is logged; 0 = log now.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            origin: Instant::now(),
            interval_ms: interval.as_millis().max(1) as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Call once per event. `Some(n)`: log this one now, and say `n` more
    /// like it were held back since the last line. `None`: counted, not logged.
    pub fn check(&self) -> Option<u64> {
        self.check_at(self.origin.elapsed().as_millis() as u64)
    }

    fn check_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.interval_ms,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(LOG_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_event_logs_then_one_per_interval_with_the_held_back_count() {
        let l = LogLimiter::new(Duration::from_millis(100));
        // (time in ms, expected)
        let steps: [(u64, Option<u64>); 8] = [
            (0, Some(0)),
            (1, None),
            (50, None),
            (99, None),
            (100, Some(3)),
            (150, None),
            (400, Some(1)),
            (401, None),
        ];
        for (t, want) in steps {
            assert_eq!(l.check_at(t), want, "at {t} ms");
        }
    }

    #[test]
    fn a_burst_from_many_threads_logs_once_and_counts_the_rest() {
        let l = std::sync::Arc::new(LogLimiter::new(Duration::from_secs(3600)));
        let logged: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let l = l.clone();
                    s.spawn(move || (0..1000).filter(|_| l.check().is_some()).count() as u64)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(logged, 1);
        assert_eq!(l.suppressed.load(Ordering::SeqCst), 3999);
    }
}
