//! Waypoints in Kubernetes: for each Gateway of a waypoint class the
//! controller makes the waypoint's ServiceAccount, root-certificate
//! ConfigMap, Deployment and Service, owned by the Gateway, writes the
//! Gateway's status, and deletes what it made when the Gateway goes.
//!
//! - [`desired`]: Gateway → the objects it wants, as JSON (pure).
//! - [`status`]: what the Gateway's status should say (pure).
//! - [`sweep`]: which existing objects are ours, and which are left over (pure).
//! - [`manager`]: the I/O: server-side apply, delete, status, retries.
//! - [`metrics`]: the manager's counters.
//!
//! Several controller replicas run the manager at once, with no leader
//! election: each applies the same objects (the desired objects depend only
//! on the Gateway and the flags) with server-side apply under one field
//! manager, `trellis-controller`, so a second replica's apply of what is
//! already there changes nothing, not even the resourceVersion. Status
//! keeps each condition's `lastTransitionTime` while the condition holds,
//! so replicas agree on it too (see [`status`]).

pub mod desired;
pub mod manager;
pub mod metrics;
pub mod status;
pub mod sweep;
pub mod template;

pub use desired::{plans, GatewayRef, ManagedKind, Plan, Plans, WaypointOptions};
pub use manager::{Manager, ManagerOptions};
pub use metrics::{WaypointMetrics, WaypointMetricsSnapshot};

/// The field manager of every apply, and the value of [`MANAGED_BY`].
pub const FIELD_MANAGER: &str = "trellis-controller";
/// Marks the objects the controller made; nothing without it is deleted.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The Gateway API group and version of the Gateways owning the objects.
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
