//! Tests of the resilience decisions, one file per module. Clocks are
//! `Instant`s built from a base plus offsets; async waits run on tokio's
//! paused clock.

mod adaptive;
mod circuit;
mod fault;
mod outlier;
mod ratelimit;
mod retry;

/// Everything here is shared across the runtime's worker threads.
#[test]
fn types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<super::ratelimit::Gcra>();
    send_sync::<super::ratelimit::KeyedGcra>();
    send_sync::<super::adaptive::AdaptiveLimiter>();
    send_sync::<super::adaptive::AdaptivePermit>();
    send_sync::<super::circuit::CircuitBreaker>();
    send_sync::<super::circuit::CircuitPermit>();
    send_sync::<super::outlier::OutlierDetector>();
    send_sync::<super::retry::RetryBudget>();
    send_sync::<super::retry::BudgetGuard>();
    // The queueing wait must be able to move between worker threads.
    let cb = super::circuit::CircuitBreaker::new(&trellis_api::config::l7::CircuitBreaker {
        max_requests: 1,
        max_pending: 0,
        pending_timeout: trellis_api::config::l7::Dur(std::time::Duration::ZERO),
    });
    send(&cb.acquire());
}
