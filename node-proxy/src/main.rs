use clap::Parser;
use trellis_core::cli;
use trellis_node_proxy::{app, settings::Settings};

/// glibc serves allocations of 128 KiB and more with mmap and returns them
/// on free, so every HTTP/2 frame buffer of a bulk tunnel was page-faulted in
/// anew (5% of proxy CPU in the throughput profile), and it trims the heap
/// top eagerly. Serve buffers up to 1 MiB from the heap and keep up to 8 MiB
/// of free heap; idle memory is unchanged because untouched pages stay free.
fn tune_malloc() {
    // SAFETY: mallopt only adjusts allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

fn main() {
    tune_malloc();
    let settings = Settings::parse();
    let common = settings.common.clone();
    cli::run(
        "trellis-node-proxy",
        &common,
        |log| app::start(settings, log),
        |handle| {
            // A drain that hit its deadline still ends the process cleanly:
            // the connections it cut were given their time.
            let _ = handle.wait();
        },
    )
}
