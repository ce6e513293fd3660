//! trellis-l7-bench: the Trellis waypoint against an Envoy waypoint (HBONE
//! in and out, as Istio configures it) and nginx as a plain reverse proxy,
//! for HTTP/1.1, HTTP/2 and gRPC unary, on one netns topology, the same
//! cores, upstream servers and load.
//!
//! ```text
//! cargo build --release -p trellis-perf -p trellis-waypoint -p trellis-node-proxy
//! cargo run --release -p trellis-perf --bin trellis-l7-bench -- [--quick] [--out perf/results]
//! ```
//!
//! See perf/README.md ("Waypoint against Envoy and nginx") for what is measured and how.

fn main() -> anyhow::Result<()> {
    trellis_perf::l7::program::run()
}
