//! `trellis-soak-bench` put together; see perf/README.md for what it measures.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::hist::round2;
use crate::harness::run::{self, say, write_results};
use crate::harness::servers::EchoServer;
use crate::harness::topo::{self, BenchTopo};
use crate::soak::{self, Counters, Sample, SoakConfig};
use crate::{LOADGEN_CPU, SERVER_CPU};
use anyhow::{bail, Context, Result};
use serde_json::json;

const ECHO_PORT: u16 = 7000;

/// Each proxy holds one socket per connection (node1 the client's, node2
/// the one to the server) plus the pooled HBONE connections; the default
/// limit, derived from RLIMIT_NOFILE with headroom, is below 10,000 at the
/// usual 20,000 descriptors (see the report's notes).
const MAX_CONNECTIONS: &str = "18000";

/// The echo server runs as a child process (this binary, `--echo-server
/// ADDR`): the clients' and the server's sockets together would pass the
/// 20,000-descriptor hard limit of one process.
const ECHO_SERVER_FLAG: &str = "--echo-server";

/// Longest an echo server child lives, whatever happens to its parent.
const ECHO_SERVER_LIFETIME: Duration = Duration::from_secs(2 * 3600);

/// How long after the last close the fds must be back at the baseline:
/// the HBONE pool closes a connection idle for its idle timeout (60 s),
/// found by a sweep every half of it, plus a margin.
const FDS_BACK_WITHIN: Duration = Duration::from_secs(60 + 30 + 30);

/// Growth of the proxy's RSS after warm-up allowed, in percent.
const RSS_GROWTH_PCT: f64 = 5.0;

fn usage() -> &'static str {
    "usage: trellis-soak-bench [--quick] [--out DIR] [--connections N] [--secs S]\n\
     \n  --quick          1,000 connections for 30 s (writes soak-quick.{json,md})\
     \n  --out DIR        where soak.{json,md} go; default perf/results\
     \n  --connections N  concurrent connections; default 10000 (1000 with --quick)\
     \n  --secs S         how long they are held with traffic; default 600 (30 with --quick)\n"
}

struct Opts {
    quick: bool,
    out: PathBuf,
    cfg: SoakConfig,
}

