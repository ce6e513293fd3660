//! Request/response latency: ping-pongs of a fixed size on one established
//! connection to the echo server; and holding many idle connections open.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use trellis_netns::NetNs;

use crate::harness::hist::{self, Summary};
use crate::harness::sys;

#[derive(Debug, Clone, Copy)]
pub struct PingPong {
    /// Measured round trips.
    pub count: usize,
    /// Round trips before measuring (connection setup, caches, TCP state).
    pub warmup: usize,
    /// Message size in bytes, each way.
    pub size: usize,
    /// Upper bound for the whole run.
    pub max_time: Duration,
}

/// A blocking client connection with TCP_NODELAY and 5 s I/O timeouts.
pub fn connect(dst: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
        .with_context(|| format!("connecting to {dst}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// One round trip of `msg`, reading back exactly as many bytes.
pub fn round_trip(s: &mut TcpStream, msg: &[u8], buf: &mut [u8]) -> std::io::Result<()> {
    s.write_all(msg)?;
    s.read_exact(&mut buf[..msg.len()])
}

/// Runs the ping-pong from a thread pinned to `cpu` inside `ns` (blocking
/// sockets, TCP_NODELAY); latency of each round trip in a histogram.
pub fn ping_pong(ns: &NetNs, cpu: usize, dst: SocketAddr, cfg: PingPong) -> Result<Summary> {
    sys::on_pinned_thread("bench-pingpong", cpu, ns, move || {
        let mut s = connect(dst)?;
        let msg = vec![0x5au8; cfg.size];
        let mut buf = vec![0u8; cfg.size];
        let mut h = hist::new_ns();
        let deadline = Instant::now() + cfg.max_time;
        for i in 0..cfg.warmup + cfg.count {
            let t = Instant::now();
            round_trip(&mut s, &msg, &mut buf).with_context(|| format!("round trip {i}"))?;
            let d = t.elapsed();
            if buf != msg {
                bail!("echo returned different bytes");
            }
            if i >= cfg.warmup {
                hist::record(&mut h, d);
            }
            if Instant::now() > deadline {
                bail!("ping-pong took longer than {:?}", cfg.max_time);
            }
        }
        Ok(Summary::of(&h))
    })
}

/// Retries one echo round trip until it works (the mesh is up end to end) or `timeout`.
pub fn wait_echo(ns: &NetNs, cpu: usize, dst: SocketAddr, timeout: Duration) -> Result<()> {
    sys::on_pinned_thread("bench-wait", cpu, ns, move || {
        let deadline = Instant::now() + timeout;
        loop {
            let r = connect(dst).and_then(|mut s| {
                let mut b = [0u8; 1];
                round_trip(&mut s, b"x", &mut b).map_err(Into::into)
            });
            match r {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("no echo from {dst} within {timeout:?}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })
}

/// Opens `n` connections to the echo server, each proven end to end by one
/// 1-byte round trip, and returns them open and idle.
pub fn open_idle(ns: &NetNs, cpu: usize, dst: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    sys::on_pinned_thread("bench-idle", cpu, ns, move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let mut s = connect(dst).with_context(|| format!("idle connection {i}"))?;
            let mut b = [0u8; 1];
            round_trip(&mut s, b"i", &mut b).with_context(|| format!("idle connection {i}"))?;
            v.push(s);
            if Instant::now() > deadline {
                bail!("opening {n} idle connections took over 60s ({i} open)");
            }
        }
        Ok(v)
    })
}
