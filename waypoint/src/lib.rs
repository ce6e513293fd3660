//! The Trellis waypoint: an L7 proxy, one per namespace, reached over HBONE.
//!
//! Request flow (see `proxy`): HBONE stream in (`inbound`) → protocol sniff
//! (`sniff`) → hyper server → L7 authorization (`authz`) → route decision
//! (`route`, `filters`) → rate limits, fault injection, circuit breaker and
//! adaptive concurrency (`resilience`) → endpoint choice (`lb`, outlier
//! ejection) → HBONE to the endpoint's node proxy (`upstream`), with retries.
//!
//! The decisions (`route`, `authz`, `resilience`, `lb`, `sniff`) do no I/O and
//! are tested as tables; I/O lives in `inbound`, `proxy` and `upstream`.

pub mod authz;
pub mod filters;
pub mod headers;
pub mod lb;
pub mod resilience;
pub mod route;
pub mod sniff;
