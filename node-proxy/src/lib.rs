//! Trellis node proxy: one per node, thread-per-core, HBONE tunnels and L4
//! identity policy for the pods it serves.
//!
//! Threads and ports:
//!
//! | thread | runtime | serves |
//! |---|---|---|
//! | `trellis-worker-N` (one per allowed CPU, pinned) | current-thread | 15001 outbound, 15006 plaintext inbound, 15008 HBONE, per pod, SO_REUSEPORT |
//! | `trellis-admin` | current-thread | 15000 admin (localhost), 15020 metrics, 15021 readiness, config watcher, drain, hand-over socket (shared mode) |

pub mod admin;
pub mod admission;
pub mod app;
pub mod context;
pub mod handover;
pub mod inbound;
pub mod inbound_plain;
pub mod instance;
pub mod lb;
pub mod outbound;
pub mod pods;
pub mod settings;
pub mod upstream;
pub mod worker;
pub mod zds;

/// Process logging, shared with the waypoint.
pub use trellis_core::logging;

/// Workload certificates and TLS configs, shared with the waypoint.
pub use trellis_core::certs;
