//! Outlier detection: eject an endpoint from balancing after consecutive
//! failures, for longer each time it happens again.
//!
//! One detector serves one backend (its set of endpoints). Rules, following
//! Envoy's consecutive-5xx and consecutive-gateway-failure detectors:
//!
//! - `consecutive5xx` server errors, or `consecutiveConnectFailures` connect
//!   failures, in a row eject the endpoint. The two streaks count separately
//!   and only a success breaks them: an endpoint alternating refusals and 500s
//!   is still failing every request.
//! - The n-th ejection lasts `n * baseEjectionTime`, capped at
//!   `max(baseEjectionTime, 300s)` (Envoy's default `max_ejection_time`).
//!   Every `baseEjectionTime` spent back in service lowers n by one, so an
//!   endpoint that flapped once last week is not punished today.
//! - At most `floor(maxEjectionPercent * endpoints / 100)` endpoints are
//!   ejected at once. This is strict, like Envoy without
//!   `always_eject_one_host`: a single-endpoint backend is never ejected
//!   (there is nowhere else to send its traffic), nor is anything ejected
//!   when the percentage rounds down to zero.
//! - Results reported while an endpoint is ejected (requests sent before the
//!   ejection) are ignored. When the ejection ends the endpoint is back with
//!   clean streaks.
//!
//! Only endpoints with a history are tracked: successes of an unknown endpoint
//! create nothing. Entries with nothing left to remember are dropped, and ones
//! not heard from for `IDLE` are swept, so the map stays small.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ahash::AHashMap;
use trellis_api::config::l7::OutlierDetection;

/// The longest ejection unless the base itself is longer.
pub(super) const MAX_EJECTION: Duration = Duration::from_secs(300);
/// Entries not reported on for this long are forgotten (unless ejected).
pub(super) const IDLE: Duration = Duration::from_secs(600);
/// How often the idle sweep runs, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Endpoints with a history tracked at most; beyond, new ones are not tracked.
pub(super) const MAX_TRACKED: usize = 4096;

/// What an attempt to an endpoint came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx answer (or a reset after the connection was made).
    ServerError,
    /// No connection: refused, timed out, TLS or HBONE failure.
    ConnectFailure,
}

#[derive(Debug, Clone)]
struct Endpoint {
    consecutive_5xx: u32,
    consecutive_connect: u32,
    /// The `n` of the next ejection, minus one.
    times_ejected: u32,
    ejected_until: Option<Instant>,
    /// Since when `times_ejected` has been decaying (the end of the last
    /// ejection, advanced by each decay step).
    calm_since: Instant,
    last_seen: Instant,
}

impl Endpoint {
    fn new(now: Instant) -> Endpoint {
        Endpoint {
            consecutive_5xx: 0,
            consecutive_connect: 0,
            times_ejected: 0,
            ejected_until: None,
            calm_since: now,
            last_seen: now,
        }
    }

    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// Ends a finished ejection and decays the ejection count; true if the
    /// entry now remembers nothing and may be dropped.
    fn refresh(&mut self, now: Instant, base: Duration) -> bool {
        if let Some(until) = self.ejected_until {
            if now < until {
                return false;
            }
            self.ejected_until = None;
            self.calm_since = until;
        }
        if self.times_ejected > 0 && !base.is_zero() {
            let calm = now.saturating_duration_since(self.calm_since);
            let steps = (calm.as_nanos() / base.as_nanos()).min(u128::from(self.times_ejected));
            // steps <= times_ejected, a u32.
            let steps = steps as u32;
            self.times_ejected -= steps;
            self.calm_since += base * steps;
        }
        self.consecutive_5xx == 0 && self.consecutive_connect == 0 && self.times_ejected == 0
    }
}

#[derive(Debug)]
struct State {
    endpoints: AHashMap<SocketAddr, Endpoint>,
    last_sweep: Option<Instant>,
}

/// Consecutive-failure ejection for one backend, shared by all worker threads.
#[derive(Debug)]
pub struct OutlierDetector {
    consecutive_5xx: u32,
    consecutive_connect: u32,
    base: Duration,
    max_percent: usize,
    /// Entries in the map, so the healthy case (nothing tracked) takes no lock.
    tracked: AtomicUsize,
    state: Mutex<State>,
}

