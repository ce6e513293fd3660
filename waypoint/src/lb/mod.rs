//! Endpoint choice for one backend of a rule.
//!
//! - `PeakEwma` (default): power of two choices. Two distinct candidates are
//!   drawn at random and the cheaper one wins, where cost = peak-EWMA latency
//!   (see `ewma`) x (requests outstanding + 1) / slow-start weight. Two random
//!   choices avoid the herding of "always the best" while getting most of its
//!   benefit; the outstanding count reacts before any latency sample can.
//!   An endpoint without samples is assumed typical: it costs the
//!   balancer-wide average of successful latencies.
//! - `RoundRobin`: a shared counter walks the candidates. With slow start, a
//!   visited endpoint is taken with probability equal to its weight factor and
//!   skipped otherwise, so each endpoint's share is proportional to its weight
//!   (every endpoint is visited equally often).
//!
//! Candidates are passed on every pick, already filtered (ejected endpoints,
//! endpoints already tried); the balancer keeps per-endpoint counters keyed by
//! address. Every [`PASS_EVERY`] the candidates are walked: unknown ones are
//! recorded (as warm on the very first walk, see `slow_start`), known ones
//! marked as seen, and endpoints not seen for [`IDLE`] with nothing
//! outstanding are forgotten. Between walks, an unknown endpoint met in a pick
//! is recorded as new.

mod ewma;
mod slow_start;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ahash::AHashMap;
use trellis_api::config::l7::{LbAlgorithm, LoadBalancer as LoadBalancerCfg};

use ewma::PeakEwma;

/// How often the candidates are walked, at most.
pub const PASS_EVERY: Duration = Duration::from_secs(30);
/// Endpoints not among the candidates for this long are forgotten.
pub const IDLE: Duration = Duration::from_secs(300);
/// The typical latency before any sample: every endpoint costs the same, so
/// the outstanding counts decide.
const INITIAL_TYPICAL: Duration = Duration::from_millis(1);
/// Weight of one successful sample in the balancer-wide typical latency.
const TYPICAL_ALPHA: f64 = 0.05;

/// Picks endpoints for one backend; shared by all worker threads.
#[derive(Debug)]
pub struct Balancer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    algorithm: LbAlgorithm,
    slow_start: Option<Duration>,
    /// Round robin position.
    next: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    endpoints: AHashMap<SocketAddr, Endpoint>,
    /// The last walk over the candidates; `None` until the first pick.
    last_pass: Option<Instant>,
    /// The latest `now` seen, for entries created where no clock is passed.
    clock: Instant,
    /// Balancer-wide EWMA of successful latencies, in nanoseconds.
    typical_ns: f64,
}

#[derive(Debug)]
struct Endpoint {
    outstanding: u32,
    latency: Option<PeakEwma>,
    /// `None`: warm (no slow start).
    first_seen: Option<Instant>,
    last_seen: Instant,
}

impl Endpoint {
    fn new(first_seen: Option<Instant>, now: Instant) -> Endpoint {
        Endpoint {
            outstanding: 0,
            latency: None,
            first_seen,
            last_seen: now,
        }
    }
}

impl State {
    /// The endpoint's entry; one met between walks is new.
    fn entry(&mut self, ep: SocketAddr, now: Instant) -> &mut Endpoint {
        let e = self
            .endpoints
            .entry(ep)
            .or_insert_with(|| Endpoint::new(Some(now), now));
        e.last_seen = e.last_seen.max(now);
        e
    }

    fn pass(&mut self, candidates: &[SocketAddr], now: Instant) {
        let first = self.last_pass.is_none();
        for &ep in candidates {
            let e = self
                .endpoints
                .entry(ep)
                .or_insert_with(|| Endpoint::new((!first).then_some(now), now));
            e.last_seen = e.last_seen.max(now);
        }
        self.endpoints
            .retain(|_, e| e.outstanding > 0 || now.saturating_duration_since(e.last_seen) < IDLE);
        self.last_pass = Some(now);
    }

    fn weight(&mut self, ep: SocketAddr, window: Option<Duration>, now: Instant) -> f64 {
        let first_seen = self.entry(ep, now).first_seen;
        slow_start::weight(first_seen, window, now)
    }

    fn cost(&mut self, ep: SocketAddr, window: Option<Duration>, now: Instant) -> f64 {
        let typical = self.typical_ns;
        let e = self.entry(ep, now);
        let latency = e.latency.map_or(typical, |l| l.at(now, typical)).max(1.0);
        let load = latency * f64::from(e.outstanding.saturating_add(1));
        load / slow_start::weight(e.first_seen, window, now)
    }
}

impl Balancer {
    pub fn new(cfg: &LoadBalancerCfg) -> Balancer {
        Balancer {
            inner: Arc::new(Inner {
                algorithm: cfg.algorithm,
                slow_start: cfg.slow_start.map(|d| d.0).filter(|d| !d.is_zero()),
                next: AtomicUsize::new(0),
                state: Mutex::new(State {
                    endpoints: AHashMap::new(),
                    last_pass: None,
                    clock: Instant::now(),
                    typical_ns: INITIAL_TYPICAL.as_nanos() as f64,
                }),
            }),
        }
    }

