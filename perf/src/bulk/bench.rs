//! `trellis-bulk-bench`: single-stream iperf3 through each column, the
//! columns interleaved round by round, on `trellis-bench`'s topology and
//! pinning (iperf3 -c on the load CPU; iperf3 -s and every proxy or relay
//! on the server CPU).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::columns::{parse_columns, Column, RelayPair, Running, TrellisPair};
use super::measure::{Measure, Sample};
use super::profile;
use super::relay::DEFAULT_BUFFER;
use super::report;
use crate::harness::run::{self, read_trim, say, write_results, Args};
use crate::harness::servers::{EchoServer, Iperf3Server};
use crate::harness::topo::{self, BenchTopo};
use crate::l4::latency;
use crate::ztunnel::{config as zconfig, ZtunnelMesh, ZtunnelPair};
use crate::{LOADGEN_CPU, SERVER_CPU};

const ECHO_PORT: u16 = 7000;
const IPERF_PORT: u16 = 5201;

pub const USAGE: &str = "usage: trellis-bulk-bench [--quick] [--secs N] [--repeat N] [--out DIR] \
[--columns direct,tcp-relay,splice-relay,uring,uring-fixed,uring-zc,tls-relay,uring-tls,trellis,trellis-lite,ztunnel] \
[--ztunnel PATH] [--pings N] [--syscalls DIR] [--profile DIR]\n\
  --quick          3 s per run, 1 round; writes bulk-quick.{json,md}\n\
  --secs N         iperf3 seconds per run (default 10)\n\
  --repeat N       rounds, each measuring every column once (default 3)\n\
  --out DIR        where bulk.{json,md} go; default perf/results\n\
  --columns LIST   which columns, in this order within a round (default all but ztunnel)\n\
  --ztunnel PATH   Istio's ztunnel binary for the ztunnel column (or $TRELLIS_ZTUNNEL)\n\
  --pings N        64 B round trips through each column after its iperf3 run (default 20000,\n\
                   2000 with --quick; 0: none)\n\
  --syscalls DIR   count the mesh processes' syscalls with perf stat (perturbs the figures;\n\
                   writes bulk-syscalls.{json,md})\n\
  --profile DIR    perf record the meshed columns' processes into DIR and report their top\n\
                   symbols and groups side by side (perturbs the figures; writes bulk-profile.{json,md})";

#[derive(Debug, Clone)]
pub struct Opts {
    pub quick: bool,
    pub secs: u32,
    pub repeat: usize,
    pub out: PathBuf,
    pub columns: Vec<Column>,
    pub syscalls: Option<PathBuf>,
    /// perf record data into this dir.
    pub profile: Option<PathBuf>,
    /// The ztunnel binary, when the ztunnel column is asked for.
    pub ztunnel: Option<PathBuf>,
    /// 64 B round trips per column and round.
    pub pings: usize,
}

impl Opts {
    /// From this process's arguments.
    pub fn parse() -> Result<Opts> {
        let mut a = Args::new(USAGE);
        let (mut quick, mut secs, mut repeat) = (false, None, None);
        let mut out = PathBuf::from("perf/results");
        let mut columns = Column::defaults();
        let mut syscalls = None;
        let mut profile = None;
        let mut ztunnel = None;
        let mut pings = None;
        while let Some(flag) = a.next_flag() {
            match flag.as_str() {
                "--quick" => quick = true,
                "--secs" => secs = Some(count(&a.value("--secs")?, "--secs", 1, 600)? as u32),
                "--repeat" => repeat = Some(count(&a.value("--repeat")?, "--repeat", 1, 50)?),
                "--out" => out = a.path("--out")?,
                "--columns" => columns = parse_columns(&a.value("--columns")?)?,
                "--syscalls" => syscalls = Some(a.path("--syscalls")?),
                "--profile" => profile = Some(a.path("--profile")?),
                "--ztunnel" => ztunnel = Some(a.path("--ztunnel")?),
                "--pings" => pings = Some(count(&a.value("--pings")?, "--pings", 0, 200_000)?),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown flag {other}\n{USAGE}"),
            }
        }
        let ztunnel = zconfig::choose_binary(
            columns.contains(&Column::Ztunnel),
            ztunnel.as_deref(),
            std::env::var_os(zconfig::ENV_VAR).as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("{e}\n{USAGE}"))?;
        Ok(Opts {
            quick,
            secs: secs.unwrap_or(if quick { 3 } else { 10 }),
            repeat: repeat.unwrap_or(if quick { 1 } else { 3 }),
            out,
            columns,
            syscalls,
            profile,
            ztunnel,
            pings: pings.unwrap_or(if quick { 2_000 } else { 20_000 }),
        })
    }

