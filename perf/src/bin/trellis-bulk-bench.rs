//! trellis-bulk-bench: single-stream throughput and proxy CPU per GB of
//! Trellis against a TCP relay pair and a TLS relay pair (the floors), and
//! against Istio's ztunnel with `--ztunnel PATH`, on trellis-bench's
//! topology, in one run.
//!
//! ```text
//! cargo build --release -p trellis-perf --bin trellis-bulk-bench --bin trellis-relay
//! cargo build --release -p trellis-node-proxy -p trellis-controller --bins
//! ./target/release/trellis-bulk-bench [--quick] [--repeat N] [--secs N] [--out perf/results] \
//!     [--columns ...,ztunnel --ztunnel PATH] [--syscalls DIR] [--profile DIR]
//! ```
//!
//! See perf/README.md and `trellis_perf::bulk`.

fn main() -> anyhow::Result<()> {
    let opts = trellis_perf::bulk::bench::Opts::parse()?;
    trellis_perf::bulk::bench::run(&opts)
}
