use std::time::{Duration, Instant};

use trellis_api::config::l7::{Dur, RetryBudget as RetryBudgetCfg, RetryOn, RetryPolicy};

use crate::resilience::retry::{backoff, retryable, AttemptOutcome, RetryBudget};

fn policy(retry_on: &[RetryOn]) -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        retry_on: retry_on.to_vec(),
        backoff: Dur(Duration::from_millis(25)),
        max_body_bytes: 64 * 1024,
        budget: RetryBudgetCfg::default(),
    }
}

#[test]
fn retryable_table() {
    use AttemptOutcome::{ConnectFailure, GrpcStatus, Reset, Status};
    use RetryOn::*;
    // (retryOn, outcome, retried)
    let cases: &[(&[RetryOn], AttemptOutcome, bool)] = &[
        (&[RetryOn::ConnectFailure], ConnectFailure, true),
        (&[RetryOn::Reset], ConnectFailure, false),
        (&[RetryOn::Reset], Reset, true),
        (&[FiveXx], Reset, false),
        (&[FiveXx], Status(500), true),
        (&[FiveXx], Status(503), true),
        (&[FiveXx], Status(599), true),
        (&[FiveXx], Status(499), false),
        (&[FiveXx], Status(429), false),
        (&[FiveXx], Status(200), false),
        (&[FiveXx], Status(600), false),
        (&[GatewayError], Status(500), false),
        (&[GatewayError], Status(501), false),
        (&[GatewayError], Status(502), true),
        (&[GatewayError], Status(503), true),
        (&[GatewayError], Status(504), true),
        (&[GatewayError], Status(505), false),
        (&[GrpcCancelled], GrpcStatus(1), true),
        (&[GrpcDeadlineExceeded], GrpcStatus(4), true),
        (&[GrpcResourceExhausted], GrpcStatus(8), true),
        (&[GrpcInternal], GrpcStatus(13), true),
        (&[GrpcUnavailable], GrpcStatus(14), true),
        (&[GrpcUnavailable], GrpcStatus(13), false),
        (&[FiveXx, GatewayError], GrpcStatus(14), false), // gRPC errors ride on HTTP 200
        (&[GrpcUnavailable], Status(503), false),
        (
            &[GrpcUnavailable, GrpcInternal, GrpcCancelled],
            GrpcStatus(2),
            false,
        ), // UNKNOWN
        (&[GrpcUnavailable], GrpcStatus(0), false),
        (&[], Status(503), false),
        (&[], ConnectFailure, false),
    ];
    for (on, outcome, want) in cases {
        assert_eq!(retryable(&policy(on), outcome), *want, "{on:?} {outcome:?}");
    }
}

#[test]
fn backoff_table() {
    let p = policy(&[]);
    let ms = Duration::from_millis;
    // (retry number, roll, wait): 25ms * 2^(n-1), capped at 250ms, times 0.5..1.0
    let cases = [
        (1, 0.0, ms(12) + Duration::from_micros(500)),
        (1, 0.999_999_999, ms(25)),
        (2, 0.0, ms(25)),
        (2, 0.5, ms(37) + Duration::from_micros(500)),
        (3, 0.0, ms(50)),
        (4, 0.0, ms(100)),
        (5, 0.0, ms(125)), // 400ms capped at 250
        (5, 1.0, ms(250)),
        (40, 1.0, ms(250)),
        (0, 1.0, ms(25)), // 0 is treated as the first retry
        (1, f64::NAN, ms(12) + Duration::from_micros(500)),
        (1, 7.0, ms(25)),
    ];
    for (n, roll, want) in cases {
        let got = backoff(&p, n, roll);
        let diff = got.abs_diff(want);
        assert!(
            diff < Duration::from_micros(1),
            "retry {n} roll {roll}: {got:?}, want {want:?}"
        );
    }
}

fn budget(percent: f64, min_retries_per_second: u32) -> RetryBudget {
    RetryBudget::new(&RetryBudgetCfg {
        percent,
        min_retries_per_second,
    })
}

#[test]
fn budget_allows_the_minimum_per_second() {
    let t0 = Instant::now();
    let b = budget(20.0, 3);
    for i in 0..3 {
        assert!(b.try_retry(t0), "retry {i}");
    }
    assert!(!b.try_retry(t0));
    assert!(!b.try_retry(t0 + Duration::from_millis(999)));
    // A new second, a new allowance.
    assert!(b.try_retry(t0 + Duration::from_secs(1)));
}

#[test]
fn budget_scales_with_active_requests() {
    let t0 = Instant::now();
    let b = budget(20.0, 3);
    let guards: Vec<_> = (0..100).map(|_| b.request_started()).collect();
    assert_eq!(b.active(), 100);
    let allowed = (0..100).filter(|_| b.try_retry(t0)).count();
    assert_eq!(allowed, 20);
    drop(guards);
    assert_eq!(b.active(), 0);
    let t1 = t0 + Duration::from_secs(1);
    let allowed = (0..100).filter(|_| b.try_retry(t1)).count();
    assert_eq!(allowed, 3);
}

#[test]
fn budget_with_bad_percent_allows_only_the_minimum() {
    let t0 = Instant::now();
    for percent in [f64::NAN, -5.0, 0.0] {
        let b = budget(percent, 1);
        let _g: Vec<_> = (0..100).map(|_| b.request_started()).collect();
        assert_eq!((0..10).filter(|_| b.try_retry(t0)).count(), 1, "{percent}");
    }
}
