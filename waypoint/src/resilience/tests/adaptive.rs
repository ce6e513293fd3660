use std::sync::Arc;
use std::time::Duration;

use trellis_api::config::l7::AdaptiveConcurrency;

use crate::resilience::adaptive::{AdaptiveLimiter, Gradient};

const FAST: Duration = Duration::from_millis(1);
const SLOW: Duration = Duration::from_millis(10);

fn cfg(initial: u32, min: u32, max: u32) -> AdaptiveConcurrency {
    AdaptiveConcurrency {
        initial_limit: initial,
        min_limit: min,
        max_limit: max,
        tolerance: 1.5,
    }
}

/// Fills every slot, then finishes all of them with `latency`: one round
/// trip at full concurrency.
fn round(l: &Arc<AdaptiveLimiter>, latency: Duration, ok: bool) {
    let permits: Vec<_> = std::iter::from_fn(|| l.try_acquire()).collect();
    assert_eq!(permits.len() as u32, l.limit());
    for p in permits {
        p.record(latency, ok);
    }
    assert_eq!(l.in_flight(), 0);
}

#[test]
fn slots_up_to_the_limit() {
    let l = AdaptiveLimiter::new(&cfg(3, 1, 10));
    let a = l.try_acquire().unwrap();
    let _b = l.try_acquire().unwrap();
    let _c = l.try_acquire().unwrap();
    assert!(l.try_acquire().is_none());
    assert_eq!(l.in_flight(), 3);
    // Dropping without a sample frees the slot and leaves the limit alone.
    drop(a);
    assert_eq!((l.in_flight(), l.limit()), (2, 3));
    assert!(l.try_acquire().is_some());
}

#[test]
fn grows_under_low_latency_up_to_max() {
    let l = AdaptiveLimiter::new(&cfg(20, 2, 200));
    for _ in 0..50 {
        round(&l, FAST, true);
    }
    let grown = l.limit();
    assert!(grown > 35, "limit {grown} after 50 fast rounds");
    for _ in 0..300 {
        round(&l, FAST, true);
    }
    assert_eq!(l.limit(), 200);
}

#[test]
fn shrinks_when_latency_rises() {
    let l = AdaptiveLimiter::new(&cfg(20, 2, 1000));
    for _ in 0..50 {
        round(&l, FAST, true);
    }
    let before = l.limit();
    let mut last = before;
    for i in 0..5 {
        round(&l, SLOW, true);
        let now = l.limit();
        assert!(now < last, "round {i}: limit {now}, was {last}");
        last = now;
    }
    assert!(
        f64::from(last) < 0.8 * f64::from(before),
        "limit {last}, was {before}"
    );
}

#[test]
fn follows_a_baseline_that_really_moved() {
    // Once the min-RTT window has turned over, the slow latency is the new
    // normal and the limit grows again.
    let l = AdaptiveLimiter::new(&cfg(20, 2, 1000));
    for _ in 0..50 {
        round(&l, FAST, true);
    }
    let before = l.limit();
    let mut lowest = before;
    for _ in 0..100 {
        round(&l, SLOW, true);
        lowest = lowest.min(l.limit());
    }
    assert!(lowest < before, "never cut: {lowest}");
    assert!(l.limit() > lowest, "limit {} stuck at {lowest}", l.limit());
}

#[test]
fn failures_cut_once_per_round_down_to_min() {
    let l = AdaptiveLimiter::new(&cfg(100, 5, 1000));
    round(&l, FAST, false);
    // One cut, then another 90 samples later (the new limit) within the
    // same 100: not one cut per failure.
    assert_eq!(l.limit(), 81);
    for _ in 0..100 {
        round(&l, FAST, false);
    }
    assert_eq!(l.limit(), 5);
}

#[test]
fn light_traffic_does_not_inflate_the_limit() {
    let l = AdaptiveLimiter::new(&cfg(20, 2, 1000));
    for _ in 0..5_000 {
        l.try_acquire().unwrap().record(FAST, true);
    }
    assert_eq!(l.limit(), 20);
}

#[test]
fn bounds_are_repaired() {
    // (initial, min, max, tolerance) -> (limit, min, max after repair)
    let cases = [
        ((20, 2, 1000, 1.5), 20),
        ((0, 0, 0, 1.5), 1),      // zero limits: one request at a time
        ((50, 10, 5, 1.5), 10),   // max below min: min wins
        ((1, 4, 8, f64::NAN), 4), // initial below min
    ];
    for ((initial, min, max, tolerance), want) in cases {
        let c = AdaptiveConcurrency {
            initial_limit: initial,
            min_limit: min,
            max_limit: max,
            tolerance,
        };
        assert_eq!(AdaptiveLimiter::new(&c).limit(), want, "{c:?}");
    }
}

#[test]
fn tolerance_absorbs_small_latency_rises() {
    // Latency 1.4x the minimum is within tolerance 1.5: the gradient stays
    // at 1 and a saturated limiter keeps growing.
    let mut g = Gradient::new(&cfg(20, 2, 1000));
    for _ in 0..20 {
        g.on_sample(Duration::from_micros(1000), true, 20);
    }
    let before = g.limit;
    for _ in 0..20 {
        g.on_sample(Duration::from_micros(1400), true, 20);
    }
    assert!(g.limit > before, "{} <= {before}", g.limit);
    assert_eq!(g.min_rtt_ns(), 1_000_000.0);
}
