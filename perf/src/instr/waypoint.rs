//! The waypoint (and nginx) per request, per protocol, on
//! `trellis-l7-bench`'s topology.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::topo;
use crate::harness::{run, sys};
use crate::instr::strace::{Calls, Strace};
use crate::l7::client::{Client, Proto, Target};
use crate::l7::mesh::{L7Topo, WaypointProc};
use crate::l7::nginx::{self, NginxProxy};
use crate::l7::{GRPC_PAYLOAD_BYTES, HTTP_BODY_BYTES};
use crate::{LOADGEN_CPU, SERVER_CPU};
use anyhow::{bail, Context, Result};
use serde_json::json;
use trellis_netns::NetNs;

use super::args::*;
use super::count::*;

/// Warm-up requests per protocol before the counters are zeroed.
pub(super) const WARMUP_REQUESTS: usize = 100;

/// The waypoint's figures, and nginx's for the same requests: each alone
/// under callgrind on the L7 bench's topology, sequential requests per
/// protocol.
pub(super) fn waypoint(r: Run<'_>) -> Result<serde_json::Value> {
    let t = L7Topo::build()?;
    let upstreams = t.start_upstreams(true, LOADGEN_CPU)?;
    let routed = || {
        let [_, h, _, g] = upstreams.counts().get();
        h + g
    };
    let proxy_bin = topo::proxy_binary()?;
    let _proxies = [
        t.bt.start_proxy(&proxy_bin, "node1", &t.bt.client, LOADGEN_CPU)?,
        t.bt.start_proxy(&proxy_bin, "node2", &t.bt.server, LOADGEN_CPU)?,
    ];
    let bin = topo::sibling_binary("trellis-waypoint", "trellis-waypoint")?;
    let n = r.a.requests;
    let mut doc = json!({});

    run::say("starting the waypoint under callgrind (slow)");
    let wp =
        WaypointProc::start_wrapped(&t, &bin, SERVER_CPU, r.wrapper, Duration::from_secs(120))?;
    let before = (wp.metric("istio_requests_total", &[])?, routed());
    let targets: Vec<Target> = Proto::ALL.iter().map(|&p| t.waypoint_target(p)).collect();
    run::say(format!(
        "waypoint: {n} sequential requests per protocol, one connection each"
    ));
    count_requests(&t.bt.client.netns()?, wp.pid, &targets, n)?;
    // Proof the requests went through the waypoint's routes and were
    // counted, and that nothing else ran through it meanwhile.
    let expected = (targets.len() * (WARMUP_REQUESTS + n)) as u64;
    let counted = wp.metric("istio_requests_total", &[])? - before.0;
    if counted != expected as f64 || routed() - before.1 != expected {
        bail!(
            "the waypoint counted {counted} requests and the server saw {} routed ones, not the {expected} sent",
            routed() - before.1
        );
    }
    for (i, p) in Proto::ALL.iter().enumerate() {
        let prof = read_part(r.dumps, wp.pid, i as u32 + 1)?;
        doc["requests"][p.key()]["waypoint"] = figures(&prof, n as f64);
    }
    drop(wp);

    // nginx as the bench runs it: a plain client, no mesh, same servers.
    let support = nginx::probe(&t)?;
    run::say("starting nginx under callgrind (slow)");
    let ngx =
        NginxProxy::start_wrapped(&t, &support, SERVER_CPU, r.wrapper, Duration::from_secs(60))?;
    let protos: Vec<Proto> = Proto::ALL
        .into_iter()
        .filter(|p| support.get(p).is_some_and(|why| why.is_none()))
        .collect();
    let targets: Vec<Target> = protos.iter().map(|&p| t.nginx_target(p)).collect();
    run::say(format!(
        "nginx: {n} sequential requests per protocol, one connection each"
    ));
    let before = routed();
    count_requests(&t.plain_client.netns()?, ngx.pid, &targets, n)?;
    let expected = (targets.len() * (WARMUP_REQUESTS + n)) as u64;
    if routed() - before != expected {
        bail!(
            "the servers saw {} requests routed by nginx, not the {expected} sent",
            routed() - before
        );
    }
    for (i, p) in protos.iter().enumerate() {
        let prof = read_part(r.dumps, ngx.pid, i as u32 + 1)?;
        doc["requests"][p.key()]["nginx"] = figures(&prof, n as f64);
    }
    drop(ngx);

    doc["notes"] = json!([
        r.run_note,
        format!("binary: {}; {}", bin.display(), nginx::version()),
        format!("load: per protocol, {n} sequential requests on one connection after {WARMUP_REQUESTS} warm-up ones; waypoint path: client → node1 proxy → HBONE → waypoint (L7 policy, route with a header filter, Istio metrics) → HBONE → node2 proxy → server; nginx path as in trellis-l7-bench: plain client → nginx (route header, plaintext) → plain server; {HTTP_BODY_BYTES} B HTTP bodies (after the head, in a write of their own) and {GRPC_PAYLOAD_BYTES} B gRPC payloads checked; every request was counted by the waypoint's metrics or the servers' routed-header count"),
        "each proxy runs alone under callgrind; the node proxies on the waypoint path are not counted".to_string(),
        COUNTS_NOTE.to_string(),
        MEMCPY_NOTE.to_string(),
        format!("took {:.0} s", r.started.elapsed().as_secs_f64()),
    ]);
    Ok(doc)
}

