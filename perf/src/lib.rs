//! Trellis benchmarks on the network-namespace topology of `trellis-e2e`:
//! `trellis-bench` (direct pod-to-pod against Trellis over HBONE) and
//! `trellis-l7-bench` (the waypoint against nginx, module [`l7`]); the
//! programs are in src/bin, these modules are their reusable parts.
//!
//! * [`sys`]: CPU pinning, fd limit, running a closure on a pinned thread inside a netns.
//! * [`topo`]: the topology, the mesh config and CA, the node proxies as child processes, their admin API.
//! * [`servers`]: the echo server (Rust, in-process) and nginx / iperf3 in the server pod.
//! * [`throughput`]: iperf3 single-stream TCP.
//! * [`latency`]: ping-pong round trips on one connection; idle connections.
//! * [`http_load`]: open-loop fixed-rate HTTP/1.1 keep-alive client.
//! * [`conn_rate`]: one new TCP connection per HTTP request, closed-loop with fixed concurrency.
//! * [`proc_stats`]: CPU time and RSS of processes from /proc.
//! * [`report`]: result rows with targets, JSON and Markdown.
//! * [`run`]: the run lock, waiting for idle CPUs, machine facts, writing results.
//! * [`callgrind`]: reading callgrind profiles (`trellis-instr`).
//! * [`l7`]: the waypoint benchmark.
//! * [`cp`]: the control plane at scale (`trellis-cp-bench`).
//! * [`sidecars`]: Envoy sidecar meshes to compare with (issue 15).
//! * [`plots`]: charts of the results as SVG and PNG (`trellis-plots`).
//! * [`attack`]: HTTP/2 attacks on the HBONE ports, against a victim's traffic (issue 16).
//! * [`soak`]: many connections through one node proxy for minutes (issue 16).
//! * [`handover`]: the node proxy's hand-over: accept gap and memory overlap (issue 16).
//! * [`chain`]: latency and mesh CPU along a call chain, every column (issue 15 §2.3-4).
//! * [`bulk`]: single-stream throughput and CPU per GB against a TCP and a TLS relay pair (issue 12 §2).
//! * [`ztunnel`]: Istio's ztunnel in shared mode on each node, fed by `trellis-controller` and a ZDS
//!   server, as a column of `trellis-bulk-bench` and `trellis-bench`, and the figures against it (issue 12).

pub mod attack;
pub mod bulk;
pub mod calibrate;
pub mod callgrind;
pub mod chain;
pub mod conn_rate;
pub mod cp;
pub mod handover;
pub mod hist;
pub mod http_load;
pub mod l7;
pub mod latency;
pub mod plots;
pub mod proc_stats;
pub mod report;
pub mod run;
pub mod servers;
pub mod sidecars;
pub mod soak;
pub mod strace;
pub mod sys;
pub mod throughput;
pub mod topo;
pub mod ztunnel;

/// CPU of the load generators (iperf3 client, the Rust clients).
pub const LOADGEN_CPU: usize = 0;
/// CPU of the servers (iperf3 -s, echo, nginx) and both node proxies.
pub const SERVER_CPU: usize = 1;
