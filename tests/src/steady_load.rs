//! Steady load through the mesh while something changes under it (an
//! upgrade, a fault): one thread opens a new connection at a fixed pace and
//! does one echo round trip on it; another sends one HTTP/1.1 request at a
//! fixed pace, each on a new connection. Each counts successes and keeps the
//! first failures, with what failed. Long-lived streams are
//! [`crate::counted_stream::CountedStream`]s, started by the caller.
//!
//! Bounded: the threads stop on [`SteadyLoad::finish`], or by themselves
//! after [`MAX_RUN`] or [`MAX_OPS`] each; every socket call has a timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trellis_netns::NetNs;

pub const MAX_RUN: Duration = Duration::from_secs(300);
pub const MAX_OPS: u64 = 50_000;
/// How many failures are kept word for word.
const KEPT_ERRORS: usize = 20;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the load goes: each client pod (its netns) to each target in turn.
pub struct LoadSpec {
    pub clients: Vec<(String, NetNs)>,
    /// Echo servers, for the connection load.
    pub echo: Vec<SocketAddr>,
    /// HTTP servers answering 200, for the request load.
    pub http: Vec<SocketAddr>,
    /// Pause between two operations of one thread.
    pub pace: Duration,
}

#[derive(Default)]
struct Counters {
    conn_ok: AtomicU64,
    conn_failed: AtomicU64,
    http_ok: AtomicU64,
    http_failed: AtomicU64,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Counters {
    fn fail(&self, what: String) {
        let mut e = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if e.len() < KEPT_ERRORS {
            e.push(what);
        }
    }
}

/// What the load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub conn_ok: u64,
    pub conn_failed: u64,
    pub http_ok: u64,
    pub http_failed: u64,
    /// The first failures, each with its time since the start.
    pub errors: Vec<String>,
}

/// Running load.
pub struct SteadyLoad {
    counters: Arc<Counters>,
    threads: Vec<JoinHandle<()>>,
}

impl SteadyLoad {
    pub fn start(spec: LoadSpec) -> std::io::Result<SteadyLoad> {
        let counters = Arc::new(Counters::default());
        let spec = Arc::new(spec);
        let started = Instant::now();
        let mut threads = Vec::new();
        let (s, c) = (spec.clone(), counters.clone());
        threads.push(
            std::thread::Builder::new()
                .name("load-conns".into())
                .spawn(move || run(&s, &c, started, Op::Echo))?,
        );
        let (s, c) = (spec, counters.clone());
        threads.push(
            std::thread::Builder::new()
                .name("load-http".into())
                .spawn(move || run(&s, &c, started, Op::Http))?,
        );
        Ok(SteadyLoad { counters, threads })
    }

    /// Connections that succeeded so far.
    pub fn conn_ok(&self) -> u64 {
        self.counters.conn_ok.load(Ordering::Relaxed)
    }

    /// Requests that succeeded so far.
    pub fn http_ok(&self) -> u64 {
        self.counters.http_ok.load(Ordering::Relaxed)
    }

    /// Waits until both kinds of load made `n` more successes than now.
    pub fn wait_progress(&self, n: u64, timeout: Duration) -> Result<(), crate::WaitTimeout> {
        let (c, h) = (self.conn_ok() + n, self.http_ok() + n);
        crate::wait_until(
            timeout,
            &format!("{n} more connections and requests to succeed"),
            || self.conn_ok() >= c && self.http_ok() >= h,
        )
    }

    /// Stops the load and says what it did.
    pub fn finish(mut self) -> LoadReport {
        self.counters.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                self.counters.fail("a load thread panicked".into());
            }
        }
        let c = &self.counters;
        LoadReport {
            conn_ok: c.conn_ok.load(Ordering::Relaxed),
            conn_failed: c.conn_failed.load(Ordering::Relaxed),
            http_ok: c.http_ok.load(Ordering::Relaxed),
            http_failed: c.http_failed.load(Ordering::Relaxed),
            errors: c.errors.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

impl Drop for SteadyLoad {
    fn drop(&mut self) {
        self.counters.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy)]
enum Op {
    Echo,
    Http,
}

fn run(spec: &LoadSpec, c: &Counters, started: Instant, op: Op) {
    let targets = match op {
        Op::Echo => &spec.echo,
        Op::Http => &spec.http,
    };
    if targets.is_empty() || spec.clients.is_empty() {
        return;
    }
    let mut n = 0u64;
    while !c.stop.load(Ordering::Relaxed) && n < MAX_OPS && started.elapsed() < MAX_RUN {
        let (name, ns) = &spec.clients[n as usize % spec.clients.len()];
        let dst = targets[(n as usize / spec.clients.len()) % targets.len()];
        let result = match op {
            Op::Echo => echo_once(ns, dst, n),
            Op::Http => http_once(ns, dst),
        };
        let (ok, failed) = match op {
            Op::Echo => (&c.conn_ok, &c.conn_failed),
            Op::Http => (&c.http_ok, &c.http_failed),
        };
        match result {
            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                c.fail(format!(
                    "{:?} after {:?}: {name} -> {dst}: {e}",
                    match op {
                        Op::Echo => "connection",
                        Op::Http => "request",
                    },
                    started.elapsed()
                ));
                failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        n += 1;
        std::thread::sleep(spec.pace);
    }
}

fn echo_once(ns: &NetNs, dst: SocketAddr, n: u64) -> Result<(), String> {
    let payload = format!("steady load connection {n}");
    let back = crate::echo_roundtrip(Some(ns), dst, payload.as_bytes(), IO_TIMEOUT)
        .map_err(|e| e.to_string())?;
    if back != payload.as_bytes() {
        return Err(format!(
            "echoed {:?}, sent {payload:?}",
            String::from_utf8_lossy(&back)
        ));
    }
    Ok(())
}

fn http_once(ns: &NetNs, dst: SocketAddr) -> Result<(), String> {
    let reply = crate::l7kit::http1_request(Some(ns), dst, "GET", "/", &[], b"")
        .map_err(|e| e.to_string())?;
    if reply.status != 200 {
        return Err(format!("status {}: {}", reply.status, reply.body));
    }
    Ok(())
}
