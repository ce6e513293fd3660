//! Resilience decisions for the request path: rate limits, adaptive
//! concurrency, circuit breaking, outlier ejection, retries and fault
//! injection.
//!
//! Each module decides and keeps counters; none does network I/O. Clocks and
//! dice are injected (`now: Instant` parameters, `f64` rolls) so the tests are
//! deterministic. All state is shared across the tokio worker threads, so it
//! lives in atomics or behind short `std::sync::Mutex` sections that are never
//! held across an `.await`.
//!
//! | module      | answers                                            | excess gets            |
//! |-------------|----------------------------------------------------|------------------------|
//! | `ratelimit` | may this request (or this caller) go now?          | 429 + `retry-after`    |
//! | `adaptive`  | is there room under the latency-learnt limit?      | 503                    |
//! | `circuit`   | is there a slot for this destination, or a queue?  | 503                    |
//! | `outlier`   | is this endpoint ejected?                          | (picked around)        |
//! | `retry`     | may this attempt be retried, after how long?       | (last answer returned) |
//! | `fault`     | should this request be delayed or aborted?         | the configured status  |

pub mod adaptive;
pub mod circuit;
pub mod fault;
pub mod outlier;
pub mod ratelimit;
pub mod retry;

#[cfg(test)]
mod tests;
