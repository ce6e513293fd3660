//! The CNI plugin binary. A container runtime runs it with `CNI_*` in the
//! environment and the network config on stdin; it prints the result (or
//! the error JSON) on stdout. Logs go to stderr only: stdout is the result.

use std::io::Read;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRELLIS_CNI_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut stdin = Vec::new();
    // A runtime always sends a config; VERSION may come with an empty one.
    let _ = std::io::stdin().take(1 << 20).read_to_end(&mut stdin);
    let out = trellis_cni::plugin::run::run(|k| std::env::var(k).ok(), &stdin);
    if !out.stdout.is_empty() {
        println!("{}", out.stdout);
    }
    std::process::exit(out.exit_code);
}
