//! trellis-instr: user-space instructions each node proxy spends per round
//! trip and per MiB, or the waypoint per request, counted by callgrind on
//! the benchmarks' topologies.
//!
//! ```text
//! cargo build --release -p trellis-node-proxy -p trellis-waypoint -p trellis-perf
//! sudo target/release/trellis-instr [--pings 2000] [--bulk-mib 16] [--out perf/results]
//! sudo target/release/trellis-instr --waypoint [--requests 2000] [--out perf/results]
//! ```
//!
//! Both node proxies run under `valgrind --tool=callgrind` (slowly; the
//! counts do not depend on speed). After warm-up, the counters are zeroed,
//! the client pod does `--pings` 64 B ping-pongs with the echo server on one
//! connection, and the counters are dumped; then the same for `--bulk-mib`
//! MiB echoed in 64 KiB messages. Instruction counts are exact and
//! repeatable, unlike wall-clock time on this VM, so they show what a change
//! to the data path does in one run; they leave out the kernel and cache
//! misses, so `trellis-bench` still decides whether it pays.
//!
//! `--waypoint` runs the waypoint alone under callgrind on
//! `trellis-l7-bench`'s topology (node proxies and upstream servers run
//! normally) and counts `--requests` sequential requests per protocol
//! (HTTP/1.1, HTTP/2, gRPC unary) on one connection each, through the same
//! routes and policy as the bench.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use trellis_netns::NetNs;
use trellis_perf::callgrind::{self, Profile};
use trellis_perf::l7::client::{Client, Proto, Target};
use trellis_perf::l7::mesh::{L7Topo, WaypointProc};
use trellis_perf::l7::nginx::{self, NginxProxy};
use trellis_perf::l7::servers::{Listen, Upstreams};
use trellis_perf::l7::{GRPC_PAYLOAD_BYTES, GRPC_PORT, HTTP_BODY_BYTES, HTTP_PORT};
use trellis_perf::servers::EchoServer;
use trellis_perf::strace::{Calls, Strace};
use trellis_perf::topo::{self, BenchTopo};
use trellis_perf::{latency, run, sys, LOADGEN_CPU, SERVER_CPU};

const USAGE: &str = "usage: trellis-instr [--pings N] [--bulk-mib M] [--out DIR]
       trellis-instr --waypoint [--requests N] [--out DIR]
       trellis-instr --syscalls [--pings N] | --syscalls --waypoint [--requests N]

  --pings N      64 B round trips counted (default 2000, at most 100000)
  --bulk-mib M   MiB echoed in 64 KiB messages for the bulk figure (default 16, at most 256)
  --waypoint     count the waypoint per request instead of the node proxies
  --requests N   requests counted per protocol with --waypoint (default 2000, at most 100000)
  --out DIR      where instr.{json,md} (instr-waypoint.{json,md} with --waypoint) go; default perf/results
  --keep DIR     keep the callgrind files there (cg.<pid>.<part>, for callgrind_annotate)
  --syscalls     no callgrind: count each node proxy's syscalls per 64 B round trip (with
                 --waypoint: the waypoint's per request) with strace, by name and how many
                 failed (e.g. reads that found nothing); prints, writes nothing";

const PING: usize = 64;
const BULK_MSG: usize = 64 * 1024;
const WARMUP_PINGS: usize = 200;

struct Args {
    pings: usize,
    bulk_mib: usize,
    waypoint: bool,
    syscalls: bool,
    requests: usize,
    out: PathBuf,
    keep: Option<PathBuf>,
}

