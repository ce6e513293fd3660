//! The call chain's topology and mesh config.
//!
//! ```text
//! node1: client   chain1   chain3
//! node2: chain0   chain2   chain4   waypoint
//! ```
//!
//! The chain's services alternate between the nodes, starting on the node
//! the client is not on, so every hop of every chain crosses from one node
//! to the other. Each service is an HBONE workload of its own service
//! account, and a service (`chainN`, VIP [`vip`]`(N)`, port
//! [`VIP_PORT`] to [`SERVICE_PORT`]). Without a waypoint, services call the
//! next one by its pod address, as the Envoy sidecars are configured; with
//! the waypoint, by its VIP, which is what sends a call through a
//! waypoint.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{anyhow, Context, Result};
use trellis_e2e::Pod;

use crate::harness::topo::{self, BenchTopo};

/// Where every chain service listens in its pod.
pub const SERVICE_PORT: u16 = 8080;
/// The services' port on their VIPs.
pub const VIP_PORT: u16 = 80;
/// The longest chain the topology has pods for.
pub const MAX_DEPTH: usize = 5;
/// The pod that runs the waypoint.
pub const WAYPOINT_POD: &str = "waypoint";

/// Name of the chain's `i`-th service (0: the head), and of its pod,
/// workload and service account.
pub fn service_name(i: usize) -> String {
    format!("chain{i}")
}

/// The node the `i`-th service runs on: the client is on node1, so the head
/// goes on node2 and the rest alternate.
pub fn node_of(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "node2"
    } else {
        "node1"
    }
}

/// The `i`-th service's VIP.
pub fn vip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 19, 100, 40 + i as u8))
}

/// How callers address the chain's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// Pod address and [`SERVICE_PORT`].
    Pod,
    /// Service VIP and [`VIP_PORT`] (through the waypoint).
    Vip,
}

/// The config every node proxy, sidecar-shaped proxy and the waypoint read:
/// the workloads, the chain's services, and with `waypoint` (its pod's
/// address) a waypoint in front of each service.
pub fn mesh_yaml(
    client: IpAddr,
    server: IpAddr,
    chain: &[IpAddr],
    waypoint: Option<IpAddr>,
) -> String {
    let mut y = String::from("workloads:\n");
    y += &topo::workload("client", "client", client, "node1");
    y += &topo::workload("server", "server", server, "node2");
    for (i, ip) in chain.iter().enumerate() {
        let name = service_name(i);
        y += &topo::workload(&name, &name, *ip, node_of(i));
    }
    if let Some(ip) = waypoint {
        y += &topo::workload(WAYPOINT_POD, WAYPOINT_POD, ip, "node2");
    }
    y += "services:\n";
    for i in 0..chain.len() {
        let name = service_name(i);
        y += &topo::service(
            &name,
            vip(i),
            &[(VIP_PORT, SERVICE_PORT)],
            &[&name],
            waypoint,
        );
    }
    if waypoint.is_some() {
        y += &topo::waypoints(WAYPOINT_POD);
    }
    y
}

/// The built topology: the bench's client (node1) and server pods, the
/// [`MAX_DEPTH`] chain pods and the waypoint's pod.
pub struct ChainTopo {
    pub bt: BenchTopo,
    /// chain0 .. chain4.
    pub chain: Vec<Pod>,
    pub waypoint: Pod,
}

impl ChainTopo {
    /// Builds the namespaces and writes the config without a waypoint.
    pub fn build() -> Result<ChainTopo> {
        let names: Vec<String> = (0..MAX_DEPTH).map(service_name).collect();
        let mut extra: Vec<(&str, &str)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (node_of(i), n.as_str()))
            .collect();
        extra.push(("node2", WAYPOINT_POD));
        let bt = BenchTopo::build_with(&extra, |_, _, _| String::new())?;
        let chain = names
            .iter()
            .map(|n| bt.extra_pod(n).cloned())
            .collect::<Result<Vec<_>>>()?;
        let waypoint = bt.extra_pod(WAYPOINT_POD)?.clone();
        let ct = ChainTopo {
            bt,
            chain,
            waypoint,
        };
        ct.write_config(false)?;
        Ok(ct)
    }

    /// (Re)writes `mesh.yaml`, with or without the waypoint in front of
    /// every service; processes started afterwards read it.
    pub fn write_config(&self, with_waypoint: bool) -> Result<()> {
        let chain: Vec<IpAddr> = self.chain.iter().map(|p| p.ip).collect();
        let yaml = mesh_yaml(
            self.bt.client.ip,
            self.bt.server.ip,
            &chain,
            with_waypoint.then_some(self.waypoint.ip),
        );
        // The proxies would refuse a broken file; say so here, with the file.
        trellis_api::config::parse(&yaml)
            .map_err(|e| anyhow!("the chain bench wrote an invalid mesh config: {e}\n{yaml}"))?;
        std::fs::write(self.bt.dir().join("mesh.yaml"), yaml).context("writing mesh.yaml")
    }

    /// Where callers send to reach the `i`-th service.
    pub fn target(&self, i: usize, how: Addressing) -> SocketAddr {
        match how {
            Addressing::Pod => SocketAddr::new(self.chain[i].ip, SERVICE_PORT),
            Addressing::Vip => SocketAddr::new(vip(i), VIP_PORT),
        }
    }

    /// The pods a chain of `depth` services runs in.
    pub fn pods(&self, depth: usize) -> &[Pod] {
        &self.chain[..depth]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hop_crosses_nodes() {
        let mut prev = "node1"; // the client
        for i in 0..MAX_DEPTH {
            assert_ne!(node_of(i), prev, "hop {i}");
            prev = node_of(i);
        }
    }

    #[test]
    fn the_config_parses_and_puts_the_waypoint_in_front_of_every_service() {
        let ip = |d: u8| IpAddr::V4(Ipv4Addr::new(198, 18, 1, d));
        let chain: Vec<IpAddr> = (10..13).map(ip).collect();
        // (waypoint, services with a waypoint)
        let cases = [(None, 0), (Some(ip(50)), 3)];
        for (wp, with) in cases {
            let y = mesh_yaml(ip(2), ip(3), &chain, wp);
            let cfg = trellis_api::config::parse(&y).unwrap_or_else(|e| panic!("{e}\n{y}"));
            assert_eq!(cfg.services.len(), 3, "{y}");
            assert_eq!(
                cfg.services.iter().filter(|s| s.waypoint.is_some()).count(),
                with,
                "{y}"
            );
            assert_eq!(cfg.workloads.len(), 5 + usize::from(wp.is_some()), "{y}");
        }
    }
}
