//! Load at a fixed rate (open loop) and at the maximum rate (closed loop),
//! with the CPU time of the processes on the path sampled around exactly the
//! measured window.
//!
//! **Fixed rate, open loop.** Request `i` (over all connections) is due at
//! `t0 + i / rate` and belongs to connection `i % conns`. Each connection is
//! a thread pinned to the load CPU with its own current-thread runtime: it
//! sleeps on an hrtimer (1 µs slack) until the request is due, then drives
//! the call on its runtime. Latency is taken from the *due* time, so a stall
//! counts against every request due during it (no coordinated omission, as
//! wrk2). Tokio's own timer ticks in milliseconds, too coarse to pace.
//!
//! **Maximum rate, closed loop.** A fixed number of requests in flight
//! (`concurrency`), spread over `conns` connections, each task sending its
//! next request as soon as the previous answer is read. One thread, one
//! current-thread runtime. After a warm-up, the completed requests and the
//! CPU times are counted over the same window.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use trellis_netns::NetNs;

use super::client::{Client, Target};
use crate::harness::hist::{self, round2, Summary};
use crate::harness::proc_stats::{cpu_seconds_by_pid, cpu_seconds_sum};
use crate::harness::sys;

/// Which processes' CPU time a run reports.
#[derive(Clone, Debug, Default)]
pub struct Watch {
    /// The proxy under test (nginx, or the waypoint).
    pub proxy: Vec<u32>,
    /// The other proxies on the path (the node proxies), reported apart.
    pub mesh: Vec<u32>,
}

#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    proxy: f64,
    mesh: f64,
    /// This process: the load generator and the upstream servers.
    bench: f64,
    /// Every other process on the machine, by PID.
    others: HashMap<u32, f64>,
}

impl Watch {
    fn sample(&self) -> Sample {
        // A process that vanished reads as 0 and shows up as a huge negative
        // delta, which the liveness checks around each phase turn into an error.
        let bench = std::process::id();
        let mut others = cpu_seconds_by_pid();
        for pid in self.proxy.iter().chain(&self.mesh).chain([&bench]) {
            others.remove(pid);
        }
        Sample {
            at: Instant::now(),
            proxy: cpu_seconds_sum(&self.proxy).unwrap_or(0.0),
            mesh: cpu_seconds_sum(&self.mesh).unwrap_or(0.0),
            bench: cpu_seconds_sum(&[bench]).unwrap_or(0.0),
            others,
        }
    }
}

/// CPU used during a measured window, all from `/proc/<pid>/stat`
/// (utime + stime, which the kernel scales to the scheduler's exact run
/// time; `/proc/stat`'s per-CPU busy time is tick-sampled and unreliable
/// for a mostly idle CPU, so it is not used).
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub wall_s: f64,
    /// The proxy under test.
    pub proxy_cpu_s: f64,
    /// The node proxies (0 on the nginx path).
    pub mesh_cpu_s: f64,
    /// This process: the load generator and the upstream servers.
    pub bench_cpu_s: f64,
    /// Every other process (other people's builds and tests, kernel
    /// threads): well above zero means the numbers were disturbed. Processes
    /// that exited during the window are missed.
    pub others_cpu_s: f64,
}

