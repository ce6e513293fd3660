//! The node proxy's hand-over, measured (issue 16, section 1): how long new
//! connections wait while one process hands its listeners to the next, and
//! the memory of both processes while they overlap.
//!
//! A prober in a client pod opens a new connection through the mesh every
//! [`PACE`] (connect, 1-byte echo through HBONE to the server pod, close)
//! the whole time, while the node proxies are taken over in turn: the
//! clients' node (its outbound capture listeners move) and the servers'
//! node (its 15008 listeners move). The listening sockets themselves are
//! handed over, so a connection is never refused: during a gap in accepts
//! it waits in the kernel's accept queue, and its connect-to-echo time
//! grows by the gap. So the worst probe inside a take-over, less the
//! typical probe outside any take-over, bounds the accept gap from above
//! (it also holds the new process's start-up competing for the CPUs).
//!
//! Each take-over starts with a long-lived stream through the old process,
//! so the old one drains while the new one serves; both RSS are sampled
//! during that overlap.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use trellis_e2e::counted_stream::CountedStream;
use trellis_e2e::mesh_kit::Mesh;
use trellis_e2e::wait_until;
use trellis_netns::NetNs;

use crate::harness::hist::{self, round2, Summary};
use crate::harness::proc_stats;

/// Time between the starts of two probes.
pub const PACE: Duration = Duration::from_millis(1);
/// A probe slower than this counts as failed (and ends).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long both processes' RSS are sampled after the new one is ready.
const OVERLAP_SAMPLE: Duration = Duration::from_millis(500);
/// A take-over's window runs from starting the new process until this long
/// after the old one handed over, so probes slowed by the switch near its
/// end still count as inside.
const WINDOW_TAIL: Duration = Duration::from_millis(50);
const ECHO_PORT: u16 = 8080;
const T: Duration = Duration::from_secs(10);

/// One probe: when it started (from the run's start), how long until its
/// echo came back, and whether it did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    pub at: Duration,
    pub took: Duration,
    pub ok: bool,
}

/// One take-over's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Takeover {
    pub node: String,
    /// From starting the new process until it was ready (it serves by then).
    pub start_to_ready_ms: f64,
    /// From starting the new process until the old one said it handed over.
    pub start_to_handed_over_ms: f64,
    /// Probes that started inside the take-over, and the failed ones.
    pub probes: u64,
    pub failed: u64,
    /// The slowest probe that started inside it.
    pub worst_us: f64,
    /// `worst_us` less the p50 of the probes outside any take-over: the
    /// upper bound on the accept gap.
    pub gap_bound_us: f64,
    /// RSS of the old process just before, and the peaks of old, new and
    /// their sum while both ran.
    pub old_before_kib: u64,
    pub old_peak_kib: u64,
    pub new_peak_kib: u64,
    pub sum_peak_kib: u64,
}

/// The whole run.
#[derive(Debug, Clone, Default)]
pub struct HandoverReport {
    pub takeovers: Vec<Takeover>,
    /// Probes outside every take-over.
    pub baseline: Summary,
    pub baseline_failed: u64,
    pub probes: u64,
}

/// Splits the probes into those inside each window (take-over start to its
/// end) and the rest, the baseline. Pure, so it is tested as a table.
pub fn split_windows(
    probes: &[Probe],
    windows: &[(Duration, Duration)],
) -> (Vec<Probe>, Vec<Vec<Probe>>) {
    let mut inside = vec![Vec::new(); windows.len()];
    let mut baseline = Vec::new();
    for p in probes {
        match windows.iter().position(|(a, b)| p.at >= *a && p.at <= *b) {
            Some(i) => inside[i].push(*p),
            None => baseline.push(*p),
        }
    }
    (baseline, inside)
}

/// Worst probe time in µs (failed ones count at their time), and the
/// number failed.
pub fn worst(probes: &[Probe]) -> (f64, u64) {
    let worst = probes
        .iter()
        .map(|p| p.took.as_secs_f64() * 1e6)
        .fold(0.0, f64::max);
    (worst, probes.iter().filter(|p| !p.ok).count() as u64)
}

/// The prober: a thread inside `ns` opening one connection to `dst` every
/// [`PACE`] until stopped, or `max` probes, whichever is first.
struct Prober {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Vec<Probe>>>,
}

impl Prober {
    fn start(ns: NetNs, dst: SocketAddr, epoch: Instant, max: usize) -> Result<Prober> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("handover-prober".into())
            .spawn(move || {
                ns.run_in(|| probe_loop(dst, epoch, max, &s))
                    .context("entering the client pod's netns")
            })?;
        Ok(Prober { stop, handle })
    }

    fn finish(self) -> Result<Vec<Probe>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow!("the prober thread panicked"))?
    }
}

