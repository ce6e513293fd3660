//! The chain's columns: which mesh carries the calls, how it is started on
//! the chain topology, and the check that the calls really went through it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::topo::{Addressing, ChainTopo, SERVICE_PORT};
use crate::harness::topo::NodeProxy;
use crate::l7::mesh::WaypointProc;
use crate::sidecars::bootstrap::{PortSpec, Protocol, Variant};
use crate::sidecars::envoy::Envoy;
use crate::sidecars::mesh::{start_mesh, MeshPod, MeshSpec, Sidecar};

/// One way of carrying the chain's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// No mesh, no capture.
    Direct,
    /// One shared-mode node proxy per node.
    Ambient,
    /// The same, and a waypoint in front of every service (calls by VIP).
    AmbientWaypoint,
    /// One Envoy per pod, `tcp_proxy`.
    EnvoyL4,
    /// One Envoy per pod, HTTP connection manager.
    EnvoyL7,
    /// One dedicated-mode node proxy per pod.
    TrellisSidecar,
}

impl Column {
    pub const ALL: [Column; 6] = [
        Column::Direct,
        Column::Ambient,
        Column::AmbientWaypoint,
        Column::EnvoyL4,
        Column::EnvoyL7,
        Column::TrellisSidecar,
    ];

    /// The report's name.
    pub fn name(self) -> &'static str {
        match self {
            Column::Direct => "direct",
            Column::Ambient => "Trellis ambient",
            Column::AmbientWaypoint => "Trellis ambient + waypoint",
            Column::EnvoyL4 => "Envoy sidecars L4",
            Column::EnvoyL7 => "Envoy sidecars L7",
            Column::TrellisSidecar => "Trellis sidecar-shaped",
        }
    }

    /// The JSON key and `--columns` name.
    pub fn key(self) -> &'static str {
        match self {
            Column::Direct => "direct",
            Column::Ambient => "ambient",
            Column::AmbientWaypoint => "ambient-waypoint",
            Column::EnvoyL4 => "envoy-l4",
            Column::EnvoyL7 => "envoy-l7",
            Column::TrellisSidecar => "trellis-sidecar",
        }
    }

    pub fn parse(s: &str) -> Result<Column> {
        Column::ALL
            .into_iter()
            .find(|c| c.key() == s)
            .with_context(|| {
                let keys: Vec<&str> = Column::ALL.iter().map(|c| c.key()).collect();
                format!(
                    "unknown chain column {s:?}; the columns are: {}",
                    keys.join(",")
                )
            })
    }

    /// How the services address each other in this column.
    pub fn addressing(self) -> Addressing {
        match self {
            Column::AmbientWaypoint => Addressing::Vip,
            _ => Addressing::Pod,
        }
    }

    pub fn needs_envoy(self) -> bool {
        matches!(self, Column::EnvoyL4 | Column::EnvoyL7)
    }
}

/// `direct,ambient,...` in the order given, no repeats.
pub fn parse_columns(list: &str) -> Result<Vec<Column>> {
    let mut out = Vec::new();
    for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let c = Column::parse(s)?;
        if out.contains(&c) {
            bail!("chain column {s:?} given twice");
        }
        out.push(c);
    }
    if out.is_empty() {
        bail!("no chain column given");
    }
    Ok(out)
}

/// The binaries the columns run.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub node_proxy: PathBuf,
    /// None: the waypoint column cannot run.
    pub waypoint: Option<PathBuf>,
    /// None: the Envoy columns cannot run.
    pub envoy: Option<Envoy>,
}

/// The processes of one column's mesh, killed when dropped (sidecars take
/// their capture rules with them).
#[derive(Default)]
pub struct MeshUp {
    pub node_proxies: Vec<NodeProxy>,
    pub waypoint: Option<WaypointProc>,
    pub sidecars: Vec<Sidecar>,
    /// Envoy variant of `sidecars`.
    pub variant: Option<Variant>,
}

/// The chain pods' declared ports to the Envoy mesh: one HTTP port.
fn chain_ports() -> Vec<PortSpec> {
    vec![PortSpec {
        port: SERVICE_PORT,
        protocol: Protocol::Http,
    }]
}

/// How long a started mesh may take until a checked call gets through.
pub const MESH_READY: Duration = Duration::from_secs(20);

