//! Trellis core: what the node proxy and, later, the waypoint share.
//!
//! - [`config`]: the local config file model (Istio ambient's Workload,
//!   Service and Authorization) and its validation.
//! - [`state`]: the indexed [`state::ProxyState`] and the
//!   [`state::StateStore`] whose `apply` is the one update path.
//! - [`watch`]: polls the config file and applies valid changes.
//! - [`authz`]: L4 authorization with Istio AuthorizationPolicy semantics.
//! - [`metrics`] and [`accesslog`]: Istio-compatible TCP metrics and one
//!   access log line per connection, both recorded when a connection guard drops.
//! - [`drain`]: graceful drain with a hard deadline.
//! - [`identity`]: the SPIFFE identity type (to become `hbone::Identity`).

pub mod accept;
pub mod accesslog;
pub mod admin;
pub mod authz;
pub mod certs;
pub mod config;
pub mod drain;
pub mod identity;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod startup;
pub mod state;
pub mod watch;

pub use identity::Identity;

#[cfg(test)]
mod test_support;
