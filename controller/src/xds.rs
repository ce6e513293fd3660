//! The delta ADS server (Istio's workload xDS, as ztunnel speaks it).
//!
//! - [`snapshot`]: what is served, rebuilt by the lead on every mesh change.
//! - [`delta`]: the pure per-stream decisions (subscriptions, scope, ACK/NACK).
//! - [`service`]: the gRPC service: authentication, and driving [`delta`]
//!   from the request stream and the snapshot channel.

pub mod delta;
pub mod service;
pub mod snapshot;

pub use service::{XdsMetrics, XdsMetricsSnapshot, XdsService};
pub use snapshot::{
    Entry, Snapshot, SnapshotBuilder, SnapshotError, ADDRESS, AUTHORIZATION, CONFIG_OBJECT,
};
