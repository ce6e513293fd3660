// Many small, short-lived allocations per request (header maps, h2 frames,
// futures); mimalloc's per-thread free lists suit that better than glibc's
// arenas (+8-10% requests per CPU-second in trellis-l7-bench).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use trellis_core::logging;
use trellis_waypoint::{app, settings::Settings};

fn main() {
    let settings = Settings::parse();
    let log = match logging::init(&settings.log, settings.log_format.into()) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("trellis-waypoint: {e}");
            std::process::exit(2);
        }
    };
    let handle = match app::start(settings, log) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("trellis-waypoint: {e}");
            std::process::exit(1);
        }
    };
    handle.wait();
}
