//! Fault injection: delay and/or abort a share of requests, for chaos tests.

use std::time::Duration;

use trellis_api::config::l7::Fault;

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    None,
    Delay(Duration),
    /// Answer this HTTP status instead of forwarding.
    Abort(u16),
    DelayThenAbort(Duration, u16),
}

/// Decides the fault for one request. Each roll is in [0, 1); a fault with
/// `percent: p` applies when `roll * 100 < p`, so 0 never and 100 always.
/// Delay and abort roll independently, as in Istio.
pub fn decide(fault: &Fault, roll_delay: f64, roll_abort: f64) -> FaultAction {
    let delay = fault
        .delay
        .filter(|d| applies(d.percent, roll_delay) && !d.fixed_delay.0.is_zero())
        .map(|d| d.fixed_delay.0);
    let abort = fault
        .abort
        .filter(|a| applies(a.percent, roll_abort))
        .map(|a| a.http_status);
    match (delay, abort) {
        (None, None) => FaultAction::None,
        (Some(d), None) => FaultAction::Delay(d),
        (None, Some(s)) => FaultAction::Abort(s),
        (Some(d), Some(s)) => FaultAction::DelayThenAbort(d, s),
    }
}

fn applies(percent: f64, roll: f64) -> bool {
    // NaN on either side compares false: no fault.
    roll * 100.0 < percent
}

/// The `grpc-status` for an HTTP status, per gRPC's "HTTP to gRPC status
/// code mapping" (doc/http-grpc-status-mapping.md), so an injected abort on a
/// gRPC request looks like what a gRPC client would see from a real proxy.
pub fn grpc_status_for_http(status: u16) -> u32 {
    match status {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}
