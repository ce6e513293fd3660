//! What every benchmark stands on: the topology and the processes in it,
//! the servers, CPU pinning, /proc figures, and the run's lock, notes and
//! result files.
//!
//! * [`sys`]: CPU pinning, fd limit, running a closure on a pinned thread inside a netns.
//! * [`topo`]: the topology, the mesh config and CA, the node proxies as child processes, their admin API.
//! * [`servers`]: the echo server (Rust, in-process) and nginx / iperf3 in the server pod.
//! * [`proc_stats`]: CPU time and RSS of processes from /proc.
//! * [`hist`]: latency histograms and their summaries.
//! * [`calibrate`]: this machine's wake-up cost, for every report's notes.
//! * [`run`]: the run lock, waiting for idle CPUs, machine facts, signal clean-up, writing results.

pub mod calibrate;
pub mod hist;
pub mod proc_stats;
pub mod run;
pub mod servers;
pub mod sys;
pub mod topo;
