//! trellis-relay: one floor relay of `trellis-bulk-bench`, started by the
//! bench inside a pod's netns (see `trellis_perf::bulk::relay`).
//!
//! ```text
//! trellis-relay --mode tcp|splice|tls|uring|uring-fixed|uring-zc --role outbound|inbound --listen ADDR [...]
//! trellis-relay --probe [all | IFNAME...]
//! ```

use std::process::ExitCode;

use trellis_perf::bulk::relay::{self, serve::Relay};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), relay::RelayError> {
    if let Some(("--probe", names)) = args.split_first().map(|(f, r)| (f.as_str(), r)) {
        let which = relay::uring_probe::Interfaces::parse(names);
        for line in relay::uring_probe::report(&which) {
            println!("{line}");
        }
        return Ok(());
    }
    let cfg = relay::parse_args(args)?;
    let relay = Relay::new(cfg)?;
    // One thread, like the node proxy with --workers 1: the bench pins the
    // process to one CPU.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(relay::RelayError::Runtime)?;
    rt.block_on(async move {
        let listener = relay.listen()?;
        eprintln!(
            "relay {} {}: listening on {} (buffer {} B, mark {:#x})",
            relay.cfg.mode.name(),
            relay.cfg.role.name(),
            relay.cfg.listen,
            relay.cfg.buffer,
            relay.cfg.mark
        );
        relay.run(listener).await
    })
}
