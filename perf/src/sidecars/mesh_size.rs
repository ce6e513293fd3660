//! Memory against mesh size: one Envoy sidecar, and one Trellis node proxy,
//! each given the configuration of a mesh of N services (each with
//! [`ENDPOINTS_PER_SERVICE`] endpoints), and their RSS after start.
//!
//! * **Envoy sidecar** (L7, in the client pod): what an Istio sidecar
//!   without a `Sidecar` scope receives: a cluster per service port with all
//!   its endpoints, and an outbound filter chain per service VIP and port.
//!   The config is static (the bootstrap) where Istio sends it over xDS;
//!   the clusters, chains and TLS contexts Envoy builds are the same kind.
//! * **Trellis node proxy** (shared mode, node1, the client pod enrolled):
//!   the same services and endpoint workloads in its file config
//!   (`--config`), which it holds whole. Over xDS on demand it holds only
//!   what its pods look up (`trellis-cp-bench`).
//!
//! Addresses come from `cp::gen` (10.0.0.0/8 pods, 172.16.0.0/12 VIPs):
//! configured, never dialled.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::bootstrap::{Destination, PortSpec, Protocol, Variant};
use super::envoy::Envoy;
use super::mesh::{MeshPod, MeshSpec, Sidecar};
use crate::cp::gen::{pod_ip, service_vip};
use crate::harness::proc_stats::rss_kib;
use crate::harness::run::say;
use crate::harness::topo::{workload, BenchTopo, NAMESPACE, TRUST_DOMAIN};

/// Endpoints (pods) behind each service.
pub const ENDPOINTS_PER_SERVICE: usize = 2;
/// The service port, spoken HTTP (Istio: a port named `http`).
pub const SERVICE_PORT: u16 = 80;
/// The endpoints' port behind it.
pub const TARGET_PORT: u16 = 8080;
/// How long the processes idle after startup before their RSS is read.
const IDLE: Duration = Duration::from_secs(1);
/// Envoy's clusters beside the services': the two passthroughs.
const ENVOY_OWN_CLUSTERS: u64 = 2;

fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

fn endpoint_uid(i: usize, k: usize) -> String {
    format!("svc-{i}-{k}")
}

fn endpoint_ip(i: usize, k: usize) -> std::net::IpAddr {
    pod_ip(i * ENDPOINTS_PER_SERVICE + k)
}

/// The services as Envoy destinations: matched by VIP, balanced over the endpoints.
pub fn envoy_destinations(services: usize) -> Vec<Destination> {
    (0..services)
        .map(|i| Destination {
            name: service_name(i),
            ip: service_vip(i),
            spiffe_id: format!(
                "spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{}",
                service_name(i)
            ),
            ports: vec![PortSpec {
                port: SERVICE_PORT,
                protocol: Protocol::Http,
            }],
            endpoints: (0..ENDPOINTS_PER_SERVICE)
                .map(|k| endpoint_ip(i, k))
                .collect(),
        })
        .collect()
}

/// The Trellis file config: the client pod, every endpoint as an HBONE
/// workload on node2, every service with its VIP and endpoints.
pub fn trellis_yaml(services: usize, client_ip: std::net::IpAddr) -> String {
    let mut y = String::with_capacity(services * (ENDPOINTS_PER_SERVICE * 200 + 300));
    y += "workloads:\n";
    y += &workload("client", "client", client_ip, "node1");
    for i in 0..services {
        for k in 0..ENDPOINTS_PER_SERVICE {
            y += &workload(
                &endpoint_uid(i, k),
                &service_name(i),
                endpoint_ip(i, k),
                "node2",
            );
        }
    }
    y += "services:\n";
    for i in 0..services {
        let name = service_name(i);
        let eps: Vec<String> = (0..ENDPOINTS_PER_SERVICE)
            .map(|k| endpoint_uid(i, k))
            .collect();
        let _ = write!(
            y,
            "  - name: {name}\n    namespace: {NAMESPACE}\n    hostname: {name}.{NAMESPACE}.svc.{TRUST_DOMAIN}\n    vips: [{}]\n    ports: [{{port: {SERVICE_PORT}, targetPort: {TARGET_PORT}}}]\n    endpoints: [{}]\n",
            service_vip(i),
            eps.join(", ")
        );
    }
    y
}

