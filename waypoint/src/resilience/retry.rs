//! Retries: which outcomes may be retried, how long to wait, and a budget that
//! keeps retries from multiplying an overload.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trellis_api::config::l7::{RetryBudget as RetryBudgetCfg, RetryOn, RetryPolicy};

/// What one attempt came to, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// No connection to the endpoint.
    ConnectFailure,
    /// The stream was reset or the connection closed before an answer.
    Reset,
    /// An HTTP answer.
    Status(u16),
    /// A gRPC answer with a non-zero `grpc-status` (header or trailer).
    GrpcStatus(u32),
}

/// gRPC status codes that `retryOn` can name.
const GRPC_CANCELLED: u32 = 1;
const GRPC_DEADLINE_EXCEEDED: u32 = 4;
const GRPC_RESOURCE_EXHAUSTED: u32 = 8;
const GRPC_INTERNAL: u32 = 13;
const GRPC_UNAVAILABLE: u32 = 14;

/// Whether `policy` retries `outcome`. 2xx, 3xx and 4xx answers never are:
/// the backend answered, and asking again would get the same answer.
pub fn retryable(policy: &RetryPolicy, outcome: &AttemptOutcome) -> bool {
    let on = |r: RetryOn| policy.retry_on.contains(&r);
    match *outcome {
        AttemptOutcome::ConnectFailure => on(RetryOn::ConnectFailure),
        AttemptOutcome::Reset => on(RetryOn::Reset),
        AttemptOutcome::Status(s @ 500..=599) => {
            on(RetryOn::FiveXx) || (matches!(s, 502..=504) && on(RetryOn::GatewayError))
        }
        AttemptOutcome::Status(_) => false,
        AttemptOutcome::GrpcStatus(code) => match code {
            GRPC_CANCELLED => on(RetryOn::GrpcCancelled),
            GRPC_DEADLINE_EXCEEDED => on(RetryOn::GrpcDeadlineExceeded),
            GRPC_RESOURCE_EXHAUSTED => on(RetryOn::GrpcResourceExhausted),
            GRPC_INTERNAL => on(RetryOn::GrpcInternal),
            GRPC_UNAVAILABLE => on(RetryOn::GrpcUnavailable),
            _ => false,
        },
    }
}

/// The wait before retry `retry_number` (1-based): `backoff * 2^(n-1)`,
/// capped at 10x `backoff`, times a jitter factor in [0.5, 1.0] from `roll`
/// (in [0, 1)). The jitter keeps clients that failed together from retrying
/// together; its floor of one half keeps the backoff meaningful.
pub fn backoff(policy: &RetryPolicy, retry_number: u32, roll: f64) -> Duration {
    let base = policy.backoff.0;
    // 2^4 already exceeds the 10x cap; the min only keeps the shift in range.
    let doublings = retry_number.saturating_sub(1).min(8);
    let raw = base
        .saturating_mul(1 << doublings)
        .min(base.saturating_mul(10));
    let roll = if roll.is_finite() {
        roll.clamp(0.0, 1.0)
    } else {
        0.0
    };
    raw.mul_f64(0.5 + 0.5 * roll)
}

/// Limits retries to `max(minRetriesPerSecond, percent% of active requests)`
/// per second, for one rule.
///
/// Retries are counted in fixed one-second windows (so up to twice the
/// allowance can pass around a window edge; the budget exists to stop retry
/// storms multiplying load, not to meter exactly). The percentage is of the
/// requests in flight at the time of the retry: with 200 requests in flight
/// and 20%, 40 retries per second may go, however many attempts each request
/// would like: a backend failing everything is not sent `attempts + 1` times
/// its load.
#[derive(Debug)]
pub struct RetryBudget {
    percent: f64,
    min_per_second: u32,
    active: Arc<AtomicU32>,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    start: Option<Instant>,
    retries: u32,
}

impl RetryBudget {
    pub fn new(cfg: &RetryBudgetCfg) -> RetryBudget {
        RetryBudget {
            // NaN and negatives (which validation should reject) allow no extra.
            percent: if cfg.percent > 0.0 { cfg.percent } else { 0.0 },
            min_per_second: cfg.min_retries_per_second,
            active: Arc::new(AtomicU32::new(0)),
            window: Mutex::new(Window::default()),
        }
    }

    /// Counts a request as active until the guard drops.
    pub fn request_started(&self) -> BudgetGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        BudgetGuard {
            active: Arc::clone(&self.active),
        }
    }

    /// Takes one retry from the budget, if any is left.
    pub fn try_retry(&self, now: Instant) -> bool {
        let active = f64::from(self.active.load(Ordering::Acquire));
        let allowed = self
            .min_per_second
            .max((self.percent / 100.0 * active) as u32);
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let expired = w
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1));
        if expired {
            *w = Window {
                start: Some(now),
                retries: 0,
            };
        }
        if w.retries < allowed {
            w.retries += 1;
            true
        } else {
            false
        }
    }

    /// Requests counted as active.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }
}

/// One active request; uncounted on drop.
#[derive(Debug)]
pub struct BudgetGuard {
    active: Arc<AtomicU32>,
}

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}
