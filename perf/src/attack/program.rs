//! `trellis-attack-bench` put together; see perf/README.md for what it measures.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::attack::attacker::{Attack, Bounds, Target};
use crate::attack::bench::{self, Proxy, Row, Setup};
use crate::attack::report;
use crate::harness::run::{self, say, write_results};
use crate::harness::topo::{self, NAMESPACE, TRUST_DOMAIN};
use crate::l7::client::Proto;
use crate::l7::mesh::{L7Topo, WaypointProc, WEB_VIP};
use crate::l7::{load, HTTP_PORT};
use crate::{LOADGEN_CPU, SERVER_CPU};
use anyhow::{bail, Context, Result};
use serde_json::json;

struct Opts {
    quick: bool,
    out: PathBuf,
    attacks: Vec<Attack>,
    proxies: Vec<Proxy>,
}

fn usage() -> &'static str {
    "usage: trellis-attack-bench [--quick] [--out DIR] [--attacks LIST] [--proxies node,waypoint]\n\
     \n  --quick          5 s per attack instead of 15 s (writes attacks-quick.{json,md})\
     \n  --out DIR        where attacks.{json,md} go; default perf/results\
     \n  --attacks LIST   some of: rapid-reset, continuation-flood, header-flood, settings-flood,\
     \n                   slowloris-tls, slowloris-h2 (default: all)\
     \n  --proxies LIST   node, waypoint (default: both)\n"
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        quick: false,
        out: PathBuf::from("perf/results"),
        attacks: Attack::ALL.to_vec(),
        proxies: vec![Proxy::NodeProxy, Proxy::Waypoint],
    };
    let mut args = run::Args::new(usage());
    while let Some(a) = args.next_flag() {
        let mut val = |name: &str| args.value(name);
        match a.as_str() {
            "--quick" => o.quick = true,
            "--out" => o.out = PathBuf::from(val("--out")?),
            "--attacks" => {
                o.attacks = val("--attacks")?
                    .split(',')
                    .map(|s| {
                        Attack::parse(s.trim())
                            .with_context(|| format!("unknown attack {s:?}\n{}", usage()))
                    })
                    .collect::<Result<_>>()?;
            }
            "--proxies" => {
                o.proxies = val("--proxies")?
                    .split(',')
                    .map(|s| match s.trim() {
                        "node" => Ok(Proxy::NodeProxy),
                        "waypoint" => Ok(Proxy::Waypoint),
                        other => bail!("unknown proxy {other:?}\n{}", usage()),
                    })
                    .collect::<Result<_>>()?;
            }
            "-h" | "--help" => {
                print!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    Ok(o)
}

/// Runs `trellis-attack-bench` with this process's arguments.
pub fn run() -> Result<()> {
    let o = parse_args()?;
    let tools = [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("taskset", "util-linux"),
    ];
    let cpus = run::preflight("trellis-attack-bench", [LOADGEN_CPU, SERVER_CPU], &tools)?;
    let proxy_bin = topo::proxy_binary()?;
    let waypoint_bin = topo::sibling_binary("trellis-waypoint", "trellis-waypoint")?;
    let begun = run::begin(&cpus, LOADGEN_CPU, SERVER_CPU)?;
    let t = L7Topo::build()?;
    say(format!(
        "topology {}: client {} and attacker {} on node1; server {} and waypoint {} on node2",
        t.bt.topo.prefix(),
        t.bt.client.ip,
        t.plain_client.ip,
        t.bt.server.ip,
        t.proxy.ip
    ));
    let upstreams = t.start_upstreams(false, LOADGEN_CPU)?;
    // The attacked proxies alone on CPU 1; everything else on CPU 0.
    say("node1 proxy on CPU 0; node2 proxy and the waypoint on CPU 1");
    let mut proxies = vec![
        t.bt.start_proxy(&proxy_bin, "node1", &t.bt.client, LOADGEN_CPU)?,
        t.bt.start_proxy(&proxy_bin, "node2", &t.bt.server, SERVER_CPU)?,
    ];
    let mut waypoint = WaypointProc::start(&t, &waypoint_bin, SERVER_CPU)?;
    let client_ns = t.bt.client.netns()?;
    let attacker_ns = t.plain_client.netns()?;
    for target in [t.l4_target(Proto::Http1), t.waypoint_target(Proto::Http1)] {
        load::check(&client_ns, &target, Duration::from_secs(15))
            .with_context(|| format!("the victim's path to {}", target.dst))?;
    }
    let ca_dir = t.bt.dir().join("ca");
    let secs = if o.quick { 5 } else { 15 };
    let bounds = Bounds {
        duration: Duration::from_secs(secs),
        max_frames: 50_000_000,
        max_connections: 20_000,
        slow_conns: 200,
        byte_every: Duration::from_secs(1),
    };
    let mut rows: Vec<Row> = Vec::new();
    for &proxy in &o.proxies {
        let (pid, addr, authority, expect_sa, victim_target) = match proxy {
            Proxy::NodeProxy => (
                proxies[1].pid,
                bench::hbone_addr(t.bt.server.ip),
                SocketAddr::new(t.bt.server.ip, HTTP_PORT).to_string(),
                "server",
                t.l4_target(Proto::Http1),
            ),
            Proxy::Waypoint => (
                waypoint.pid,
                bench::hbone_addr(t.proxy.ip),
                SocketAddr::new(WEB_VIP.parse::<IpAddr>()?, 80).to_string(),
                "waypoint",
                t.waypoint_target(Proto::Http1),
            ),
        };
        let tls = bench::attacker_tls(&ca_dir, TRUST_DOMAIN, NAMESPACE, "mallory", expect_sa)?;
        let setup = Setup {
            proxy,
            pid,
            attacker_ns: &attacker_ns,
            attacker_cpu: LOADGEN_CPU,
            attack_target: Target {
                addr,
                authority,
                tls,
            },
            victim_ns: &client_ns,
            victim_cpu: LOADGEN_CPU,
            victim_target,
            baseline: Duration::from_secs(if o.quick { 3 } else { 5 }),
            bounds,
        };
        for &attack in &o.attacks {
            run::settle_within(Duration::from_secs(30));
            say(format!("{} / {}: {secs} s", proxy.label(), attack.key()));
            let row = bench::measure(&setup, attack)
                .with_context(|| format!("{} / {}", proxy.label(), attack.key()))?;
            say(format!(
                "  {}; attacker {} conns {} frames {:.1} MB {:.2} CPU-s; proxy {:.2} CPU-s, RSS peak {:+.1} MiB; victim p99 {:.1} → {:.1} ms, errors {} → {} {:?} — {}",
                row.outcome.proxy_answer(),
                row.outcome.connections,
                row.outcome.frames_sent,
                row.outcome.bytes_sent as f64 / 1e6,
                row.outcome.cpu_s,
                row.proxy_cpu_s,
                row.peak_growth_mib(),
                row.before.keepalive.p99_us / 1000.0,
                row.during.keepalive.p99_us / 1000.0,
                row.before.errors(),
                row.during.errors(),
                row.during.error_kinds,
                if row.pass() { "PASS" } else { "FAIL" }
            ));
            rows.push(row);
            for p in &mut proxies {
                p.check_alive()?;
            }
            waypoint.check_alive()?;
        }
    }
    drop(upstreams);
    let mut notes = begun.notes(
        if o.quick { "quick" } else { "full" },
        &run::read_trim("/proc/loadavg"),
    );
    notes.push(format!(
        "each attack {secs} s after {} s of the victim alone; frame attacks bounded at {} frames and {} connections; slowloris: {} connections, one byte per {:?}",
        if o.quick { 3 } else { 5 },
        bounds.max_frames,
        bounds.max_connections,
        bounds.slow_conns,
        bounds.byte_every
    ));
    notes.push("pinning: the attacked proxies (node2's node proxy, the waypoint) on CPU 1; the attacker (nice 19), the victim's load, the upstream server and node1's proxy on CPU 0".into());
    notes.push("attacker bytes are HTTP/2 bytes before TLS (slowloris-tls: TLS bytes); attacker CPU is its thread's CPU time (clock_gettime THREAD_CPUTIME), TLS included; proxy CPU is utime+stime of the attacked process over the attack window, victim traffic included".into());
    let config = json!({"attack_secs": secs, "quick": o.quick, "slow_conns": bounds.slow_conns});
    let doc = report::json_doc(&rows, &notes, config);
    let md = report::markdown(&rows, &notes);
    println!("{md}");
    let stem = if o.quick { "attacks-quick" } else { "attacks" };
    write_results(&o.out, stem, &doc, &md)?;
    if rows.iter().any(|r| !r.pass()) {
        say("some attacks did not end cleanly: see the table");
    }
    Ok(())
}