    fn stem(&self) -> String {
        stem(self.quick, self.syscalls.is_some(), self.profile.is_some())
    }
}

/// The results' file name: a perturbed run (perf attached) never
/// overwrites the plain figures of `bulk.*`.
fn stem(quick: bool, syscalls: bool, profile: bool) -> String {
    let mut s = String::from("bulk");
    for (on, part) in [
        (profile, "-profile"),
        (syscalls, "-syscalls"),
        (quick, "-quick"),
    ] {
        if on {
            s += part;
        }
    }
    s
}

fn count(v: &str, flag: &str, min: usize, max: usize) -> Result<usize> {
    match v.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => bail!("{flag} {v:?}: expected a whole number from {min} to {max}\n{USAGE}"),
    }
}

/// The binaries a run needs, next to this executable.
struct Binaries {
    proxy: Option<PathBuf>,
    relay: Option<PathBuf>,
}

impl Binaries {
    fn locate(columns: &[Column]) -> Result<Binaries> {
        let proxy = columns
            .iter()
            .any(|c| c.trellis_args().is_some())
            .then(topo::proxy_binary)
            .transpose()?;
        let relay = columns
            .iter()
            .any(|c| c.relay_mode().is_some())
            .then(|| topo::sibling_binary("trellis-relay", "trellis-perf"))
            .transpose()?;
        if columns.contains(&Column::Ztunnel) {
            // The ztunnels' xDS and CA.
            trellis_e2e::controller_proc::controller_bin()?;
        }
        Ok(Binaries { proxy, relay })
    }
}

/// Starts what `column` runs on the path; waits until the path carries traffic.
fn start(
    bt: &BenchTopo,
    bins: &Binaries,
    zt: Option<&ZtunnelMesh>,
    column: Column,
    echo: SocketAddr,
) -> Result<Running> {
    let running = match (column, column.relay_mode()) {
        (Column::Direct, _) => Running::Direct,
        (c, _) if c.trellis_args().is_some() => Running::Trellis(TrellisPair::start(
            bt,
            bins.proxy.as_deref().context("no proxy binary")?,
            SERVER_CPU,
            c.trellis_args().unwrap_or_default(),
        )?),
        (Column::Ztunnel, _) => Running::Ztunnel(ZtunnelPair::start(
            bt,
            zt.context("no ztunnel mesh")?,
            SERVER_CPU,
        )?),
        (_, Some(mode)) => Running::Relays(RelayPair::start(
            bt,
            bins.relay.as_deref().context("no relay binary")?,
            mode,
            SERVER_CPU,
        )?),
        (_, None) => bail!("column {} runs nothing", column.name()),
    };
    latency::wait_echo(
        &bt.client.netns()?,
        LOADGEN_CPU,
        echo,
        Duration::from_secs(15),
    )
    .with_context(|| format!("{}: the path does not carry traffic", column.name()))?;
    Ok(running)
}

/// Fails unless the flow really crossed the column's processes.
fn check_path(running: &Running, opened_before: &[f64], sample: &Sample) -> Result<()> {
    match running {
        Running::Direct => Ok(()),
        // The data connection carries (nearly) all of iperf3's bytes up.
        Running::Relays(pair) => pair.check_carried(sample.bytes / 2),
        Running::Ztunnel(pair) => pair.check_meshed(sample.bytes / 2),
        Running::Trellis(t) => {
            let after = t.opened()?;
            for (i, (a, b)) in opened_before.iter().zip(&after).enumerate() {
                if b - a < 1.0 {
                    bail!(
                        "the {} proxy opened no connection during iperf3: the flow bypassed the mesh; its log:\n{}",
                        t.proxies[i].node,
                        t.proxies[i].log()
                    );
                }
            }
            Ok(())
        }
    }
}

