//! `--only ztunnel` and the ztunnel column: Trellis ambient against Istio's
//! ztunnel in interleaved rounds, with issue 12's figures.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::harness::proc_stats;
use crate::harness::run::{self, git_rev, read_trim, say, write_results};
use crate::harness::servers::{EchoServer, Iperf3Server, Nginx};
use crate::harness::topo::{BenchTopo, NodeProxy};
use crate::l4::latency;
use crate::l4::report::{PathResults, ProxyCosts};
use crate::ztunnel::versus::{self, Side};
use crate::ztunnel::{config as zconfig, ZtunnelMesh, ZtunnelPair};
use crate::{LOADGEN_CPU, SERVER_CPU};
use anyhow::{bail, Context, Result};
use serde_json::json;

use super::*;

/// One round of `--only ztunnel`: direct, then Trellis's node proxies,
/// then ztunnel, on the same pods.
pub(super) struct Round {
    pub(super) direct: PathResults,
    pub(super) trellis: (PathResults, ProxyCosts),
    pub(super) ztunnel: (PathResults, ProxyCosts),
}

/// Trellis's two node proxies on the L4 pods: idle RSS, the four load
/// phases (after checking that the traffic goes through them), RSS per
/// idle connection.
pub(super) fn trellis_l4(
    o: &Opts,
    bt: &BenchTopo,
    proxy_bin: &std::path::Path,
) -> Result<(PathResults, ProxyCosts)> {
    let mut proxies = vec![
        bt.start_proxy(proxy_bin, "node1", &bt.client, SERVER_CPU)?,
        bt.start_proxy(proxy_bin, "node2", &bt.server, SERVER_CPU)?,
    ];
    std::thread::sleep(Duration::from_secs(1));
    let mut costs = ProxyCosts::default();
    for p in &proxies {
        costs.idle_rss_kib.push((p.node.clone(), rss_of(p)?));
    }
    let client_ns = bt.client.netns()?;
    let echo = SocketAddr::new(bt.server.ip, ECHO_PORT);
    latency::wait_echo(&client_ns, LOADGEN_CPU, echo, Duration::from_secs(15))?;
    check_meshed(&proxies)?;
    let results = run_path(o, bt, "trellis", bt.server.ip, &mut proxies, &mut costs)?;
    let procs: Vec<(String, u32)> = proxies.iter().map(|p| (p.node.clone(), p.pid)).collect();
    idle_conn_rss(o, bt, &procs, &mut costs)?;
    proxies.check_alive()?;
    Ok((results, costs))
}

