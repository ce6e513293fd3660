//! trellis-soak-bench: 10,000 concurrent connections through one node proxy
//! for 10 minutes, each with an echo every few seconds (issue 16, section 3).
//! See perf/README.md.
//!
//! ```text
//! cargo build --release -p trellis-perf -p trellis-node-proxy
//! cargo run --release -p trellis-perf --bin trellis-soak-bench -- [--quick] [--out perf/results]
//! ```

fn main() -> anyhow::Result<()> {
    trellis_perf::soak::program::run()
}
