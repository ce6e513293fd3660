//! The soak (issue 16, section 3): many concurrent connections through one
//! node proxy for minutes, each carrying a small echo every few seconds;
//! the proxies' RSS and file descriptors sampled on a fixed period, and
//! every echo checked.
//!
//! The client pod on node1 opens the connections to the echo server in the
//! server pod on node2: node1's proxy captures each one and carries it as
//! an HBONE stream to node2's proxy, which opens a socket to the server. So
//! both proxies hold every connection; node1's is "the" proxy of the soak
//! (one accepted socket per connection), node2's is reported beside it.

pub mod program;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_netns::{self as netns, NetNs, SocketOpts};

use crate::harness::hist::{self, Summary};

/// The shape of a soak run.
#[derive(Clone, Copy, Debug)]
pub struct SoakConfig {
    pub connections: usize,
    /// How long every connection is held open with traffic, after all are open.
    pub hold: Duration,
    /// Time between two echoes on one connection.
    pub echo_every: Duration,
    /// Connections opened per second while ramping up.
    pub open_rate: f64,
    /// RSS growth is measured from the end of this part of the hold.
    pub warmup: Duration,
    /// How often RSS and fds are sampled.
    pub sample_every: Duration,
}

/// Bytes of one echo.
pub const ECHO_BYTES: usize = 64;
/// An echo (or a connect) slower than this counts as an error.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters shared by every connection task.
#[derive(Default)]
pub struct Counters {
    pub open: AtomicU64,
    pub opened: AtomicU64,
    pub echoes: AtomicU64,
    pub errors: AtomicU64,
    pub error_kinds: Mutex<BTreeMap<String, u64>>,
    pub latency: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl Counters {
    fn error(&self, kind: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.error_kinds.lock() {
            *m.entry(kind).or_default() += 1;
        }
    }
}

/// Runs every connection from `ns` to `dst` on one current-thread runtime
/// (this thread): ramp up at `open_rate`, hold until `hold_until` with an
/// echo every `echo_every` (each connection's schedule offset, so the
/// echoes spread evenly), then close all.
pub fn run_clients(
    ns: &NetNs,
    dst: SocketAddr,
    cfg: SoakConfig,
    hold_until: Instant,
    counters: Arc<Counters>,
) -> Result<()> {
    let rt = crate::harness::sys::runtime()?;
    // One handle for every connection: a clone per connection would hold a
    // descriptor each, as many as the sockets themselves.
    let ns = Arc::new(ns.try_clone()?);
    rt.block_on(async move {
        let mut tasks = Vec::with_capacity(cfg.connections);
        let gap = Duration::from_secs_f64(1.0 / cfg.open_rate);
        let mut next = tokio::time::Instant::now();
        for i in 0..cfg.connections {
            tokio::time::sleep_until(next).await;
            next += gap;
            let offset = cfg.echo_every.mul_f64(i as f64 / cfg.connections as f64);
            let c = counters.clone();
            let ns = ns.clone();
            tasks.push(tokio::spawn(async move {
                one_conn(&ns, dst, cfg.echo_every, offset, hold_until, &c).await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok::<(), anyhow::Error>(())
    })
}

async fn one_conn(
    ns: &NetNs,
    dst: SocketAddr,
    every: Duration,
    offset: Duration,
    until: Instant,
    c: &Counters,
) {
    let opts = SocketOpts {
        nodelay: true,
        ..SocketOpts::default()
    };
    let sock = match netns::tcp_socket(Some(ns), dst, opts) {
        Ok(s) => s,
        Err(e) => return c.error(format!("socket: {:?}", e.kind())),
    };
    let mut s = match tokio::time::timeout(IO_TIMEOUT, sock.connect(dst)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return c.error(format!("connect: {:?}", e.kind())),
        Err(_) => return c.error("connect timed out".into()),
    };
    c.opened.fetch_add(1, Ordering::Relaxed);
    c.open.fetch_add(1, Ordering::Relaxed);
    let mut h = hist::new_ns();
    let mut payload = [0u8; ECHO_BYTES];
    let mut back = [0u8; ECHO_BYTES];
    let mut due = tokio::time::Instant::now() + offset;
    let until = tokio::time::Instant::from_std(until);
    let mut seq = 0u64;
    while due < until {
        tokio::time::sleep_until(due).await;
        seq += 1;
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        let t0 = Instant::now();
        let r = tokio::time::timeout(IO_TIMEOUT, async {
            s.write_all(&payload).await?;
            s.read_exact(&mut back).await?;
            Ok::<(), std::io::Error>(())
        })
        .await;
        match r {
            Ok(Ok(())) if back == payload => {
                hist::record(&mut h, t0.elapsed());
                c.echoes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(())) => {
                c.error("echo differs from what was sent".into());
                break;
            }
            Ok(Err(e)) => {
                c.error(format!("echo: {:?}", e.kind()));
                break;
            }
            Err(_) => {
                c.error("echo timed out".into());
                break;
            }
        }
        due += every;
    }
    c.open.fetch_sub(1, Ordering::Relaxed);
    if let Ok(mut l) = c.latency.lock() {
        match l.as_mut() {
            Some(all) => {
                let _ = all.add(&h);
            }
            None => *l = Some(h),
        }
    }
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> std::io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// One sample of the proxies.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at_s: f64,
    pub open_conns: u64,
    pub echoes: u64,
    pub errors: u64,
    /// Per proxy: (RSS KiB, fds).
    pub proxies: Vec<(u64, usize)>,
}

impl Sample {
    pub fn take(t0: Instant, pids: &[u32], c: &Counters) -> Sample {
        Sample {
            at_s: t0.elapsed().as_secs_f64(),
            open_conns: c.open.load(Ordering::Relaxed),
            echoes: c.echoes.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            proxies: pids
                .iter()
                .map(|&p| {
                    (
                        crate::harness::proc_stats::rss_kib(p).unwrap_or(0),
                        fd_count(p).unwrap_or(0),
                    )
                })
                .collect(),
        }
    }

    pub fn to_json(&self, names: &[&str]) -> Value {
        let mut p = serde_json::Map::new();
        for (n, (rss, fds)) in names.iter().zip(&self.proxies) {
            p.insert(n.to_string(), json!({"rss_kib": rss, "fds": fds}));
        }
        json!({"at_s": crate::harness::hist::round2(self.at_s), "open_conns": self.open_conns,
               "echoes": self.echoes, "errors": self.errors, "proxies": p})
    }
}

/// RSS growth of proxy `i` over the hold after warm-up: from the sample at
/// the end of warm-up to the last and to the largest sample of the hold,
/// in percent; None without samples in that window.
pub fn rss_growth(
    samples: &[Sample],
    i: usize,
    warm_s: f64,
    hold_end_s: f64,
) -> Option<(f64, f64, u64, u64, u64)> {
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at_s >= warm_s && s.at_s <= hold_end_s)
        .collect();
    let base = window.first()?.proxies[i].0;
    let last = window.last()?.proxies[i].0;
    let max = window.iter().map(|s| s.proxies[i].0).max()?;
    let pct = |x: u64| (x as f64 - base as f64) * 100.0 / base.max(1) as f64;
    Some((pct(last), pct(max), base, last, max))
}

/// The echo latency summary of every connection.
pub fn latency(c: &Counters) -> Summary {
    c.latency
        .lock()
        .ok()
        .and_then(|l| l.as_ref().map(Summary::of))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at_s: f64, rss: u64) -> Sample {
        Sample {
            at_s,
            open_conns: 0,
            echoes: 0,
            errors: 0,
            proxies: vec![(rss, 0)],
        }
    }

    #[test]
    fn rss_growth_counts_from_the_end_of_warm_up() {
        let samples = [
            s(0.0, 10),
            s(10.0, 100),
            s(20.0, 104),
            s(30.0, 110),
            s(40.0, 102),
            s(50.0, 500),
        ];
        // Warm-up ends at 10 s, the hold at 40 s: 100 → last 102, max 110.
        let (last, max, base, l, m) = rss_growth(&samples, 0, 10.0, 40.0).unwrap();
        assert_eq!((base, l, m), (100, 102, 110));
        assert!((last - 2.0).abs() < 1e-9 && (max - 10.0).abs() < 1e-9);
        assert!(rss_growth(&samples, 0, 60.0, 70.0).is_none());
    }
}
