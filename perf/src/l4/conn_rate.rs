//! New connections per second: each request on a fresh TCP connection
//! (connect, `GET` with `Connection: close`, read the response until the
//! server closes, close), `concurrency` of them in flight, for a fixed time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use trellis_netns::NetNs;

use crate::harness::hist::{self, Summary};
use crate::harness::sys;
use crate::l4::http_load::read_response;

#[derive(Debug, Clone, Copy)]
pub struct ConnRateConfig {
    pub concurrency: usize,
    pub duration: Duration,
    /// For one whole connection (connect to close).
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct ConnRateResult {
    pub ok: u64,
    pub errors: u64,
    /// Connections completed inside the window, per second of the window.
    pub conns_per_s: f64,
    /// Connections that completed after the window closed (started inside it
    /// but slow, e.g. a SYN retransmitted after 1 s); counted in `ok`, not in the rate.
    pub late: u64,
    /// Seconds from start until the last connection finished.
    pub wall_s: f64,
    /// Connect to close, per connection.
    pub latency: Summary,
    /// Error message -> count.
    pub error_kinds: BTreeMap<String, u64>,
}

impl ConnRateResult {
    pub fn to_json(&self) -> Value {
        json!({
            "ok": self.ok,
            "errors": self.errors,
            "conns_per_s": hist::round2(self.conns_per_s),
            "late": self.late,
            "wall_s": hist::round2(self.wall_s),
            "latency": self.latency.to_json(),
            "error_kinds": self.error_kinds,
        })
    }
}

/// Runs the load from a thread pinned to `cpu` inside `ns`.
pub fn run(ns: &NetNs, cpu: usize, dst: SocketAddr, cfg: ConnRateConfig) -> Result<ConnRateResult> {
    sys::on_pinned_thread("bench-connrate", cpu, ns, move || {
        sys::runtime()?.block_on(run_async(dst, cfg))
    })
}

async fn one_conn(dst: SocketAddr, req: &[u8], buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut s = TcpStream::connect(dst).await?;
    s.set_nodelay(true)?;
    s.write_all(req).await?;
    let r = read_response(&mut s, buf, true).await?;
    if r.status != 200 {
        return Err(std::io::Error::other(format!("HTTP {}", r.status)));
    }
    Ok(())
}

async fn run_async(dst: SocketAddr, cfg: ConnRateConfig) -> Result<ConnRateResult> {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {dst}\r\nUser-Agent: trellis-bench\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    let start = Instant::now();
    let end = start + cfg.duration;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..cfg.concurrency.max(1) {
        let req = req.clone();
        set.spawn(async move {
            let mut h: Histogram<u64> = hist::new_ns();
            let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
            let (mut ok, mut errors, mut late) = (0u64, 0u64, 0u64);
            let mut buf = Vec::with_capacity(1024);
            while Instant::now() < end {
                let t = Instant::now();
                match tokio::time::timeout(cfg.timeout, one_conn(dst, &req, &mut buf)).await {
                    Ok(Ok(())) => {
                        ok += 1;
                        if Instant::now() > end {
                            late += 1;
                        }
                        hist::record(&mut h, t.elapsed());
                    }
                    Ok(Err(e)) => {
                        errors += 1;
                        *kinds.entry(e.to_string()).or_default() += 1;
                    }
                    Err(_) => {
                        errors += 1;
                        *kinds.entry("timed out".into()).or_default() += 1;
                    }
                }
            }
            (h, ok, errors, late, kinds)
        });
    }
    let mut h = hist::new_ns();
    let (mut ok, mut errors, mut late) = (0, 0, 0);
    let mut kinds = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        let (th, tok, terr, tlate, tk) = r?;
        h.add(&th).ok();
        ok += tok;
        late += tlate;
        errors += terr;
        for (k, v) in tk {
            *kinds.entry(k).or_default() += v;
        }
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(ConnRateResult {
        ok,
        errors,
        conns_per_s: (ok - late) as f64 / cfg.duration.as_secs_f64(),
        late,
        wall_s: wall,
        latency: Summary::of(&h),
        error_kinds: kinds,
    })
}
