//! Trellis's API: what the controller, the proxies and the CNI agree on.
//!
//! - [`config`]: the config model (Istio ambient's Workload, Service and
//!   Authorization, plus the waypoint's routes and L7 policies) and its
//!   validation. A file and the controller both produce it.
//! - [`update`]: a whole config or a delta of objects by key: what every
//!   config source hands a proxy's state store.
//! - [`xds`]: the config model as Istio's workload xDS resources (and
//!   Trellis's own for waypoint config), both ways.
//!
//! This crate has no runtime and does no I/O: it depends on neither tokio
//! nor the proxies, so the controller can use it without pulling in the data
//! path.

pub mod config;
pub mod update;
pub mod xds;

pub use update::{Kind, Resource, ResourceKey, Update};

/// The protobuf messages of Istio's workload API, its CA, its ZDS pod
/// hand-over (`pb::istio::workload::zds`) and Envoy's delta ADS, generated from `proto/` (package paths as in the .proto files, e.g.
/// `pb::istio::workload::Workload`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/protos.rs"));
}
