//! `trellis-instr`: user-space instructions each node proxy spends per round
//! trip and per MiB, or the waypoint per request, counted by callgrind on
//! the benchmarks' topologies.
//!
//! ```text
//! cargo build --release -p trellis-node-proxy -p trellis-waypoint -p trellis-perf
//! sudo target/release/trellis-instr [--pings 2000] [--bulk-mib 16] [--out perf/results]
//! sudo target/release/trellis-instr --waypoint [--requests 2000] [--out perf/results]
//! ```
//!
//! Both node proxies run under `valgrind --tool=callgrind` (slowly; the
//! counts do not depend on speed). After warm-up, the counters are zeroed,
//! the client pod does `--pings` 64 B ping-pongs with the echo server on one
//! connection, and the counters are dumped; then the same for `--bulk-mib`
//! MiB echoed in 64 KiB messages. Instruction counts are exact and
//! repeatable, unlike wall-clock time on this VM, so they show what a change
//! to the data path does in one run; they leave out the kernel and cache
//! misses, so `trellis-bench` still decides whether it pays.
//!
//! `--waypoint` runs the waypoint alone under callgrind on
//! `trellis-l7-bench`'s topology (node proxies and upstream servers run
//! normally) and counts `--requests` sequential requests per protocol
//! (HTTP/1.1, HTTP/2, gRPC unary) on one connection each, through the same
//! routes and policy as the bench.
//!
//! Its parts, and the counters behind them:
//!
//! * [`callgrind`]: reading callgrind profiles.
//! * [`strace`]: syscall counts of a running process over a window.

mod args;
pub mod callgrind;
mod count;
mod node;
pub mod strace;
mod waypoint;

use std::time::Instant;

use crate::harness::{run, sys};
use crate::{LOADGEN_CPU, SERVER_CPU};
use anyhow::{Context, Result};

use args::*;
use count::*;
use node::*;
use waypoint::*;

/// Runs `trellis-instr` with this process's arguments.
pub fn run() -> Result<()> {
    let Some(a) = args()? else { return Ok(()) };
    if a.syscalls {
        run::preflight(
            "trellis-instr",
            [LOADGEN_CPU, SERVER_CPU],
            &[("strace", "strace")],
        )?;
        let _lock = run::lock()?;
        sys::pin_current_thread(LOADGEN_CPU)?;
        return if a.waypoint {
            waypoint_syscalls(&a)
        } else {
            syscalls(&a)
        };
    }
    let cpus = run::preflight(
        "trellis-instr",
        [LOADGEN_CPU, SERVER_CPU],
        &[("valgrind", "valgrind"), ("callgrind_control", "valgrind")],
    )?;
    // Counts do not depend on other load, but valgrind's CPU use would
    // disturb a benchmark running beside it.
    let _lock = run::lock()?;
    sys::pin_current_thread(LOADGEN_CPU)?;
    let started = Instant::now();
    let tmp = tempfile::tempdir().context("creating a directory for the callgrind files")?;
    let dumps = match &a.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => tmp.path().to_path_buf(),
    };
    let out_file = format!("--callgrind-out-file={}/cg.%p", dumps.display());
    let wrapper = [
        "valgrind",
        "--tool=callgrind",
        "--dump-instr=no",
        out_file.as_str(),
    ];
    let run_note = format!(
        "run: git {}, {}",
        run::git_rev(),
        run::machine_line(cpus.len())
    );
    let run = Run {
        a: &a,
        wrapper: &wrapper,
        dumps: &dumps,
        run_note,
        started,
    };
    let (name, doc, md) = if a.waypoint {
        let doc = waypoint(run)?;
        let md = waypoint_markdown(&doc);
        ("instr-waypoint", doc, md)
    } else {
        let doc = node_proxies(run)?;
        let md = markdown(&doc);
        ("instr", doc, md)
    };
    print!("{md}");
    run::write_results(&a.out, name, &doc, &md)
}
