//! Envoy as the waypoint of service `web-envoy`, in its own pod on node2:
//! the pinned Envoy release with a bootstrap generated from the bench's
//! topology ([`crate::sidecars::waypoint`]), terminating HBONE from node1's
//! proxy and originating HBONE to node2's, with the same routes, header
//! filter and ALLOW policy as the Trellis waypoint's `web`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use trellis_e2e::ChildGuard;
use trellis_netns::NetNs;

use super::client::HTTP_PATH;
use super::mesh::{client_principal, L7Topo, ENVOY_VIP, ENVOY_WAYPOINT};
use super::{grpc, GRPC_PORT, HTTP_PORT, ROUTE_HEADER};
use crate::harness::topo::{NAMESPACE, TRUST_DOMAIN};
use crate::sidecars::envoy::Envoy;
use crate::sidecars::mesh::{self, Admin};
use crate::sidecars::waypoint::{
    self, AllowRule, Endpoint, PortProtocol, RouteMatch, RouteSpec, ServicePortSpec,
    WaypointConfig, WaypointService,
};

/// The service the Envoy waypoint serves, as the mesh config declares
/// `web` for the Trellis waypoint: HTTPRoute on port 80 (PathPrefix
/// [`HTTP_PATH`]), GRPCRoute on 9090 (the Echo service), both setting
/// [`ROUTE_HEADER`]; ALLOW the client's principal on those paths.
pub fn services(t: &L7Topo) -> Vec<WaypointService> {
    let (h, v) = ROUTE_HEADER;
    let route = |name: &str, matches: RouteMatch| RouteSpec {
        name: name.into(),
        matches,
        set_headers: vec![(h.into(), v.into())],
    };
    vec![WaypointService {
        hostname: format!("web-envoy.{NAMESPACE}.svc.{TRUST_DOMAIN}"),
        vip: ENVOY_VIP.parse().expect("static VIP"),
        ports: vec![
            ServicePortSpec {
                port: 80,
                target_port: HTTP_PORT,
                protocol: PortProtocol::Http,
                routes: vec![route("bench", RouteMatch::PathPrefix(HTTP_PATH.into()))],
            },
            ServicePortSpec {
                port: GRPC_PORT,
                target_port: GRPC_PORT,
                protocol: PortProtocol::Grpc,
                routes: vec![route("echo", RouteMatch::GrpcService(grpc::SERVICE.into()))],
            },
        ],
        endpoints: vec![Endpoint {
            ip: t.bt.server.ip,
            spiffe_id: format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/server"),
        }],
        allow: Some((
            "allow-client".into(),
            vec![AllowRule {
                principals: vec![format!("spiffe://{}", client_principal())],
                paths: vec![HTTP_PATH.into(), format!("/{}/*", grpc::SERVICE)],
            }],
        )),
    }]
}

/// The running Envoy waypoint; killed when dropped.
pub struct EnvoyWaypoint {
    pub pid: u32,
    /// `envoy --version`'s build string.
    pub version: String,
    pub config_path: PathBuf,
    /// The generated bootstrap, as run.
    pub config: Value,
    ns: NetNs,
    guard: ChildGuard,
}

impl EnvoyWaypoint {
    /// Writes its certificate (`sa/envoy-waypoint` from the bench's dev CA)
    /// and bootstrap, starts Envoy (`--concurrency 1`) pinned to `cpu` in
    /// the `envoywp` pod, and waits until it is ready.
    pub fn start(t: &L7Topo, envoy: &Envoy, cpu: usize) -> Result<EnvoyWaypoint> {
        let dir = t.bt.dir().join("envoy-waypoint");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = hbone::DevCa::load_from_dir(&t.bt.dir().join("ca"))
            .context("loading the bench's dev CA")?;
        let id = hbone::Identity::new(TRUST_DOMAIN, NAMESPACE, ENVOY_WAYPOINT);
        let certs = mesh::write_identity(&ca, &id, &dir)?;
        let services = services(t);
        let config = waypoint::bootstrap(&WaypointConfig {
            name: ENVOY_WAYPOINT,
            ip: t.envoy.ip,
            certs,
            trust_domain: TRUST_DOMAIN,
            services: &services,
        });
        let config_path = dir.join("envoy.json");
        mesh::write(
            &config_path,
            &serde_json::to_string_pretty(&config).context("encoding the bootstrap")?,
        )?;
        // A config Envoy refuses fails here with its reason, not after a
        // readiness timeout.
        let check = std::process::Command::new(&envoy.bin)
            .args(["--mode", "validate", "--disable-hot-restart", "-c"])
            .arg(&config_path)
            .output()
            .context("running envoy --mode validate")?;
        if !check.status.success() {
            bail!(
                "Envoy refuses the generated waypoint config {}: {}{}",
                config_path.display(),
                String::from_utf8_lossy(&check.stdout).trim(),
                String::from_utf8_lossy(&check.stderr).trim()
            );
        }
        // For investigation, e.g. TRELLIS_ENVOY_LOG=debug; else warn, as the
        // Trellis waypoint runs at info with no access log.
        let log = std::env::var("TRELLIS_ENVOY_LOG").unwrap_or_else(|_| "warn".into());
        let argv = envoy.command(cpu, &config_path, &log);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let guard =
            t.bt.topo
                .spawn(&t.envoy.name, &argv)
                .context("starting the Envoy waypoint")?;
        let wp = EnvoyWaypoint {
            pid: guard.pid(),
            version: envoy.version.clone(),
            config_path,
            config,
            ns: t.envoy.netns()?,
            guard,
        };
        wp.admin().wait_ready(|| wp.log())?;
        Ok(wp)
    }

    fn admin(&self) -> Admin<'_> {
        Admin {
            ns: &self.ns,
            who: "the waypoint",
        }
    }

    /// Counters and gauges whose name matches the regex `filter`.
    pub fn stats(&self, filter: &str) -> Result<BTreeMap<String, u64>> {
        self.admin().stats(filter)
    }

    /// The RBAC filter's (allowed, denied) counts over both service ports.
    pub fn rbac_counts(&self) -> Result<(u64, u64)> {
        let s = self.stats(r"\.rbac\.(allowed|denied)$")?;
        let sum = |suffix: &str| {
            s.iter()
                .filter(|(k, _)| k.ends_with(suffix) && !k.contains("shadow"))
                .map(|(_, v)| v)
                .sum()
        };
        Ok((sum(".rbac.allowed"), sum(".rbac.denied")))
    }

    /// Its log, and its counters that are not zero: what to read when a
    /// request through it failed.
    pub fn diagnostics(&self) -> String {
        let stats = match self.stats(".") {
            Ok(s) => s
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("(no stats: {e:#})"),
        };
        format!(
            "--- Envoy waypoint log ---\n{}\n--- its non-zero stats ---\n{stats}",
            self.log()
        )
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.guard.try_status() {
            bail!(
                "the Envoy waypoint exited ({status}); its log:\n{}",
                self.guard.log()
            );
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        self.guard.log()
    }
}