impl OutlierDetector {
    pub fn new(cfg: &OutlierDetection) -> OutlierDetector {
        OutlierDetector {
            consecutive_5xx: cfg.consecutive_5xx,
            consecutive_connect: cfg.consecutive_connect_failures,
            base: cfg.base_ejection_time.0,
            max_percent: cfg.max_ejection_percent.min(100) as usize,
            tracked: AtomicUsize::new(0),
            state: Mutex::new(State {
                endpoints: AHashMap::new(),
                last_sweep: None,
            }),
        }
    }

    pub fn is_ejected(&self, ep: SocketAddr, now: Instant) -> bool {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.lock()
            .endpoints
            .get(&ep)
            .is_some_and(|e| e.is_ejected(now))
    }

    /// Records an attempt's outcome. `endpoints` is how many endpoints the
    /// backend has now (for `maxEjectionPercent`). Returns how long the
    /// endpoint is ejected for if this report ejected it.
    pub fn report(
        &self,
        ep: SocketAddr,
        outcome: Outcome,
        endpoints: usize,
        now: Instant,
    ) -> Option<Duration> {
        if outcome == Outcome::Success && self.tracked.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut state = self.lock();
        let ejected = self.report_locked(&mut state, ep, outcome, endpoints, now);
        self.tracked.store(state.endpoints.len(), Ordering::Release);
        ejected
    }

    /// How many endpoints are ejected at `now`.
    pub fn ejected_now(&self, now: Instant) -> usize {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let state = self.lock();
        state
            .endpoints
            .values()
            .filter(|e| e.is_ejected(now))
            .count()
    }

    /// How many endpoints have a history (failures or past ejections).
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Acquire)
    }

    fn report_locked(
        &self,
        state: &mut State,
        ep: SocketAddr,
        outcome: Outcome,
        endpoints: usize,
        now: Instant,
    ) -> Option<Duration> {
        if state
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
        {
            self.sweep(state, now);
        }
        if !state.endpoints.contains_key(&ep) {
            if outcome == Outcome::Success {
                return None;
            }
            if state.endpoints.len() >= MAX_TRACKED {
                self.sweep(state, now);
                if state.endpoints.len() >= MAX_TRACKED {
                    // More failing endpoints than any backend should have:
                    // leave this one in service rather than forget others.
                    return None;
                }
            }
            state.endpoints.insert(ep, Endpoint::new(now));
        }
        let e = state.endpoints.get_mut(&ep)?;
        if e.is_ejected(now) {
            return None;
        }
        e.refresh(now, self.base);
        e.last_seen = now;
        match outcome {
            Outcome::Success => {
                e.consecutive_5xx = 0;
                e.consecutive_connect = 0;
                if e.times_ejected == 0 {
                    state.endpoints.remove(&ep);
                }
                return None;
            }
            Outcome::ServerError => e.consecutive_5xx += 1,
            Outcome::ConnectFailure => e.consecutive_connect += 1,
        }
        let tripped = (self.consecutive_5xx > 0 && e.consecutive_5xx >= self.consecutive_5xx)
            || (self.consecutive_connect > 0 && e.consecutive_connect >= self.consecutive_connect);
        if !tripped {
            return None;
        }
        let n = e.times_ejected + 1;
        let ejected = state
            .endpoints
            .values()
            .filter(|e| e.is_ejected(now))
            .count();
        if ejected + 1 > self.max_percent * endpoints / 100 {
            // The streak stays: the next failure tries again, in case
            // another endpoint came back meanwhile.
            return None;
        }
        let duration = ejection_time(self.base, n);
        if duration.is_zero() {
            return None;
        }
        let e = state.endpoints.get_mut(&ep)?;
        e.times_ejected = n;
        e.ejected_until = Some(now + duration);
        e.consecutive_5xx = 0;
        e.consecutive_connect = 0;
        Some(duration)
    }

    /// Ends finished ejections and drops entries with nothing to remember or
    /// not heard from for [`IDLE`].
    fn sweep(&self, state: &mut State, now: Instant) {
        state.last_sweep = Some(now);
        state.endpoints.retain(|_, e| {
            if e.is_ejected(now) {
                return true;
            }
            let blank = e.refresh(now, self.base);
            !blank && now.saturating_duration_since(e.last_seen) < IDLE
        });
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic mid-update leaves at worst one miscounted streak.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long the `n`-th ejection (1-based) lasts.
pub(super) fn ejection_time(base: Duration, n: u32) -> Duration {
    base.saturating_mul(n).min(base.max(MAX_EJECTION))
}
