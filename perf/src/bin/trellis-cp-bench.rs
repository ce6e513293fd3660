//! `trellis-cp-bench`: the control plane at scale. See perf/README.md
//! ("Control plane at scale") and `trellis_perf::cp`.
//!
//! ```sh
//! cargo run --release -p trellis-perf --bin trellis-cp-bench -- [--quick] [--out perf/results]
//! ```

use trellis_perf::cp::CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() -> anyhow::Result<()> {
    trellis_perf::cp::program::run()
}