/// `--only ztunnel`: Trellis ambient against Istio's ztunnel in
/// interleaved rounds (direct, Trellis, ztunnel), and issue 12's figures
/// over them: single runs of these loads spread too widely on this VM to
/// judge a 15-20% margin.
pub(super) fn main_vs_ztunnel(
    o: &Opts,
    proxy_bin: &std::path::Path,
    begun: &run::Begun,
) -> Result<()> {
    let Some(bin) = o.ztunnel.clone() else {
        bail!(
            "--only ztunnel needs an Istio ztunnel binary: pass --ztunnel PATH or set {}=PATH \
             (see perf/README.md, \"The ztunnel column\")",
            zconfig::ENV_VAR
        );
    };
    let bt = BenchTopo::build(0)?;
    let server_ns = bt.server.netns()?;
    let client_ns = bt.client.netns()?;
    let echo_addr = SocketAddr::new(bt.server.ip, ECHO_PORT);
    let _echo = EchoServer::start(&server_ns, echo_addr, SERVER_CPU)?;
    let _nginx = Nginx::start(&bt.topo, &bt.server, HTTP_PORT, SERVER_CPU)?;
    let _iperf = Iperf3Server::start(&bt.topo, &bt.server, IPERF_PORT, SERVER_CPU)?;
    latency::wait_echo(&client_ns, LOADGEN_CPU, echo_addr, Duration::from_secs(10))?;
    let mesh = ZtunnelMesh::start(&bt, bin)?;
    say(format!("ztunnel {} ({})", mesh.version, mesh.bin.display()));
    let mut rounds = Vec::new();
    for round in 0..o.rounds {
        say(format!("round {} of {}", round + 1, o.rounds));
        run::settle();
        let direct = run_path(
            o,
            &bt,
            "direct",
            bt.server.ip,
            &mut Vec::<NodeProxy>::new(),
            &mut ProxyCosts::default(),
        )?;
        let trellis = trellis_l4(o, &bt, proxy_bin)?;
        // Dropping the pair waits out the TIME_WAIT sockets ztunnel leaves
        // on the capture ports: ztunnel binds without SO_REUSEADDR, so they
        // keep even the next round's node proxies from binding there.
        let ztunnel = ztunnel_l4(o, &bt, &mesh)?;
        rounds.push(Round {
            direct,
            trellis,
            ztunnel,
        });
    }
    let per_round: Vec<Vec<versus::Row>> = rounds
        .iter()
        .map(|r| {
            versus::rows(
                &r.direct,
                Side {
                    results: &r.trellis.0,
                    costs: &r.trellis.1,
                },
                Side {
                    results: &r.ztunnel.0,
                    costs: &r.ztunnel.1,
                },
            )
        })
        .collect();
    let summary = versus::over_rounds(&per_round);
    let load_end = read_trim("/proc/loadavg");
    let mode = if o.quick { "quick" } else { "full" };
    let mut notes = begun.notes(mode, &load_end);
    notes.extend([
        format!(
            "Istio ztunnel {} ({}), shared mode, one per node netns, ZTUNNEL_WORKER_THREADS=1; Trellis's node proxies shared mode, --workers 1; \
             each pinned to CPU {SERVER_CPU} with the servers, the load generators on CPU {LOADGEN_CPU}; ztunnel's pods handed over ZDS by the bench, \
             the same capture rules; xDS and CA from trellis-controller in node1's netns",
            mesh.version,
            mesh.bin.display()
        ),
        format!(
            "{} rounds, each: direct, Trellis, ztunnel; loads: iperf3 {} s; {} ping-pongs of 64 B; HTTP {} req/s for {} s over {} keep-alive connections \
             to nginx (head and a 4 KiB body in separate writes); new connections {} concurrent for {} s; 2 x {} idle connections",
            o.rounds, o.iperf_secs, o.pings, o.http_rate, o.http_secs, o.http_conns, o.conn_concurrency, o.conn_secs, o.idle_conns
        ),
        format!("node1's ztunnel env: `{}`", zconfig::env_line(&zconfig::env(&mesh.node_env("node1")))),
    ]);
    let title = "Trellis ambient against Istio's ztunnel (issue 12)";
    let mut md = format!("# {title}\n\n");
    for n in &notes {
        md += &format!("- {n}\n");
    }
    md += "\nEach figure's median over the rounds for both; the ratio is the median of the rounds' ratios \
           (a paired measurement), judged against the issue's target. Latency is what each mesh adds to \
           the direct path's in its round.\n\n";
    md += &versus::markdown(&summary);
    md += "\nTrellis ÷ ztunnel in each round:\n\n| figure |";
    for i in 1..=rounds.len() {
        md += &format!(" {i} |");
    }
    md += "\n|---|";
    md += &"---:|".repeat(rounds.len());
    md += "\n";
    for (i, row) in summary.iter().enumerate() {
        md += &format!("| {} |", row.figure);
        for r in &per_round {
            md += &format!(" {:.2} |", r[i].ratio);
        }
        md += "\n";
    }
    let doc = json!({
        "title": title,
        "mode": mode,
        "notes": notes,
        "git": git_rev(),
        "ztunnel": {"version": mesh.version, "bin": mesh.bin.display().to_string()},
        "summary": versus::to_json(&summary),
        "rounds": rounds.iter().zip(&per_round).map(|(r, rows)| json!({
            "direct": r.direct.to_json(),
            "trellis": {"results": r.trellis.0.to_json(), "proxy": r.trellis.1.to_json()},
            "ztunnel": {"results": r.ztunnel.0.to_json(), "proxy": r.ztunnel.1.to_json()},
            "versus": versus::to_json(rows),
        })).collect::<Vec<_>>(),
    });
    let name = if o.quick {
        "vs-ztunnel-quick"
    } else {
        "vs-ztunnel"
    };
    write_results(&o.out, name, &doc, &md)?;
    println!("{md}");
    Ok(())
}

/// RSS per idle connection through a mesh of `procs` (node, PID), into
/// `costs`. Two batches: the first absorbs heap that earlier phases freed
/// (glibc keeps it), the second gives the marginal cost per connection.
pub(super) fn idle_conn_rss(
    o: &Opts,
    bt: &BenchTopo,
    procs: &[(String, u32)],
    costs: &mut ProxyCosts,
) -> Result<()> {
    let client_ns = bt.client.netns()?;
    let echo = SocketAddr::new(bt.server.ip, ECHO_PORT);
    say(format!(
        "opening 2 x {} idle connections through the mesh",
        o.idle_conns
    ));
    std::thread::sleep(Duration::from_millis(500));
    let rss_all = || -> Result<Vec<u64>> {
        procs
            .iter()
            .map(|(node, pid)| {
                proc_stats::rss_kib(*pid).with_context(|| format!("reading the {node} proxy's RSS"))
            })
            .collect()
    };
    let r0 = rss_all()?;
    let first = latency::open_idle(&client_ns, LOADGEN_CPU, echo, o.idle_conns)?;
    std::thread::sleep(Duration::from_secs(1));
    let r1 = rss_all()?;
    let second = latency::open_idle(&client_ns, LOADGEN_CPU, echo, o.idle_conns)?;
    std::thread::sleep(Duration::from_secs(1));
    let r2 = rss_all()?;
    drop(first);
    drop(second);
    let sum_delta =
        |a: &[u64], b: &[u64]| -> i64 { a.iter().zip(b).map(|(x, y)| *y as i64 - *x as i64).sum() };
    let n = o.idle_conns.max(1) as f64;
    costs.idle_conns = o.idle_conns;
    costs.first_batch_rss_per_conn_kib = sum_delta(&r0, &r1) as f64 / n;
    costs.rss_per_conn_kib = sum_delta(&r1, &r2) as f64 / n;
    for (i, (node, _)) in procs.iter().enumerate() {
        costs
            .conn_rss_delta_kib
            .push((node.clone(), r2[i] as i64 - r1[i] as i64));
        say(format!(
            "  {node} RSS {} -> {} -> {} KiB",
            r0[i], r1[i], r2[i]
        ));
    }
    Ok(())
}

