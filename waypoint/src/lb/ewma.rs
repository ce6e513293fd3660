//! Peak-EWMA latency estimates, as in Finagle's and tower's `PeakEwma`.
//!
//! - A sample above the estimate replaces it at once (the *peak*): a backend
//!   that slows down loses traffic right away.
//! - A sample below it pulls it down by a weight that depends on the time
//!   since the last update (time constant [`TAU`]), not on the number of
//!   samples, so the estimate recovers at the same pace at 10 or 10,000 rps.
//! - With no fresh samples the estimate regresses towards the balancer-wide
//!   typical latency with the same time constant. Tower decays towards zero
//!   instead; regressing to the typical value keeps both of zero's good
//!   effects (a once-slow endpoint is eventually tried again) without its bad
//!   one (a long-idle endpoint looking free and drawing a burst of requests).
//! - A failure counts as a sample of `max(latency, 2 x estimate,
//!   FAILURE_PENALTY)`: a fast error must not make an endpoint look fast.

use std::time::{Duration, Instant};

/// How fast estimates follow lower samples, and forget.
pub(super) const TAU: Duration = Duration::from_secs(5);
/// What a failure costs at least, as a latency.
pub(super) const FAILURE_PENALTY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub(super) struct PeakEwma {
    ns: f64,
    at: Instant,
}

/// The weight an estimate keeps after `elapsed`.
fn keep(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / TAU.as_secs_f64()).exp()
}

impl PeakEwma {
    pub(super) fn new(sample: Duration, now: Instant) -> PeakEwma {
        PeakEwma {
            ns: sample.as_nanos() as f64,
            at: now,
        }
    }

    /// The estimate at `now`, regressed towards `typical_ns` for the time
    /// without samples.
    pub(super) fn at(&self, now: Instant, typical_ns: f64) -> f64 {
        let w = keep(now.saturating_duration_since(self.at));
        self.ns * w + typical_ns * (1.0 - w)
    }

    /// Feeds one finished request. The update is tower's; only reads regress
    /// to the typical latency (regressing here too would count the elapsed
    /// time twice).
    pub(super) fn observe(&mut self, latency: Duration, ok: bool, now: Instant, typical_ns: f64) {
        let mut sample = latency.as_nanos() as f64;
        if !ok {
            sample = sample
                .max(2.0 * self.at(now, typical_ns))
                .max(FAILURE_PENALTY.as_nanos() as f64);
        }
        self.ns = if sample >= self.ns {
            sample
        } else {
            let w = keep(now.saturating_duration_since(self.at));
            self.ns * w + sample * (1.0 - w)
        };
        self.at = self.at.max(now);
    }
}
