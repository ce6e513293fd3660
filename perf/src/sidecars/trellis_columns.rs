//! The two Trellis columns of the L4 workloads beside direct, ambient and
//! the Envoy sidecars (issue 15 asks for every column):
//!
//! * **Trellis ambient + waypoint**: both node proxies as in the ambient
//!   column, and `trellis-waypoint` in a pod of its own on node2, in front
//!   of the server's service; the client calls the service's VIP, which is
//!   what sends a call through a waypoint (as the chain bench's waypoint
//!   column does). HTTP gets the waypoint's L7 handling; iperf3 and the
//!   echo ping-pong are not HTTP, so the waypoint relays them as TCP after
//!   sniffing their first bytes (`waypoint/src/inbound.rs`).
//! * **Trellis sidecar-shaped**: one `--mode dedicated --capture` node
//!   proxy in the client's pod and one in the server's, called by pod
//!   address like the sidecars.
//!
//! Both use the launchers the chain bench and the pods-per-node memory use
//! ([`BenchTopo::start_proxy`], [`BenchTopo::start_sidecar_proxy`],
//! [`WaypointProc::start_in`]), pinned to one CPU with one worker.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use trellis_e2e::Pod;

use crate::chain::columns::{Column, MeshUp};
use crate::chain::topo::WAYPOINT_POD;
use crate::harness::proc_stats::rss_kib;
use crate::harness::topo::{self, BenchTopo};
use crate::l7::mesh::WaypointProc;

/// The service the server pod backs (endpoint: the server workload).
pub const SERVER_SERVICE: &str = "server";
/// Its VIP, which the client calls in the waypoint column.
pub const SERVER_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 100, 30));

/// One of the Trellis columns this module starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    AmbientWaypoint,
    Sidecar,
}

impl Shape {
    pub const ALL: [Shape; 2] = [Shape::AmbientWaypoint, Shape::Sidecar];

    /// The same column of the chain bench (its report name).
    pub fn column(self) -> Column {
        match self {
            Shape::AmbientWaypoint => Column::AmbientWaypoint,
            Shape::Sidecar => Column::TrellisSidecar,
        }
    }

    pub fn name(self) -> &'static str {
        self.column().name()
    }
}

/// How the Trellis columns beside ambient are set up, for the report.
pub const SETUP: &str = "Trellis ambient + waypoint: the two node proxies as in the ambient column, and \
`trellis-waypoint --workers 1` (CPU 1) in a pod of its own on node2 in front of the server's service; the client \
calls the service's VIP, so every workload crosses node1's proxy, the waypoint and node2's proxy (HBONE each \
way). HTTP goes through the waypoint's L7 path; iperf3 and the echo ping-pong are not HTTP, so the waypoint \
relays them as TCP after sniffing their first bytes. For new connections the waypoint, like the L7 Envoys, \
ends each client connection itself and sends the requests on over pooled keep-alive connections, so node2's \
proxy and nginx see few new connections. Trellis sidecar-shaped: one `--mode dedicated --capture` \
node proxy in the client's pod and one in the server's, called by pod address. Mesh CPU and idle RSS sum every \
mesh process of the column (the waypoint included).";

/// The processes `shape` starts, for the log.
pub fn processes(shape: Shape) -> &'static str {
    match shape {
        Shape::AmbientWaypoint => "both node proxies and the waypoint",
        Shape::Sidecar => "a dedicated node proxy in the client's and in the server's pod",
    }
}

/// The config the node proxies and the waypoint read: every pod an HBONE
/// workload (`extra` pods of service account `extra`, the waypoint's pod
/// its own), the server behind service [`SERVER_SERVICE`] on `ports`, and,
/// with `waypoint`, that pod's waypoint in front of the service.
pub fn mesh_yaml(
    client: IpAddr,
    server: IpAddr,
    extra: &[(&str, IpAddr)],
    waypoint_pod: IpAddr,
    ports: &[u16],
    waypoint: bool,
) -> String {
    let mut y = String::from("workloads:\n");
    y += &topo::workload("client", "client", client, "node1");
    y += &topo::workload("server", "server", server, "node2");
    for (name, ip) in extra {
        y += &topo::workload(name, "extra", *ip, "node1");
    }
    y += &topo::workload(WAYPOINT_POD, WAYPOINT_POD, waypoint_pod, "node2");
    let ports: Vec<(u16, u16)> = ports.iter().map(|&p| (p, p)).collect();
    y += "services:\n";
    y += &topo::service(
        SERVER_SERVICE,
        SERVER_VIP,
        &ports,
        &["server"],
        waypoint.then_some(waypoint_pod),
    );
    if waypoint {
        y += &topo::waypoints(WAYPOINT_POD);
    }
    y
}

/// The L4 bench's topology: [`BenchTopo::build`]'s pods (the extra pods all
/// on node1) plus the waypoint's pod on node2, which is not among the
/// extras (nothing enrolls it).
pub struct L4Topo {
    pub bt: BenchTopo,
    pub waypoint: Pod,
    /// The server's ports, which its service forwards as they are.
    ports: Vec<u16>,
}

impl L4Topo {
    /// Builds the namespaces and writes the config without the waypoint.
    pub fn build(extra_pods: usize, ports: &[u16]) -> Result<L4Topo> {
        let names: Vec<String> = (1..=extra_pods).map(|i| format!("extra{i}")).collect();
        let mut pods: Vec<(&str, &str)> = names.iter().map(|n| ("node1", n.as_str())).collect();
        pods.push(("node2", WAYPOINT_POD));
        let mut bt = BenchTopo::build_with(&pods, |_, _, _| String::new())?;
        let waypoint = bt
            .extra
            .pop()
            .filter(|p| p.name == WAYPOINT_POD)
            .ok_or_else(|| anyhow!("the topology has no {WAYPOINT_POD} pod"))?;
        let t = L4Topo {
            bt,
            waypoint,
            ports: ports.to_vec(),
        };
        t.write_config(false)?;
        Ok(t)
    }

