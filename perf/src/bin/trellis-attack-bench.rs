//! trellis-attack-bench: HTTP/2 attacks by an authenticated mesh peer on the
//! node proxy's and the waypoint's HBONE port, with another tenant's traffic
//! through the same proxy (issue 16, section 3). See perf/README.md.
//!
//! ```text
//! cargo build --release -p trellis-perf -p trellis-node-proxy -p trellis-waypoint
//! cargo run --release -p trellis-perf --bin trellis-attack-bench -- [--quick] [--out perf/results]
//! ```

fn main() -> anyhow::Result<()> {
    trellis_perf::attack::program::run()
}
