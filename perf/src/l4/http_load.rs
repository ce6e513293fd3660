//! Open-loop HTTP/1.1 keep-alive load at a fixed rate.
//!
//! Request `i` (over all connections) is scheduled at `t0 + i / rate` and
//! assigned to connection `i % conns`. A connection sends its next request at
//! its scheduled time, or at once if it is still busy with the previous one,
//! and the latency is taken from the scheduled time to the end of the
//! response. So a stall delays and counts against every request scheduled
//! during it (no coordinated omission), as wrk2 does.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use trellis_netns::NetNs;

use crate::harness::hist::{self, Summary};
use crate::harness::sys;

/// What one HTTP response looked like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body_len: usize,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn invalid(msg: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

fn eof(msg: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, msg)
}

/// Parses a response head once `buf` holds all of it: (body start, status, Content-Length).
fn parse_head(buf: &[u8]) -> std::io::Result<Option<(usize, u16, usize)>> {
    let Some(p) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err(invalid("response head too long"));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..p]).map_err(|_| invalid("non-UTF-8 response head"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .ok_or_else(|| invalid("no Content-Length"))?;
    Ok(Some((p + 4, status, len)))
}

/// Reads one response with a Content-Length body. With `to_eof`, keeps
/// reading until the server closes (Connection: close). `buf` is scratch.
pub async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    to_eof: bool,
) -> std::io::Result<Response> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let (head_end, status, len) = loop {
        if let Some(h) = parse_head(buf)? {
            break h;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(eof("closed before the response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(eof("closed inside the body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if buf.len() > head_end + len {
        return Err(invalid("bytes after the body"));
    }
    if to_eof && s.read(&mut chunk).await? != 0 {
        return Err(invalid("bytes after the body"));
    }
    Ok(Response {
        status,
        body_len: len,
    })
}

/// [`read_response`] on a blocking stream, without `to_eof`.
pub fn read_response_blocking<S: Read>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<Response> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let (head_end, status, len) = loop {
        if let Some(h) = parse_head(buf)? {
            break h;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(eof("closed before the response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(eof("closed inside the body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if buf.len() > head_end + len {
        return Err(invalid("bytes after the body"));
    }
    Ok(Response {
        status,
        body_len: len,
    })
}

#[derive(Debug, Clone, Copy)]
pub struct RateConfig {
    /// Requests per second, over all connections.
    pub rate: f64,
    pub duration: Duration,
    pub conns: usize,
    /// Per request; a timed-out connection is replaced.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct RateResult {
    pub target_rps: f64,
    pub scheduled: u64,
    pub ok: u64,
    pub errors: u64,
    pub achieved_rps: f64,
    pub latency: Summary,
}

impl RateResult {
    pub fn to_json(&self) -> Value {
        json!({
            "target_rps": self.target_rps,
            "scheduled": self.scheduled,
            "ok": self.ok,
            "errors": self.errors,
            "achieved_rps": hist::round2(self.achieved_rps),
            "latency": self.latency.to_json(),
        })
    }
}

fn request(host: SocketAddr) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: trellis-bench\r\n\r\n").into_bytes()
}

fn connect(dst: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&dst, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

fn one_request(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> std::io::Result<u16> {
    s.write_all(req)?;
    Ok(read_response_blocking(s, buf)?.status)
}

struct ConnOutcome {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    last_done: Instant,
}

/// Runs the fixed-rate load from threads pinned to `cpu` inside `ns`: one
/// blocking thread per connection, each sleeping (hrtimer, 1 µs slack) until
/// its next scheduled send. Blocking threads rather than tokio, whose timer
/// has a 1 ms granularity that would add up to 1 ms to every measurement.
pub fn fixed_rate(ns: &NetNs, cpu: usize, dst: SocketAddr, cfg: RateConfig) -> Result<RateResult> {
    sys::on_pinned_thread("bench-http", cpu, ns, move || fixed_rate_threads(dst, cfg))
}

/// Requests each connection sends, checked, before the schedule starts.
pub const WARMUP_PER_CONN: u64 = 10;

fn fixed_rate_threads(dst: SocketAddr, cfg: RateConfig) -> Result<RateResult> {
    let req = request(dst);
    let total = (cfg.rate * cfg.duration.as_secs_f64()).round() as u64;
    let conns = cfg.conns.max(1) as u64;
    // Open and warm every connection before the schedule starts.
    let mut streams = Vec::new();
    let mut buf = Vec::new();
    for _ in 0..conns {
        let mut s = connect(dst, cfg.timeout)?;
        for _ in 0..WARMUP_PER_CONN {
            let status = one_request(&mut s, &req, &mut buf)?;
            if status != 200 {
                bail!("warm-up request got HTTP {status}");
            }
        }
        streams.push(s);
    }
    let t0 = Instant::now() + Duration::from_millis(20);
    // Hard stop: the schedule plus room for the tail; whatever is unsent by then is an error.
    let hard_stop = t0 + cfg.duration + Duration::from_secs(10);
    // Threads started here begin in this thread's netns and CPU mask (the
    // pod's, and the load CPU), so reconnects land in the pod too.
    let outcomes: Vec<ConnOutcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(k, s)| {
                let req = &req;
                scope.spawn(move || {
                    sys::set_timer_slack(1_000);
                    let mut out = ConnOutcome {
                        hist: hist::new_ns(),
                        ok: 0,
                        errors: 0,
                        last_done: t0,
                    };
                    let mut stream = Some(s);
                    let mut buf = Vec::with_capacity(1024);
                    let mut i = k as u64;
                    while i < total {
                        let sched = t0 + Duration::from_secs_f64(i as f64 / cfg.rate);
                        i += conns;
                        let now = Instant::now();
                        if now > hard_stop {
                            out.errors += 1;
                            continue;
                        }
                        if sched > now {
                            std::thread::sleep(sched - now);
                        }
                        let result = (|| {
                            if stream.is_none() {
                                stream = Some(connect(dst, cfg.timeout)?);
                            }
                            let s = stream.as_mut().expect("just set");
                            one_request(s, req, &mut buf)
                        })();
                        let done = Instant::now();
                        match result {
                            Ok(200) => {
                                out.ok += 1;
                                hist::record(&mut out.hist, done - sched);
                                out.last_done = done;
                            }
                            _ => {
                                out.errors += 1;
                                stream = None;
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join())
            .collect::<Result<Vec<_>, _>>()
    })
    .map_err(|_| anyhow::anyhow!("an HTTP load thread panicked"))?;
    let mut h = hist::new_ns();
    let (mut ok, mut errors, mut last) = (0, 0, t0);
    for o in outcomes {
        h.add(&o.hist).ok();
        ok += o.ok;
        errors += o.errors;
        last = last.max(o.last_done);
    }
    let wall = (last - t0)
        .as_secs_f64()
        .max(cfg.duration.as_secs_f64() * 0.5);
    Ok(RateResult {
        target_rps: cfg.rate,
        scheduled: total,
        ok,
        errors,
        achieved_rps: ok as f64 / wall,
        latency: Summary::of(&h),
    })
}