impl Usage {
    fn between(a: &Sample, b: &Sample) -> Usage {
        let others = b
            .others
            .iter()
            .map(|(pid, end)| (end - a.others.get(pid).copied().unwrap_or(0.0)).max(0.0))
            .sum();
        Usage {
            wall_s: (b.at - a.at).as_secs_f64(),
            proxy_cpu_s: b.proxy - a.proxy,
            mesh_cpu_s: b.mesh - a.mesh,
            bench_cpu_s: b.bench - a.bench,
            others_cpu_s: others,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "wall_s": round3(self.wall_s),
            "proxy_cpu_s": round3(self.proxy_cpu_s),
            "node_proxies_cpu_s": round3(self.mesh_cpu_s),
            "load_and_servers_cpu_s": round3(self.bench_cpu_s),
            "others_cpu_s": round3(self.others_cpu_s),
        })
    }

    /// Share of one CPU over the window.
    pub fn pct(&self, cpu_s: f64) -> f64 {
        100.0 * cpu_s / self.wall_s.max(1e-9)
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// What one load run measured.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    /// Requests due (fixed rate), or completed in the window (max rate).
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    /// ok / window.
    pub rps: f64,
    pub latency: Summary,
    pub usage: Usage,
    /// Requests the upstream servers saw during the run (warm-up included),
    /// and how many of them carried the proxy route's header.
    pub upstream_seen: u64,
    pub upstream_routed: u64,
    /// The latencies themselves, for pooling repetitions.
    pub hist: Option<Histogram<u64>>,
    /// Each repetition's own figures when this result pools several.
    pub runs: Vec<RunBrief>,
}

/// One repetition's headline figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunBrief {
    pub rps: f64,
    pub per_proxy_cpu_s: f64,
    pub p99_us: f64,
}

impl LoadResult {
    /// Several repetitions of the same run as one: counts, CPU and wall time
    /// summed (so rates are total requests / total time or CPU), latency
    /// histograms merged; each repetition's headline figures kept in `runs`.
    pub fn pool(reps: &[LoadResult]) -> LoadResult {
        let mut r = LoadResult::default();
        let mut h = hist::new_ns();
        for x in reps {
            r.sent += x.sent;
            r.ok += x.ok;
            r.errors += x.errors;
            for (k, v) in &x.error_kinds {
                *r.error_kinds.entry(k.clone()).or_default() += v;
            }
            r.usage.wall_s += x.usage.wall_s;
            r.usage.proxy_cpu_s += x.usage.proxy_cpu_s;
            r.usage.mesh_cpu_s += x.usage.mesh_cpu_s;
            r.usage.bench_cpu_s += x.usage.bench_cpu_s;
            r.usage.others_cpu_s += x.usage.others_cpu_s;
            r.upstream_seen += x.upstream_seen;
            r.upstream_routed += x.upstream_routed;
            if let Some(xh) = &x.hist {
                h.add(xh).ok();
            }
            r.runs.push(RunBrief {
                rps: x.rps,
                per_proxy_cpu_s: x.per_proxy_cpu_s(),
                p99_us: x.latency.p99_us,
            });
        }
        // Each repetition's rate over its own window, averaged by time.
        r.rps = reps.iter().map(|x| x.rps * x.usage.wall_s).sum::<f64>() / r.usage.wall_s.max(1e-9);
        r.latency = Summary::of(&h);
        r.hist = Some(h);
        r
    }

    /// Requests answered per CPU-second of the proxy under test.
    pub fn per_proxy_cpu_s(&self) -> f64 {
        if self.usage.proxy_cpu_s > 0.0 {
            self.ok as f64 / self.usage.proxy_cpu_s
        } else {
            0.0
        }
    }

    /// CPU-µs of the proxy under test per request.
    pub fn proxy_us_per_req(&self) -> f64 {
        self.usage.proxy_cpu_s * 1e6 / self.ok.max(1) as f64
    }

    pub fn mesh_us_per_req(&self) -> f64 {
        self.usage.mesh_cpu_s * 1e6 / self.ok.max(1) as f64
    }