pub fn run(o: &Opts) -> Result<()> {
    let mut tools = vec![
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("iperf3", "iperf3"),
        ("taskset", "util-linux"),
    ];
    if o.syscalls.is_some() || o.profile.is_some() {
        tools.push(("perf", "linux-perf"));
    }
    let cpus = run::preflight("trellis-bulk-bench", [LOADGEN_CPU, SERVER_CPU], &tools)?;
    let bins = Binaries::locate(&o.columns)?;
    let begun = run::begin(&cpus, LOADGEN_CPU, SERVER_CPU)?;

    let bt = BenchTopo::build(0)?;
    say(format!(
        "topology {}: client {} on node1, server {} on node2",
        bt.topo.prefix(),
        bt.client.ip,
        bt.server.ip
    ));
    let echo = SocketAddr::new(bt.server.ip, ECHO_PORT);
    let _echo = EchoServer::start(&bt.server.netns()?, echo, SERVER_CPU)?;
    let _iperf = Iperf3Server::start(&bt.topo, &bt.server, IPERF_PORT, SERVER_CPU)?;
    latency::wait_echo(
        &bt.client.netns()?,
        LOADGEN_CPU,
        echo,
        Duration::from_secs(10),
    )?;
    let mut probe = vec![];
    if o.columns.iter().any(|c| c.uring()) {
        probe = uring_probe(&bt, bins.relay.as_deref().context("no relay binary")?)?;
        for line in &probe {
            say(format!("io_uring: {line}"));
        }
    }
    run::settle();

    let measure = Measure {
        bt: &bt,
        iperf: SocketAddr::new(bt.server.ip, IPERF_PORT),
        secs: o.secs,
        load_cpu: LOADGEN_CPU,
        server_cpu: SERVER_CPU,
        syscalls: o.syscalls.as_deref(),
        profile: o.profile.as_deref(),
        echo,
        pings: o.pings,
    };
    let zt = o
        .ztunnel
        .clone()
        .map(|bin| ZtunnelMesh::start(&bt, bin))
        .transpose()?;
    if let Some(z) = &zt {
        say(format!(
            "ztunnel {} ({}), trellis-controller in node1's netns",
            z.version,
            z.bin.display()
        ));
    }
    let mut samples = Vec::new();
    let mut zc_notes = Vec::new();
    for round in 0..o.repeat {
        for &column in &o.columns {
            say(format!(
                "round {}/{}: {} (iperf3 {} s)",
                round + 1,
                o.repeat,
                column.label(),
                o.secs
            ));
            let mut running = start(&bt, &bins, zt.as_ref(), column, echo)?;
            let opened = match &mut running {
                Running::Trellis(t) => t.opened()?,
                Running::Ztunnel(z) => {
                    z.mark()?;
                    vec![]
                }
                _ => vec![],
            };
            // A bounded wait: other work on this shared machine may never stop.
            run::settle_within(Duration::from_secs(5));
            let s = measure.run(column, round, &running.pids())?;
            running.check_alive()?;
            check_path(&running, &opened, &s)?;
            if let (Running::Relays(pair), Column::UringZcRelay) = (&running, column) {
                for line in pair.zc_summary() {
                    say(format!("  {line}"));
                    zc_notes.push(format!("round {}: {line}", round + 1));
                }
            }
            say(format!(
                "  {:.2} Gbit/s, proxy CPU {} s/GB, CPU 1 busy {:.3} s/GB, {} retransmits",
                s.gbit_per_s,
                s.proxy_cpu_s_per_gb()
                    .map_or_else(|| "–".into(), |c| format!("{c:.3}")),
                s.server_cpu_s_per_gb(),
                s.retransmits
            ));
            if let Some(r) = s.rtt {
                say(format!(
                    "  64 B RTT p50 {:.1} µs, p99 {:.1} µs",
                    r.p50_us, r.p99_us
                ));
            }
            samples.push(s);
        }
    }

    let summaries = report::summarize(&o.columns, &samples);
    let mut notes = begun.notes(
        if o.quick { "quick" } else { "full" },
        &read_trim("/proc/loadavg"),
    );
    notes.extend(setup_notes(o));
    if let Some(z) = &zt {
        notes.push(ztunnel_note(z));
    }
    if !zc_notes.is_empty() {
        notes.push(format!(
            "uring-zc, the iperf3 data connection's SEND_ZC notifications (IORING_SEND_ZC_REPORT_USAGE): {}",
            zc_notes.join("; ")
        ));
    }
    if !probe.is_empty() {
        notes.push(format!(
            "io_uring on this kernel (`trellis-relay --probe all` in the server pod): {}",
            probe.join("; ")
        ));
    }
    let mut md = report::markdown(
        "Bulk transfer: Trellis against its floors",
        &notes,
        &summaries,
        &samples,
    );
    let profiles = match &o.profile {
        Some(dir) => profiles(dir, &o.columns, &samples)?,
        None => vec![],
    };
    if o.profile.is_some() {
        md += &profile::markdown(&profiles);
    }
    let setup = json!({
        "iperf_secs": o.secs, "repeat": o.repeat,
        "columns": o.columns.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "relay_buffer_bytes": DEFAULT_BUFFER, "syscalls": o.syscalls.is_some(), "pings": o.pings,
        "ztunnel": zt.as_ref().map(|z| json!({
            "binary": z.bin.display().to_string(), "version": z.version,
            "env_node1": zconfig::env_line(&zconfig::env(&z.node_env("node1"))),
        })),
        "loadgen_cpu": LOADGEN_CPU, "server_cpu": SERVER_CPU,
    });
    let mut doc = report::to_json(&notes, &summaries, &samples, setup);
    doc["profiles"] = profiles
        .iter()
        .map(|p| {
            json!({
                "column": p.column.name(),
                "proxy_cpu_s_per_gb": p.cpu_s_per_gb,
                "profile": p.profile.to_json(),
            })
        })
        .collect();
    write_results(&o.out, &o.stem(), &doc, &md)?;
    print!("{md}");
    Ok(())
}