    /// (Re)writes `mesh.yaml`, with or without the waypoint in front of the
    /// server's service; processes started afterwards read it.
    pub fn write_config(&self, with_waypoint: bool) -> Result<()> {
        let bt = &self.bt;
        let extra: Vec<(&str, IpAddr)> = bt.extra.iter().map(|p| (p.name.as_str(), p.ip)).collect();
        let yaml = mesh_yaml(
            bt.client.ip,
            bt.server.ip,
            &extra,
            self.waypoint.ip,
            &self.ports,
            with_waypoint,
        );
        // The proxies would refuse a broken file; say so here, with the file.
        trellis_api::config::parse(&yaml)
            .map_err(|e| anyhow!("the bench wrote an invalid mesh config: {e}\n{yaml}"))?;
        std::fs::write(bt.dir().join("mesh.yaml"), yaml).context("writing mesh.yaml")
    }

    /// Where the client sends to reach the server in `shape`'s column.
    pub fn server_addr(&self, shape: Shape) -> IpAddr {
        match shape {
            Shape::AmbientWaypoint => SERVER_VIP,
            Shape::Sidecar => self.bt.server.ip,
        }
    }

    /// Starts `shape`'s mesh (the config rewritten for it), every process
    /// pinned to `cpu` with one worker; the waypoint is ready when this
    /// returns.
    pub fn start(
        &self,
        shape: Shape,
        node_proxy: &Path,
        waypoint: &Path,
        cpu: usize,
    ) -> Result<MeshUp> {
        let bt = &self.bt;
        self.write_config(shape == Shape::AmbientWaypoint)?;
        let mut up = MeshUp::default();
        match shape {
            Shape::AmbientWaypoint => {
                up.node_proxies = vec![
                    bt.start_proxy(node_proxy, "node1", &bt.client, cpu)?,
                    bt.start_proxy(node_proxy, "node2", &bt.server, cpu)?,
                ];
                up.waypoint = Some(WaypointProc::start_in(
                    bt,
                    &self.waypoint,
                    waypoint,
                    cpu,
                    &[],
                    Duration::from_secs(20),
                )?);
            }
            Shape::Sidecar => {
                for p in [&bt.client, &bt.server] {
                    up.node_proxies
                        .push(bt.start_sidecar_proxy(node_proxy, p, cpu)?);
                }
            }
        }
        Ok(up)
    }
}

/// (process, RSS in KiB) of every process of `mesh`.
pub fn idle_rss(mesh: &MeshUp) -> Result<Vec<(String, u64)>> {
    let mut v = Vec::new();
    for p in &mesh.node_proxies {
        let kib = rss_kib(p.pid).with_context(|| format!("reading the {} proxy's RSS", p.node))?;
        v.push((format!("{} proxy", p.node), kib));
    }
    if let Some(w) = &mesh.waypoint {
        v.push((
            "waypoint".into(),
            rss_kib(w.pid).context("reading the waypoint's RSS")?,
        ));
    }
    Ok(v)
}

/// Checks that what went so far crossed every process of `mesh`: each
/// proxy counted a connection, and the waypoint counted a TCP stream and,
/// with `http`, an HTTP request. Proves the load did not go around it.
pub fn check_carried(shape: Shape, mesh: &MeshUp, http: bool) -> Result<()> {
    const OPENED: &str = "istio_tcp_connections_opened_total";
    for p in &mesh.node_proxies {
        if p.metric_sum(OPENED)? < 1.0 {
            bail!(
                "{}: the {} proxy recorded no connection: traffic is not going through the mesh; its log:\n{}",
                shape.name(),
                p.node,
                p.log()
            );
        }
    }
    if let Some(w) = &mesh.waypoint {
        let mut want = vec![(OPENED, "TCP stream")];
        if http {
            want.push(("istio_requests_total", "HTTP request"));
        }
        for (metric, what) in want {
            if w.metric(metric, &[])? < 1.0 {
                bail!(
                    "{}: the waypoint counted no {what} ({metric}): the calls to {SERVER_VIP} did not go through it; its log:\n{}",
                    shape.name(),
                    w.log()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_parses_and_puts_the_waypoint_in_front_of_the_server_only_when_asked() {
        let ip = |d: u8| IpAddr::V4(Ipv4Addr::new(198, 18, 1, d));
        let extra = [("extra1", ip(20)), ("extra2", ip(21))];
        // (waypoint, services with a waypoint)
        for (wp, with) in [(false, 0), (true, 1)] {
            let y = mesh_yaml(ip(2), ip(3), &extra, ip(50), &[5201, 7000, 80], wp);
            let cfg = trellis_api::config::parse(&y).unwrap_or_else(|e| panic!("{e}\n{y}"));
            assert_eq!(cfg.workloads.len(), 5, "{y}");
            assert_eq!(cfg.services.len(), 1, "{y}");
            let svc = &cfg.services[0];
            assert_eq!(svc.ports.len(), 3, "{y}");
            assert_eq!(
                cfg.services.iter().filter(|s| s.waypoint.is_some()).count(),
                with,
                "{y}"
            );
        }
    }
}