/// Istio's ztunnel on the same pods: idle RSS, the four load phases, RSS
/// per idle connection. The run fails unless both ztunnels carried the
/// iperf3 flow over mutual TLS.
pub(super) fn ztunnel_column(o: &Opts, bt: &BenchTopo, bin: PathBuf) -> Result<ZtunnelColumn> {
    let mesh = ZtunnelMesh::start(bt, bin)?;
    say(format!(
        "ztunnel {} ({}): shared mode, one per node, ZTUNNEL_WORKER_THREADS=1, pinned to CPU {SERVER_CPU}",
        mesh.version,
        mesh.bin.display()
    ));
    let (results, costs) = ztunnel_l4(o, bt, &mesh)?;
    Ok(ZtunnelColumn {
        version: mesh.version.clone(),
        bin: mesh.bin.clone(),
        env_node1: zconfig::env_line(&zconfig::env(&mesh.node_env("node1"))),
        results,
        costs,
    })
}

/// One ztunnel per node on the bench's pods: idle RSS, the four load
/// phases, RSS per idle connection. Fails unless both ztunnels carried the
/// iperf3 flow over mutual TLS. Dropping the pair at the end waits until
/// the pods' capture ports are free for whoever captures them next.
pub(super) fn ztunnel_l4(
    o: &Opts,
    bt: &BenchTopo,
    mesh: &ZtunnelMesh,
) -> Result<(PathResults, ProxyCosts)> {
    let mut pair = ZtunnelPair::start(bt, mesh, SERVER_CPU)?;
    std::thread::sleep(Duration::from_secs(1));
    let mut costs = ProxyCosts::default();
    for p in &pair.procs {
        let kib = proc_stats::rss_kib(p.pid)
            .with_context(|| format!("reading the {} ztunnel's RSS", p.node))?;
        say(format!(
            "idle RSS {} ztunnel: {kib} KiB, {} threads",
            p.node,
            proc_stats::threads(p.pid)?
        ));
        costs.idle_rss_kib.push((p.node.clone(), kib));
    }
    let client_ns = bt.client.netns()?;
    let echo = SocketAddr::new(bt.server.ip, ECHO_PORT);
    latency::wait_echo(&client_ns, LOADGEN_CPU, echo, Duration::from_secs(15))?;
    pair.mark()?;
    let results = run_path(o, bt, "ztunnel", bt.server.ip, &mut pair, &mut costs)?;
    // At least half of what iperf3 moved, as in trellis-bulk-bench.
    pair.check_meshed(results.throughput.bytes / 2)?;
    let procs: Vec<(String, u32)> = pair.procs.iter().map(|p| (p.node.clone(), p.pid)).collect();
    idle_conn_rss(o, bt, &procs, &mut costs)?;
    pair.check_alive()?;
    Ok((results, costs))
}

/// The ztunnel column's results and what it ran.
pub(super) struct ZtunnelColumn {
    pub(super) version: String,
    pub(super) bin: PathBuf,
    pub(super) env_node1: String,
    pub(super) results: PathResults,
    pub(super) costs: ProxyCosts,
}

/// Fails unless each node proxy recorded a connection: after an echo has
/// gone through, traffic that bypassed the mesh shows here.
pub(super) fn check_meshed(proxies: &[NodeProxy]) -> Result<()> {
    for p in proxies {
        if p.metric_sum("istio_tcp_connections_opened_total")? < 1.0 {
            bail!(
                "the {} proxy recorded no connection: traffic is not going through the mesh; its log:\n{}",
                p.node,
                p.log()
            );
        }
    }
    Ok(())
}

pub(super) fn rss_of(p: &NodeProxy) -> Result<u64> {
    proc_stats::rss_kib(p.pid).with_context(|| format!("reading the {} proxy's RSS", p.node))
}
