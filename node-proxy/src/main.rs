use clap::Parser;
use trellis_core::drain::DrainOutcome;
use trellis_node_proxy::{app, logging, settings::Settings};

fn main() {
    let settings = Settings::parse();
    let log = match logging::init(&settings.log, settings.log_format) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("trellis-node-proxy: {e}");
            std::process::exit(2);
        }
    };
    let handle = match app::start(settings, log) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("trellis-node-proxy: {e}");
            std::process::exit(1);
        }
    };
    match handle.wait() {
        DrainOutcome::Completed => std::process::exit(0),
        DrainOutcome::DeadlineExceeded { .. } => std::process::exit(0),
    }
}