    pub fn to_json(&self) -> Value {
        json!({
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "rps": round2(self.rps),
            "latency": self.latency.to_json(),
            "usage": self.usage.to_json(),
            "requests_per_proxy_cpu_s": round2(self.per_proxy_cpu_s()),
            "proxy_cpu_us_per_request": round2(self.proxy_us_per_req()),
            "node_proxies_cpu_us_per_request": round2(self.mesh_us_per_req()),
            "upstream_seen": self.upstream_seen,
            "upstream_routed": self.upstream_routed,
            "repetitions": self.runs.iter().map(|b| json!({
                "rps": round2(b.rps),
                "requests_per_proxy_cpu_s": round2(b.per_proxy_cpu_s),
                "p99_us": round2(b.p99_us),
            })).collect::<Vec<_>>(),
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RateConfig {
    /// Requests per second over all connections.
    pub rate: f64,
    pub duration: Duration,
    pub conns: usize,
    /// Calls per connection before the schedule starts (fills the proxy's pools).
    pub warmup: usize,
    /// Per request; a failed connection is replaced.
    pub timeout: Duration,
}

struct ConnOutcome {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    last_done: Instant,
}

fn add_error(m: &mut BTreeMap<String, u64>, kind: String) {
    *m.entry(kind).or_default() += 1;
}

/// The open-loop fixed-rate run (see the module doc), from `ns`, threads on `cpu`.
pub fn fixed_rate(
    ns: &NetNs,
    cpu: usize,
    target: &Target,
    cfg: RateConfig,
    watch: &Watch,
) -> Result<LoadResult> {
    let total = (cfg.rate * cfg.duration.as_secs_f64()).round() as u64;
    let conns = cfg.conns.max(1);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (outs, t0, start, end) = std::thread::scope(|scope| -> Result<_> {
        let mut handles = Vec::new();
        let mut starts = Vec::new();
        for k in 0..conns {
            let (start_tx, start_rx) = mpsc::channel::<Option<Instant>>();
            starts.push(start_tx);
            let ns = ns.try_clone().context("cloning the client netns handle")?;
            let ready = ready_tx.clone();
            let target = target.clone();
            let shape = Shape {
                k: k as u64,
                conns: conns as u64,
                total,
            };
            handles.push(
                scope.spawn(move || conn_thread(shape, cpu, &ns, &target, cfg, &ready, &start_rx)),
            );
        }
        drop(ready_tx);
        let mut failed = None;
        for _ in 0..conns {
            match ready_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed = Some(e),
                Err(_) => failed = Some("a load thread did not get ready within 30 s".into()),
            }
        }
        let t0 = Instant::now() + Duration::from_millis(50);
        for s in &starts {
            let _ = s.send(failed.is_none().then_some(t0));
        }
        let start = (failed.is_none()).then(|| {
            std::thread::sleep(t0.saturating_duration_since(Instant::now()));
            watch.sample()
        });
        let outs: Vec<Option<ConnOutcome>> = handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a load thread panicked")))
            .collect::<Result<_>>()?;
        let end = watch.sample();
        match (failed, start) {
            (None, Some(start)) => Ok((outs, t0, start, end)),
            (failed, _) => bail!("warm-up failed: {}", failed.unwrap_or_default()),
        }
    })?;
    let mut h = hist::new_ns();
    let mut r = LoadResult {
        sent: total,
        ..Default::default()
    };
    let mut last = t0;
    for o in outs.into_iter().flatten() {
        h.add(&o.hist).ok();
        r.ok += o.ok;
        for (k, v) in o.errors {
            r.errors += v;
            *r.error_kinds.entry(k).or_default() += v;
        }
        last = last.max(o.last_done);
    }
    let wall = (last - t0)
        .as_secs_f64()
        .max(cfg.duration.as_secs_f64() * 0.5);
    r.rps = r.ok as f64 / wall;
    r.latency = Summary::of(&h);
    r.hist = Some(h);
    r.usage = Usage::between(&start, &end);
    Ok(r)
}

/// Which requests of the schedule a connection sends: `k`, `k + conns`, ... below `total`.
#[derive(Clone, Copy, Debug)]
struct Shape {
    k: u64,
    conns: u64,
    total: u64,
}

#[allow(clippy::too_many_arguments)]
fn conn_thread(
    shape: Shape,
    cpu: usize,
    ns: &NetNs,
    target: &Target,
    cfg: RateConfig,
    ready: &mpsc::Sender<Result<(), String>>,
    start: &mpsc::Receiver<Option<Instant>>,
) -> Option<ConnOutcome> {
    let setup = || -> Result<(tokio::runtime::Runtime, Client), String> {
        sys::pin_current_thread(cpu).map_err(|e| format!("pinning to CPU {cpu}: {e}"))?;
        sys::set_timer_slack(1_000);
        let rt = sys::runtime().map_err(|e| e.to_string())?;
        let client = rt.block_on(async {
            let mut c = tokio::time::timeout(cfg.timeout, Client::connect(ns, target))
                .await
                .map_err(|_| format!("connecting to {} timed out", target.dst))?
                .map_err(|e| format!("connecting to {}: {e}", target.dst))?;
            for _ in 0..cfg.warmup {
                tokio::time::timeout(cfg.timeout, c.call())
                    .await
                    .map_err(|_| "warm-up call timed out".to_string())?
                    .map_err(|e| format!("warm-up call to {}: {e}", target.dst))?;
            }
            Ok::<_, String>(c)
        })?;
        Ok((rt, client))
    };
    let (rt, client) = match setup() {
        Ok(x) => {
            let _ = ready.send(Ok(()));
            x
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return None;
        }
    };
    let t0 = start.recv().ok().flatten()?;
    let mut out = ConnOutcome {
        hist: hist::new_ns(),
        ok: 0,
        errors: BTreeMap::new(),
        last_done: t0,
    };
    // Whatever is not sent by then is an error: bounds the run in time.
    let hard_stop = t0 + cfg.duration + Duration::from_secs(10);
    let mut client = Some(client);
    let mut i = shape.k;
    while i < shape.total {
        let due = t0 + Duration::from_secs_f64(i as f64 / cfg.rate);
        i += shape.conns;
        let now = Instant::now();
        if now > hard_stop {
            add_error(&mut out.errors, "not sent before the hard stop".into());
            continue;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        let result = rt.block_on(async {
            let c = match client.as_mut() {
                Some(c) => c,
                None => client.insert(Client::connect(ns, target).await?),
            };
            match tokio::time::timeout(cfg.timeout, c.call()).await {
                Ok(r) => r,
                Err(_) => Err(super::client::CallError::Timeout),
            }
        });
        let done = Instant::now();
        match result {
            Ok(()) => {
                out.ok += 1;
                hist::record(&mut out.hist, done - due);
                out.last_done = done;
            }
            Err(e) => {
                add_error(&mut out.errors, e.kind());
                client = None;
            }
        }
    }
    Some(out)
}

#[derive(Clone, Copy, Debug)]
pub struct MaxConfig {
    /// Requests in flight.
    pub concurrency: usize,
    /// Connections they share (HTTP/2, gRPC); HTTP/1.1 uses one connection
    /// per request in flight.
    pub conns: usize,
    /// Load before the measured window (fills pools, reaches steady state).
    pub warmup: Duration,
    pub duration: Duration,
    /// Per request; a failed connection is replaced.
    pub timeout: Duration,
    /// Most requests sent, whatever the time.
    pub max_requests: u64,
}

const WARMING: u8 = 0;
const MEASURING: u8 = 1;
const DONE: u8 = 2;

/// The closed-loop maximum-rate run (see the module doc), from `ns`, on `cpu`.
pub fn max_rate(
    ns: &NetNs,
    cpu: usize,
    target: &Target,
    cfg: MaxConfig,
    watch: &Watch,
) -> Result<LoadResult> {
    let inner = ns.try_clone().context("cloning the client netns handle")?;
    let target = target.clone();
    let watch = watch.clone();
    sys::on_pinned_thread("bench-max", cpu, ns, move || {
        sys::runtime()?.block_on(closed_loop(inner, target, cfg, watch))
    })
}

struct TaskOutcome {
    hist: Histogram<u64>,
    ok: u64,
    sent: u64,
    errors: BTreeMap<String, u64>,
}

async fn closed_loop(
    ns: NetNs,
    target: Target,
    cfg: MaxConfig,
    watch: Watch,
) -> Result<LoadResult> {
    let concurrency = cfg.concurrency.max(1);
    let conns = if target.proto.multiplexed() {
        cfg.conns.clamp(1, concurrency)
    } else {
        concurrency
    };
    let mut clients = Vec::new();
    for _ in 0..conns {
        let c = tokio::time::timeout(cfg.timeout, Client::connect(&ns, &target))
            .await
            .map_err(|_| anyhow!("connecting to {} timed out", target.dst))?
            .with_context(|| format!("connecting to {}", target.dst))?;
        clients.push(c);
    }
    let ns = Arc::new(ns);
    let state = Arc::new(AtomicU8::new(WARMING));
    let budget = Arc::new(AtomicU64::new(cfg.max_requests));
    // Requests beyond the first `conns` share a connection.
    for i in conns..concurrency {
        let shared = clients[i % conns]
            .share()
            .ok_or_else(|| anyhow!("an HTTP/1.1 connection cannot be shared"))?;
        clients.push(shared);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(one_task(
                client,
                ns.clone(),
                target.clone(),
                cfg.timeout,
                state.clone(),
                budget.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(cfg.warmup).await;
    state.store(MEASURING, Ordering::SeqCst);
    let start = watch.sample();
    tokio::time::sleep(cfg.duration).await;
    let end = watch.sample();
    state.store(DONE, Ordering::SeqCst);
    let mut h = hist::new_ns();
    let mut r = LoadResult::default();
    for t in tasks {
        let o = tokio::time::timeout(cfg.timeout + Duration::from_secs(1), t)
            .await
            .map_err(|_| anyhow!("a load task did not finish after the window"))?
            .map_err(|e| anyhow!("a load task failed: {e}"))?;
        h.add(&o.hist).ok();
        r.ok += o.ok;
        r.sent += o.sent;
        for (k, v) in o.errors {
            r.errors += v;
            *r.error_kinds.entry(k).or_default() += v;
        }
    }
    r.usage = Usage::between(&start, &end);
    r.rps = r.ok as f64 / r.usage.wall_s.max(1e-9);
    r.latency = Summary::of(&h);
    r.hist = Some(h);
    Ok(r)
}

async fn one_task(
    client: Client,
    ns: Arc<NetNs>,
    target: Target,
    timeout: Duration,
    state: Arc<AtomicU8>,
    budget: Arc<AtomicU64>,
) -> TaskOutcome {
    let mut out = TaskOutcome {
        hist: hist::new_ns(),
        ok: 0,
        sent: 0,
        errors: BTreeMap::new(),
    };
    let mut client = Some(client);
    while state.load(Ordering::Relaxed) != DONE {
        if budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
            .is_err()
        {
            break;
        }
        let t = Instant::now();
        let result = async {
            let c = match client.as_mut() {
                Some(c) => c,
                None => client.insert(Client::connect(&ns, &target).await?),
            };
            match tokio::time::timeout(timeout, c.call()).await {
                Ok(r) => r,
                Err(_) => Err(super::client::CallError::Timeout),
            }
        }
        .await;
        // Counted when it completes inside the window, like the CPU time.
        let in_window = state.load(Ordering::Relaxed) == MEASURING;
        if in_window {
            out.sent += 1;
        }
        match result {
            Ok(()) if in_window => {
                out.ok += 1;
                hist::record(&mut out.hist, t.elapsed());
            }
            Ok(()) => {}
            Err(e) => {
                if in_window {
                    add_error(&mut out.errors, e.kind());
                }
                client = None;
            }
        }
    }
    out
}

/// One checked call from `ns`, retried until it succeeds or `within` has
/// passed (a path that was just set up may need a moment).
pub fn check(ns: &NetNs, target: &Target, within: Duration) -> Result<()> {
    let rt = sys::runtime()?;
    let deadline = Instant::now() + within;
    loop {
        let call = async {
            let mut c = Client::connect(ns, target).await?;
            c.call().await
        };
        let r = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), call)
                .await
                .unwrap_or(Err(super::client::CallError::Timeout))
        });
        match r {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                bail!(
                    "{} call to {} failed: {e}",
                    target.proto.label(),
                    target.dst
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
