//! Trellis benchmarks on the network-namespace topology of `trellis-e2e`:
//! `trellis-bench` (direct pod-to-pod against Trellis over HBONE) and
//! `trellis-l7-bench` (the waypoint against nginx, module [`l7`]); the
//! programs in src/bin only call into these modules.
//!
//! * [`harness`]: the topology, servers, pinning, /proc figures, the run's lock and results.
//! * [`l4`]: the L4 workloads (throughput, round trips, HTTP keep-alive, new connections,
//!   hand-over) and `trellis-bench`, which runs them through every column.
//! * [`instr`]: exact counts: instructions (callgrind) and syscalls (strace) per unit of work.
//! * [`l7`]: the waypoint benchmark.
//! * [`sidecars`]: Envoy sidecar meshes to compare with (issue 15).
//! * [`chain`]: latency and mesh CPU along a call chain, every column (issue 15 §2.3-4).
//! * [`bulk`]: single-stream throughput and CPU per GB against a TCP and a TLS relay pair (issue 12 §2).
//! * [`ztunnel`]: Istio's ztunnel in shared mode on each node, fed by `trellis-controller` and a ZDS
//!   server, as a column of `trellis-bulk-bench` and `trellis-bench`, and the figures against it (issue 12).
//! * [`cp`]: the control plane at scale (`trellis-cp-bench`).
//! * [`attack`]: HTTP/2 attacks on the HBONE ports, against a victim's traffic (issue 16).
//! * [`soak`]: many connections through one node proxy for minutes (issue 16).
//! * [`plots`]: charts of the results as SVG and PNG (`trellis-plots`).

pub mod attack;
pub mod bulk;
pub mod chain;
pub mod cp;
pub mod harness;
pub mod instr;
pub mod l4;
pub mod l7;
pub mod plots;
pub mod sidecars;
pub mod soak;
pub mod ztunnel;

/// CPU of the load generators (iperf3 client, the Rust clients).
pub const LOADGEN_CPU: usize = 0;
/// CPU of the servers (iperf3 -s, echo, nginx) and both node proxies.
pub const SERVER_CPU: usize = 1;
