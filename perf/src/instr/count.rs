//! What both modes share: driving callgrind, reading its dumps into
//! figures, and the syscall table.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::instr::callgrind::{self, Profile};
use crate::instr::strace::Calls;
use anyhow::{bail, Context, Result};
use serde_json::json;

use super::args::*;

/// What both modes are given.
pub(super) struct Run<'a> {
    pub(super) a: &'a Args,
    /// The valgrind command line each counted proxy runs under.
    pub(super) wrapper: &'a [&'a str],
    /// Where callgrind writes its files.
    pub(super) dumps: &'a Path,
    pub(super) run_note: String,
    pub(super) started: Instant,
}

/// `callgrind_control <flag> <pid>` for each proxy; it returns once the tool
/// has acted.
pub(super) fn control(flag: &str, pids: &[u32]) -> Result<()> {
    for pid in pids {
        let out = Command::new("callgrind_control")
            .args([flag, &pid.to_string()])
            .output()
            .context("running callgrind_control (apt-get install valgrind)")?;
        if !out.status.success() {
            bail!(
                "callgrind_control {flag} {pid} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Reads dump part `part` of process `pid` (`cg.<pid>.<part>`), waiting
/// briefly for valgrind to finish writing it.
pub(super) fn read_part(dir: &Path, pid: u32, part: u32) -> Result<Profile> {
    let path = dir.join(format!("cg.{pid}.{part}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            // A dump ends with its totals line; before that it is still being written.
            if text.contains("\ntotals:") {
                return callgrind::parse(&text)
                    .with_context(|| format!("parsing {}", path.display()));
            }
        }
        if Instant::now() > deadline {
            bail!("callgrind did not write {} within 30 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One proxy's figures for one phase, per `units`.
pub(super) fn figures(p: &Profile, units: f64) -> serde_json::Value {
    let total = p.total_ir() as f64;
    let crates: Vec<_> = p
        .by_crate()
        .into_iter()
        .take(10)
        .map(|(c, ir)| json!({"crate": c, "ir": (ir as f64 / units).round(), "share_pct": (1000.0 * ir as f64 / total).round() / 10.0}))
        .collect();
    json!({
        "ir": (total / units).round(),
        "task_polls": p.calls_named("tokio::runtime::task::raw::poll") as f64 / units,
        "allocations": ALLOCATORS.iter().map(|f| p.calls_named(f)).sum::<u64>() as f64 / units,
        "top_crates": crates,
    })
}

/// Syscalls per unit of work side by side: calls and failed calls of each
/// column, per syscall name, and all calls.
pub(super) fn syscall_table(
    title: &str,
    cols: &[(&str, &BTreeMap<String, Calls>)],
    units: usize,
) -> String {
    let mut md = format!("# {title}\n\n| syscall |");
    let mut rule = String::from("|---|");
    for (name, _) in cols {
        md += &format!(" {name} calls | {name} failed |");
        rule += "---:|---:|";
    }
    md += &format!("\n{rule}\n");
    let names: std::collections::BTreeSet<&String> =
        cols.iter().flat_map(|(_, m)| m.keys()).collect();
    let per = |n: u64| n as f64 / units as f64;
    for name in names {
        md += &format!("| {name} |");
        for (_, m) in cols {
            let c = m.get(name).copied().unwrap_or_default();
            md += &format!(" {:.2} | {:.2} |", per(c.calls), per(c.errors));
        }
        md += "\n";
    }
    md += "| all |";
    for (_, m) in cols {
        md += &format!(" {:.2} | |", per(m.values().map(|c| c.calls).sum()));
    }
    md + "\n"
}

pub(super) const COUNTS_NOTE: &str = "counts: callgrind Ir (user-space instructions, kernel excluded) between zeroing and dumping the counters; task polls = calls of tokio's raw::poll; allocations = calls of malloc (glibc, the node proxy) or mi_malloc_aligned / mi_zalloc_aligned (mimalloc, the waypoint)";

/// The allocation entry points counted: glibc's, and mimalloc's as Rust's
/// global allocator calls them.
pub(super) const ALLOCATORS: [&str; 3] = ["malloc", "mi_malloc_aligned", "mi_zalloc_aligned"];

pub(super) const MEMCPY_NOTE: &str = "caveat: valgrind counts each byte a `rep movsb` moves as one instruction, so glibc's __memcpy_avx_unaligned_erms (and memset) on large buffers reads as bytes copied, not as its cost";
