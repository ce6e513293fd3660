//! Adaptive concurrency: a limit on requests in flight, learnt from latency.
//!
//! The algorithm is a gradient controller in the style of Netflix's
//! concurrency-limits `Gradient2` and Envoy's adaptive concurrency filter.
//! The idea: while a backend has spare capacity, latency stays near its
//! no-load minimum; once requests queue, latency rises above it. So:
//!
//! - **min RTT** is the smallest successful latency over the last one to two
//!   windows (a windowed minimum made of two buckets), a window being
//!   `max(MIN_WINDOW, WINDOW_ROUNDS x limit)` samples, so about ten to twenty
//!   round trips at full concurrency whatever the request rate. Forgetting
//!   old minima lets the limiter follow a backend whose baseline really moved
//!   (a slower release) instead of strangling it forever; the price is that a
//!   backend queueing on every single request for that long has its queueing
//!   taken as the baseline, after which only failures cut the limit.
//! - **RTT** is an EWMA of recent successful latencies (weight `RTT_ALPHA`).
//! - **gradient** = `clamp(tolerance * minRTT / RTT, 0.5, 1.0)`: 1 while
//!   latency is within `tolerance` of the minimum, down to 0.5 as queues grow.
//!   The floor of 0.5 bounds how fast one burst of slow answers can cut.
//! - **new limit** = `limit * gradient + sqrt(limit)`: the square root is the
//!   queue allowed on top, which is also what lets the limit grow when the
//!   gradient is 1.
//! - each sample moves the limit `SMOOTHING / limit` of the way to the new
//!   limit, so one *round* (as many samples as the limit, about one round
//!   trip at full concurrency) moves it about `SMOOTHING` of the way,
//!   whatever the request rate: growth is about `0.2 * sqrt(limit)` per round
//!   trip, and latency far above tolerance cuts about 10% per round trip. The limit
//!   stays within `[minLimit, maxLimit]`.
//! - a failed request (error or timeout) cuts the limit by `FAILURE_DECREASE`,
//!   at most once per round (like TCP's one decrease per window: a hundred
//!   requests timing out together are one congestion signal, not a hundred),
//!   and feeds no latency: a timeout measures the timeout, and a fast error is
//!   not a fast success.
//! - the limit does not grow from a sample taken while less than half of it
//!   was in use (Gradient2's "app limited" rule): low latency at low load says
//!   nothing about a higher limit, and without it the limit would drift up to
//!   `maxLimit` under any light traffic.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trellis_api::config::l7::AdaptiveConcurrency;

/// Samples per min-RTT bucket, at least; the minimum covers one to two buckets.
pub(super) const MIN_WINDOW: u32 = 100;
/// Rounds (samples / limit) per min-RTT bucket.
pub(super) const WINDOW_ROUNDS: f64 = 10.0;
/// Weight of a new sample in the RTT EWMA.
pub(super) const RTT_ALPHA: f64 = 0.2;
/// Share of the way the limit moves towards the computed limit per round.
pub(super) const SMOOTHING: f64 = 0.2;
/// Multiplier applied to the limit on a failed request (at most once per round).
pub(super) const FAILURE_DECREASE: f64 = 0.9;
/// Latencies below this count as this: keeps the gradient finite.
const MIN_RTT_NS: f64 = 1_000.0;

/// The controller's state; plain data, fed one sample at a time.
#[derive(Debug, Clone)]
pub(super) struct Gradient {
    pub(super) limit: f64,
    min_limit: f64,
    max_limit: f64,
    tolerance: f64,
    rtt_ns: Option<f64>,
    /// Minimum of the current and the previous window.
    cur_min_ns: f64,
    prev_min_ns: f64,
    in_window: u32,
    /// Samples since the last failure cut.
    since_cut: u32,
}

impl Gradient {
    /// Builds the controller, repairing bounds that config validation should
    /// have caught (min above max, zero limits, tolerance below 1 which
    /// would shrink the limit even at no load).
    pub(super) fn new(cfg: &AdaptiveConcurrency) -> Gradient {
        let min_limit = cfg.min_limit.max(1);
        let max_limit = cfg.max_limit.max(min_limit);
        let initial = cfg.initial_limit.clamp(min_limit, max_limit);
        let tolerance = if cfg.tolerance >= 1.0 {
            cfg.tolerance.min(100.0)
        } else {
            1.0
        };
        Gradient {
            limit: f64::from(initial),
            min_limit: f64::from(min_limit),
            max_limit: f64::from(max_limit),
            tolerance,
            rtt_ns: None,
            cur_min_ns: f64::INFINITY,
            prev_min_ns: f64::INFINITY,
            in_window: 0,
            since_cut: u32::MAX,
        }
    }