/// Zeroes `pid`'s counters, makes `n` sequential calls to each target (one
/// connection each, after a warm-up) from `ns`, and dumps the counters:
/// one dump part per target.
pub(super) fn count_requests(ns: &NetNs, pid: u32, targets: &[Target], n: usize) -> Result<()> {
    let targets = targets.to_vec();
    let client_ns = ns.try_clone().context("cloning a netns handle")?;
    sys::on_pinned_thread("instr-load", LOADGEN_CPU, ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the client's runtime")?;
        rt.block_on(async move {
            // Generous bound: callgrind runs the proxy ~50x slower.
            let deadline = Instant::now() + Duration::from_secs(600);
            for target in &targets {
                let what = target.proto.label();
                let mut c = Client::connect(&client_ns, target)
                    .await
                    .with_context(|| format!("connecting for {what}"))?;
                calls(&mut c, WARMUP_REQUESTS, deadline, what).await?;
                control("-z", &[pid])?;
                calls(&mut c, n, deadline, what).await?;
                control("-d", &[pid])?;
            }
            Ok(())
        })
    })
}

/// `n` checked calls on `c`, bounded by `deadline`.
pub(super) async fn calls(c: &mut Client, n: usize, deadline: Instant, what: &str) -> Result<()> {
    for i in 0..n {
        c.call()
            .await
            .with_context(|| format!("{what} request {i}"))?;
        if Instant::now() > deadline {
            bail!("the load took longer than its bound; is the machine overloaded?");
        }
    }
    Ok(())
}

pub(super) fn waypoint_markdown(doc: &serde_json::Value) -> String {
    let mut md = String::from("# Waypoint and nginx instructions per request (callgrind)\n\n");
    for note in doc["notes"].as_array().into_iter().flatten() {
        md += &format!("- {}\n", note.as_str().unwrap_or_default());
    }
    let r = &doc["requests"];
    md += "\n| per request | proxy |";
    let mut rule = String::from("|---|---|");
    for p in Proto::ALL {
        md += &format!(" {} |", p.label());
        rule += "---:|";
    }
    md += &format!("\n{rule}\n");
    let num = |v: &serde_json::Value, digits: usize| match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "—".to_string(),
    };
    for (label, k, digits) in [
        ("user-space instructions", "ir", 0),
        ("task polls", "task_polls", 2),
        ("allocations", "allocations", 2),
    ] {
        for proxy in ["waypoint", "nginx"] {
            if proxy == "nginx" && k == "task_polls" {
                continue;
            }
            md += &format!("| {label} | {proxy} |");
            for p in Proto::ALL {
                md += &format!(" {} |", num(&r[p.key()][proxy][k], digits));
            }
            md += "\n";
        }
    }
    for proxy in ["waypoint", "nginx"] {
        for i in 0..8 {
            md += &format!("| #{} by own instructions | {proxy} |", i + 1);
            for p in Proto::ALL {
                let c = &r[p.key()][proxy]["top_crates"][i];
                md += &match c["crate"].as_str() {
                    Some(name) => format!(
                        " {name} {:.0} ({:.1}%) |",
                        c["ir"].as_f64().unwrap_or_default(),
                        c["share_pct"].as_f64().unwrap_or_default()
                    ),
                    None => " |".to_string(),
                };
            }
            md += "\n";
        }
    }
    md
}

/// The waypoint's syscalls per request, per protocol, counted by strace on
/// `trellis-l7-bench`'s topology with everything at full speed.
pub(super) fn waypoint_syscalls(a: &Args) -> Result<()> {
    let t = L7Topo::build()?;
    let upstreams = t.start_upstreams(false, LOADGEN_CPU)?;
    let proxy_bin = topo::proxy_binary()?;
    let _proxies = [
        t.bt.start_proxy(&proxy_bin, "node1", &t.bt.client, LOADGEN_CPU)?,
        t.bt.start_proxy(&proxy_bin, "node2", &t.bt.server, LOADGEN_CPU)?,
    ];
    let bin = topo::sibling_binary("trellis-waypoint", "trellis-waypoint")?;
    let wp = WaypointProc::start_wrapped(&t, &bin, SERVER_CPU, &[], Duration::from_secs(30))?;
    let targets: Vec<Target> = Proto::ALL.iter().map(|&p| t.waypoint_target(p)).collect();
    let n = a.requests;
    let tmp = tempfile::tempdir().context("creating a directory for strace's output")?;
    let dir = tmp.path().to_path_buf();
    let pid = wp.pid;
    let client_ns = t.bt.client.netns()?;
    let ns = client_ns.try_clone().context("cloning a netns handle")?;
    let before = upstreams.counts().get();
    let counts = sys::on_pinned_thread("instr-load", LOADGEN_CPU, &ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the client's runtime")?;
        rt.block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut out = Vec::new();
            for (i, target) in targets.iter().enumerate() {
                let what = target.proto.label();
                let mut c = Client::connect(&client_ns, target)
                    .await
                    .with_context(|| format!("connecting for {what}"))?;
                calls(&mut c, WARMUP_REQUESTS, deadline, what).await?;
                let st = Strace::attach(pid, &dir.join(format!("st.{i}")))?;
                calls(&mut c, n, deadline, what).await?;
                out.push((what, st.finish()?));
            }
            Ok(out)
        })
    })?;
    let after = upstreams.counts().get();
    let routed = (after[1] - before[1]) + (after[3] - before[3]);
    let expected = (Proto::ALL.len() * (WARMUP_REQUESTS + n)) as u64;
    if routed != expected {
        bail!(
            "the server saw {routed} routed requests, not the {expected} sent through the waypoint"
        );
    }
    let cols: Vec<(&str, &BTreeMap<String, Calls>)> = counts.iter().map(|(w, m)| (*w, m)).collect();
    print!(
        "{}",
        syscall_table(
            &format!("the waypoint's syscalls per request ({n} sequential requests per protocol, one connection each)"),
            &cols,
            n,
        )
    );
    Ok(())
}