fn parse_args() -> Result<Opts> {
    let mut quick = false;
    let mut out = PathBuf::from("perf/results");
    let mut conns = None;
    let mut secs = None;
    let mut args = run::Args::new(usage());
    while let Some(a) = args.next_flag() {
        let mut val = |name: &str| args.value(name);
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => out = PathBuf::from(val("--out")?),
            "--connections" => conns = Some(val("--connections")?.parse::<usize>()?),
            "--secs" => secs = Some(val("--secs")?.parse::<u64>()?),
            "-h" | "--help" => {
                print!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    let connections = conns.unwrap_or(if quick { 1_000 } else { 10_000 });
    if !(1..=20_000).contains(&connections) {
        bail!("--connections {connections}: between 1 and 20000");
    }
    let secs = secs.unwrap_or(if quick { 30 } else { 600 });
    if !(10..=3_600).contains(&secs) {
        bail!("--secs {secs}: between 10 and 3600");
    }
    Ok(Opts {
        quick,
        out,
        cfg: SoakConfig {
            connections,
            hold: Duration::from_secs(secs),
            echo_every: Duration::from_secs(5),
            open_rate: 500.0,
            warmup: Duration::from_secs(if quick { 10 } else { 60 }),
            sample_every: Duration::from_secs(if quick { 2 } else { 10 }),
        },
    })
}

/// The echo-server child: serves in the netns it was started in until
/// killed, or [`ECHO_SERVER_LIFETIME`].
fn echo_server_child(addr: &str) -> Result<()> {
    crate::harness::sys::raise_nofile()?;
    let addr: SocketAddr = addr.parse().context("--echo-server ADDR")?;
    let ns = trellis_netns::NetNs::open("/proc/self/ns/net")?;
    let _echo = EchoServer::start(&ns, addr, LOADGEN_CPU)?;
    println!("listening on {addr}");
    std::thread::sleep(ECHO_SERVER_LIFETIME);
    Ok(())
}

/// Runs `trellis-soak-bench` with this process's arguments.
pub fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == ECHO_SERVER_FLAG {
        return echo_server_child(&args[2]);
    }
    let o = parse_args()?;
    let cfg = o.cfg;
    let tools = [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("taskset", "util-linux"),
    ];
    let cpus = run::preflight("trellis-soak-bench", [LOADGEN_CPU, SERVER_CPU], &tools)?;
    let proxy_bin = topo::proxy_binary()?;
    let begun = run::begin(&cpus, LOADGEN_CPU, SERVER_CPU)?;
    let bt = BenchTopo::build(0)?;
    let dst = SocketAddr::new(bt.server.ip, ECHO_PORT);
    let client_ns = bt.client.netns()?;
    let exe = std::env::current_exe()?.display().to_string();
    let dst_s = dst.to_string();
    let cpu_s = LOADGEN_CPU.to_string();
    let _echo = bt
        .topo
        .spawn(
            "server",
            &["taskset", "-c", &cpu_s, &exe, ECHO_SERVER_FLAG, &dst_s],
        )
        .context("starting the echo server")?;
    topo::wait_listening(&bt.server.netns()?, ECHO_PORT, Duration::from_secs(10))?;
    let extra = ["--max-connections", MAX_CONNECTIONS];
    let mut proxies = vec![
        bt.start_proxy_with(&proxy_bin, "node1", &bt.client, SERVER_CPU, &[], &extra)?,
        bt.start_proxy_with(&proxy_bin, "node2", &bt.server, SERVER_CPU, &[], &extra)?,
    ];
    let pids: Vec<u32> = proxies.iter().map(|p| p.pid).collect();
    // One echo through the mesh first: the pooled HBONE connection and the
    // certificates exist before the baseline is taken.
    trellis_e2e::wait_until(
        Duration::from_secs(20),
        "a first echo through the mesh",
        || {
            trellis_e2e::servers::echo_roundtrip(
                Some(&client_ns),
                dst,
                b"warm",
                Duration::from_secs(2),
            )
            .is_ok_and(|b| b == b"warm")
        },
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let r = hold(cfg, &pids, &client_ns, dst, &mut proxies)?;
    let pass = r.pass;
    let (md, doc) = report(&o, &begun, &r);
    println!("{md}");
    write_results(
        &o.out,
        if o.quick { "soak-quick" } else { "soak" },
        &doc,
        &md,
    )?;
    if !pass {
        bail!("the soak failed its targets: see the report");
    }
    Ok(())
}

/// Opens the connections, holds them with their echoes while sampling both
/// proxies, closes them, and waits for the proxies' descriptors to come
/// back to the baseline.
fn hold(
    cfg: SoakConfig,
    pids: &[u32],
    client_ns: &trellis_netns::NetNs,
    dst: SocketAddr,
    proxies: &mut [topo::NodeProxy],
) -> Result<Soaked> {
    let counters = Arc::new(Counters::default());
    let t0 = Instant::now();
    let baseline = Sample::take(t0, pids, &counters);
    say(format!(
        "baseline: node1 RSS {} KiB fds {}, node2 RSS {} KiB fds {}; opening {} connections at {}/s, then holding them {:?} with a {}-byte echo every {:?} each",
        baseline.proxies[0].0,
        baseline.proxies[0].1,
        baseline.proxies[1].0,
        baseline.proxies[1].1,
        cfg.connections,
        cfg.open_rate,
        cfg.hold,
        soak::ECHO_BYTES,
        cfg.echo_every
    ));
    let ramp = Duration::from_secs_f64(cfg.connections as f64 / cfg.open_rate);
    let hold_start = t0 + ramp;
    let hold_until = hold_start + cfg.hold;
    let clients = {
        let c = counters.clone();
        let ns = client_ns.try_clone()?;
        std::thread::Builder::new()
            .name("soak-clients".into())
            .spawn(move || {
                crate::harness::sys::pin_current_thread(LOADGEN_CPU)?;
                soak::run_clients(&ns, dst, cfg, hold_until, c)
            })?
    };
    let mut samples = vec![baseline.clone()];
    let mut next = t0 + cfg.sample_every;
    // Bounded: the hold's end plus the time to close, at most a minute more.
    let stop_by = hold_until + Duration::from_secs(60);
    while !clients.is_finished() && Instant::now() < stop_by {
        std::thread::sleep(
            next.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200)),
        );
        if Instant::now() >= next {
            let s = Sample::take(t0, pids, &counters);
            say(format!(
                "{:>5.0} s: {} open, {} echoes, {} errors; node1 RSS {} KiB fds {}; node2 RSS {} KiB fds {}",
                s.at_s, s.open_conns, s.echoes, s.errors, s.proxies[0].0, s.proxies[0].1, s.proxies[1].0, s.proxies[1].1
            ));
            samples.push(s);
            next += cfg.sample_every;
            for p in proxies.iter_mut() {
                p.check_alive()?;
            }
        }
    }
    if !clients.is_finished() {
        bail!("the clients did not finish within a minute of the hold's end");
    }
    clients
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))??;
    let closed_at = t0.elapsed().as_secs_f64();
    // Just after the last close: the proxies have closed their side of
    // every connection; what is left over the baseline is the pooled HBONE
    // connections between the nodes (one per 100 streams).
    std::thread::sleep(Duration::from_secs(1));
    let at_close = Sample::take(t0, pids, &counters);
    samples.push(at_close.clone());
    // Then every fd back to the baseline, once the pool's idle connections
    // are swept.
    let waited = Instant::now();
    let back = trellis_e2e::wait_until(FDS_BACK_WITHIN, "fds back to baseline", || {
        pids.iter()
            .zip(&baseline.proxies)
            .all(|(p, (_, fds))| soak::fd_count(*p).unwrap_or(usize::MAX) <= *fds)
    });
    let back_after = waited.elapsed().as_secs_f64() + 1.0;
    std::thread::sleep(Duration::from_secs(1));
    let after = Sample::take(t0, pids, &counters);
    samples.push(after.clone());
    let peak_fds: Vec<usize> = (0..pids.len())
        .map(|i| samples.iter().map(|s| s.proxies[i].1).max().unwrap_or(0))
        .collect();
    let warm_s = (hold_start + cfg.warmup - t0).as_secs_f64();
    let hold_end_s = (hold_until - t0).as_secs_f64();
    let growth: Vec<_> = (0..pids.len())
        .map(|i| soak::rss_growth(&samples, i, warm_s, hold_end_s))
        .collect();
    let lat = soak::latency(&counters);
    let errors = counters.errors.load(std::sync::atomic::Ordering::Relaxed);
    let opened = counters.opened.load(std::sync::atomic::Ordering::Relaxed);
    let echoes = counters.echoes.load(std::sync::atomic::Ordering::Relaxed);
    let kinds = counters
        .error_kinds
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    let fds_back = back.is_ok();
    let growth_ok = growth[0].is_some_and(|g| g.1 < RSS_GROWTH_PCT);
    let pass = errors == 0 && fds_back && growth_ok && opened == cfg.connections as u64;
    Ok(Soaked {
        cfg,
        samples,
        baseline,
        at_close,
        after,
        peak_fds,
        growth,
        lat,
        errors,
        opened,
        echoes,
        kinds,
        fds_back,
        back_after,
        closed_at,
        pass,
    })
}

