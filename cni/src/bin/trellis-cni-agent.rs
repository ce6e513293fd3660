//! The CNI node agent binary: runs until SIGTERM or SIGINT.

use std::io::IsTerminal;

use clap::Parser;
use trellis_cni::agent::{self, Settings};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // Plain text when the log goes to a file or a container runtime.
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let settings = Settings::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let agent = agent::start(&settings)?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            () = agent.run => {}
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        }
        // The sockets go with the process; the pods' rules stay, so they
        // remain captured while a new agent starts. The CNI entry goes only
        // on an uninstall.
        agent.exit.run().await;
        let _ = std::fs::remove_file(&settings.plugin_socket);
        let _ = std::fs::remove_file(&settings.zds_socket);
        Ok(())
    })
}
