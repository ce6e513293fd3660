//! The L7 benchmark's topology and mesh, and the waypoint process.
//!
//! ```text
//! node1: client ─────── node proxy ══HBONE══> proxy pod: trellis-waypoint ══HBONE══> node2 proxy ── server
//!        plainclient ─────────────────────────> proxy pod: nginx ───────────────────────────────── plainserver
//! node2: server, plainserver, proxy
//! ```
//!
//! The mesh pods (client, server) are enrolled in their node's proxy; the
//! plain pods are not, so the nginx path has no capture and no node proxy,
//! and both paths can be measured in turn while everything stays up. One
//! upstream server instance listens in both server pods.
//!
//! Service `web` (VIP [`WEB_VIP`]) goes through the waypoint, with an
//! HTTPRoute (port 80), a GRPCRoute (port 9090), both setting
//! [`super::ROUTE_HEADER`], and an L7 ALLOW policy for the client's
//! principal on the benchmark's paths. Service `web-l4` (VIP [`L4_VIP`]) has
//! the same endpoint and no waypoint: the mesh without L7, for reference.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use trellis_e2e::proxy_args::WaypointArgs;
use trellis_e2e::{ChildGuard, Pod};
use trellis_netns::NetNs;

use super::client::{Proto, Target};
use super::servers::{Listen, Upstreams};
use super::{GRPC_PORT, HTTP_PORT};
use crate::harness::topo::{self, BenchTopo, NAMESPACE, TRUST_DOMAIN};

pub const WEB_VIP: &str = "198.19.100.20";
pub const L4_VIP: &str = "198.19.100.21";
/// Service `web-envoy`: the same endpoint, through the Envoy waypoint.
pub const ENVOY_VIP: &str = "198.19.100.22";
/// The Envoy waypoint's workload and service account.
pub const ENVOY_WAYPOINT: &str = "envoy-waypoint";
/// `Host` / `:authority` of every request, on every path.
pub const AUTHORITY: &str = "web.bench.svc.cluster.local";
/// nginx's listeners in the proxy pod.
pub const NGINX_HTTP1_PORT: u16 = 80;
pub const NGINX_HTTP2_PORT: u16 = 81;
pub const NGINX_GRPC_PORT: u16 = 9090;

/// The principal the L7 policy allows: the client pod's identity.
pub fn client_principal() -> String {
    format!("{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/client")
}

/// The L7 part of the config.
fn l7_yaml(proxy_ip: IpAddr, envoy_ip: IpAddr) -> String {
    let (h, v) = super::ROUTE_HEADER;
    let principal = client_principal();
    let svc = |name: &str, vip: &str, waypoint: &str| {
        format!(
            "  - name: {name}\n    namespace: {NAMESPACE}\n    hostname: {name}.{NAMESPACE}.svc.{TRUST_DOMAIN}\n    vips: [{vip}]\n    ports: [{{port: 80, targetPort: {HTTP_PORT}}}, {{port: {GRPC_PORT}, targetPort: {GRPC_PORT}}}]\n    endpoints: [server]\n{waypoint}"
        )
    };
    format!(
        r#"services:
{web}{l4}{envoy}waypoints:
  - {{name: waypoint, namespace: {NAMESPACE}}}
httpRoutes:
  - name: web
    namespace: {NAMESPACE}
    parentRefs: [{{name: web, port: 80}}]
    rules:
      - name: bench
        matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
        filters:
          - type: RequestHeaderModifier
            requestHeaderModifier: {{set: [{{name: {h}, value: {v}}}]}}
        backendRefs: [{{name: web, port: 80}}]
grpcRoutes:
  - name: web-grpc
    namespace: {NAMESPACE}
    parentRefs: [{{name: web, port: {GRPC_PORT}}}]
    rules:
      - name: echo
        matches: [{{method: {{service: {grpc_service}}}}}]
        filters:
          - type: RequestHeaderModifier
            requestHeaderModifier: {{set: [{{name: {h}, value: {v}}}]}}
        backendRefs: [{{name: web, port: {GRPC_PORT}}}]
authorizationPolicies:
  - name: allow-client
    namespace: {NAMESPACE}
    targetRefs: [{{kind: Service, name: web}}]
    action: ALLOW
    rules:
      - from: [{{source: {{principals: ["{principal}"]}}}}]
        to: [{{operation: {{paths: ["{path}", "/{grpc_service}/*"]}}}}]
"#,
        web = svc(
            "web",
            WEB_VIP,
            &format!("    waypoint: {{address: {proxy_ip}}}\n")
        ),
        l4 = svc("web-l4", L4_VIP, ""),
        envoy = svc(
            "web-envoy",
            ENVOY_VIP,
            &format!("    waypoint: {{address: {envoy_ip}}}\n")
        ),
        path = super::client::HTTP_PATH,
        grpc_service = super::grpc::SERVICE,
    )
}

