//! One measured iperf3 run through a column: throughput, the CPU of the
//! processes on the path, and their context switches and (optionally)
//! syscalls per MB; then 64 B ping-pongs through the same column, so the
//! relay pairs bound the round trip as they bound the bulk figures.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::columns::Column;
use crate::harness::proc_stats::{BusyMeter, CpuMeter};
use crate::harness::topo::BenchTopo;
use crate::l4::latency::{self, PingPong};
use crate::l4::throughput;

/// One iperf3 run through one column.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub column: Column,
    /// Which round of the interleaved repeats, from 0.
    pub round: usize,
    pub gbit_per_s: f64,
    pub bytes: u64,
    pub retransmits: u64,
    /// utime + stime of the mesh processes over the iperf3 run (None: direct).
    pub proxy_cpu_s: Option<f64>,
    /// Busy time of the server CPU (iperf3 -s, the proxies, softirq).
    pub server_cpu_busy_s: f64,
    /// Context switches of the mesh processes (None: direct, or not measurable).
    pub ctx_switches: Option<u64>,
    /// Syscalls of the mesh processes (with `--syscalls` only).
    pub syscalls: Option<u64>,
    /// 64 B round trips through the column after the iperf3 run (None
    /// with `--pings 0`).
    pub rtt: Option<Rtt>,
    /// The same by kind (`l7::profile::SYSCALL_EVENTS` and
    /// [`SYSCALL_KINDS`], named without their `syscalls:sys_enter_`
    /// prefix; `context-switches` too); empty without `--syscalls`.
    pub syscall_kinds: BTreeMap<String, u64>,
}

/// A column's 64 B round trip, in µs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rtt {
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Sample {
    fn gb(&self) -> f64 {
        self.bytes.max(1) as f64 / 1e9
    }

    fn mb(&self) -> f64 {
        self.bytes.max(1) as f64 / 1e6
    }

    pub fn proxy_cpu_s_per_gb(&self) -> Option<f64> {
        self.proxy_cpu_s.map(|s| s / self.gb())
    }

    pub fn server_cpu_s_per_gb(&self) -> f64 {
        self.server_cpu_busy_s / self.gb()
    }

    pub fn ctx_per_mb(&self) -> Option<f64> {
        self.ctx_switches.map(|c| c as f64 / self.mb())
    }

    pub fn syscalls_per_mb(&self) -> Option<f64> {
        self.syscalls.map(|c| c as f64 / self.mb())
    }

    /// One kind of [`syscall_kinds`](Self::syscall_kinds) per MB.
    pub fn kind_per_mb(&self, kind: &str) -> Option<f64> {
        self.syscall_kinds.get(kind).map(|&c| c as f64 / self.mb())
    }
}

/// How a run is measured.
pub struct Measure<'a> {
    pub bt: &'a BenchTopo,
    pub iperf: SocketAddr,
    pub secs: u32,
    pub load_cpu: usize,
    pub server_cpu: usize,
    /// perf stat syscall counts into this dir (perturbs the figures).
    pub syscalls: Option<&'a Path>,
    /// perf record data of the meshed columns into this dir (perturbs the figures).
    pub profile: Option<&'a Path>,
    /// The echo server the ping-pongs go to.
    pub echo: SocketAddr,
    /// 64 B round trips measured after each iperf3 run (0: none).
    pub pings: usize,
}

