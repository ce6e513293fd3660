// Many small, short-lived allocations per request (header maps, h2 frames,
// futures); mimalloc's per-thread free lists suit that better than glibc's
// arenas (+8-10% requests per CPU-second in trellis-l7-bench).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use trellis_core::cli;
use trellis_waypoint::{app, settings::Settings};

fn main() {
    let settings = Settings::parse();
    let common = settings.common.clone();
    cli::run(
        "trellis-waypoint",
        &common,
        |log| app::start(settings, log),
        |handle| {
            handle.wait();
        },
    )
}
