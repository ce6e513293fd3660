//! Bounds on what a flood of connections can take from a proxy (issue 16,
//! 6.3): the connections in flight, and the TLS handshakes pending on the
//! HBONE port.
//!
//! - **Connections.** Past `max_connections` an accepted socket is closed at
//!   once (with a zero linger, so it costs no TIME_WAIT entry) and counted.
//!   Why accept-and-close rather than stop accepting: a listener that stops
//!   accepting leaves the kernel's backlog full of SYNs that wait, then time
//!   out, and real clients queue behind the flood and hang for seconds;
//!   accepting and closing keeps the backlog moving, tells every client at
//!   once, and serves the next one as soon as a slot frees. The limit
//!   leaves headroom under RLIMIT_NOFILE, so `accept` itself never fails
//!   for lack of a descriptor.
//! - **Pending handshakes.** At most `max_pending_handshakes` sockets may be
//!   between accept and a verified client certificate. A new one past the
//!   bound evicts the *oldest* pending one: a real client finishes its
//!   handshake in a round trip or two, while an idle or slow one is pushed
//!   out by the next arrivals, so a flood cannot lock real clients out.
//!   Above half the bound (pressure) new handshakes also get a short
//!   timeout instead of the normal one.
//! - **Memory.** When a pressure episode ends (nothing pending) the heap is
//!   trimmed, so the handshake buffers of a flood are given back (glibc
//!   keeps freed memory of its per-thread arenas otherwise).
//!
//! The accept path pays one atomic add per connection (and one subtract at
//! close); handshakes take a short lock at start and end, next to a TLS
//! handshake's cost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge, Registry};
use tokio::sync::Notify;

use crate::metrics::{counter_vec, register};
use crate::ratelog::LogLimiter;

/// Handshake deadline in normal times.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshake deadline for handshakes started under pressure.
pub const PRESSURE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// File descriptors a proxied connection uses: the accepted socket and the
/// one to the destination (an HBONE stream's destination socket counts as
/// its own connection).
const FDS_PER_CONNECTION: u64 = 2;
/// Descriptors kept back for listeners, pod namespaces, the controller,
/// logs and `accept` itself: a tenth of the limit, at least this many.
const MIN_FD_HEADROOM: u64 = 256;
/// Most pending handshakes by default; each holds TLS state of a few tens of KiB.
const MAX_DEFAULT_PENDING: usize = 1024;

/// The bounds in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_pending_handshakes: usize,
}

impl Limits {
    /// From the flags (0 = derive) and the descriptor limit.
    pub fn resolve(max_connections: usize, max_pending: usize, nofile: u64) -> Limits {
        let max_connections = if max_connections > 0 {
            max_connections
        } else {
            default_max_connections(nofile)
        };
        let max_pending_handshakes = if max_pending > 0 {
            max_pending
        } else {
            (max_connections / 4).clamp(1, MAX_DEFAULT_PENDING)
        };
        Limits {
            max_connections,
            max_pending_handshakes,
        }
    }
}

/// Connections that fit under `nofile` descriptors with headroom.
pub fn default_max_connections(nofile: u64) -> usize {
    let headroom = (nofile / 10).max(MIN_FD_HEADROOM);
    let usable = nofile.saturating_sub(headroom) / FDS_PER_CONNECTION;
    usize::try_from(usable).unwrap_or(usize::MAX).max(1)
}

/// The deadline of a handshake that starts with `pending` others pending.
pub fn handshake_timeout(pending: usize, max_pending: usize) -> Duration {
    if pending * 2 >= max_pending {
        PRESSURE_HANDSHAKE_TIMEOUT
    } else {
        HANDSHAKE_TIMEOUT
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard one (as Go's runtime does),
/// and returns the soft limit in force.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit write/read only the struct passed.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r = raised;
            }
        }
        r.rlim_cur
    }
}

/// The shared limiter of one proxy process; all workers use the same one.
#[derive(Debug)]
pub struct ConnLimits {
    limits: Limits,
    active: AtomicUsize,
    pending: Mutex<Pending>,
    metrics: LimitMetrics,
    /// Log lines of the refusals, one per interval.
    pub log_refused: LogLimiter,
    pub log_evicted: LogLimiter,
    /// For the proxies' own per-connection failure lines (accept errors,
    /// rejected HBONE connections).
    pub log_rejected: LogLimiter,
    pub log_accept_failed: LogLimiter,
}

#[derive(Debug, Default)]
struct Pending {
    /// Oldest first; may hold finished entries, skipped and compacted lazily.
    queue: VecDeque<Arc<Slot>>,
    count: usize,
    /// Set once the bound's half was reached; cleared (and the heap
    /// trimmed) when nothing is pending any more.
    pressured: bool,
}