impl MeshUp {
    /// Starts `col`'s mesh on `ct` (the config rewritten for it), every
    /// process pinned to `cpu`.
    pub fn start(col: Column, ct: &ChainTopo, bins: &Binaries, cpu: usize) -> Result<MeshUp> {
        let bt = &ct.bt;
        ct.write_config(col == Column::AmbientWaypoint)?;
        let mut up = MeshUp::default();
        match col {
            Column::Direct => {}
            Column::Ambient | Column::AmbientWaypoint => {
                for node in ["node1", "node2"] {
                    let mut pods: Vec<&trellis_e2e::Pod> = std::iter::once(&bt.client)
                        .chain(ct.chain.iter())
                        .filter(|p| p.node == node)
                        .collect();
                    let first = pods.remove(0);
                    let proxy = bt.start_proxy(&bins.node_proxy, node, first, cpu)?;
                    for p in pods {
                        proxy.enroll(&p.name, p.netns_path())?;
                    }
                    up.node_proxies.push(proxy);
                }
                if col == Column::AmbientWaypoint {
                    let bin = bins.waypoint.as_ref().context(
                        "the waypoint column needs trellis-waypoint: cargo build --release -p trellis-waypoint",
                    )?;
                    up.waypoint = Some(WaypointProc::start_in(
                        bt,
                        &ct.waypoint,
                        bin,
                        cpu,
                        &[],
                        Duration::from_secs(20),
                    )?);
                }
            }
            Column::EnvoyL4 | Column::EnvoyL7 => {
                let envoy = bins
                    .envoy
                    .as_ref()
                    .context("the Envoy columns need Envoy (perf/envoy/install.sh)")?;
                let variant = if col == Column::EnvoyL4 {
                    Variant::L4
                } else {
                    Variant::L7
                };
                let dir = bt.dir().join(format!("chain-{}", variant.name()));
                let spec = MeshSpec::bench(variant, cpu, &dir);
                let mut pods = vec![MeshPod {
                    pod: bt.client.clone(),
                    service_account: "client".into(),
                    ports: vec![],
                }];
                pods.extend(ct.chain.iter().map(|p| MeshPod {
                    pod: p.clone(),
                    service_account: p.name.clone(),
                    ports: chain_ports(),
                }));
                let ca = hbone::DevCa::load_from_dir(&bt.dir().join("ca"))
                    .context("loading the bench's dev CA")?;
                up.sidecars = start_mesh(envoy, &bt.topo, &ca, &spec, &pods)?;
                up.variant = Some(variant);
            }
            Column::TrellisSidecar => {
                for p in std::iter::once(&bt.client).chain(ct.chain.iter()) {
                    up.node_proxies
                        .push(bt.start_sidecar_proxy(&bins.node_proxy, p, cpu)?);
                }
            }
        }
        Ok(up)
    }

    /// Every process of the mesh.
    pub fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.node_proxies.iter().map(|p| p.pid).collect();
        v.extend(self.waypoint.as_ref().map(|w| w.pid));
        v.extend(self.sidecars.iter().map(|s| s.pid));
        v
    }

    /// The mesh processes on the path of a chain of `depth`, for the CPU
    /// figures: both node proxies and the waypoint; of the per-pod
    /// proxies, the client's and the chain's services'.
    pub fn pids_on_path(&self, ct: &ChainTopo, depth: usize) -> Vec<u32> {
        let on_path = |name: &str| on_path(ct, depth, name);
        let mut v: Vec<u32> = self
            .node_proxies
            .iter()
            .filter(|p| on_path(&p.node))
            .map(|p| p.pid)
            .collect();
        v.extend(self.waypoint.as_ref().map(|w| w.pid));
        v.extend(
            self.sidecars
                .iter()
                .filter(|s| on_path(&s.pod))
                .map(|s| s.pid),
        );
        v
    }

    /// Fails with the log of a process that has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.node_proxies {
            p.check_alive()?;
        }
        if let Some(w) = &mut self.waypoint {
            w.check_alive()?;
        }
        for s in &mut self.sidecars {
            s.check_alive()?;
        }
        Ok(())
    }

    /// After calls down a chain of `depth`: every mesh process on its path
    /// carried some of them (the client's and the services' proxies, the
    /// waypoint). Proves the calls did not go around the mesh.
    pub fn check_carried(&self, ct: &ChainTopo, depth: usize) -> Result<()> {
        let on_path = |name: &str| on_path(ct, depth, name);
        for p in self.node_proxies.iter().filter(|p| on_path(&p.node)) {
            let opened = p.metric_sum("istio_tcp_connections_opened_total")?;
            if opened < 1.0 {
                bail!(
                    "the {} proxy recorded no connection: the chain's calls are not going through the mesh; its log:\n{}",
                    p.node,
                    p.log()
                );
            }
        }
        if let Some(w) = &self.waypoint {
            let rq = w.metric("istio_requests_total", &[])?;
            if rq < 1.0 {
                bail!(
                    "the waypoint counted no request: the calls by VIP did not go through it; its log:\n{}",
                    w.log()
                );
            }
        }
        for s in self.sidecars.iter().filter(|s| on_path(&s.pod)) {
            let stat = if s.pod == ct.bt.client.name {
                format!("cluster.outbound|{SERVICE_PORT}||chain0.ssl.handshake")
            } else {
                "listener.0.0.0.0_15006.ssl.handshake".to_string()
            };
            if s.stat(&stat)? < 1 {
                bail!(
                    "{}'s Envoy counted no {stat}: the calls are not going through it; its log:\n{}",
                    s.pod,
                    s.log()
                );
            }
            if self.variant == Some(Variant::L7) && s.pod != ct.bt.client.name {
                let rq = s.stat(&format!("http.inbound|{SERVICE_PORT}||.downstream_rq_2xx"))?;
                if rq < 1 {
                    bail!(
                        "{}'s Envoy counted no HTTP request inbound: its HTTP connection manager was not in the path",
                        s.pod
                    );
                }
            }
        }
        Ok(())
    }
}

/// Whether the proxy named `name` (a node, or the pod a per-pod proxy
/// serves) is on the path of a chain of `depth`.
fn on_path(ct: &ChainTopo, depth: usize, name: &str) -> bool {
    name == "node1"
        || name == "node2"
        || name == ct.bt.client.name
        || ct.pods(depth).iter().any(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_column_lists() {
        let cases: [(&str, Option<Vec<Column>>); 5] = [
            (
                "direct,envoy-l7",
                Some(vec![Column::Direct, Column::EnvoyL7]),
            ),
            (
                " ambient , ambient-waypoint",
                Some(vec![Column::Ambient, Column::AmbientWaypoint]),
            ),
            ("direct,direct", None),
            ("nginx", None),
            ("", None),
        ];
        for (list, want) in cases {
            assert_eq!(parse_columns(list).ok(), want, "{list:?}");
        }
        for c in Column::ALL {
            assert_eq!(Column::parse(c.key()).unwrap(), c);
        }
    }
}