    pub(super) fn min_rtt_ns(&self) -> f64 {
        self.cur_min_ns.min(self.prev_min_ns)
    }

    /// Feeds one finished request; `in_flight` is how many requests were in
    /// flight when it started (itself included).
    pub(super) fn on_sample(&mut self, latency: Duration, ok: bool, in_flight: u32) {
        self.since_cut = self.since_cut.saturating_add(1);
        if !ok {
            if f64::from(self.since_cut) >= self.limit {
                self.limit = (self.limit * FAILURE_DECREASE).clamp(self.min_limit, self.max_limit);
                self.since_cut = 0;
            }
            return;
        }
        let sample = (latency.as_nanos() as f64).max(MIN_RTT_NS);

        self.cur_min_ns = self.cur_min_ns.min(sample);
        self.in_window += 1;
        if f64::from(self.in_window) >= (WINDOW_ROUNDS * self.limit).max(f64::from(MIN_WINDOW)) {
            self.prev_min_ns = self.cur_min_ns;
            self.cur_min_ns = f64::INFINITY;
            self.in_window = 0;
        }
        let rtt = match self.rtt_ns {
            Some(r) => r + RTT_ALPHA * (sample - r),
            None => sample,
        };
        self.rtt_ns = Some(rtt);

        let gradient = (self.tolerance * self.min_rtt_ns() / rtt).clamp(0.5, 1.0);
        let target = self.limit * gradient + self.limit.sqrt();
        let mut next = self.limit + SMOOTHING / self.limit * (target - self.limit);
        if next > self.limit && f64::from(in_flight) < self.limit / 2.0 {
            next = self.limit;
        }
        self.limit = next.clamp(self.min_limit, self.max_limit);
    }
}

/// A concurrency limit for one rule, shared by all worker threads.
#[derive(Debug)]
pub struct AdaptiveLimiter {
    /// The rounded limit, read on every `try_acquire` without the lock.
    limit: AtomicU32,
    in_flight: AtomicU32,
    gradient: Mutex<Gradient>,
}

impl AdaptiveLimiter {
    pub fn new(cfg: &AdaptiveConcurrency) -> Arc<AdaptiveLimiter> {
        let gradient = Gradient::new(cfg);
        Arc::new(AdaptiveLimiter {
            limit: AtomicU32::new(rounded(gradient.limit)),
            in_flight: AtomicU32::new(0),
            gradient: Mutex::new(gradient),
        })
    }

    /// A slot if fewer than `limit` requests are in flight; `None` means answer 503.
    pub fn try_acquire(self: &Arc<Self>) -> Option<AdaptivePermit> {
        let mut cur = self.in_flight.load(Ordering::Acquire);
        loop {
            if cur >= self.limit.load(Ordering::Acquire) {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(AdaptivePermit {
                        limiter: Arc::clone(self),
                        in_flight_at_start: cur + 1,
                    })
                }
                Err(now) => cur = now,
            }
        }
    }

    /// The current limit on requests in flight.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

fn rounded(limit: f64) -> u32 {
    // The controller keeps the limit within [min_limit >= 1, max_limit <= u32::MAX].
    limit.round() as u32
}

/// One request's slot. [`AdaptivePermit::record`] feeds its latency to the
/// controller; dropping it without recording (client gone, request cancelled)
/// frees the slot and teaches nothing.
#[derive(Debug)]
pub struct AdaptivePermit {
    limiter: Arc<AdaptiveLimiter>,
    in_flight_at_start: u32,
}

impl AdaptivePermit {
    /// Records how the request went; `ok = false` for errors and timeouts.
    pub fn record(self, latency: Duration, ok: bool) {
        let mut g = self
            .limiter
            .gradient
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        g.on_sample(latency, ok, self.in_flight_at_start);
        self.limiter
            .limit
            .store(rounded(g.limit), Ordering::Release);
        // The slot is released by Drop, after this.
    }
}

impl Drop for AdaptivePermit {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