fn probe_loop(dst: SocketAddr, epoch: Instant, max: usize, stop: &AtomicBool) -> Vec<Probe> {
    let mut out = Vec::with_capacity(max);
    let mut next = Instant::now();
    while out.len() < max && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += PACE;
        let start = Instant::now();
        let ok = probe_once(dst).is_ok();
        out.push(Probe {
            at: start - epoch,
            took: start.elapsed(),
            ok,
        });
        // A probe late by more than a pace does not cause a burst after it.
        next = next.max(Instant::now());
    }
    out
}

fn probe_once(dst: SocketAddr) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&dst, PROBE_TIMEOUT)?;
    s.set_read_timeout(Some(PROBE_TIMEOUT))?;
    s.set_nodelay(true)?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    if b != *b"x" {
        return Err(std::io::Error::other("wrong echo"));
    }
    Ok(())
}

/// Peak RSS of `pids` (and of their sum) sampled every 5 ms for `span`.
fn sample_rss(pids: [u32; 2], span: Duration) -> ([u64; 2], u64) {
    let until = Instant::now() + span;
    let (mut peak, mut sum_peak) = ([0u64; 2], 0u64);
    while Instant::now() < until {
        let now: [u64; 2] = pids.map(|p| proc_stats::rss_kib(p).unwrap_or(0));
        for i in 0..2 {
            peak[i] = peak[i].max(now[i]);
        }
        sum_peak = sum_peak.max(now[0] + now[1]);
        std::thread::sleep(Duration::from_millis(5));
    }
    (peak, sum_peak)
}

/// Runs `rounds` take-overs, alternating the clients' and the servers'
/// node, with the prober running throughout. The node proxy binary is
/// the harness's (`TRELLIS_NODE_PROXY_BIN`).
pub fn run(rounds: usize) -> Result<HandoverReport> {
    let mut m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node2", "server", "demo", "server")
        .proxy_args(&["--handover-drain-deadline", "60s"])
        .start()?;
    let _echo = m.echo("server", ECHO_PORT);
    let dst = m.addr("server", ECHO_PORT);
    let epoch = Instant::now();
    // Bounded: the whole run at PACE, with room; the stop flag ends it first.
    let max = (rounds as u64 * 4_000 + 2_000) as usize;
    let prober = Prober::start(m.netns("client"), dst, epoch, max)?;
    std::thread::sleep(Duration::from_millis(500));
    let mut windows = Vec::new();
    let mut rows = Vec::new();
    let mut old_procs = Vec::new();
    for i in 0..rounds {
        let node = if i % 2 == 0 { "node1" } else { "node2" };
        let stream = CountedStream::start(&m.netns("client"), dst)?;
        stream
            .wait_progress(64 << 10, T)
            .map_err(|e| anyhow!("the long-lived stream before take-over {}: {e}", i + 1))?;
        let old_pid = m.proxy(node).pid();
        let old_before_kib = proc_stats::rss_kib(old_pid)?;
        let start = Instant::now();
        let new = m.proxy(node).take_over(&format!("gen{}", i + 1))?;
        let ready = start.elapsed();
        let new_pid = new.pid();
        let prev = m.replace_proxy(node, new);
        let sampler = std::thread::spawn(move || sample_rss([old_pid, new_pid], OVERLAP_SAMPLE));
        wait_until(T, "the old process to hand over", || {
            prev.log().contains("handed over to the new node proxy")
        })
        .map_err(|e| anyhow!("{e}\n{}", prev.log()))?;
        let handed = start.elapsed();
        windows.push((start - epoch, epoch.elapsed() + WINDOW_TAIL));
        let (peak, sum_peak) = sampler
            .join()
            .map_err(|_| anyhow!("the RSS sampler panicked"))?;
        let report = stream.finish();
        if report.error.is_some() || report.received != report.sent {
            bail!(
                "take-over {}: the long-lived stream broke: {report:?}",
                i + 1
            );
        }
        old_procs.push(prev);
        rows.push(Takeover {
            node: node.to_string(),
            start_to_ready_ms: ready.as_secs_f64() * 1e3,
            start_to_handed_over_ms: handed.as_secs_f64() * 1e3,
            old_before_kib,
            old_peak_kib: peak[0],
            new_peak_kib: peak[1],
            sum_peak_kib: sum_peak,
            ..Default::default()
        });
        // Probes after the take-over, outside any window, before the next.
        std::thread::sleep(Duration::from_millis(300));
    }
    let probes = prober.finish()?;
    for mut p in old_procs {
        if p.wait_exit(T).is_none() {
            bail!(
                "an old node proxy ({}) did not exit after its drain",
                p.pid()
            );
        }
    }
    Ok(summarise(&probes, &windows, rows))
}

