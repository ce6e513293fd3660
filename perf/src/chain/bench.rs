//! Running the chain: for each column, its mesh up once; for each depth,
//! the chain's services started, one checked call down the whole chain,
//! then the open-loop load into the head with the mesh's CPU time around it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use trellis_e2e::{cluster::http_in, wait_for};

use super::columns::{Binaries, Column, MeshUp, MESH_READY};
use super::report::Cell;
use super::service::{expected_body, start_chain, Hop, HopSpec};
use super::topo::{ChainTopo, MAX_DEPTH};
use crate::harness::proc_stats::CpuMeter;
use crate::harness::run::say;
use crate::l4::http_load::{self, RateConfig, WARMUP_PER_CONN};

/// The load and what it runs on.
#[derive(Debug, Clone)]
pub struct ChainOpts {
    pub depths: Vec<usize>,
    pub columns: Vec<Column>,
    /// Requests per second into the chain's head.
    pub rate: f64,
    pub duration: Duration,
    pub conns: usize,
    /// The client's CPU.
    pub load_cpu: usize,
    /// The services' and every mesh process's CPU.
    pub mesh_cpu: usize,
}

/// `1,3,5`: each 1..=[`MAX_DEPTH`], order kept.
pub fn parse_depths(list: &str) -> Result<Vec<usize>> {
    crate::sidecars::mesh_size::parse_counts("--chain-depths", list, MAX_DEPTH, "services")
}

/// Starts a chain of `depth` services for `col` (last first).
pub fn start_services(ct: &ChainTopo, col: Column, depth: usize, cpu: usize) -> Result<Vec<Hop>> {
    let how = col.addressing();
    let hops = ct
        .pods(depth)
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            Ok((
                pod.netns()?,
                HopSpec {
                    name: pod.name.clone(),
                    listen: ct.target(i, super::topo::Addressing::Pod),
                    next: (i + 1 < depth).then(|| ct.target(i + 1, how)),
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    start_chain(&hops, cpu)
}

/// Waits until one call from the client pod into the head of a chain of
/// `depth` comes back 200 with every service's name in order.
pub fn check_chain(ct: &ChainTopo, col: Column, depth: usize) -> Result<()> {
    let head = ct.target(0, col.addressing());
    let names: Vec<String> = ct.pods(depth).iter().map(|p| p.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let want = expected_body(&names);
    let ns = ct.bt.client.netns()?;
    let mut last = String::new();
    wait_for(
        MESH_READY,
        &format!("a call down the {depth}-service chain ({})", col.name()),
        || match http_in(Some(&ns), head, "GET", "/chain", "") {
            Ok((200, body)) if body == want => Some(()),
            Ok((status, body)) => {
                last = format!(
                    "HTTP {status}: {}",
                    body.chars().take(300).collect::<String>()
                );
                None
            }
            Err(e) => {
                last = format!("{e:#}");
                None
            }
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}; last answer: {last}"))
}

/// Every column of `o`, every depth: the cells in column-major order.
pub fn run(ct: &ChainTopo, bins: &Binaries, o: &ChainOpts) -> Result<Vec<Cell>> {
    let mut cells = Vec::new();
    let client_ns = ct.bt.client.netns()?;
    for &col in &o.columns {
        say(format!("chain: {}: starting the mesh", col.name()));
        let mut mesh = MeshUp::start(col, ct, bins, o.mesh_cpu)
            .with_context(|| format!("starting the {} column", col.name()))?;
        for &depth in &o.depths {
            let pids = mesh.pids_on_path(ct, depth);
            let hops = start_services(ct, col, depth, o.mesh_cpu)?;
            check_chain(ct, col, depth)
                .with_context(|| format!("{}, {depth} services", col.name()))?;
            crate::harness::run::settle_within(Duration::from_secs(5));
            let head: SocketAddr = ct.target(0, col.addressing());
            let meter = CpuMeter::start(&pids)?;
            let r = http_load::fixed_rate(
                &client_ns,
                o.load_cpu,
                head,
                RateConfig {
                    rate: o.rate,
                    duration: o.duration,
                    conns: o.conns,
                    timeout: Duration::from_secs(2),
                },
            )
            .with_context(|| format!("{}, {depth} services: the load", col.name()))?;
            let cpu = meter.elapsed()?;
            mesh.check_alive()?;
            let served = hops.first().map(Hop::served).unwrap_or(0);
            if served < r.ok {
                bail!(
                    "{}, {depth} services: the head served {served} requests but the client counted {} answers",
                    col.name(),
                    r.ok
                );
            }
            drop(hops);
            let cell = Cell {
                column: col,
                depth,
                requests: r.ok + WARMUP_PER_CONN * o.conns as u64,
                mesh_cpu_s: (col != Column::Direct).then_some(cpu),
                procs: pids.len(),
                http: r,
            };
            say(format!(
                "chain: {} x{depth}: {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, {} errors, mesh CPU {} s/1k req",
                col.name(),
                cell.http.achieved_rps,
                cell.http.latency.p50_us,
                cell.http.latency.p99_us,
                cell.http.latency.p999_us,
                cell.http.errors,
                cell.cpu_s_per_1k().map(|c| format!("{c:.3}")).unwrap_or_else(|| "–".into()),
            ));
            cells.push(cell);
        }
        let deepest = o.depths.iter().copied().max().unwrap_or(1);
        mesh.check_carried(ct, deepest)?;
    }
    Ok(cells)
}
