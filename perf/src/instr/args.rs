//! `trellis-instr`'s command line.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

pub(super) const USAGE: &str = "usage: trellis-instr [--pings N] [--bulk-mib M] [--out DIR]
       trellis-instr --waypoint [--requests N] [--out DIR]
       trellis-instr --syscalls [--pings N] | --syscalls --waypoint [--requests N]

  --pings N      64 B round trips counted (default 2000, at most 100000)
  --bulk-mib M   MiB echoed in 64 KiB messages for the bulk figure (default 16, at most 256)
  --waypoint     count the waypoint per request instead of the node proxies
  --requests N   requests counted per protocol with --waypoint (default 2000, at most 100000)
  --out DIR      where instr.{json,md} (instr-waypoint.{json,md} with --waypoint) go; default perf/results
  --keep DIR     keep the callgrind files there (cg.<pid>.<part>, for callgrind_annotate)
  --syscalls     no callgrind: count each node proxy's syscalls per 64 B round trip (with
                 --waypoint: the waypoint's per request) with strace, by name and how many
                 failed (e.g. reads that found nothing); prints, writes nothing";

pub(super) struct Args {
    pub(super) pings: usize,
    pub(super) bulk_mib: usize,
    pub(super) waypoint: bool,
    pub(super) syscalls: bool,
    pub(super) requests: usize,
    pub(super) out: PathBuf,
    pub(super) keep: Option<PathBuf>,
}

pub(super) fn args() -> Result<Option<Args>> {
    let mut a = Args {
        pings: 2000,
        bulk_mib: 16,
        waypoint: false,
        syscalls: false,
        requests: 2000,
        out: PathBuf::from("perf/results"),
        keep: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |what: &str, max: usize| -> Result<usize> {
            let v: usize = it
                .next()
                .with_context(|| format!("{what} needs a value\n{USAGE}"))?
                .parse()
                .with_context(|| format!("{what} takes a whole number\n{USAGE}"))?;
            if v == 0 || v > max {
                bail!("{what} must be between 1 and {max}");
            }
            Ok(v)
        };
        match arg.as_str() {
            "--pings" => a.pings = num("--pings", 100_000)?,
            "--bulk-mib" => a.bulk_mib = num("--bulk-mib", 256)?,
            "--requests" => a.requests = num("--requests", 100_000)?,
            "--waypoint" => a.waypoint = true,
            "--syscalls" => a.syscalls = true,
            "--out" => a.out = it.next().context("--out needs a directory")?.into(),
            "--keep" => a.keep = Some(it.next().context("--keep needs a directory")?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Some(a))
}
