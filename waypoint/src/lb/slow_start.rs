//! Slow start: a new endpoint's share ramps up over a window, so a cold
//! process (empty caches, JIT, connection pools) is not handed a full share
//! of traffic the moment it appears.
//!
//! The weight factor is linear in the endpoint's age (Envoy's slow start with
//! `aggression: 1.0`), floored at [`MIN_WEIGHT`] (Envoy's default
//! `min_weight_percent` of 10%) so a new endpoint gets some traffic at once
//! and its latency estimate starts filling in.
//!
//! Which endpoints are new: those that appear after the balancer's first pick
//! (or after [`super::Balancer::mark_warm`]). Endpoints present at the first
//! pick are warm: the balancer is built when a rule is first used or its
//! policy changes, and the endpoints serving then have been serving all along.

use std::time::{Duration, Instant};

/// The smallest weight factor of a new endpoint.
pub(super) const MIN_WEIGHT: f64 = 0.1;

/// The weight factor at `now` of an endpoint first seen at `first_seen`
/// (`None`: warm), with slow start over `window` (`None`: off).
pub(super) fn weight(first_seen: Option<Instant>, window: Option<Duration>, now: Instant) -> f64 {
    match (first_seen, window) {
        (Some(t0), Some(w)) if !w.is_zero() => {
            let age = now.saturating_duration_since(t0).as_secs_f64();
            (age / w.as_secs_f64()).clamp(MIN_WEIGHT, 1.0)
        }
        _ => 1.0,
    }
}
