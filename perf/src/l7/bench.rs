//! The measurement loop of `trellis-l7-bench`: the running topology, the
//! paths through it, one checked load run on a path, and the checks
//! that each path really goes where it should before anything is measured.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use trellis_netns::NetNs;

use super::client::{Proto, Target};
use super::envoy_waypoint::EnvoyWaypoint;
use super::load::{self, LoadResult, MaxConfig, RateConfig, Watch};
use super::mesh::{self, L7Topo, WaypointProc};
use super::nginx::{NginxProxy, Support};
use super::servers::Upstreams;
use super::{LOAD_CPU, PROXY_CPU};
use crate::harness::run::say;
use crate::harness::sys;
use crate::harness::topo::NodeProxy;

/// What the bench runs and where. Fields drop in order: the processes and
/// servers before the namespaces they live in.
pub struct Bench {
    pub rate: RateConfig,
    pub max: MaxConfig,
    pub waypoint: WaypointProc,
    pub envoy: EnvoyWaypoint,
    pub proxies: Vec<NodeProxy>,
    pub nginx: NginxProxy,
    pub support: Support,
    pub upstreams: Upstreams,
    pub client_ns: NetNs,
    pub plain_ns: NetNs,
    pub t: L7Topo,
}

/// Which way the load goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Plain client → nginx → plain server.
    Nginx,
    /// Client → node proxy → waypoint → node proxy → server.
    Waypoint,
    /// The same with Envoy as the waypoint (service `web-envoy`).
    EnvoyWaypoint,
    /// Client → node proxy → node proxy → server: the mesh without L7.
    L4,
    /// The same, with both node proxies moved onto the proxy's CPU for the
    /// run: the cross-CPU wake-ups of nginx's path (client → CPU 1 → server
    /// and back) plus the two node-proxy hops every mesh request pays, and no
    /// L7 work. What a waypoint path would cost if the waypoint were free.
    L4Floor,
}

impl Path {
    pub fn label(self) -> &'static str {
        match self {
            Path::Nginx => "nginx",
            Path::Waypoint => "waypoint",
            Path::EnvoyWaypoint => "Envoy waypoint",
            Path::L4 => "mesh L4",
            Path::L4Floor => "mesh L4 via CPU 1",
        }
    }
}

impl Bench {
    pub fn target(&self, path: Path, proto: Proto) -> Target {
        match path {
            Path::Nginx => self.t.nginx_target(proto),
            Path::Waypoint => self.t.waypoint_target(proto),
            Path::EnvoyWaypoint => self.t.envoy_target(proto),
            Path::L4 | Path::L4Floor => self.t.l4_target(proto),
        }
    }

    pub fn ns(&self, path: Path) -> &NetNs {
        match path {
            Path::Nginx => &self.plain_ns,
            Path::Waypoint | Path::EnvoyWaypoint | Path::L4 | Path::L4Floor => &self.client_ns,
        }
    }

    pub fn watch(&self, path: Path) -> Watch {
        let mesh: Vec<u32> = self.proxies.iter().map(|p| p.pid).collect();
        match path {
            Path::Nginx => Watch {
                proxy: vec![self.nginx.pid],
                mesh: vec![],
            },
            Path::Waypoint => Watch {
                proxy: vec![self.waypoint.pid],
                mesh,
            },
            Path::EnvoyWaypoint => Watch {
                proxy: vec![self.envoy.pid],
                mesh,
            },
            Path::L4 | Path::L4Floor => Watch {
                proxy: vec![],
                mesh,
            },
        }
    }

    pub fn check_alive(&mut self) -> Result<()> {
        self.nginx.check_alive()?;
        self.waypoint.check_alive()?;
        self.envoy.check_alive()?;
        for p in &mut self.proxies {
            p.check_alive()?;
        }
        Ok(())
    }