fn args() -> Result<Option<Args>> {
    let mut a = Args {
        pings: 2000,
        bulk_mib: 16,
        waypoint: false,
        syscalls: false,
        requests: 2000,
        out: PathBuf::from("perf/results"),
        keep: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |what: &str, max: usize| -> Result<usize> {
            let v: usize = it
                .next()
                .with_context(|| format!("{what} needs a value\n{USAGE}"))?
                .parse()
                .with_context(|| format!("{what} takes a whole number\n{USAGE}"))?;
            if v == 0 || v > max {
                bail!("{what} must be between 1 and {max}");
            }
            Ok(v)
        };
        match arg.as_str() {
            "--pings" => a.pings = num("--pings", 100_000)?,
            "--bulk-mib" => a.bulk_mib = num("--bulk-mib", 256)?,
            "--requests" => a.requests = num("--requests", 100_000)?,
            "--waypoint" => a.waypoint = true,
            "--syscalls" => a.syscalls = true,
            "--out" => a.out = it.next().context("--out needs a directory")?.into(),
            "--keep" => a.keep = Some(it.next().context("--keep needs a directory")?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Some(a))
}

/// `callgrind_control <flag> <pid>` for each proxy; it returns once the tool
/// has acted.
fn control(flag: &str, pids: &[u32]) -> Result<()> {
    for pid in pids {
        let out = Command::new("callgrind_control")
            .args([flag, &pid.to_string()])
            .output()
            .context("running callgrind_control (apt-get install valgrind)")?;
        if !out.status.success() {
            bail!(
                "callgrind_control {flag} {pid} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Round trips of `size` bytes on `s`, bounded by `deadline`.
fn round_trips(
    s: &mut std::net::TcpStream,
    size: usize,
    n: usize,
    deadline: Instant,
) -> Result<()> {
    let msg = vec![0x5au8; size];
    let mut buf = vec![0u8; size];
    for i in 0..n {
        latency::round_trip(s, &msg, &mut buf).with_context(|| format!("round trip {i}"))?;
        if buf != msg {
            bail!("the echo returned different bytes");
        }
        if Instant::now() > deadline {
            bail!("the load took longer than its bound; is the machine overloaded?");
        }
    }
    Ok(())
}

/// Reads dump part `part` of process `pid` (`cg.<pid>.<part>`), waiting
/// briefly for valgrind to finish writing it.
fn read_part(dir: &Path, pid: u32, part: u32) -> Result<Profile> {
    let path = dir.join(format!("cg.{pid}.{part}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            // A dump ends with its totals line; before that it is still being written.
            if text.contains("\ntotals:") {
                return callgrind::parse(&text)
                    .with_context(|| format!("parsing {}", path.display()));
            }
        }
        if Instant::now() > deadline {
            bail!("callgrind did not write {} within 30 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One proxy's figures for one phase, per `units`.
fn figures(p: &Profile, units: f64) -> serde_json::Value {
    let total = p.total_ir() as f64;
    let crates: Vec<_> = p
        .by_crate()
        .into_iter()
        .take(10)
        .map(|(c, ir)| json!({"crate": c, "ir": (ir as f64 / units).round(), "share_pct": (1000.0 * ir as f64 / total).round() / 10.0}))
        .collect();
    json!({
        "ir": (total / units).round(),
        "task_polls": p.calls_named("tokio::runtime::task::raw::poll") as f64 / units,
        "allocations": ALLOCATORS.iter().map(|f| p.calls_named(f)).sum::<u64>() as f64 / units,
        "top_crates": crates,
    })
}

fn markdown(doc: &serde_json::Value) -> String {
    let mut md = String::from("# Node proxy instructions per unit of work (callgrind)\n\n");
    for note in doc["notes"].as_array().into_iter().flatten() {
        md += &format!("- {}\n", note.as_str().unwrap_or_default());
    }
    for (phase, unit) in [
        ("pingpong", "per 64 B round trip"),
        (
            "bulk",
            "per MiB echoed (each byte crosses each proxy twice)",
        ),
    ] {
        md += &format!(
            "\n## {unit}\n\n| | node1 (client side) | node2 (server side) |\n|---|---:|---:|\n"
        );
        let p = &doc[phase];
        let row = |k: &str, digits: usize| {
            format!(
                "{:.*} | {:.*}",
                digits,
                p["node1"][k].as_f64().unwrap_or(f64::NAN),
                digits,
                p["node2"][k].as_f64().unwrap_or(f64::NAN)
            )
        };
        md += &format!("| user-space instructions | {} |\n", row("ir", 0));
        md += &format!("| task polls | {} |\n", row("task_polls", 2));
        md += &format!("| allocations | {} |\n", row("allocations", 2));
        for i in 0..10 {
            let cell = |node: &str| {
                let c = &p[node]["top_crates"][i];
                match c["crate"].as_str() {
                    Some(name) => format!(
                        "{name} {:.0} ({:.1}%)",
                        c["ir"].as_f64().unwrap_or_default(),
                        c["share_pct"].as_f64().unwrap_or_default()
                    ),
                    None => String::new(),
                }
            };
            md += &format!(
                "| #{} by own instructions | {} | {} |\n",
                i + 1,
                cell("node1"),
                cell("node2")
            );
        }
    }
    md
}

fn main() -> Result<()> {
    let Some(a) = args()? else { return Ok(()) };
    if a.syscalls {
        run::preflight(
            "trellis-instr",
            [LOADGEN_CPU, SERVER_CPU],
            &[("strace", "strace")],
        )?;
        let _lock = run::lock()?;
        sys::pin_current_thread(LOADGEN_CPU)?;
        return if a.waypoint {
            waypoint_syscalls(&a)
        } else {
            syscalls(&a)
        };
    }
    let cpus = run::preflight(
        "trellis-instr",
        [LOADGEN_CPU, SERVER_CPU],
        &[("valgrind", "valgrind"), ("callgrind_control", "valgrind")],
    )?;
    // Counts do not depend on other load, but valgrind's CPU use would
    // disturb a benchmark running beside it.
    let _lock = run::lock()?;
    sys::pin_current_thread(LOADGEN_CPU)?;
    let started = Instant::now();
    let tmp = tempfile::tempdir().context("creating a directory for the callgrind files")?;
    let dumps = match &a.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => tmp.path().to_path_buf(),
    };
    let out_file = format!("--callgrind-out-file={}/cg.%p", dumps.display());
    let wrapper = [
        "valgrind",
        "--tool=callgrind",
        "--dump-instr=no",
        out_file.as_str(),
    ];
    let run_note = format!(
        "run: git {}, {}",
        run::git_rev(),
        run::machine_line(cpus.len())
    );
    let run = Run {
        a: &a,
        wrapper: &wrapper,
        dumps: &dumps,
        run_note,
        started,
    };
    let (name, doc, md) = if a.waypoint {
        let doc = waypoint(run)?;
        let md = waypoint_markdown(&doc);
        ("instr-waypoint", doc, md)
    } else {
        let doc = node_proxies(run)?;
        let md = markdown(&doc);
        ("instr", doc, md)
    };
    print!("{md}");
    run::write_results(&a.out, name, &doc, &md)
}

/// What both modes are given.
struct Run<'a> {
    a: &'a Args,
    /// The valgrind command line each counted proxy runs under.
    wrapper: &'a [&'a str],
    /// Where callgrind writes its files.
    dumps: &'a Path,
    run_note: String,
    started: Instant,
}

/// The node proxies' figures: both under callgrind, ping-pongs then bulk.
fn node_proxies(r: Run<'_>) -> Result<serde_json::Value> {
    let bt = BenchTopo::build(0)?;
    let echo_addr = SocketAddr::new(bt.server.ip, 7000);
    let _echo = EchoServer::start(&bt.server.netns()?, echo_addr, SERVER_CPU)?;
    let bin = topo::proxy_binary()?;
    run::say("starting both node proxies under callgrind (slow)");
    let p1 = bt.start_proxy_with(&bin, "node1", &bt.client, SERVER_CPU, r.wrapper, &[])?;
    let p2 = bt.start_proxy_with(&bin, "node2", &bt.server, SERVER_CPU, r.wrapper, &[])?;
    let ns = bt.client.netns()?;
    latency::wait_echo(&ns, LOADGEN_CPU, echo_addr, Duration::from_secs(60))?;
    let pids = [p1.pid, p2.pid];
    let (pings, bulk_msgs) = (r.a.pings, r.a.bulk_mib * 1024 * 1024 / BULK_MSG);
    run::say(format!(
        "{pings} round trips of {PING} B, then {} MiB echoed",
        r.a.bulk_mib
    ));
    sys::on_pinned_thread("instr-load", LOADGEN_CPU, &ns, move || {
        // Generous bounds: callgrind runs the proxies ~50x slower.
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut s = latency::connect(echo_addr)?;
        round_trips(&mut s, PING, WARMUP_PINGS, deadline)?;
        control("-z", &pids)?;
        round_trips(&mut s, PING, pings, deadline)?;
        control("-d", &pids)?;
        round_trips(&mut s, BULK_MSG, 16, deadline)?;
        control("-z", &pids)?;
        round_trips(&mut s, BULK_MSG, bulk_msgs, deadline)?;
        control("-d", &pids)
    })?;
    let mut doc = json!({
        "notes": [
            r.run_note,
            format!("binary: {}", bin.display()),
            format!("load: {pings} ping-pongs of {PING} B on one connection after {WARMUP_PINGS} warm-up ones; then {} MiB echoed in {BULK_MSG} B messages on the same connection", r.a.bulk_mib),
            COUNTS_NOTE.to_string(),
            MEMCPY_NOTE.to_string(),
            format!("took {:.0} s", r.started.elapsed().as_secs_f64()),
        ],
    });
    for (phase, part, units) in [
        ("pingpong", 1, pings as f64),
        ("bulk", 2, r.a.bulk_mib as f64),
    ] {
        for (node, pid) in [("node1", p1.pid), ("node2", p2.pid)] {
            let prof = read_part(r.dumps, pid, part)?;
            doc[phase][node] = figures(&prof, units);
        }
    }
    Ok(doc)
}

/// Each node proxy's syscalls per 64 B round trip, counted by strace over
/// `--pings` round trips on one connection; the proxies run at full speed
/// (strace slows each syscall, not what the proxies decide to call).
fn syscalls(a: &Args) -> Result<()> {
    let tmp = tempfile::tempdir().context("creating a directory for strace's output")?;
    let bt = BenchTopo::build(0)?;
    let echo_addr = SocketAddr::new(bt.server.ip, 7000);
    let _echo = EchoServer::start(&bt.server.netns()?, echo_addr, SERVER_CPU)?;
    let bin = topo::proxy_binary()?;
    let p1 = bt.start_proxy(&bin, "node1", &bt.client, SERVER_CPU)?;
    let p2 = bt.start_proxy(&bin, "node2", &bt.server, SERVER_CPU)?;
    let ns = bt.client.netns()?;
    latency::wait_echo(&ns, LOADGEN_CPU, echo_addr, Duration::from_secs(30))?;
    let pids = [p1.pid, p2.pid];
    let dir = tmp.path().to_path_buf();
    let pings = a.pings;
    let counts = sys::on_pinned_thread("instr-load", LOADGEN_CPU, &ns, move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut s = latency::connect(echo_addr)?;
        round_trips(&mut s, PING, WARMUP_PINGS, deadline)?;
        let tracers = pids
            .iter()
            .map(|&pid| Strace::attach(pid, &dir.join(format!("st.{pid}"))))
            .collect::<Result<Vec<_>>>()?;
        round_trips(&mut s, PING, pings, deadline)?;
        tracers
            .into_iter()
            .map(Strace::finish)
            .collect::<Result<Vec<_>>>()
    })?;
    print!(
        "{}",
        syscall_table(
            &format!("syscalls per 64 B round trip ({pings} round trips, one connection)"),
            &[("node1", &counts[0]), ("node2", &counts[1])],
            pings,
        )
    );
    Ok(())
}

/// Syscalls per unit of work side by side: calls and failed calls of each
/// column, per syscall name, and all calls.
fn syscall_table(title: &str, cols: &[(&str, &BTreeMap<String, Calls>)], units: usize) -> String {
    let mut md = format!("# {title}\n\n| syscall |");
    let mut rule = String::from("|---|");
    for (name, _) in cols {
        md += &format!(" {name} calls | {name} failed |");
        rule += "---:|---:|";
    }
    md += &format!("\n{rule}\n");
    let names: std::collections::BTreeSet<&String> =
        cols.iter().flat_map(|(_, m)| m.keys()).collect();
    let per = |n: u64| n as f64 / units as f64;
    for name in names {
        md += &format!("| {name} |");
        for (_, m) in cols {
            let c = m.get(name).copied().unwrap_or_default();
            md += &format!(" {:.2} | {:.2} |", per(c.calls), per(c.errors));
        }
        md += "\n";
    }
    md += "| all |";
    for (_, m) in cols {
        md += &format!(" {:.2} | |", per(m.values().map(|c| c.calls).sum()));
    }
    md + "\n"
}

/// The waypoint's syscalls per request, per protocol, counted by strace on
/// `trellis-l7-bench`'s topology with everything at full speed.
fn waypoint_syscalls(a: &Args) -> Result<()> {
    let t = L7Topo::build()?;
    let server_ns = t.bt.server.netns()?;
    let upstreams = Upstreams::start(
        &[Listen {
            ns: &server_ns,
            http: SocketAddr::new(t.bt.server.ip, HTTP_PORT),
            grpc: SocketAddr::new(t.bt.server.ip, GRPC_PORT),
        }],
        LOADGEN_CPU,
    )?;
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

const COUNTS_NOTE: &str = "counts: callgrind Ir (user-space instructions, kernel excluded) between zeroing and dumping the counters; task polls = calls of tokio's raw::poll; allocations = calls of malloc (glibc, the node proxy) or mi_malloc_aligned / mi_zalloc_aligned (mimalloc, the waypoint)";

/// The allocation entry points counted: glibc's, and mimalloc's as Rust's
/// global allocator calls them.
const ALLOCATORS: [&str; 3] = ["malloc", "mi_malloc_aligned", "mi_zalloc_aligned"];
const MEMCPY_NOTE: &str = "caveat: valgrind counts each byte a `rep movsb` moves as one instruction, so glibc's __memcpy_avx_unaligned_erms (and memset) on large buffers reads as bytes copied, not as its cost";

/// Warm-up requests per protocol before the counters are zeroed.
const WARMUP_REQUESTS: usize = 100;

/// The waypoint's figures, and nginx's for the same requests: each alone
/// under callgrind on the L7 bench's topology, sequential requests per
/// protocol.
fn waypoint(r: Run<'_>) -> Result<serde_json::Value> {
    let t = L7Topo::build()?;
    let server_ns = t.bt.server.netns()?;
    let plain_server_ns = t.plain_server.netns()?;
    let listen = |ns, ip| Listen {
        ns,
        http: SocketAddr::new(ip, HTTP_PORT),
        grpc: SocketAddr::new(ip, GRPC_PORT),
    };
    let upstreams = Upstreams::start(
        &[
            listen(&server_ns, t.bt.server.ip),
            listen(&plain_server_ns, t.plain_server.ip),
        ],
        LOADGEN_CPU,
    )?;
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
fn count_requests(ns: &NetNs, pid: u32, targets: &[Target], n: usize) -> Result<()> {
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
async fn calls(c: &mut Client, n: usize, deadline: Instant, what: &str) -> Result<()> {
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

fn waypoint_markdown(doc: &serde_json::Value) -> String {
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
