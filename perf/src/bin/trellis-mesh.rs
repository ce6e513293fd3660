//! trellis-mesh: the benchmark's topology, servers and node proxies, held up
//! for a bounded time for manual measurement (perf, ss, nstat, strace).
//!
//! ```text
//! cargo run --release -p trellis-perf --bin trellis-mesh -- [--secs 600] [--direct]
//! ```
//!
//! Prints the namespaces, addresses and PIDs, then waits; at the end, or on
//! SIGINT/SIGTERM, it stops every process it started and removes the
//! namespaces. `--direct` starts no proxies (no capture rules).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use trellis_perf::harness::servers::{EchoServer, Iperf3Server, Nginx};
use trellis_perf::harness::sys;
use trellis_perf::harness::topo::{self, BenchTopo};
use trellis_perf::l4::latency;
use trellis_perf::{LOADGEN_CPU, SERVER_CPU};

/// Blocks SIGINT and SIGTERM in this thread and every thread started after,
/// so they can be awaited with [`wait_signal`] and the topology dropped normally.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset; the mask
    // change affects this thread and those it creates later.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for SIGINT/SIGTERM or the timeout; true if a signal came.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: 0,
    };
    // SAFETY: the set is initialised and the signals are blocked; info may be null.
    unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) > 0 }
}

fn main() -> Result<()> {
    let signals = block_signals();
    let mut secs: u64 = 600;
    let mut direct = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--secs" => secs = args.next().context("--secs needs a value")?.parse()?,
            "--direct" => direct = true,
            "-h" | "--help" => {
                println!("usage: trellis-mesh [--secs N] [--direct]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}; usage: trellis-mesh [--secs N] [--direct]"),
        }
    }
    let secs = secs.min(3600);
    if !trellis_e2e::require_root() {
        bail!("needs root");
    }
    sys::pin_current_thread(LOADGEN_CPU)?;
    sys::raise_nofile()?;
    let bt = BenchTopo::build(0)?;
    let echo_addr = SocketAddr::new(bt.server.ip, 7000);
    let _echo = EchoServer::start(&bt.server.netns()?, echo_addr, SERVER_CPU)?;
    let _nginx = Nginx::start(&bt.topo, &bt.server, 80, SERVER_CPU)?;
    let _iperf = Iperf3Server::start(&bt.topo, &bt.server, 5201, SERVER_CPU)?;
    let mut proxies = Vec::new();
    if !direct {
        let bin = topo::proxy_binary()?;
        proxies.push(bt.start_proxy(&bin, "node1", &bt.client, SERVER_CPU)?);
        proxies.push(bt.start_proxy(&bin, "node2", &bt.server, SERVER_CPU)?);
    }
    latency::wait_echo(
        &bt.client.netns()?,
        LOADGEN_CPU,
        echo_addr,
        Duration::from_secs(15),
    )?;
    for name in bt.topo.netns_names() {
        println!("netns {name}");
    }
    println!(
        "client pod {} netns {}",
        bt.client.ip,
        bt.topo.netns_name("client")?
    );
    println!(
        "server pod {} netns {}: echo :7000, nginx :80, iperf3 :5201 (all on CPU {SERVER_CPU})",
        bt.server.ip,
        bt.topo.netns_name("server")?
    );
    for p in &proxies {
        println!(
            "proxy {} pid {} admin {} metrics {} (in the node netns)",
            p.node, p.pid, p.admin, p.metrics
        );
    }
    println!("holding for {secs} s (Ctrl-C or SIGTERM to stop early)");
    if wait_signal(&signals, Duration::from_secs(secs)) {
        println!("signal received; cleaning up");
    }
    Ok(())
}