impl Measure<'_> {
    /// iperf3 through `column`, whose mesh processes are `pids`.
    pub fn run(&self, column: Column, round: usize, pids: &[u32]) -> Result<Sample> {
        let meshed = !pids.is_empty();
        let counters = meshed && column.counters_cover_flow();
        let stat = match (self.syscalls, counters) {
            (Some(dir), true) => Some(PerfStat::start(dir, column, round, pids)?),
            _ => None,
        };
        let record = match self.profile {
            Some(dir) if meshed && super::profile::profiled(column) => {
                Some(PerfRecord::start(dir, column, round, pids)?)
            }
            _ => None,
        };
        let ctx0 = ctx_switches(pids);
        let cpu = CpuMeter::start(pids)?;
        let busy = BusyMeter::start(self.server_cpu)?;
        let r = throughput::run(
            &self.bt.topo,
            &self.bt.client.name,
            self.iperf,
            self.secs,
            self.load_cpu,
        )?;
        let server_cpu_busy_s = busy.elapsed()?;
        let proxy_cpu_s = cpu.elapsed()?;
        let ctx1 = ctx_switches(pids);
        let kinds = stat.map(PerfStat::finish).transpose()?.unwrap_or_default();
        let syscalls = match (self.syscalls, counters) {
            (Some(_), true) => Some(kinds.get("all syscalls").copied().with_context(|| {
                format!(
                    "perf stat gave no {SYSCALL_EVENT} count for {}",
                    column.name()
                )
            })?),
            _ => None,
        };
        record.map(PerfRecord::finish).transpose()?;
        if r.bytes == 0 {
            bail!("iperf3 through {} moved no bytes", column.name());
        }
        let rtt = (self.pings > 0).then(|| self.round_trips()).transpose()?;
        Ok(Sample {
            column,
            round,
            gbit_per_s: r.gbit_per_s,
            bytes: r.bytes,
            retransmits: r.retransmits,
            proxy_cpu_s: meshed.then_some(proxy_cpu_s),
            server_cpu_busy_s,
            ctx_switches: match (counters, ctx0, ctx1) {
                (true, Ok(a), Ok(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
            syscalls,
            rtt,
            syscall_kinds: kinds,
        })
    }

    /// `pings` 64 B round trips on one connection, after a tenth as many
    /// to warm up, as `trellis-bench` measures issue 12's RTT.
    fn round_trips(&self) -> Result<Rtt> {
        let s = latency::ping_pong(
            &self.bt.client.netns()?,
            self.load_cpu,
            self.echo,
            PingPong {
                count: self.pings,
                warmup: self.pings / 10,
                size: 64,
                max_time: Duration::from_secs(120),
            },
        )?;
        Ok(Rtt {
            p50_us: s.p50_us,
            p99_us: s.p99_us,
        })
    }
}

/// Voluntary plus involuntary context switches of every living thread of
/// `pids` (`/proc/<pid>/task/*/status`; `/proc/<pid>/status` has the main
/// thread's only).
pub fn ctx_switches(pids: &[u32]) -> std::io::Result<u64> {
    let mut total = 0;
    for pid in pids {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let status = match std::fs::read_to_string(task?.path().join("status")) {
                Ok(s) => s,
                // A thread that exited while we read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            total += parse_ctx_switches(&status);
        }
    }
    Ok(total)
}

/// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` of one status file.
pub fn parse_ctx_switches(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k, "voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches")
                .then(|| v.trim().parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// How long perf stat may take to write its count after SIGINT.
const PERF_EXIT: Duration = Duration::from_secs(20);

/// The syscall tracepoint every syscall enters through.
const SYSCALL_EVENT: &str = "raw_syscalls:sys_enter";

/// What `--syscalls` counts: every syscall, the I/O and wake-up ones the
/// L7 profile counts, the memory ones (a copy buffer that grows and
/// shrinks with the flow maps and unmaps), and io_uring_enter, the one
/// syscall through which the uring relays submit and wait.
pub const SYSCALL_KINDS: &[&str] = &[
    "syscalls:sys_enter_io_uring_enter",
    "syscalls:sys_enter_mmap",
    "syscalls:sys_enter_munmap",
    "syscalls:sys_enter_mremap",
    "syscalls:sys_enter_madvise",
];

/// How long perf record may take to write its data after SIGINT (DWARF
/// stacks make it large).
const PERF_RECORD_EXIT: Duration = Duration::from_secs(60);

/// `perf record` sampling some processes; SIGINT makes it write its data.
struct PerfRecord {
    child: Child,
    out: PathBuf,
}

impl PerfRecord {
    fn start(dir: &Path, column: Column, round: usize, pids: &[u32]) -> Result<PerfRecord> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let out = super::profile::data_path(dir, column, round);
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = crate::harness::run::perf_record(&list.join(","), &out)?;
        // As for perf stat: no signal to wait on for the attach.
        std::thread::sleep(Duration::from_millis(1000));
        Ok(PerfRecord { child, out })
    }

    fn finish(mut self) -> Result<PathBuf> {
        if !crate::harness::run::stop_perf(std::slice::from_mut(&mut self.child), PERF_RECORD_EXIT)
        {
            bail!(
                "perf record did not exit within {PERF_RECORD_EXIT:?} of SIGINT; {} is incomplete",
                self.out.display()
            );
        }
        Ok(self.out.clone())
    }
}

impl Drop for PerfRecord {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `perf stat` counting syscalls of some processes; SIGINT makes it write its count.
struct PerfStat {
    child: Child,
    out: PathBuf,
}

impl PerfStat {
    fn start(dir: &Path, column: Column, round: usize, pids: &[u32]) -> Result<PerfStat> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let out = dir.join(format!("{}-{round}.perfstat.csv", column.name()));
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        // l7's list starts with raw_syscalls:sys_enter.
        let events: Vec<&str> = crate::l7::profile::SYSCALL_EVENTS
            .iter()
            .chain(SYSCALL_KINDS)
            .copied()
            .collect();
        let child = Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                &events.join(","),
                "-p",
                &list.join(","),
                "-o",
            ])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf stat (apt-get install linux-perf)")?;
        // perf attaches asynchronously; without a signal to wait on, give it time.
        std::thread::sleep(Duration::from_millis(500));
        Ok(PerfStat { child, out })
    }

    /// The counts by kind ("all syscalls" among them).
    fn finish(mut self) -> Result<BTreeMap<String, u64>> {
        if !crate::harness::run::stop_perf(std::slice::from_mut(&mut self.child), PERF_EXIT) {
            bail!("perf stat did not exit within {PERF_EXIT:?} of SIGINT");
        }
        let text = std::fs::read_to_string(&self.out)
            .with_context(|| format!("reading {}", self.out.display()))?;
        let counts = crate::harness::run::perf_stat_counts(&text);
        if !counts.contains_key("all syscalls") {
            bail!(
                "no {SYSCALL_EVENT} count in {}:\n{text}",
                self.out.display()
            );
        }
        Ok(counts)
    }
}

impl Drop for PerfStat {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_switches_of_a_status_file() {
        let status = "Name:\ttrellis-relay\nThreads:\t1\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(parse_ctx_switches(status), 127);
        assert_eq!(parse_ctx_switches("Name:\tx\n"), 0);
    }

    #[test]
    fn syscall_count_from_perf_stat_csv() {
        let text = "# started on Mon Dec  7 03:30:00 2026\n\n\
                    1234567,,raw_syscalls:sys_enter,3000000000,100.00,,\n";
        let all = |t: &str| {
            crate::harness::run::perf_stat_counts(t)
                .get("all syscalls")
                .copied()
        };
        assert_eq!(all(text), Some(1234567));
        let not_counted = "<not counted>,,raw_syscalls:sys_enter,0,0.00,,\n";
        assert_eq!(all(not_counted), None);
        assert_eq!(all(""), None);
    }
}