#[derive(Debug, Default)]
struct Slot {
    /// Finished or evicted: no longer counted.
    gone: AtomicBool,
    evict: Notify,
}

#[derive(Debug)]
struct LimitMetrics {
    refused_limit: IntCounter,
    evicted: IntCounter,
    timed_out: IntCounter,
    active: IntGauge,
    pending: IntGauge,
}

impl LimitMetrics {
    fn new(registry: &Registry) -> LimitMetrics {
        let refused = counter_vec(
            "trellis_connections_refused_total",
            "Connections closed at accept or during the handshake to bound the proxy's load, by reason",
            &["reason"],
        );
        register(registry, &refused);
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric definition is valid");
            register(registry, &g);
            g
        };
        LimitMetrics {
            refused_limit: refused.with_label_values(&["connection_limit"]),
            evicted: refused.with_label_values(&["handshake_evicted"]),
            timed_out: refused.with_label_values(&["handshake_timeout"]),
            active: gauge(
                "trellis_connections_active",
                "Connections (and HBONE streams) the proxy holds, counted against --max-connections",
            ),
            pending: gauge(
                "trellis_handshakes_pending",
                "TLS handshakes in progress, counted against --max-pending-handshakes",
            ),
        }
    }
}

impl ConnLimits {
    pub fn new(limits: Limits, registry: &Registry) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            limits,
            active: AtomicUsize::new(0),
            pending: Mutex::new(Pending::default()),
            metrics: LimitMetrics::new(registry),
            log_refused: LogLimiter::default(),
            log_evicted: LogLimiter::default(),
            log_rejected: LogLimiter::default(),
            log_accept_failed: LogLimiter::default(),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A slot for one more connection, or `None` (counted) at the limit.
    pub fn try_connection(self: &Arc<Self>) -> Option<ConnPermit> {
        let max = self.limits.max_connections;
        let ok = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !ok {
            self.metrics.refused_limit.inc();
            return None;
        }
        self.metrics.active.inc();
        Some(ConnPermit(self.clone()))
    }

    /// Connections now held.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Registers a handshake about to start; past the bound the oldest
    /// pending one is evicted (see the module docs).
    pub fn begin_handshake(self: &Arc<Self>) -> Handshake {
        let slot = Arc::new(Slot::default());
        let max = self.limits.max_pending_handshakes.max(1);
        let timeout;
        {
            let mut p = self.lock();
            if p.count >= max {
                while let Some(old) = p.queue.pop_front() {
                    if !old.gone.swap(true, Ordering::AcqRel) {
                        p.count -= 1;
                        old.evict.notify_one();
                        self.metrics.evicted.inc();
                        break;
                    }
                }
            }
            timeout = handshake_timeout(p.count, max);
            if timeout == PRESSURE_HANDSHAKE_TIMEOUT {
                p.pressured = true;
            }
            p.count += 1;
            // Finished entries stay queued until evicted or compacted here,
            // which keeps the queue within a small multiple of `count`.
            if p.queue.len() >= 2 * p.count.max(64) {
                p.queue.retain(|s| !s.gone.load(Ordering::Acquire));
            }
            p.queue.push_back(slot.clone());
            self.metrics.pending.set(p.count as i64);
        }
        Handshake {
            limits: self.clone(),
            slot,
            timeout,
        }
    }

    /// Counts a handshake that ran out of time.
    pub fn handshake_timed_out(&self) {
        self.metrics.timed_out.inc();
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn end_handshake(&self, slot: &Slot) {
        let trim = {
            let mut p = self.lock();
            if !slot.gone.swap(true, Ordering::AcqRel) {
                p.count -= 1;
            }
            self.metrics.pending.set(p.count as i64);
            let trim = p.pressured && p.count == 0;
            if trim {
                p.pressured = false;
                p.queue = VecDeque::new();
            }
            trim
        };
        if trim {
            trim_heap();
        }
    }
}

/// One held connection; dropping it frees the slot.
#[derive(Debug)]
#[must_use = "the connection is only counted while the permit is held"]
pub struct ConnPermit(Arc<ConnLimits>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.active.dec();
    }
}

/// One pending handshake; drop it when the handshake is over, either way.
#[derive(Debug)]
pub struct Handshake {
    limits: Arc<ConnLimits>,
    slot: Arc<Slot>,
    timeout: Duration,
}

impl Handshake {
    /// How long this handshake may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Resolves if newer handshakes pushed this one out.
    pub async fn evicted(&self) {
        self.slot.evict.notified().await
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.limits.end_handshake(&self.slot);
    }
}

/// Gives freed heap back to the system after a flood (glibc only; other
/// allocators return memory on their own).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::debug!("pending handshakes back to zero; heap trimmed");
}

#[cfg(test)]
mod tests;
