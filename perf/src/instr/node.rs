//! The node proxies per 64 B round trip and per MiB: ping-pongs, then bulk
//! echo, through both node proxies.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::harness::servers::EchoServer;
use crate::harness::topo::{self, BenchTopo};
use crate::harness::{run, sys};
use crate::instr::strace::Strace;
use crate::l4::latency;
use crate::{LOADGEN_CPU, SERVER_CPU};
use anyhow::{bail, Context, Result};
use serde_json::json;

use super::args::*;
use super::count::*;

pub(super) const PING: usize = 64;

pub(super) const BULK_MSG: usize = 64 * 1024;

pub(super) const WARMUP_PINGS: usize = 200;

/// Round trips of `size` bytes on `s`, bounded by `deadline`.
pub(super) fn round_trips(
    s: &mut std::net::TcpStream,
    size: usize,
    n: usize,
    deadline: Instant,
) -> Result<()> {
    let msg = vec![0x5au8; size];
    let mut buf = vec![0u8; size];
    for i in 0..n {
        latency::round_trip(s, &msg, &mut buf).with_context(|| format!("round trip {i}"))?;
        if buf != msg {
            bail!("the echo returned different bytes");
        }
        if Instant::now() > deadline {
            bail!("the load took longer than its bound; is the machine overloaded?");
        }
    }
    Ok(())
}

/// The node proxies' figures: both under callgrind, ping-pongs then bulk.
pub(super) fn node_proxies(r: Run<'_>) -> Result<serde_json::Value> {
    let bt = BenchTopo::build(0)?;
    let echo_addr = SocketAddr::new(bt.server.ip, 7000);
    let _echo = EchoServer::start(&bt.server.netns()?, echo_addr, SERVER_CPU)?;
    let bin = topo::proxy_binary()?;
    run::say("starting both node proxies under callgrind (slow)");
    let p1 = bt.start_proxy_with(&bin, "node1", &bt.client, SERVER_CPU, r.wrapper, &[])?;
    let p2 = bt.start_proxy_with(&bin, "node2", &bt.server, SERVER_CPU, r.wrapper, &[])?;
    let ns = bt.client.netns()?;
    latency::wait_echo(&ns, LOADGEN_CPU, echo_addr, Duration::from_secs(60))?;
    let pids = [p1.pid, p2.pid];
    let (pings, bulk_msgs) = (r.a.pings, r.a.bulk_mib * 1024 * 1024 / BULK_MSG);
    run::say(format!(
        "{pings} round trips of {PING} B, then {} MiB echoed",
        r.a.bulk_mib
    ));
    sys::on_pinned_thread("instr-load", LOADGEN_CPU, &ns, move || {
        // Generous bounds: callgrind runs the proxies ~50x slower.
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut s = latency::connect(echo_addr)?;
        round_trips(&mut s, PING, WARMUP_PINGS, deadline)?;
        control("-z", &pids)?;
        round_trips(&mut s, PING, pings, deadline)?;
        control("-d", &pids)?;
        round_trips(&mut s, BULK_MSG, 16, deadline)?;
        control("-z", &pids)?;
        round_trips(&mut s, BULK_MSG, bulk_msgs, deadline)?;
        control("-d", &pids)
    })?;
    let mut doc = json!({
        "notes": [
            r.run_note,
            format!("binary: {}", bin.display()),
            format!("load: {pings} ping-pongs of {PING} B on one connection after {WARMUP_PINGS} warm-up ones; then {} MiB echoed in {BULK_MSG} B messages on the same connection", r.a.bulk_mib),
            COUNTS_NOTE.to_string(),
            MEMCPY_NOTE.to_string(),
            format!("took {:.0} s", r.started.elapsed().as_secs_f64()),
        ],
    });
    for (phase, part, units) in [
        ("pingpong", 1, pings as f64),
        ("bulk", 2, r.a.bulk_mib as f64),
    ] {
        for (node, pid) in [("node1", p1.pid), ("node2", p2.pid)] {
            let prof = read_part(r.dumps, pid, part)?;
            doc[phase][node] = figures(&prof, units);
        }
    }
    Ok(doc)
}