    /// Marks `eps` as warm (no slow start), and counts as the first pick: any
    /// endpoint met later is new.
    pub fn mark_warm(&self, eps: &[SocketAddr], now: Instant) {
        let mut st = self.inner.lock();
        st.clock = st.clock.max(now);
        for &ep in eps {
            st.entry(ep, now).first_seen = None;
        }
        st.last_pass.get_or_insert(now);
    }

    /// Picks an index into `candidates` (addresses, already filtered of
    /// ejected endpoints); `None` only when there are none.
    pub fn pick(
        &self,
        candidates: &[SocketAddr],
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let inner = &*self.inner;
        if inner.algorithm == LbAlgorithm::RoundRobin && inner.slow_start.is_none() {
            // Plain round robin needs no per-endpoint state.
            return Some(inner.next.fetch_add(1, Ordering::Relaxed) % n);
        }
        let mut st = inner.lock();
        st.clock = st.clock.max(now);
        if st
            .last_pass
            .is_none_or(|t| now.saturating_duration_since(t) >= PASS_EVERY)
        {
            st.pass(candidates, now);
        }
        if n == 1 {
            return Some(0);
        }
        let window = inner.slow_start;
        Some(match inner.algorithm {
            LbAlgorithm::PeakEwma => {
                let a = rng.usize(..n);
                let mut b = rng.usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let cost_a = st.cost(candidates[a], window, now);
                let cost_b = st.cost(candidates[b], window, now);
                if cost_b < cost_a {
                    b
                } else {
                    a
                }
            }
            LbAlgorithm::RoundRobin => {
                let mut i = 0;
                for _ in 0..n {
                    i = inner.next.fetch_add(1, Ordering::Relaxed) % n;
                    let w = st.weight(candidates[i], window, now);
                    if w >= 1.0 || rng.f64() < w {
                        break;
                    }
                }
                // After n skips in a row (all endpoints new), the last visited goes.
                i
            }
        })
    }

    /// Counts a request to `ep` as outstanding until the guard finishes or drops.
    pub fn start(&self, ep: SocketAddr) -> LoadGuard {
        let inner = &*self.inner;
        if inner.algorithm != LbAlgorithm::PeakEwma {
            return LoadGuard { inner: None, ep };
        }
        let mut st = inner.lock();
        let clock = st.clock;
        // Not picked by this balancer (so not yet known): nothing says it is new.
        let e = st
            .endpoints
            .entry(ep)
            .or_insert_with(|| Endpoint::new(None, clock));
        e.outstanding = e.outstanding.saturating_add(1);
        LoadGuard {
            inner: Some(Arc::clone(&self.inner)),
            ep,
        }
    }

    /// Requests outstanding to `ep` (PeakEwma only; 0 otherwise).
    pub fn outstanding(&self, ep: SocketAddr) -> u32 {
        let st = self.inner.lock();
        st.endpoints.get(&ep).map_or(0, |e| e.outstanding)
    }

    /// The latency estimate of `ep` at `now`, if it has samples.
    pub fn latency_estimate(&self, ep: SocketAddr, now: Instant) -> Option<Duration> {
        let st = self.inner.lock();
        let typical = st.typical_ns;
        let l = st.endpoints.get(&ep)?.latency?;
        Some(Duration::from_nanos(l.at(now, typical) as u64))
    }

    /// Endpoints with per-endpoint state.
    pub fn tracked(&self) -> usize {
        self.inner.lock().endpoints.len()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic mid-update leaves at worst one stale counter.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Uncounts a request to `ep`, feeding its `(latency, ok, now)` if it finished.
    fn finish(&self, ep: SocketAddr, sample: Option<(Duration, bool, Instant)>) {
        let mut st = self.lock();
        if let Some((_, _, now)) = sample {
            st.clock = st.clock.max(now);
        }
        if let Some((latency, true, _)) = sample {
            st.typical_ns += TYPICAL_ALPHA * (latency.as_nanos() as f64 - st.typical_ns);
        }
        let typical = st.typical_ns;
        let Some(e) = st.endpoints.get_mut(&ep) else {
            return;
        };
        e.outstanding = e.outstanding.saturating_sub(1);
        if let Some((latency, ok, now)) = sample {
            match &mut e.latency {
                Some(l) => l.observe(latency, ok, now, typical),
                None => {
                    let mut l = PeakEwma::new(latency, now);
                    if !ok {
                        l.observe(latency, false, now, typical);
                    }
                    e.latency = Some(l);
                }
            }
        }
    }
}

/// One request to an endpoint, counted as outstanding until it finishes.
/// Dropping it without [`LoadGuard::finish`] uncounts it without a sample.
#[derive(Debug)]
pub struct LoadGuard {
    /// `None` when the algorithm keeps no per-endpoint load, or once finished.
    inner: Option<Arc<Inner>>,
    ep: SocketAddr,
}

impl LoadGuard {
    /// Records the request's latency and whether it succeeded (5xx, resets
    /// and connect failures are failures).
    pub fn finish(self, latency: Duration, ok: bool) {
        self.finish_at(latency, ok, Instant::now());
    }

    /// [`LoadGuard::finish`] with the clock passed in.
    pub fn finish_at(mut self, latency: Duration, ok: bool, now: Instant) {
        if let Some(inner) = self.inner.take() {
            inner.finish(self.ep, Some((latency, ok, now)));
        }
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.finish(self.ep, None);
        }
    }
}