/// The topology with its config written; nothing started yet.
pub struct L7Topo {
    pub bt: BenchTopo,
    pub plain_client: Pod,
    pub plain_server: Pod,
    /// Runs the waypoint and nginx.
    pub proxy: Pod,
    /// Runs the Envoy waypoint (its own address: both waypoints listen on 15008).
    pub envoy: Pod,
}

impl L7Topo {
    /// The upstream servers (HTTP and gRPC) in the server pod, and with
    /// `plain_too` in the plain server pod as well (nginx's upstream), on
    /// `cpu`.
    pub fn start_upstreams(&self, plain_too: bool, cpu: usize) -> Result<Upstreams> {
        let listen = |ns, ip| Listen {
            ns,
            http: SocketAddr::new(ip, HTTP_PORT),
            grpc: SocketAddr::new(ip, GRPC_PORT),
        };
        let server_ns = self.bt.server.netns()?;
        let plain_ns = self.plain_server.netns()?;
        let mut at = vec![listen(&server_ns, self.bt.server.ip)];
        if plain_too {
            at.push(listen(&plain_ns, self.plain_server.ip));
        }
        Upstreams::start(&at, cpu)
    }

    pub fn build() -> Result<L7Topo> {
        let extra = [
            ("node1", "plainclient"),
            ("node2", "plainserver"),
            ("node2", "proxy"),
            ("node2", "envoywp"),
        ];
        let bt = BenchTopo::build_with(&extra, |client, server, extra| {
            let ip = |name: &str| extra.iter().find(|p| p.name == name).map(|p| p.ip);
            let mut yaml = String::from("workloads:\n");
            yaml += &topo::workload("client", "client", client.ip, "node1");
            yaml += &topo::workload("server", "server", server.ip, "node2");
            if let (Some(proxy), Some(envoy)) = (ip("proxy"), ip("envoywp")) {
                yaml += &topo::workload("waypoint", "waypoint", proxy, "node2");
                yaml += &topo::workload(ENVOY_WAYPOINT, ENVOY_WAYPOINT, envoy, "node2");
                yaml += &l7_yaml(proxy, envoy);
            }
            yaml
        })?;
        // The proxies would refuse a broken file; say so here, with the file.
        let cfg = std::fs::read_to_string(bt.dir().join("mesh.yaml"))?;
        trellis_api::config::parse(&cfg)
            .map_err(|e| anyhow!("the bench wrote an invalid mesh config: {e}\n{cfg}"))?;
        Ok(L7Topo {
            plain_client: bt.extra_pod("plainclient")?.clone(),
            plain_server: bt.extra_pod("plainserver")?.clone(),
            proxy: bt.extra_pod("proxy")?.clone(),
            envoy: bt.extra_pod("envoywp")?.clone(),
            bt,
        })
    }

    /// What the waypoint path's client dials (a VIP its node proxy captures).
    pub fn waypoint_target(&self, proto: Proto) -> Target {
        vip_target(WEB_VIP, proto)
    }

    /// What the Envoy waypoint path's client dials (service `web-envoy`).
    pub fn envoy_target(&self, proto: Proto) -> Target {
        vip_target(ENVOY_VIP, proto)
    }

    /// The mesh without a waypoint (service `web-l4`), for reference.
    pub fn l4_target(&self, proto: Proto) -> Target {
        vip_target(L4_VIP, proto)
    }

    pub fn nginx_target(&self, proto: Proto) -> Target {
        let port = match proto {
            Proto::Http1 => NGINX_HTTP1_PORT,
            Proto::Http2 => NGINX_HTTP2_PORT,
            Proto::Grpc => NGINX_GRPC_PORT,
        };
        Target {
            dst: SocketAddr::new(self.proxy.ip, port),
            authority: AUTHORITY.into(),
            proto,
        }
    }
}

