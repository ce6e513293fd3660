//! The Trellis waypoint: an L7 proxy, one per namespace, reached over HBONE.
//!
//! Request flow: HBONE stream in (`inbound`) → protocol sniff (`sniff`) →
//! hyper server → `proxy`: L7 authorization (`authz`) → route decision
//! (`route`, `filters`) → rate limits, fault injection, adaptive concurrency,
//! circuit breaker (`resilience`) → endpoint choice (`lb`, outlier ejection)
//! → HBONE to the endpoint's node proxy (`upstream`), with retries.
//!
//! The decisions (`route`, `authz`, `resilience`, `lb`, `sniff`) do no I/O and
//! are tested as tables; I/O lives in `inbound`, `proxy` and `upstream`.
//!
//! | thread | runtime | serves |
//! |---|---|---|
//! | `trellis-wp-worker-<i>` ×N | current-thread each | its own SO_REUSEPORT 15008 HBONE listener, its own upstream pools |
//! | `trellis-wp-admin` | current-thread | 15000 admin, 15020 metrics, 15021 readiness, config watcher, drain |

pub mod admin;
pub mod app;
pub mod authz;
pub mod body;
pub mod filters;
pub mod handover;
pub mod headers;
pub mod inbound;
pub mod lb;
pub mod metrics;
pub mod proxy;
pub mod resilience;
pub mod route;
pub mod settings;
pub mod sniff;
pub mod state;
pub mod upstream;
