//! Memory against pods per node: with N idle pods on node1, the total RSS
//! of the mesh's processes on that node, for three shapes of mesh:
//!
//! * **Trellis ambient**: one shared-mode node proxy enrolling the N pods;
//! * **Envoy sidecars** (L7, Istio's default): one Envoy per pod, each
//!   configured with every pod of the N as destination (Istio without a
//!   `Sidecar` scope);
//! * **Trellis sidecar-shaped**: one dedicated-mode node proxy per pod,
//!   capturing its pod's netns, which separates the cost of the sidecar
//!   architecture from the cost of Envoy.
//!
//! Each shape starts fresh for each N, so no shape inherits another's heap.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::bootstrap::{PortSpec, Protocol, Variant};
use super::envoy::Envoy;
use super::mesh::{start_mesh, MeshPod, MeshSpec};
use crate::harness::proc_stats::rss_kib;
use crate::harness::run::say;
use crate::harness::topo::{BenchTopo, NodeProxy};

/// How long the processes idle after startup before their RSS is read (as
/// the idle RSS of `trellis-bench`'s proxies).
const IDLE: Duration = Duration::from_secs(1);

/// The ports every idle pod declares to the Envoy mesh: one TCP, one HTTP.
pub const IDLE_POD_PORTS: [PortSpec; 2] = [
    PortSpec {
        port: 7000,
        protocol: Protocol::Tcp,
    },
    PortSpec {
        port: 80,
        protocol: Protocol::Http,
    },
];

/// One N: total RSS on node1 of each shape, in KiB.
#[derive(Debug, Clone, Default)]
pub struct PodsMemory {
    pub pods: usize,
    pub ambient_kib: u64,
    pub envoy_kib: u64,
    pub trellis_sidecar_kib: u64,
}

impl PodsMemory {
    pub fn to_json(&self) -> Value {
        json!({
            "pods": self.pods,
            "trellis_ambient_kib": self.ambient_kib,
            "envoy_sidecars_l7_kib": self.envoy_kib,
            "trellis_sidecar_shaped_kib": self.trellis_sidecar_kib,
        })
    }
}

fn total_rss(pids: &[u32]) -> Result<u64> {
    pids.iter()
        .map(|&p| rss_kib(p).with_context(|| format!("reading the RSS of PID {p}")))
        .sum()
}

/// Measures every N of `counts` on the extra pods of `bt` (all on node1),
/// everything pinned to `cpu`.
pub fn measure(
    bt: &BenchTopo,
    proxy_bin: &std::path::Path,
    envoy: &Envoy,
    counts: &[usize],
    cpu: usize,
) -> Result<Vec<PodsMemory>> {
    let mut out = Vec::new();
    for &n in counts {
        if n == 0 || n > bt.extra.len() {
            bail!(
                "pods per node {n}: the topology has {} idle pods on node1 (give 1..={})",
                bt.extra.len(),
                bt.extra.len()
            );
        }
        let pods = &bt.extra[..n];
        let mut row = PodsMemory {
            pods: n,
            ..Default::default()
        };

        {
            let proxy = bt.start_proxy(proxy_bin, "node1", &pods[0], cpu)?;
            for p in &pods[1..] {
                proxy.enroll(&p.name, p.netns_path())?;
            }
            let listed = proxy.pod_count()?;
            if listed != n {
                bail!("the node1 proxy lists {listed} pods after enrolling {n}");
            }
            std::thread::sleep(IDLE);
            row.ambient_kib = total_rss(&[proxy.pid])?;
        }

        {
            let dir = bt.dir().join(format!("envoy-pods-{n}"));
            let spec = MeshSpec::bench(Variant::L7, cpu, &dir);
            let mesh: Vec<MeshPod> = pods
                .iter()
                .map(|p| MeshPod {
                    pod: p.clone(),
                    service_account: "extra".into(),
                    ports: IDLE_POD_PORTS.to_vec(),
                })
                .collect();
            let ca = hbone::DevCa::load_from_dir(&bt.dir().join("ca"))
                .context("loading the bench's dev CA")?;
            let sidecars = start_mesh(envoy, &bt.topo, &ca, &spec, &mesh)?;
            std::thread::sleep(IDLE);
            let pids: Vec<u32> = sidecars.iter().map(|s| s.pid).collect();
            row.envoy_kib = total_rss(&pids)?;
        }

        {
            let proxies = pods
                .iter()
                .map(|p| bt.start_sidecar_proxy(proxy_bin, p, cpu))
                .collect::<Result<Vec<NodeProxy>>>()?;
            std::thread::sleep(IDLE);
            let pids: Vec<u32> = proxies.iter().map(|p| p.pid).collect();
            row.trellis_sidecar_kib = total_rss(&pids)?;
        }

        say(format!(
            "  {n} idle pods on node1: Trellis ambient {:.1} MiB, Envoy sidecars {:.1} MiB, Trellis sidecar-shaped {:.1} MiB",
            mib(row.ambient_kib),
            mib(row.envoy_kib),
            mib(row.trellis_sidecar_kib)
        ));
        out.push(row);
    }
    Ok(out)
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The Markdown table: one row per N, MiB per shape and the ratio Envoy / ambient.
pub fn markdown(rows: &[PodsMemory]) -> String {
    let mut md = String::from(
        "| idle pods on the node | Trellis ambient (1 node proxy) | Envoy sidecars L7 (1 per pod) | Trellis sidecar-shaped (1 dedicated proxy per pod) | Envoy / ambient |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        let ratio = r.envoy_kib as f64 / r.ambient_kib.max(1) as f64;
        md += &format!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1}x |\n",
            r.pods,
            mib(r.ambient_kib),
            mib(r.envoy_kib),
            mib(r.trellis_sidecar_kib),
            ratio
        );
    }
    md
}