fn vip_target(vip: &str, proto: Proto) -> Target {
    let ip: IpAddr = vip.parse().expect("static VIP");
    let port = if proto == Proto::Grpc { GRPC_PORT } else { 80 };
    Target {
        dst: SocketAddr::new(ip, port),
        authority: AUTHORITY.into(),
        proto,
    }
}

/// A `trellis-waypoint` process in the proxy pod. Killed when dropped.
pub struct WaypointProc {
    pub pid: u32,
    ns: NetNs,
    metrics: SocketAddr,
    readiness: SocketAddr,
    guard: ChildGuard,
}

impl WaypointProc {
    /// Starts the waypoint (`--workers 1`, info logs unless
    /// `$TRELLIS_WAYPOINT_LOG` says otherwise, no access log, as nginx runs
    /// with `access_log off`) pinned to `cpu` in the proxy pod, and waits
    /// until it is ready.
    pub fn start(t: &L7Topo, bin: &Path, cpu: usize) -> Result<WaypointProc> {
        Self::start_wrapped(t, bin, cpu, &[], Duration::from_secs(20))
    }

    /// [`start`](Self::start) with the waypoint run under `wrapper` (a
    /// command and its arguments that exec it, such as valgrind), allowed
    /// `ready_within` to get ready.
    pub fn start_wrapped(
        t: &L7Topo,
        bin: &Path,
        cpu: usize,
        wrapper: &[&str],
        ready_within: Duration,
    ) -> Result<WaypointProc> {
        Self::start_in(&t.bt, &t.proxy, bin, cpu, wrapper, ready_within)
    }

    /// The waypoint `bench/waypoint` (service account `waypoint`) in `pod`
    /// of `bt`, reading `bt`'s config; otherwise as
    /// [`start_wrapped`](Self::start_wrapped).
    pub fn start_in(
        bt: &BenchTopo,
        pod: &Pod,
        bin: &Path,
        cpu: usize,
        wrapper: &[&str],
        ready_within: Duration,
    ) -> Result<WaypointProc> {
        let dir = bt.dir();
        let addrs_file = dir.join("waypoint-addrs.json");
        let _ = std::fs::remove_file(&addrs_file);
        // The tests' command line, without their access log, run under
        // `taskset` and the wrapper. For investigation, e.g.
        // TRELLIS_WAYPOINT_LOG=debug; the default is a deployment's.
        let args = WaypointArgs {
            name: format!("{NAMESPACE}/waypoint"),
            service_account: "waypoint".into(),
            feed: bt.files_feed(),
            bound_addrs_file: addrs_file.clone(),
            log: std::env::var("TRELLIS_WAYPOINT_LOG").unwrap_or_else(|_| "info".into()),
            access_log: false,
            extra: vec![],
        };
        let argv = topo::pinned_argv(cpu, wrapper, bin, &args.argv())?;
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut guard = bt
            .topo
            .spawn(&pod.name, &argv)
            .context("starting the waypoint")?;
        // One budget for writing its addresses and then getting ready.
        let deadline = Instant::now() + ready_within;
        let addrs = topo::wait_bound_addrs(&mut guard, &addrs_file, ready_within, "the waypoint")?;
        let addr = |k: &str| addrs.get(k);
        let wp = WaypointProc {
            pid: guard.pid(),
            ns: pod.netns()?,
            metrics: addr("metrics")?,
            readiness: addr("readiness")?,
            guard,
        };
        while wp.local_get(wp.readiness, "/healthz/ready").map(|r| r.0) != Ok(200) {
            if Instant::now() > deadline {
                bail!(
                    "the waypoint did not get ready in {ready_within:?}; its log:\n{}",
                    wp.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(wp)
    }

    /// GET on one of its local ports (127.0.0.1 inside the proxy pod).
    fn local_get(&self, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
        self.ns
            .run_in(|| trellis_e2e::cluster::http(addr, "GET", path, ""))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Sum of a metric's samples whose labels include all of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let (status, text) = self
            .local_get(self.metrics, "/metrics")
            .map_err(|e| anyhow!("reading the waypoint's metrics: {e}"))?;
        if status != 200 {
            bail!("the waypoint's /metrics answered {status}");
        }
        Ok(trellis_e2e::cluster::sum_samples(&text, name, labels))
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.guard.try_status() {
            bail!(
                "the waypoint exited ({status}); its log:\n{}",
                self.guard.log()
            );
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        self.guard.log()
    }
}