    /// `e` with the last lines of the waypoint's and node proxies' logs; the
    /// whole logs are kept in a directory named there (the topology's own log
    /// files go with it).
    pub fn with_logs(&self, e: anyhow::Error) -> anyhow::Error {
        let tail = |log: &str| {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        let dir =
            std::env::temp_dir().join(format!("trellis-l7-bench-logs-{}", std::process::id()));
        let mut logs = vec![
            ("waypoint".to_string(), self.waypoint.log()),
            ("envoy-waypoint".to_string(), self.envoy.diagnostics()),
        ];
        for p in &self.proxies {
            logs.push((format!("{}-proxy", p.node), p.log()));
        }
        let kept = std::fs::create_dir_all(&dir).is_ok()
            && logs
                .iter()
                .all(|(n, l)| std::fs::write(dir.join(format!("{n}.log")), l).is_ok());
        let mut text = String::new();
        for (n, l) in &logs {
            text += &format!("--- {n} log (tail) ---\n{}\n", tail(l));
        }
        if kept {
            text += &format!("(whole logs in {})", dir.display());
        }
        e.context(text)
    }

    /// Snapshot of the servers' (seen, routed) for `proto`.
    pub fn upstream_counts(&self, proto: Proto) -> (u64, u64) {
        let [h, hr, g, gr] = self.upstreams.counts().get();
        if proto == Proto::Grpc {
            (g, gr)
        } else {
            (h, hr)
        }
    }

    pub fn run(&mut self, path: Path, proto: Proto, max: bool) -> Result<LoadResult> {
        if path != Path::L4Floor {
            return self.run_here(path, proto, max);
        }
        let pids: Vec<u32> = self.proxies.iter().map(|p| p.pid).collect();
        let pin = |cpu| -> Result<()> {
            for &pid in &pids {
                sys::repin_process(pid, cpu)?;
            }
            Ok(())
        };
        // Back where every other path expects them, even after a failed
        // move or run; the first error is the one reported.
        let r = pin(PROXY_CPU).and_then(|()| self.run_here(path, proto, max));
        let back = pin(LOAD_CPU);
        let r = r?;
        back?;
        Ok(r)
    }

    fn run_here(&mut self, path: Path, proto: Proto, max: bool) -> Result<LoadResult> {
        let target = self.target(path, proto);
        let watch = self.watch(path);
        let before = self.upstream_counts(proto);
        let mut r = if max {
            say(format!(
                "{} {}: closed loop, {} in flight, {:.1} s",
                path.label(),
                proto.label(),
                self.max.concurrency,
                self.max.duration.as_secs_f64()
            ));
            load::max_rate(self.ns(path), LOAD_CPU, &target, self.max, &watch)
                .map_err(|e| self.with_logs(e))?
        } else {
            say(format!(
                "{} {}: open loop at {:.0} req/s, {:.1} s",
                path.label(),
                proto.label(),
                self.rate.rate,
                self.rate.duration.as_secs_f64()
            ));
            load::fixed_rate(self.ns(path), LOAD_CPU, &target, self.rate, &watch)
                .map_err(|e| self.with_logs(e))?
        };
        let after = self.upstream_counts(proto);
        r.upstream_seen = after.0 - before.0;
        r.upstream_routed = after.1 - before.1;
        say(format!(
            "  {:.0} req/s, p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, {} errors {:?}; proxy {:.2} CPU-s ({:.0} req/CPU-s), node proxies {:.2} CPU-s",
            r.rps,
            r.latency.p50_us,
            r.latency.p90_us,
            r.latency.p99_us,
            r.latency.p999_us,
            r.errors,
            r.error_kinds,
            r.usage.proxy_cpu_s,
            r.per_proxy_cpu_s(),
            r.usage.mesh_cpu_s
        ));
        self.check_alive()?;
        Ok(r)
    }

    /// Every path answers every protocol, through the proxy it should, and
    /// the waypoint enforces its policy.
    pub fn verify(&mut self) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        for proto in Proto::ALL {
            for path in [Path::Nginx, Path::Waypoint, Path::EnvoyWaypoint, Path::L4] {
                if path == Path::Nginx && self.support[&proto].is_some() {
                    continue;
                }
                let before = self.upstream_counts(proto);
                load::check(
                    self.ns(path),
                    &self.target(path, proto),
                    Duration::from_secs(15),
                )
                .with_context(|| format!("checking the {} path", path.label()))?;
                let after = self.upstream_counts(proto);
                let routed = after.1 > before.1;
                if routed != (path != Path::L4) {
                    bail!(
                        "{} {}: the server saw route header {routed}; the request did not take the path it should",
                        path.label(),
                        proto.label()
                    );
                }
            }
        }
        for path in [Path::Waypoint, Path::EnvoyWaypoint] {
            let forbidden = trellis_e2e::l7kit::http1_request(
                Some(&self.client_ns),
                self.target(path, Proto::Http1).dst,
                "GET",
                "/forbidden",
                &[("host", mesh::AUTHORITY)],
                b"",
            )
            .with_context(|| {
                format!(
                    "the policy probe (GET /forbidden through the {})",
                    path.label()
                )
            })?;
            if forbidden.status != 403 {
                bail!(
                    "GET /forbidden through the {} answered {}, expected 403 from the L7 policy: {}",
                    path.label(),
                    forbidden.status,
                    forbidden.body
                );
            }
        }
        let (envoy_allowed, envoy_denied) = self.envoy.rbac_counts()?;
        if envoy_allowed < 3 || envoy_denied < 1 {
            bail!("the Envoy waypoint's RBAC stats show {envoy_allowed} allowed and {envoy_denied} denied requests; expected at least 3 and 1");
        }
        let ok = self.waypoint.metric(
            "istio_requests_total",
            &[("response_code", "200"), ("reporter", "waypoint")],
        )?;
        let denied = self
            .waypoint
            .metric("istio_requests_total", &[("response_code", "403")])?;
        if ok < 3.0 || denied < 1.0 {
            bail!("the waypoint's metrics show {ok} answered and {denied} denied requests; expected at least 3 and 1");
        }
        for p in &self.proxies {
            if p.metric_sum("istio_tcp_connections_opened_total")? < 1.0 {
                bail!(
                    "the {} proxy recorded no connection; its log:\n{}",
                    p.node,
                    p.log()
                );
            }
        }
        notes.push(format!(
            "checked before measuring: every path answers every protocol; the upstream saw the route's header from nginx and both waypoints and not from the L4 path; GET /forbidden through either waypoint got 403 from its L7 policy (Trellis waypoint metrics: {ok} requests 200, {denied} 403; Envoy waypoint RBAC filter: {envoy_allowed} allowed, {envoy_denied} denied)"
        ));
        Ok(notes)
    }
}