/// The first round's profile of each profiled column, Trellis's first
/// (the report's difference column is Trellis minus the next one).
fn profiles(dir: &Path, columns: &[Column], samples: &[Sample]) -> Result<Vec<profile::Profiled>> {
    let mut order: Vec<Column> = columns
        .iter()
        .copied()
        .filter(|c| profile::profiled(*c))
        .collect();
    order.sort_by_key(|c| (c.trellis_args().is_none(), *c != Column::Ztunnel));
    let mut out = Vec::new();
    for column in order {
        let Some(s) = samples.iter().find(|s| s.column == column && s.round == 0) else {
            continue;
        };
        let data = profile::data_path(dir, column, 0);
        say(format!("summarising {}", data.display()));
        let p = crate::l7::profile::summarize(&data, profile::TOP)
            .with_context(|| format!("summarising {}", data.display()))?;
        out.push(profile::Profiled {
            column,
            profile: p,
            cpu_s_per_gb: s.proxy_cpu_s_per_gb().unwrap_or(0.0),
        });
    }
    Ok(out)
}

/// The ztunnel column's version and environment (node1's; node2's differs
/// only in its node name, token and ZDS socket).
fn ztunnel_note(z: &ZtunnelMesh) -> String {
    format!(
        "ztunnel: Istio ztunnel {} ({}), shared mode, one per node netns, pods handed over ZDS by the bench, capture rules as Trellis's; xDS and CA from trellis-controller (manifests mode) in node1's netns; node1's env: `{}`",
        z.version,
        z.bin.display(),
        zconfig::env_line(&zconfig::env(&z.node_env("node1")))
    )
}