/// Puts the probes' figures into the rows.
pub fn summarise(
    probes: &[Probe],
    windows: &[(Duration, Duration)],
    mut rows: Vec<Takeover>,
) -> HandoverReport {
    let (base, inside) = split_windows(probes, windows);
    let mut h = hist::new_ns();
    for p in base.iter().filter(|p| p.ok) {
        hist::record(&mut h, p.took);
    }
    let baseline = Summary::of(&h);
    for (row, ps) in rows.iter_mut().zip(&inside) {
        let (w, failed) = worst(ps);
        row.probes = ps.len() as u64;
        row.failed = failed;
        row.worst_us = w;
        row.gap_bound_us = (w - baseline.p50_us).max(0.0);
    }
    HandoverReport {
        takeovers: rows,
        baseline,
        baseline_failed: base.iter().filter(|p| !p.ok).count() as u64,
        probes: probes.len() as u64,
    }
}

impl HandoverReport {
    pub fn to_json(&self) -> Value {
        json!({
            "pace_us": PACE.as_micros() as u64,
            "probes": self.probes,
            "baseline": self.baseline.to_json(),
            "baseline_failed": self.baseline_failed,
            "takeovers": self.takeovers.iter().map(|t| json!({
                "node": t.node,
                "start_to_ready_ms": round2(t.start_to_ready_ms),
                "start_to_handed_over_ms": round2(t.start_to_handed_over_ms),
                "probes": t.probes,
                "failed": t.failed,
                "worst_us": round2(t.worst_us),
                "gap_bound_us": round2(t.gap_bound_us),
                "old_before_kib": t.old_before_kib,
                "old_peak_kib": t.old_peak_kib,
                "new_peak_kib": t.new_peak_kib,
                "sum_peak_kib": t.sum_peak_kib,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn markdown(&self) -> String {
        let b = &self.baseline;
        let mut md = format!(
            "A new connection through the mesh every {} µs ({} probes): outside the take-overs \
             p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs, {} failed.\n\n\
             | # | node | new ready (ms) | handed over (ms) | probes inside | failed | worst probe (µs) | accept gap ≤ (µs) | old RSS before (MiB) | old peak | new peak | both, peak (MiB) |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            PACE.as_micros(),
            self.probes,
            b.p50_us,
            b.p99_us,
            b.max_us,
            self.baseline_failed
        );
        let mib = |k: u64| k as f64 / 1024.0;
        for (i, t) in self.takeovers.iter().enumerate() {
            md += &format!(
                "| {} | {} | {:.1} | {:.1} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                i + 1,
                t.node,
                t.start_to_ready_ms,
                t.start_to_handed_over_ms,
                t.probes,
                t.failed,
                t.worst_us,
                t.gap_bound_us,
                mib(t.old_before_kib),
                mib(t.old_peak_kib),
                mib(t.new_peak_kib),
                mib(t.sum_peak_kib),
            );
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(at_ms: u64, took_us: u64, ok: bool) -> Probe {
        Probe {
            at: Duration::from_millis(at_ms),
            took: Duration::from_micros(took_us),
            ok,
        }
    }

    #[test]
    fn probes_fall_into_their_take_over_or_the_baseline() {
        let ms = Duration::from_millis;
        let probes = [
            p(1, 100, true),
            p(10, 900, true),
            p(12, 5_000, false),
            p(20, 110, true),
            p(30, 300, true),
            p(31, 120, true),
        ];
        let windows = [(ms(10), ms(15)), (ms(30), ms(30))];
        let (base, inside) = split_windows(&probes, &windows);
        assert_eq!(base, vec![probes[0], probes[3], probes[5]]);
        assert_eq!(inside, vec![vec![probes[1], probes[2]], vec![probes[4]]]);
        // (probes, expected worst µs, expected failed)
        let cases: [(&[Probe], f64, u64); 3] = [
            (&inside[0], 5_000.0, 1),
            (&inside[1], 300.0, 0),
            (&[], 0.0, 0),
        ];
        for (ps, want_worst, want_failed) in cases {
            assert_eq!(worst(ps), (want_worst, want_failed), "{ps:?}");
        }
    }

    #[test]
    fn the_gap_bound_is_the_worst_probe_less_the_baseline_median() {
        let ms = Duration::from_millis;
        let probes = [
            p(1, 100, true),
            p(2, 100, true),
            p(3, 100, true),
            p(10, 850, true),
            p(20, 90, true),
        ];
        let rows = vec![Takeover::default(), Takeover::default()];
        // The second window holds a probe faster than the baseline median:
        // its bound is 0, never negative.
        let r = summarise(&probes, &[(ms(10), ms(11)), (ms(20), ms(21))], rows);
        assert_eq!(r.probes, 5);
        assert_eq!(r.baseline.count, 3);
        assert_eq!(r.baseline_failed, 0);
        let bounds: Vec<f64> = r.takeovers.iter().map(|t| t.gap_bound_us.round()).collect();
        assert_eq!(bounds, vec![750.0, 0.0]);
        assert_eq!(r.takeovers[0].probes, 1);
    }
}
