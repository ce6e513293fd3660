//! The L4 workloads and `trellis-bench`, which runs them through every
//! column (direct, Trellis ambient, Envoy sidecars, ztunnel, ...).
//!
//! * [`throughput`]: iperf3 single-stream TCP.
//! * [`latency`]: ping-pong round trips on one connection; idle connections.
//! * [`http_load`]: open-loop fixed-rate HTTP/1.1 keep-alive client.
//! * [`conn_rate`]: one new TCP connection per HTTP request, closed-loop with fixed concurrency.
//! * [`handover`]: the node proxy's hand-over: accept gap and memory overlap (issue 16).
//! * [`report`]: result rows with targets, JSON and Markdown.
//! * [`bench`](mod@bench): `trellis-bench` itself: its options, its phases, and how they are put together.

pub mod bench;
pub mod conn_rate;
pub mod handover;
pub mod http_load;
pub mod latency;
pub mod report;
pub mod throughput;
