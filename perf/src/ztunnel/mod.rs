//! The ztunnel column: a stock Istio ztunnel (built outside this project,
//! passed with `--ztunnel PATH`) in shared mode on each node, as Trellis's
//! node proxies run in the trellis column, so the two compare like for like.
//! `trellis-bulk-bench` runs it for bulk transfer, `trellis-bench` for the
//! L4 workloads and memory.
//!
//! * [`ZtunnelMesh`]: what every run shares: `trellis-controller` in
//!   manifests mode (xDS and CA for ztunnel) in node1's netns, serving the
//!   bench's two pods, its CA, a bootstrap token per node.
//! * [`ZtunnelPair`]: one run's two ztunnels, each in its node's netns
//!   with its pod handed over ZDS ([`zds`]) and the same capture rules as
//!   Trellis's pods (Istio's ports and mark).
//! * [`config`]: the decisions (binary, environment, meshed or not).
//! * [`versus`]: issue 12's figures of Trellis against ztunnel, with targets.

pub mod config;
pub mod lingering;
pub mod versus;
pub mod zds;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use trellis_cni::wire::PodRef;
use trellis_e2e::cluster::http_in;
use trellis_e2e::controller_proc::{self, Controller, ObjectSource, RunArgs};
use trellis_e2e::manifests::{self, ManifestsDir, PodDef, TokenHolder, AMBIENT_LABEL};
use trellis_e2e::{wait_until, ChildGuard, Pod};
use trellis_netns::redirect::{self, RedirectConfig};
use trellis_netns::NetNs;

use self::config::{Counters, NodeEnv, Reporter, READINESS_PORT, STATS_PORT};
use self::zds::ZdsServer;
use crate::harness::run::say;
use crate::harness::topo::{wait_listening, BenchTopo, NAMESPACE};

/// The controller's TLS gRPC port on node1's fabric address.
const CONTROLLER_PORT: u16 = 15012;
/// How long the pods' capture ports may stay held by the sockets a killed
/// ztunnel leaves (TIME_WAIT is 60 s).
const LINGER_WITHIN: Duration = Duration::from_secs(75);
/// How long a ztunnel gets to become ready once its pod is handed over.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The controller and files every ztunnel run uses.
pub struct ZtunnelMesh {
    pub bin: PathBuf,
    /// `ztunnel version`'s version and crypto provider.
    pub version: String,
    controller: Controller,
    dir: PathBuf,
}

/// The bench's pods as the controller sees them: the service account is
/// the pod's name, as in Trellis's `mesh.yaml`.
fn pod_def(pod: &Pod) -> PodDef {
    PodDef {
        namespace: NAMESPACE.into(),
        name: pod.name.clone(),
        service_account: pod.name.clone(),
        node: pod.node.clone(),
        ip: pod.ip,
        app: pod.name.clone(),
        gateway: None,
        labels: vec![],
    }
}

fn token(node: &str) -> String {
    format!("bench-token-{node}")
}

impl ZtunnelMesh {
    /// Checks the binary, makes a CA with `trellis-controller ca init`,
    /// writes the manifests and tokens, and starts the controller in
    /// node1's netns on its fabric address, where both nodes reach it.
    pub fn start(bt: &BenchTopo, bin: PathBuf) -> Result<ZtunnelMesh> {
        let version = version_of(&bin)?;
        let dir = bt.dir().join("ztunnel");
        let ca = dir.join("ca");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        controller_proc::ca_init(&ca)?;
        let m = ManifestsDir::create(&dir.join("manifests"))?;
        let mut docs = vec![manifests::namespace(NAMESPACE, Some(AMBIENT_LABEL))];
        for pod in [&bt.client, &bt.server] {
            docs.push(manifests::service_account(NAMESPACE, &pod.name));
            docs.push(manifests::pod(&pod_def(pod), true));
        }
        m.write("bench.yaml", &manifests::stream(&docs))?;
        let tokens = dir.join("tokens.yaml");
        let holders: Vec<(String, TokenHolder)> = ["node1", "node2"]
            .iter()
            .map(|n| (token(n), TokenHolder::NodeProxy(n.to_string())))
            .collect();
        std::fs::write(&tokens, manifests::token_file(&holders))?;
        for (t, _) in &holders {
            // ztunnel sends the file as is: no trailing newline.
            let node = t.trim_start_matches("bench-token-");
            std::fs::write(dir.join(format!("{node}.token")), t)?;
        }
        let node1 = bt.topo.node("node1").ok_or_else(|| anyhow!("no node1"))?;
        let args = RunArgs {
            source: ObjectSource::Manifests {
                dir: m.root().to_path_buf(),
                tokens,
            },
            ca_dir: ca,
            listen: SocketAddr::new(node1.uplink_ip, CONTROLLER_PORT),
            admin: "127.0.0.1:0".parse()?,
            bound_addrs_file: dir.join("controller.json"),
            poll: Duration::from_secs(1),
            extra: vec![],
        };
        let controller = Controller::start(node1.netns_name(), args, &dir.join("controller.log"))
            .context("starting trellis-controller for the ztunnels")?;
        Ok(ZtunnelMesh {
            bin,
            version,
            controller,
            dir,
        })
    }