/// One mesh size: RSS of each process, in KiB.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshSize {
    pub services: usize,
    pub endpoints: usize,
    pub envoy_kib: u64,
    pub trellis_kib: u64,
    /// Seconds from spawn until ready (Envoy: admin `/ready` LIVE; Trellis:
    /// bound addresses written, config loaded).
    pub envoy_start_s: f64,
    pub trellis_start_s: f64,
}

impl MeshSize {
    pub fn to_json(&self) -> Value {
        json!({
            "services": self.services,
            "endpoints": self.endpoints,
            "envoy_sidecar_l7_kib": self.envoy_kib,
            "trellis_node_proxy_file_kib": self.trellis_kib,
            "envoy_start_s": self.envoy_start_s,
            "trellis_start_s": self.trellis_start_s,
        })
    }
}

/// Measures each size of `sizes` on `bt` (its client pod), pinned to `cpu`.
/// Rewrites `bt`'s `mesh.yaml`: give it a topology of its own.
pub fn measure(
    bt: &BenchTopo,
    proxy_bin: &Path,
    envoy: &Envoy,
    sizes: &[usize],
    cpu: usize,
) -> Result<Vec<MeshSize>> {
    let ca = hbone::DevCa::load_from_dir(&bt.dir().join("ca")).context("loading the dev CA")?;
    let mut out = Vec::new();
    for &n in sizes {
        let endpoints = n * ENDPOINTS_PER_SERVICE;
        let mut row = MeshSize {
            services: n,
            endpoints,
            ..Default::default()
        };

        {
            let t0 = std::time::Instant::now();
            let dir = bt.dir().join(format!("envoy-mesh-{n}"));
            let spec = MeshSpec::bench(Variant::L7, cpu, &dir);
            let me = MeshPod {
                pod: bt.client.clone(),
                service_account: "client".into(),
                ports: vec![],
            };
            let sidecar = Sidecar::start(envoy, &bt.topo, &ca, &spec, &me, &envoy_destinations(n))?;
            row.envoy_start_s = t0.elapsed().as_secs_f64();
            let clusters = sidecar.stat("cluster_manager.active_clusters")?;
            if clusters != n as u64 + ENVOY_OWN_CLUSTERS {
                bail!("the Envoy sidecar given {n} services has {clusters} active clusters, expected {}", n as u64 + ENVOY_OWN_CLUSTERS);
            }
            std::thread::sleep(IDLE);
            row.envoy_kib = rss_kib(sidecar.pid).context("reading the Envoy sidecar's RSS")?;
        }

        {
            std::fs::write(bt.dir().join("mesh.yaml"), trellis_yaml(n, bt.client.ip))
                .context("writing mesh.yaml")?;
            let t0 = std::time::Instant::now();
            let proxy = bt.start_proxy(proxy_bin, "node1", &bt.client, cpu)?;
            row.trellis_start_s = t0.elapsed().as_secs_f64();
            let (workloads, services) = proxy.config_counts()?;
            if (workloads, services) != (endpoints + 1, n) {
                bail!("the node proxy given {n} services holds {workloads} workloads and {services} services, expected {} and {n}", endpoints + 1);
            }
            std::thread::sleep(IDLE);
            row.trellis_kib = rss_kib(proxy.pid).context("reading the node proxy's RSS")?;
        }

        say(format!(
            "  {n} services, {endpoints} endpoints: Envoy sidecar {:.1} MiB (ready in {:.1} s), Trellis node proxy {:.1} MiB (ready in {:.1} s)",
            mib(row.envoy_kib),
            row.envoy_start_s,
            mib(row.trellis_kib),
            row.trellis_start_s
        ));
        out.push(row);
    }
    Ok(out)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The Markdown table: one row per size, MiB each and the ratio Envoy / Trellis.
pub fn markdown(rows: &[MeshSize]) -> String {
    let mut md = String::from(
        "| services (endpoints) | Envoy sidecar L7, all clusters and endpoints | Trellis node proxy, file config | Envoy / Trellis | ready after (Envoy, Trellis) |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} ({}) | {:.1} MiB | {:.1} MiB | {} | {:.1} s, {:.1} s |",
            r.services,
            r.endpoints,
            mib(r.envoy_kib),
            mib(r.trellis_kib),
            ratio(r.envoy_kib, r.trellis_kib),
            r.envoy_start_s,
            r.trellis_start_s
        );
    }
    md
}

