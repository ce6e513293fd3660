use std::time::Duration;

use tokio::time::Instant;
use trellis_api::config::l7::{CircuitBreaker as CircuitBreakerCfg, Dur};

use crate::resilience::circuit::{CircuitBreaker, CircuitRejected};

fn cfg(max_requests: u32, max_pending: u32, pending_timeout_ms: u64) -> CircuitBreakerCfg {
    CircuitBreakerCfg {
        max_requests,
        max_pending,
        pending_timeout: Dur(Duration::from_millis(pending_timeout_ms)),
    }
}

/// Lets spawned tasks run up to their next wait.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn immediate_up_to_max_requests_then_overflow_without_queue() {
    let cb = CircuitBreaker::new(&cfg(2, 0, 1000));
    let a = cb.acquire().await.unwrap();
    let _b = cb.acquire().await.unwrap();
    assert_eq!(cb.in_flight(), 2);
    assert_eq!(cb.acquire().await.unwrap_err(), CircuitRejected::Overflow);
    drop(a);
    assert_eq!(cb.in_flight(), 1);
    let _c = cb.acquire().await.unwrap();
    assert_eq!(cb.in_flight(), 2);
}

#[tokio::test(start_paused = true)]
async fn pending_request_gets_the_slot_a_permit_frees() {
    let cb = CircuitBreaker::new(&cfg(1, 1, 1000));
    let held = cb.acquire().await.unwrap();
    let waiter = tokio::spawn({
        let cb = cb.clone();
        async move { cb.acquire().await }
    });
    settle().await;
    assert_eq!((cb.in_flight(), cb.pending()), (1, 1));

    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(held);
    let _permit = waiter.await.unwrap().unwrap();
    assert_eq!((cb.in_flight(), cb.pending()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn pending_times_out() {
    let cb = CircuitBreaker::new(&cfg(1, 1, 1000));
    let _held = cb.acquire().await.unwrap();
    let start = Instant::now();
    assert_eq!(
        cb.acquire().await.unwrap_err(),
        CircuitRejected::PendingTimeout
    );
    assert_eq!(start.elapsed(), Duration::from_millis(1000));
    assert_eq!(cb.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn overflow_when_the_queue_is_full() {
    let cb = CircuitBreaker::new(&cfg(1, 1, 1000));
    let _held = cb.acquire().await.unwrap();
    let _waiter = tokio::spawn({
        let cb = cb.clone();
        async move { cb.acquire().await }
    });
    settle().await;
    let start = Instant::now();
    assert_eq!(cb.acquire().await.unwrap_err(), CircuitRejected::Overflow);
    assert_eq!(start.elapsed(), Duration::ZERO, "overflow must not wait");
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let cb = CircuitBreaker::new(&cfg(1, 2, 1000));
    let held = cb.acquire().await.unwrap();
    let spawn_waiter = || {
        let cb = cb.clone();
        tokio::spawn(async move { cb.acquire().await })
    };
    let first = spawn_waiter();
    settle().await;
    let second = spawn_waiter();
    settle().await;
    assert_eq!(cb.pending(), 2);

    drop(held);
    let p1 = first.await.unwrap().unwrap();
    settle().await;
    assert!(!second.is_finished(), "second waiter jumped the queue");
    // A newcomer queues behind it rather than taking a slot.
    let newcomer = tokio::time::timeout(Duration::from_millis(10), cb.acquire()).await;
    assert!(newcomer.is_err(), "newcomer got a slot while full");
    drop(p1);
    let _p2 = second.await.unwrap().unwrap();
    assert_eq!((cb.in_flight(), cb.pending()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn abandoned_wait_leaves_the_queue() {
    let cb = CircuitBreaker::new(&cfg(1, 1, 1000));
    let _held = cb.acquire().await.unwrap();
    let gave_up = tokio::time::timeout(Duration::from_millis(10), cb.acquire()).await;
    assert!(gave_up.is_err());
    assert_eq!(cb.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn zero_pending_timeout_does_not_queue() {
    let cb = CircuitBreaker::new(&cfg(1, 5, 0));
    let _held = cb.acquire().await.unwrap();
    let start = Instant::now();
    assert_eq!(
        cb.acquire().await.unwrap_err(),
        CircuitRejected::PendingTimeout
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[test]
fn rejections_tell_the_operator_what_to_check() {
    for (err, knob) in [
        (CircuitRejected::Overflow, "maxPending"),
        (CircuitRejected::PendingTimeout, "maxRequests"),
    ] {
        assert!(err.to_string().contains(knob), "{err}");
    }
}
