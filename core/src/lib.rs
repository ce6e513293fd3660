//! Trellis core: the runtime the node proxy and the waypoint share. The
//! config model itself is `trellis_api::config`.
//!
//! - [`state`]: the indexed [`state::ProxyState`] and the
//!   [`state::StateStore`] whose `apply` is the one update path.
//! - [`source`]: where config comes from (a file; next, xDS), and the one
//!   function that starts it.
//! - [`authz`]: L4 authorization with Istio AuthorizationPolicy semantics.
//! - [`metrics`] and [`accesslog`]: Istio-compatible TCP metrics and one
//!   access log line per connection, both recorded when a connection guard drops.
//! - [`drain`]: graceful drain with a hard deadline.
//! - [`identity`]: the SPIFFE identity type (`hbone::Identity`) and a
//!   workload's typed identity.
//! - [`baggage`] and [`traceparent`]: the metadata headers of an HBONE
//!   CONNECT (a workload's W3C baggage, a fresh trace context).

pub mod accept;
pub mod accesslog;
pub mod admin;
pub mod authz;
pub mod baggage;
pub mod certs;
pub mod cli;
pub mod control;
pub mod drain;
pub mod identity;
pub mod limits;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod ratelog;
pub mod source;
pub mod startup;
pub mod state;
pub mod traceparent;

pub use identity::{Identity, WorkloadIdentity};

#[cfg(test)]
mod test_support;
