//! trellis-instr: user-space instructions each node proxy spends per round
//! trip and per MiB, or the waypoint per request, counted by callgrind on
//! the benchmarks' topologies.
//!
//! ```text
//! cargo build --release -p trellis-node-proxy -p trellis-waypoint -p trellis-perf
//! sudo target/release/trellis-instr [--pings 2000] [--bulk-mib 16] [--out perf/results]
//! sudo target/release/trellis-instr --waypoint [--requests 2000] [--out perf/results]
//! ```
//!
//! See `trellis_perf::instr` for what is counted and how.

fn main() -> anyhow::Result<()> {
    trellis_perf::instr::run()
}
