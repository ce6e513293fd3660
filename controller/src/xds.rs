//! The delta ADS server (Istio's workload xDS, as ztunnel speaks it).
//!
//! - [`snapshot`]: what is served; patched on every mesh change.
//! - [`encode`]: the config as resources, re-encoding only what changed.
//! - [`delta`]: the pure per-stream decisions (subscriptions, scope, ACK/NACK).
//! - [`service`]: the gRPC service: authentication, and driving [`delta`]
//!   from the request stream and the snapshot channel.

mod cow_map;
pub mod delta;
pub mod encode;
pub mod service;
pub mod snapshot;

pub use service::{XdsMetrics, XdsMetricsSnapshot, XdsService};
pub use snapshot::{
    Changes, Entry, Snapshot, SnapshotBuilder, SnapshotError, SnapshotPatch, ADDRESS,
    AUTHORIZATION, CONFIG_OBJECT,
};
