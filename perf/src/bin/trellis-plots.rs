//! trellis-plots: the charts of the results in perf/results, as SVG and PNG
//! (issue 15): memory against pods per node, memory against mesh size,
//! latency and mesh CPU per request against call-chain depth.
//!
//! ```text
//! cargo run --release -p trellis-perf --bin trellis-plots -- [--results DIR] [--out DIR]
//! ```
//!
//! Each chart comes from the newest results file in the results folder that
//! measured its figure (`latest.json` and `quick.json` of a whole
//! `trellis-bench` run, `mesh-size.json`, `chain-latest.json` or
//! `chain-quick.json` of `--only` runs, `sidecars-quick.json`); writes
//! `<chart>.svg` and `<chart>.png` into the out folder (default: the
//! results folder's `plots/`) and names the file each came from. A chart
//! whose results are missing is left out with a note; no chart at all is an
//! error.

fn main() -> anyhow::Result<()> {
    trellis_perf::plots::program::run()
}
