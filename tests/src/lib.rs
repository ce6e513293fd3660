//! End-to-end test support for Trellis: a network-namespace harness (nodes
//! and pods as netns joined by veth pairs), test servers and clients that run
//! inside pods, and waiting helpers. Used by the e2e tests, the perf
//! benchmarks and the root-mode demo.
//!
//! Tests that build namespaces start with
//! `if !trellis_e2e::require_root() { return; }`.

pub mod cert_probe;
pub mod cleanup;
pub mod cluster;
pub mod cni_kit;
pub mod container;
pub mod controlled_mesh;
pub mod controller_proc;
pub mod counted_stream;
pub mod demo;
pub mod demo_control;
pub mod demo_manifests;
pub mod demo_waypoint;
pub mod deploy;
pub mod h2frames;
pub mod kube;
pub mod kube_cluster;
pub mod kube_source;
pub mod kubelet;
pub mod l7kit;
pub mod manifests;
pub mod mesh_kit;
mod plan;
pub mod process;
pub mod proxy_args;
pub mod root;
pub mod servers;
pub mod sockinspect;
pub mod steady_load;
pub mod topology;
pub mod wait;
pub mod waypoint_proc;

pub use process::ChildGuard;
pub use root::require_root;
pub use servers::{
    ask_identity, connect, connect_async, echo_roundtrip, Identity, ServerKind, TestServer,
};
pub use topology::{
    cleanup_stale_namespaces, Host, Node, Pod, Topology, TopologyBuilder, TopologyError,
};
pub use wait::{wait_for, wait_until, wait_until_async, WaitTimeout};