pub(super) fn markdown(doc: &serde_json::Value) -> String {
    let mut md = String::from("# Node proxy instructions per unit of work (callgrind)\n\n");
    for note in doc["notes"].as_array().into_iter().flatten() {
        md += &format!("- {}\n", note.as_str().unwrap_or_default());
    }
    for (phase, unit) in [
        ("pingpong", "per 64 B round trip"),
        (
            "bulk",
            "per MiB echoed (each byte crosses each proxy twice)",
        ),
    ] {
        md += &format!(
            "\n## {unit}\n\n| | node1 (client side) | node2 (server side) |\n|---|---:|---:|\n"
        );
        let p = &doc[phase];
        let row = |k: &str, digits: usize| {
            format!(
                "{:.*} | {:.*}",
                digits,
                p["node1"][k].as_f64().unwrap_or(f64::NAN),
                digits,
                p["node2"][k].as_f64().unwrap_or(f64::NAN)
            )
        };
        md += &format!("| user-space instructions | {} |\n", row("ir", 0));
        md += &format!("| task polls | {} |\n", row("task_polls", 2));
        md += &format!("| allocations | {} |\n", row("allocations", 2));
        for i in 0..10 {
            let cell = |node: &str| {
                let c = &p[node]["top_crates"][i];
                match c["crate"].as_str() {
                    Some(name) => format!(
                        "{name} {:.0} ({:.1}%)",
                        c["ir"].as_f64().unwrap_or_default(),
                        c["share_pct"].as_f64().unwrap_or_default()
                    ),
                    None => String::new(),
                }
            };
            md += &format!(
                "| #{} by own instructions | {} | {} |\n",
                i + 1,
                cell("node1"),
                cell("node2")
            );
        }
    }
    md
}

/// Each node proxy's syscalls per 64 B round trip, counted by strace over
/// `--pings` round trips on one connection; the proxies run at full speed
/// (strace slows each syscall, not what the proxies decide to call).
pub(super) fn syscalls(a: &Args) -> Result<()> {
    let tmp = tempfile::tempdir().context("creating a directory for strace's output")?;
    let bt = BenchTopo::build(0)?;
    let echo_addr = SocketAddr::new(bt.server.ip, 7000);
    let _echo = EchoServer::start(&bt.server.netns()?, echo_addr, SERVER_CPU)?;
    let bin = topo::proxy_binary()?;
    let p1 = bt.start_proxy(&bin, "node1", &bt.client, SERVER_CPU)?;
    let p2 = bt.start_proxy(&bin, "node2", &bt.server, SERVER_CPU)?;
    let ns = bt.client.netns()?;
    latency::wait_echo(&ns, LOADGEN_CPU, echo_addr, Duration::from_secs(30))?;
    let pids = [p1.pid, p2.pid];
    let dir = tmp.path().to_path_buf();
    let pings = a.pings;
    let counts = sys::on_pinned_thread("instr-load", LOADGEN_CPU, &ns, move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut s = latency::connect(echo_addr)?;
        round_trips(&mut s, PING, WARMUP_PINGS, deadline)?;
        let tracers = pids
            .iter()
            .map(|&pid| Strace::attach(pid, &dir.join(format!("st.{pid}"))))
            .collect::<Result<Vec<_>>>()?;
        round_trips(&mut s, PING, pings, deadline)?;
        tracers
            .into_iter()
            .map(Strace::finish)
            .collect::<Result<Vec<_>>>()
    })?;
    print!(
        "{}",
        syscall_table(
            &format!("syscalls per 64 B round trip ({pings} round trips, one connection)"),
            &[("node1", &counts[0]), ("node2", &counts[1])],
            pings,
        )
    );
    Ok(())
}