/// What io_uring this kernel offers, asked in the server pod's netns
/// (whose interfaces are its veth and loopback).
fn uring_probe(bt: &BenchTopo, relay: &Path) -> Result<Vec<String>> {
    let relay = relay.display().to_string();
    let out = trellis_e2e::process::run(
        "ip",
        &[
            "netns",
            "exec",
            bt.server.netns_name(),
            &relay,
            "--probe",
            "all",
        ],
        Duration::from_secs(20),
    )
    .context("probing io_uring in the server pod")?;
    Ok(out.lines().map(str::to_string).collect())
}

/// What the report says about how the columns were run.
fn setup_notes(o: &Opts) -> Vec<String> {
    let mut notes = vec![
        format!(
            "pinning: iperf3 -c on CPU {LOADGEN_CPU}; iperf3 -s, the relays and both node proxies (Trellis --workers 1, ztunnel ZTUNNEL_WORKER_THREADS=1) on CPU {SERVER_CPU}"
        ),
        format!(
            "load: iperf3 single stream, {} s per run; {} round(s), each measuring every column once in the order {}",
            o.secs,
            o.repeat,
            o.columns.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
        ),
        format!(
            "relays: one trellis-relay per pod behind the Envoy sidecars' capture (outbound 15001, inbound 15006, SO_ORIGINAL_DST, proxy mark); tokio current-thread runtime; copy_bidirectional with {} KiB per direction; splice: {} KiB pipe, a blocking thread per direction; tls: rustls with ring, TLS 1.3, HBONE's cipher suites and config builders, a read buffer and rustls send-buffer limit of the copy buffer's size, dev-CA SPIFFE certificates (mTLS), default record size, no HTTP/2",
            DEFAULT_BUFFER / 1024,
            DEFAULT_BUFFER / 1024
        ),
        format!(
            "uring relays: the same relays with the bytes moved on one io_uring (SINGLE_ISSUER|DEFER_TASKRUN) on one thread per relay, for all its connections; one {} KiB buffer per direction, received into and sent from serially; uring: RECV/SEND (MSG_WAITALL); uring-fixed: READ_FIXED/WRITE_FIXED on registered buffers; uring-zc: READ_FIXED in, SEND_ZC from the registered buffer out (the next receive waits for the zero-copy notification); uring-tls: tls's handshake and rustls configuration, then RECV/SEND on the ring with rustls between them (records sent as rustls writes them, one send per received buffer)",
            DEFAULT_BUFFER / 1024
        ),
        "proxy CPU: utime+stime of the relays or node proxies over the iperf3 run; CPU 1 busy: all of CPU 1 (iperf3 -s, proxies, softirq) per GB; ctx switches: voluntary+involuntary of the mesh processes' threads (not for splice, whose per-connection threads leave /proc before they are read)".to_string(),
    ];
    if o.pings > 0 {
        notes.push(format!(
            "round trip: after each iperf3 run, {} ping-pongs of 64 B through the same column on one connection to an echo server in the server pod (after {} to warm up), as trellis-bench measures issue 12's added RTT; added = the column's p50 (p99) minus direct's in the same round",
            o.pings,
            o.pings / 10
        ));
    }
    if let Some(dir) = &o.profile {
        notes.push(format!(
            "PERTURBED: perf record (cpu-clock 999 Hz, DWARF call graphs) sampled the mesh processes during each run; data in {}",
            dir.display()
        ));
    }
    if let Some(dir) = &o.syscalls {
        notes.push(format!(
            "PERTURBED: perf stat counted the mesh processes' syscalls (raw_syscalls:sys_enter) during each run; raw counts in {}",
            dir.display()
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perturbed_runs_write_their_own_files() {
        // (quick, syscalls, profile, stem)
        let cases = [
            (false, false, false, "bulk"),
            (true, false, false, "bulk-quick"),
            (false, true, false, "bulk-syscalls"),
            (false, false, true, "bulk-profile"),
            (true, true, true, "bulk-profile-syscalls-quick"),
        ];
        for (quick, syscalls, profile, want) in cases {
            assert_eq!(stem(quick, syscalls, profile), want);
        }
    }
}