    /// What one node's ztunnel is told.
    pub fn node_env(&self, node: &str) -> NodeEnv {
        NodeEnv {
            node: node.into(),
            controller: self.controller.grpc(),
            root_cert: self.dir.join("ca").join("root-cert.pem"),
            token: self.dir.join(format!("{node}.token")),
            zds_socket: self.dir.join(format!("{node}-zds.sock")),
        }
    }
}

/// `ztunnel version`, parsed; an error that names the binary otherwise.
fn version_of(bin: &Path) -> Result<String> {
    if !bin.is_file() {
        bail!(
            "ztunnel binary {} does not exist (--ztunnel PATH or ${})",
            bin.display(),
            config::ENV_VAR
        );
    }
    let out = Command::new(bin)
        .arg("version")
        .output()
        .with_context(|| format!("running {} version", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    config::parse_version(&text).ok_or_else(|| {
        anyhow!(
            "{} version printed no ztunnel version: is it Istio's ztunnel?\n{text}{}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// One ztunnel process on a node, serving the node's bench pod.
pub struct ZtunnelProc {
    pub node: String,
    pub pid: u32,
    reporter: Reporter,
    node_ns: NetNs,
    guard: ChildGuard,
    // Held open while ztunnel runs.
    _zds: ZdsServer,
}

impl ZtunnelProc {
    /// Starts ztunnel in `node`'s netns pinned to `cpu`, hands it `pod`
    /// over ZDS, installs the pod's capture rules once ztunnel has taken
    /// it (as the CNI agent does), and waits until ztunnel is ready and
    /// listens in the pod.
    fn start(
        bt: &BenchTopo,
        mesh: &ZtunnelMesh,
        node: &str,
        pod: &Pod,
        reporter: Reporter,
        cpu: usize,
    ) -> Result<ZtunnelProc> {
        let n = mesh.node_env(node);
        let mut zds = ZdsServer::bind(&n.zds_socket)?;
        let env: Vec<String> = config::env(&n)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let cpu_s = cpu.to_string();
        let bin_s = mesh.bin.display().to_string();
        // taskset and env exec what follows: the PID is ztunnel's.
        let mut argv: Vec<&str> = vec!["taskset", "-c", &cpu_s, "env"];
        argv.extend(env.iter().map(String::as_str));
        argv.extend([bin_s.as_str(), "proxy"]);
        let mut guard = bt
            .topo
            .spawn(node, &argv)
            .with_context(|| format!("starting the {node} ztunnel"))?;
        let node_ns = bt
            .topo
            .node(node)
            .ok_or_else(|| anyhow!("no node {node}"))?
            .netns()?;
        let pod_ns = pod.netns()?;
        let pod_ref = PodRef {
            namespace: NAMESPACE.into(),
            name: pod.name.clone(),
            uid: pod_def(pod).uid(),
            service_account: pod.name.clone(),
        };
        let log = |g: &ChildGuard| format!("its log:\n{}", g.log());
        zds.serve(&pod_ref, &pod_ns).with_context(|| {
            format!(
                "handing {} to the {node} ztunnel; {}",
                pod.name,
                log(&guard)
            )
        })?;
        redirect::install(&pod_ns, &RedirectConfig::default())
            .with_context(|| format!("installing the capture rules in {}", pod.name))?;
        let ready: SocketAddr = SocketAddr::from(([127, 0, 0, 1], READINESS_PORT));
        let what = format!("the {node} ztunnel's /healthz/ready");
        let waited = wait_until(READY_WITHIN, &what, || {
            http_in(Some(&node_ns), ready, "GET", "/healthz/ready", "").is_ok_and(|(s, _)| s == 200)
        });
        if let Some(status) = guard.try_status() {
            bail!("the {node} ztunnel exited ({status}); {}", log(&guard));
        }
        waited.map_err(|e| anyhow!("{e}; {}", log(&guard)))?;
        let c = RedirectConfig::default();
        for port in [c.outbound_port, c.inbound_plain_port, c.hbone_port] {
            wait_listening(&pod_ns, port, READY_WITHIN)
                .with_context(|| format!("the {node} ztunnel in {}; {}", pod.name, log(&guard)))?;
        }
        Ok(ZtunnelProc {
            node: node.into(),
            pid: guard.pid(),
            reporter,
            node_ns,
            guard,
            _zds: zds,
        })
    }

    /// Its traffic counters for its side of the flow.
    pub fn counters(&self) -> Result<Counters> {
        let addr = SocketAddr::from(([127, 0, 0, 1], STATS_PORT));
        let (status, text) = http_in(Some(&self.node_ns), addr, "GET", "/metrics", "")
            .with_context(|| format!("the {} ztunnel's /metrics", self.node))?;
        if status != 200 {
            bail!("GET /metrics on the {} ztunnel: HTTP {status}", self.node);
        }
        Ok(Counters::parse(&text, self.reporter))
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.guard.try_status() {
            bail!(
                "the {} ztunnel exited ({status}); its log:\n{}",
                self.node,
                self.guard.log()
            );
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        self.guard.log()
    }
}

/// The client node's and the server node's ztunnels for one run.
pub struct ZtunnelPair {
    pub procs: Vec<ZtunnelProc>,
    pods: Vec<(String, NetNs)>,
    before: Vec<Counters>,
}

impl ZtunnelPair {
    pub fn start(bt: &BenchTopo, mesh: &ZtunnelMesh, cpu: usize) -> Result<ZtunnelPair> {
        let mut pair = ZtunnelPair {
            procs: vec![],
            pods: vec![],
            before: vec![],
        };
        for (node, pod, reporter) in [
            ("node1", &bt.client, Reporter::Source),
            ("node2", &bt.server, Reporter::Destination),
        ] {
            // Registered first: the rules come off again whatever fails next.
            pair.pods.push((pod.name.clone(), pod.netns()?));
            pair.procs
                .push(ZtunnelProc::start(bt, mesh, node, pod, reporter, cpu)?);
        }
        Ok(pair)
    }

    /// Takes the counters the run is judged against.
    pub fn mark(&mut self) -> Result<()> {
        self.before = self
            .procs
            .iter()
            .map(ZtunnelProc::counters)
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// Fails unless each ztunnel opened an mTLS connection since
    /// [`mark`](Self::mark) and counted at least `bytes`.
    pub fn check_meshed(&self, bytes: u64) -> Result<()> {
        if self.before.len() != self.procs.len() {
            bail!("the ztunnels' counters were not taken before the run");
        }
        for (p, before) in self.procs.iter().zip(&self.before) {
            let after = p.counters()?;
            config::check_meshed(&p.node, p.reporter, *before, after, bytes)
                .map_err(|e| anyhow!("{e}; its log:\n{}", p.log()))?;
        }
        Ok(())
    }
}

impl Drop for ZtunnelPair {
    fn drop(&mut self) {
        // As for Trellis: killed proxies leave the rules; the next column
        // must find the pods uncaptured.
        self.procs.clear();
        let c = RedirectConfig::default();
        let ports = [c.outbound_port, c.inbound_plain_port, c.hbone_port];
        for (name, ns) in &self.pods {
            if let Err(e) = redirect::remove(ns) {
                eprintln!("removing the capture rules of {name}: {e}");
            }
            let l = lingering::wait_free(ns, &ports, LINGER_WITHIN);
            if !l.left.is_empty() {
                say(format!(
                    "{name}: ztunnel's sockets still hold the capture ports after {:?}: {}; the next column may not bind them",
                    l.waited,
                    lingering::summary(&l.left)
                ));
            } else if l.waited > Duration::from_secs(1) {
                say(format!(
                    "{name}: waited {:.1} s for the sockets ztunnel left on the capture ports to close: {}",
                    l.waited.as_secs_f64(),
                    lingering::summary(&l.first)
                ));
            }
        }
    }
}
