//! The demo mesh: two node proxies, the dev CA and small app servers.
//!
//! Without root it runs on loopback: two proxies in dedicated mode on
//! 127.0.1.1 (client) and 127.0.2.1 (server). With `--netns` (root) it
//! builds two nodes and two pods as network namespaces and runs the proxies
//! in shared mode, capturing the pods' traffic with nftables.

use anyhow::{bail, Context, Result};
use trellis_e2e::demo;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let netns = args.iter().any(|a| a == "--netns");
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: trellis-demo [--netns]\n  --netns  run in network namespaces, shared mode (needs root)");
        return Ok(());
    }
    if let Some(bad) = args.iter().find(|a| *a != "--netns") {
        bail!("unknown argument {bad:?}; try --help");
    }
    // Show the proxies' access log lines (one per connection, with both
    // identities) and their warnings; the rest of their logs stay quiet.
    let filter = std::env::var("TRELLIS_LOG").unwrap_or_else(|_| "warn,access=info".into());
    trellis_core::logging::init(&filter, trellis_core::logging::LogFormat::Text)
        .map_err(anyhow::Error::msg)?;
    let mesh = if netns {
        demo::Mesh::start_netns().context("starting the netns demo (needs root, ip and nft)")?
    } else {
        demo::Mesh::start_loopback().context("starting the loopback demo")?
    };
    println!("== Trellis demo mesh ({})", mesh.describe());
    for line in mesh.topology_lines() {
        println!("   {line}");
    }

    println!("\n== 1. client -> server:8080 (allowed: ALLOW policy matches principal sa/client, port 8080)");
    let reply = mesh.request(8080, "hello over hbone")?;
    println!("   server replied: {}", reply.trim());

    println!("\n== 2. client -> server:9090 (denied: no ALLOW rule for port 9090)");
    match mesh.request(9090, "should not arrive") {
        Ok(r) if !r.is_empty() => {
            bail!("port 9090 should have been denied but the server replied {r:?}")
        }
        Ok(_) => println!("   connection closed by the mesh without a reply: denied"),
        Err(e) => println!("   connection refused by the mesh: {e}"),
    }

    mesh.wait_for_closed_connections(2)?;
    println!("\n== identities on each hop (from the proxies' metrics)");
    for line in mesh.hop_lines()? {
        println!("   {line}");
    }
    println!("\n== metrics counters");
    for line in mesh.counter_lines()? {
        println!("   {line}");
    }
    mesh.stop();
    println!("\n== done");
    Ok(())
}
