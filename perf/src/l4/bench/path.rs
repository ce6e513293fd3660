//! One path (direct, Trellis, Envoy sidecars, ztunnel) through the four L4
//! workloads, with the mesh's processes measured and, on request, profiled.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::chain::columns::MeshUp;
use crate::harness::proc_stats::{BusyMeter, CpuMeter};
use crate::harness::run::{self, say};
use crate::harness::topo::{BenchTopo, NodeProxy};
use crate::l4::conn_rate::{self, ConnRateConfig};
use crate::l4::http_load::{self, RateConfig};
use crate::l4::latency::{self, PingPong};
use crate::l4::report::{PathResults, ProxyCosts, ServerCpu};
use crate::l4::throughput;
use crate::sidecars::mesh::Sidecar;
use crate::ztunnel::ZtunnelPair;
use crate::{LOADGEN_CPU, SERVER_CPU};
use anyhow::{Context, Result};

use super::*;

/// The processes of a mesh under test: their PIDs (CPU figures) and a
/// liveness check between phases.
pub(super) trait MeshProcs {
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
pub(super) const SYSCALL_EVENTS: &str = "raw_syscalls:sys_enter,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,\
syscalls:sys_enter_recvmsg,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,\
syscalls:sys_enter_sendmsg,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_epoll_ctl,\
syscalls:sys_enter_accept4,syscalls:sys_enter_connect,syscalls:sys_enter_socket,syscalls:sys_enter_close,\
syscalls:sys_enter_setsockopt,syscalls:sys_enter_getsockopt,syscalls:sys_enter_getsockname,syscalls:sys_enter_bind,\
syscalls:sys_enter_shutdown,syscalls:sys_enter_setns,syscalls:sys_enter_openat,syscalls:sys_enter_futex,\
syscalls:sys_enter_mmap,syscalls:sys_enter_munmap,syscalls:sys_enter_madvise,syscalls:sys_enter_mprotect,\
syscalls:sys_enter_brk,syscalls:sys_enter_ioctl,page-faults,context-switches,task-clock";

/// Tools attached to the proxies during a phase (profiling runs only).
pub(super) struct Attached(Vec<Child>);

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
pub(super) fn run_path(
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