/// [`soak::rss_growth`]'s figures: growth to the end and to the largest
/// sample in percent, then the RSS (KiB) after warm-up, at the end and at
/// most.
type Growth = (f64, f64, u64, u64, u64);

/// What a soak measured, for its report.
struct Soaked {
    cfg: SoakConfig,
    samples: Vec<Sample>,
    baseline: Sample,
    at_close: Sample,
    after: Sample,
    peak_fds: Vec<usize>,
    /// Per proxy: RSS growth over the hold after warm-up ([`soak::rss_growth`]).
    growth: Vec<Option<Growth>>,
    lat: crate::harness::hist::Summary,
    errors: u64,
    opened: u64,
    echoes: u64,
    kinds: std::collections::BTreeMap<String, u64>,
    fds_back: bool,
    back_after: f64,
    closed_at: f64,
    pass: bool,
}

/// The soak's report: Markdown and JSON.
fn report(o: &Opts, begun: &run::Begun, r: &Soaked) -> (String, serde_json::Value) {
    // The figures by value, the collections by reference.
    let &Soaked {
        cfg,
        ref samples,
        ref baseline,
        ref at_close,
        ref after,
        ref peak_fds,
        ref growth,
        ref lat,
        errors,
        opened,
        echoes,
        ref kinds,
        fds_back,
        back_after,
        closed_at,
        pass,
    } = r;
    let names = ["node1", "node2"];
    let mut md = format!(
        "# Soak: {} connections through one node proxy for {} s\n\n",
        cfg.connections,
        cfg.hold.as_secs()
    );
    md += &format!(
        "Client pod (node1) → node1 proxy → HBONE → node2 proxy → echo server (node2). Connections opened at {}/s, \
then each held for {} s with a {}-byte echo every {} s (spread evenly); RSS and fds sampled every {} s; \
RSS growth from the end of a {} s warm-up after the last connection opened. Both proxies `--workers 1` on CPU 1.\n\n",
        cfg.open_rate,
        cfg.hold.as_secs(),
        soak::ECHO_BYTES,
        cfg.echo_every.as_secs(),
        cfg.sample_every.as_secs(),
        cfg.warmup.as_secs()
    );
    md += "| | node1 proxy (the soak's) | node2 proxy |\n|---|---|---|\n";
    let g = |i: usize| {
        growth[i].map_or("—".into(), |(last, max, base, l, m)| {
            format!(
                "{:.1} → {:.1} MiB at the end ({last:+.2}%), max {:.1} MiB ({max:+.2}%)",
                base as f64 / 1024.0,
                l as f64 / 1024.0,
                m as f64 / 1024.0
            )
        })
    };
    md += &format!(
        "| RSS baseline (idle) | {:.1} MiB | {:.1} MiB |\n",
        baseline.proxies[0].0 as f64 / 1024.0,
        baseline.proxies[1].0 as f64 / 1024.0
    );
    md += &format!("| RSS after warm-up → hold's end | {} | {} |\n", g(0), g(1));
    md += &format!(
        "| RSS after all closed | {:.1} MiB | {:.1} MiB |\n",
        after.proxies[0].0 as f64 / 1024.0,
        after.proxies[1].0 as f64 / 1024.0
    );
    md += &format!(
        "| fds: baseline / peak / 1 s after the last close / after the pool's idle timeout | {} / {} / {} / {} | {} / {} / {} / {} |\n",
        baseline.proxies[0].1,
        peak_fds[0],
        at_close.proxies[0].1,
        after.proxies[0].1,
        baseline.proxies[1].1,
        peak_fds[1],
        at_close.proxies[1].1,
        after.proxies[1].1
    );
    md += &format!(
        "\nConnections opened {opened} of {}; echoes {echoes}; errors {errors} {kinds:?}; echo latency p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs. \
fds back to baseline: {} (within {} s of the last close: the proxies close their side of each connection at once, \
and the pooled HBONE connections between the nodes, one per 100 streams, when idle for the pool's 60 s). Result: **{}** (zero errors, fds back, node1 RSS growth after warm-up < {RSS_GROWTH_PCT}%).\n\n",
        cfg.connections,
        lat.p50_us,
        lat.p99_us,
        lat.max_us,
        if fds_back { "yes" } else { "NO" },
        if fds_back {
            format!("{back_after:.0}")
        } else {
            format!("not {}", FDS_BACK_WITHIN.as_secs())
        },
        if pass { "PASS" } else { "FAIL" }
    );
    md += "## Samples\n\n| s | open | echoes | errors | node1 RSS MiB | node1 fds | node2 RSS MiB | node2 fds |\n|---|---|---|---|---|---|---|---|\n";
    for s in samples {
        md += &format!(
            "| {:.0} | {} | {} | {} | {:.1} | {} | {:.1} | {} |\n",
            s.at_s,
            s.open_conns,
            s.echoes,
            s.errors,
            s.proxies[0].0 as f64 / 1024.0,
            s.proxies[0].1,
            s.proxies[1].0 as f64 / 1024.0,
            s.proxies[1].1
        );
    }
    let notes = begun.notes(
        if o.quick { "quick" } else { "full" },
        &run::read_trim("/proc/loadavg"),
    );
    md += "\n## Notes\n\n";
    for n in &notes {
        md += &format!("- {n}\n");
    }
    md += &format!("- open files limit {} (the hard limit here) for the bench, the echo server (a child process) and the proxies; the proxies run with --max-connections {MAX_CONNECTIONS}: the default derived from 20,000 descriptors is 9,000, below the soak's 10,000\n", begun.nofile);
    md += &format!("- the clients finished closing at {closed_at:.0} s\n");
    let growth_json = |i: usize| {
        growth[i].map(|(last, max, base, l, m)| {
            json!({"after_warmup_kib": base, "end_kib": l, "max_kib": m,
                   "end_pct": round2(last), "max_pct": round2(max)})
        })
    };
    let doc = json!({
        "bench": "trellis-soak-bench",
        "config": {"connections": cfg.connections, "hold_s": cfg.hold.as_secs(),
                   "echo_every_s": cfg.echo_every.as_secs(), "echo_bytes": soak::ECHO_BYTES,
                   "open_rate": cfg.open_rate, "warmup_s": cfg.warmup.as_secs(),
                   "sample_every_s": cfg.sample_every.as_secs()},
        "opened": opened, "echoes": echoes, "errors": errors, "error_kinds": kinds,
        "echo_latency": lat.to_json(),
        "rss_growth": {"node1": growth_json(0), "node2": growth_json(1)},
        "fds": {"node1": {"baseline": baseline.proxies[0].1, "peak": peak_fds[0], "after": after.proxies[0].1},
                "node2": {"baseline": baseline.proxies[1].1, "peak": peak_fds[1], "after": after.proxies[1].1}},
        "fds_back_to_baseline": fds_back,
        "fds_at_close": {"node1": at_close.proxies[0].1, "node2": at_close.proxies[1].1},
        "fds_back_after_s": fds_back.then(|| round2(back_after)),
        "samples": samples.iter().map(|s| s.to_json(&names)).collect::<Vec<_>>(),
        "pass": pass,
        "notes": notes,
    });
    (md, doc)
}