/// `a / b` as `12.3x`; `–` when `b` is zero (no reading).
fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        "–".into()
    } else {
        format!("{:.1}x", a as f64 / b as f64)
    }
}

/// `100,1000,10000`: each 1..=100,000 (VIPs and pod IPs stay in their ranges).
pub fn parse_sizes(list: &str) -> Result<Vec<usize>> {
    parse_counts("--services", list, 100_000, "services")
}

/// A comma-separated list of counts for `flag`, each 1..=`max` (`what`
/// names them in the error), order kept as given.
pub fn parse_counts(flag: &str, list: &str, max: usize, what: &str) -> Result<Vec<usize>> {
    let v = list
        .split(',')
        .map(|n| {
            let n: usize = n
                .trim()
                .parse()
                .with_context(|| format!("{flag}: {n:?} is not a number"))?;
            if !(1..=max).contains(&n) {
                bail!("{flag}: {n} is out of range: give 1 to {max} {what}");
            }
            Ok(n)
        })
        .collect::<Result<Vec<_>>>()?;
    if v.is_empty() {
        bail!("{flag} needs at least one count");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_rows() {
        let rows = [
            MeshSize {
                services: 100,
                endpoints: 200,
                envoy_kib: 40 * 1024,
                trellis_kib: 8 * 1024,
                envoy_start_s: 0.5,
                trellis_start_s: 0.2,
            },
            MeshSize {
                services: 10,
                endpoints: 20,
                envoy_kib: 1024,
                trellis_kib: 0,
                ..Default::default()
            },
        ];
        let md = markdown(&rows);
        let cases = [
            (
                2,
                "| 100 (200) | 40.0 MiB | 8.0 MiB | 5.0x | 0.5 s, 0.2 s |",
            ),
            // No reading: no ratio, and no panic.
            (3, "| 10 (20) | 1.0 MiB | 0.0 MiB | – | 0.0 s, 0.0 s |"),
        ];
        let lines: Vec<&str> = md.lines().collect();
        for (i, want) in cases {
            assert_eq!(lines[i], want, "{md}");
        }
        assert_eq!(rows[0].to_json()["envoy_sidecar_l7_kib"], 40 * 1024);
    }

    #[test]
    fn parses_sizes() {
        let cases: [(&str, Option<Vec<usize>>); 5] = [
            ("100,1000,10000", Some(vec![100, 1000, 10000])),
            (" 5 ", Some(vec![5])),
            ("0", None),
            ("100001", None),
            ("ten", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_sizes(text).ok(), want, "{text:?}");
        }
    }

    #[test]
    fn envoy_and_trellis_get_the_same_mesh() {
        let dests = envoy_destinations(3);
        assert_eq!(dests.len(), 3);
        let yaml = trellis_yaml(3, "198.18.1.2".parse().unwrap());
        for d in &dests {
            assert_eq!(d.endpoints.len(), ENDPOINTS_PER_SERVICE);
            assert!(yaml.contains(&format!("vips: [{}]", d.ip)), "{yaml}");
            for ep in &d.endpoints {
                assert!(
                    yaml.contains(&format!("addresses: [{ep}]")),
                    "{ep} in {yaml}"
                );
            }
        }
        let cfg = trellis_api::config::parse(&yaml).expect("the file config parses and validates");
        assert_eq!(cfg.services.len(), 3);
        assert_eq!(cfg.workloads.len(), 1 + 3 * ENDPOINTS_PER_SERVICE);
    }
}
