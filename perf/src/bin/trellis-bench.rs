//! trellis-bench: direct pod-to-pod against Trellis over HBONE on a netns
//! topology (two nodes; client pod on node1, server pod on node2).
//!
//! ```text
//! cargo build --release -p trellis-perf -p trellis-node-proxy -p trellis-waypoint
//! cargo run --release -p trellis-perf --bin trellis-bench -- [--quick] [--out perf/results]
//! ```
//!
//! See perf/README.md for what is measured and how.

fn main() -> anyhow::Result<()> {
    trellis_perf::l4::bench::run()
}
