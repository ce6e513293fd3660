//! Real `trellis-node-proxy` processes on a netns [`Topology`]: config and
//! CA files, one shared-mode proxy per node, and small clients for their
//! admin, metrics and readiness endpoints.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use trellis_netns::NetNs;

use crate::process::OwnedChild;
pub use crate::proxy_args::{Feed, ProxyArgs, ProxyMode};
use crate::Topology;

/// Path of the node proxy binary: `TRELLIS_NODE_PROXY_BIN`, or the one cargo
/// built next to this test executable (`cargo test --workspace` builds it).
pub fn node_proxy_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("TRELLIS_NODE_PROXY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("trellis-node-proxy");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("trellis-node-proxy binary not found near {}; build it with `cargo build -p trellis-node-proxy`", exe.display())
}

/// A workload entry of the config file.
#[derive(Clone, Debug)]
pub struct Wl {
    pub uid: String,
    pub namespace: String,
    pub sa: String,
    pub ip: std::net::IpAddr,
    pub node: String,
    pub hbone: bool,
    pub policies: Vec<String>,
}

impl Wl {
    /// An HBONE workload for a harness pod, in namespace "demo" with service account = pod name.
    pub fn pod(topo: &Topology, name: &str) -> Wl {
        let p = topo
            .pod(name)
            .unwrap_or_else(|| panic!("no pod {name} in topology"));
        Wl {
            uid: name.into(),
            namespace: "demo".into(),
            sa: name.into(),
            ip: p.ip,
            node: p.node.clone(),
            hbone: true,
            policies: vec![],
        }
    }
    pub fn ns(mut self, ns: &str) -> Wl {
        self.namespace = ns.into();
        self
    }
    pub fn sa(mut self, sa: &str) -> Wl {
        self.sa = sa.into();
        self
    }
    pub fn tcp(mut self) -> Wl {
        self.hbone = false;
        self
    }
    pub fn policy(mut self, key: &str) -> Wl {
        self.policies.push(key.into());
        self
    }
}

/// Renders a config file: workloads, services (name, vip, port→target, endpoint uids) and raw policy YAML.
pub fn render_config(
    wls: &[Wl],
    services: &[(&str, &str, u16, u16, &[&str])],
    policies_yaml: &str,
) -> String {
    let mut s = String::from("workloads:\n");
    for w in wls {
        s += &format!(
            "  - uid: {}\n    name: {}\n    namespace: {}\n    serviceAccount: {}\n    addresses: [{}]\n    node: {}\n    protocol: {}\n",
            w.uid, w.uid, w.namespace, w.sa, w.ip, w.node, if w.hbone { "HBONE" } else { "TCP" }
        );
        if !w.policies.is_empty() {
            s += &format!("    authorizationPolicies: [{}]\n", w.policies.join(", "));
        }
    }
    if !services.is_empty() {
        s += "services:\n";
        for (name, vip, port, target, eps) in services {
            s += &format!(
                "  - name: {name}\n    namespace: demo\n    hostname: {name}.demo.svc.cluster.local\n    vips: [{vip}]\n    ports: [{{port: {port}, targetPort: {target}}}]\n    endpoints: [{}]\n",
                eps.join(", ")
            );
        }
    }
    if !policies_yaml.trim().is_empty() {
        s += "policies:\n";
        s += policies_yaml;
    }
    s
}

/// Files shared by a cluster's proxies: CA directories and config files.
pub struct ClusterFiles {
    pub dir: tempfile::TempDir,
}

impl ClusterFiles {
    pub fn new() -> Result<ClusterFiles> {
        Ok(ClusterFiles {
            dir: tempfile::tempdir()?,
        })
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Creates a dev CA in `name` (a directory under the cluster dir).
    pub fn ca(&self, name: &str) -> Result<PathBuf> {
        let dir = self.path(name);
        hbone::DevCa::generate("cluster.local")?.write_to_dir(&dir)?;
        Ok(dir)
    }
    /// Writes a config file atomically (write + rename), as a ConfigMap update would.
    pub fn write_config(&self, name: &str, body: &str) -> Result<PathBuf> {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

/// One running node proxy process, killed on drop.
pub struct NodeProxy {
    pub node: String,
    child: OwnedChild,
    /// The namespace its admin ports bind in (a node's, when it runs like a
    /// DaemonSet pod in the node's network); None: the test's own.
    netns: Option<NetNs>,
    /// Its `ip netns` name, to start a successor in the same place.
    netns_name: Option<String>,
    /// Its command line, for a successor ([`NodeProxy::relaunch`]).
    args: ProxyArgs,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
    log: PathBuf,
}

impl NodeProxy {
    /// Starts a shared-mode proxy for `node` in the test's namespace, with a
    /// config file and a dev CA, enrolling `pods` (names from the topology,
    /// which are also their workload uids).
    pub fn start(
        topo: &Topology,
        files: &ClusterFiles,
        node: &str,
        config: &Path,
        ca_dir: &Path,
        pods: &[&str],
        extra: &[&str],
    ) -> Result<NodeProxy> {
        let enrolled = pods
            .iter()
            .map(|p| {
                let pod = topo.pod(p).ok_or_else(|| anyhow!("no pod {p}"))?;
                Ok((p.to_string(), pod.netns_path().to_path_buf()))
            })
            .collect::<Result<Vec<_>>>()?;
        let args = ProxyArgs {
            node: node.into(),
            mode: ProxyMode::Shared,
            feed: Feed::Files {
                config: config.into(),
                ca_dir: ca_dir.into(),
            },
            pods: enrolled,
            bound_addrs_file: files.path(&format!("{node}-addrs.json")),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        NodeProxy::launch(&args, None, &files.path(&format!("{node}.log")))
    }

    /// Starts a shared-mode proxy inside `node`'s network namespace, as a
    /// node proxy runs on a real node, fed only by the controller (see
    /// [`Feed::Controller`]): no config file, no CA key. `pods` are
    /// (workload uid, topology pod name) pairs to enroll at start.
    pub fn start_in_node(
        topo: &Topology,
        files: &ClusterFiles,
        node: &str,
        feed: Feed,
        pods: &[(String, String)],
        extra: &[&str],
    ) -> Result<NodeProxy> {
        let enrolled = pods
            .iter()
            .map(|(uid, p)| {
                let pod = topo.pod(p).ok_or_else(|| anyhow!("no pod {p}"))?;
                Ok((uid.clone(), pod.netns_path().to_path_buf()))
            })
            .collect::<Result<Vec<_>>>()?;
        let n = topo.node(node).ok_or_else(|| anyhow!("no node {node}"))?;
        let args = ProxyArgs {
            node: node.into(),
            mode: ProxyMode::Shared,
            feed,
            pods: enrolled,
            bound_addrs_file: PathBuf::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        NodeProxy::launch_in(args, files, (n.netns_name(), n.netns()?))
    }

    /// Starts the node proxy of a VM or bare host inside `host`'s network
    /// namespace, as an operator runs it there: dedicated to the workload
    /// `workload_uid` (its WorkloadEntry's), capturing that namespace
    /// (`--capture`), fed by the controller.
    pub fn start_on_host(
        topo: &Topology,
        files: &ClusterFiles,
        host: &str,
        feed: Feed,
        workload_uid: &str,
        extra: &[&str],
    ) -> Result<NodeProxy> {
        let h = topo.host(host).ok_or_else(|| anyhow!("no host {host}"))?;
        let args = ProxyArgs {
            node: host.into(),
            mode: ProxyMode::Host {
                workload_uid: workload_uid.into(),
            },
            feed,
            pods: vec![],
            bound_addrs_file: PathBuf::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        NodeProxy::launch_in(args, files, (h.netns_name(), h.netns()?))
    }

    /// Launches `args` inside `netns` (its `ip netns` name and a handle),
    /// with its bound-addresses file and log named after `args.node` in
    /// the cluster's files.
    fn launch_in(
        mut args: ProxyArgs,
        files: &ClusterFiles,
        netns: (&str, NetNs),
    ) -> Result<NodeProxy> {
        let name = args.node.clone();
        args.bound_addrs_file = files.path(&format!("{name}-addrs.json"));
        NodeProxy::launch(&args, Some(netns), &files.path(&format!("{name}.log")))
    }

    /// Spawns the binary with `args` (inside a namespace with `ip netns
    /// exec`, which execs it, so the child's PID is the proxy's), then
    /// waits for its bound addresses and readiness.
    fn launch(args: &ProxyArgs, netns: Option<(&str, NetNs)>, log: &Path) -> Result<NodeProxy> {
        let bin = node_proxy_bin()?;
        let node = &args.node;
        let addrs_file = &args.bound_addrs_file;
        let _ = std::fs::remove_file(addrs_file);
        let mut cmd = match &netns {
            Some((name, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(args.argv());
        let out = std::fs::File::create(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let netns_name = netns.as_ref().map(|(name, _)| name.to_string());
        let mut proxy = NodeProxy {
            node: node.clone(),
            child: OwnedChild::new(child),
            netns: netns.map(|(_, ns)| ns),
            netns_name,
            args: args.clone(),
            admin: "0.0.0.0:0".parse()?,
            metrics: "0.0.0.0:0".parse()?,
            readiness: "0.0.0.0:0".parse()?,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let addrs: serde_json::Value = loop {
            if let Some(status) = proxy.child.try_wait()? {
                bail!(
                    "{node} proxy exited with {status} at start:\n{}",
                    proxy.log()
                );
            }
            if let Ok(body) = std::fs::read(addrs_file) {
                break serde_json::from_slice(&body)?;
            }
            if Instant::now() > deadline {
                bail!(
                    "{node} proxy did not write its addresses in 15s:\n{}",
                    proxy.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let get = |k: &str| -> Result<SocketAddr> {
            addrs[k]
                .as_str()
                .ok_or_else(|| anyhow!("no {k} in addrs"))?
                .parse()
                .map_err(Into::into)
        };
        proxy.admin = get("admin")?;
        proxy.metrics = get("metrics")?;
        proxy.readiness = get("readiness")?;
        crate::wait_until(Duration::from_secs(10), "proxy readiness", || {
            proxy.ready().unwrap_or(false)
        })
        .map_err(|e| anyhow!("{e}\n{}", proxy.log()))?;
        Ok(proxy)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts another proxy process for the same node with this one's
    /// command line plus `extra` (e.g. `--takeover`), logging to
    /// `<node>-<tag>.log`, and waits for it as for the first (its bound
    /// addresses, its readiness). Fails, with its log, if it exits at start.
    pub fn relaunch(&self, tag: &str, extra: &[&str]) -> Result<NodeProxy> {
        self.relaunch_with(tag, |args| {
            args.extra.extend(extra.iter().map(|s| s.to_string()))
        })
    }

    /// A successor that takes over from this proxy through its hand-over
    /// socket (`--takeover`, given once however many generations back).
    pub fn take_over(&self, tag: &str) -> Result<NodeProxy> {
        self.relaunch_with(tag, |args| {
            args.extra.retain(|a| a != "--takeover");
            args.extra.push("--takeover".into());
        })
    }

    /// A successor started as a DaemonSet rollout starts it: no
    /// `--takeover`; it finds this proxy's lock taken and its hand-over
    /// socket in the shared runtime dir, and takes over (`--auto-takeover`).
    pub fn auto_take_over(&self, tag: &str) -> Result<NodeProxy> {
        self.relaunch_with(tag, |args| args.extra.retain(|a| a != "--takeover"))
    }

    /// [`relaunch`](Self::relaunch) with this one's arguments changed by `edit`.
    pub fn relaunch_with(&self, tag: &str, edit: impl FnOnce(&mut ProxyArgs)) -> Result<NodeProxy> {
        let mut args = self.args.clone();
        edit(&mut args);
        let log = self.log.with_file_name(format!("{}-{tag}.log", self.node));
        let netns = match (&self.netns_name, &self.netns) {
            (Some(name), Some(ns)) => Some((name.as_str(), ns.try_clone()?)),
            _ => None,
        };
        NodeProxy::launch(&args, netns, &log)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn ready(&self) -> Result<bool> {
        let ns = self.netns.as_ref();
        Ok(http_in(ns, self.readiness, "GET", "/healthz/ready", "")?.0 == 200)
    }

    pub fn admin(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        http_in(self.netns.as_ref(), self.admin, method, path, body)
    }

    pub fn metrics_text(&self) -> Result<String> {
        Ok(http_in(self.netns.as_ref(), self.metrics, "GET", "/metrics", "")?.1)
    }

    /// Sum of a metric's samples whose labels include all of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics_text().unwrap_or_default();
        sum_samples(&text, name, labels)
    }

    pub fn config_version(&self) -> u64 {
        self.admin("GET", "/config_dump", "")
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["configVersion"].as_u64())
            .unwrap_or(0)
    }

    pub fn sigterm(&self) {
        self.child.sigterm();
    }

    pub fn sigkill(&self) {
        self.child.sigkill();
    }

    /// Waits for the process to exit; None if it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.child.wait_exit(timeout)
    }
}

/// Sum of `name` samples in Prometheus text whose label set includes `labels`.
pub fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Minimal HTTP/1.1 request with `Connection: close`; returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    // A hang guard: a proxy's admin port under benchmark load answers slowly.
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad http response {resp:?}"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// [`http`] from inside `ns` (None: this thread's namespace). The whole
/// exchange runs switched into it: the socket is made there, and nothing
/// else runs on this thread meanwhile.
pub fn http_in(
    ns: Option<&NetNs>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String)> {
    match ns {
        Some(ns) => ns
            .run_in(|| http(addr, method, path, body))
            .with_context(|| format!("entering a namespace to call {addr}"))?,
        None => http(addr, method, path, body),
    }
}

/// The labels of every sample of `name`, for assertion messages.
pub fn samples(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(name))
        .map(str::to_string)
        .collect()
}

/// Sorted map of metric label values, for a compact view in failures.
pub fn labels_of(line: &str) -> BTreeMap<String, String> {
    let inner = line
        .split_once('{')
        .and_then(|(_, r)| r.rsplit_once('}'))
        .map(|(l, _)| l)
        .unwrap_or("");
    inner
        .split("\",")
        .filter_map(|kv| kv.split_once("=\""))
        .map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string()))
        .collect()
}

/// A topology plus the files its proxies share: the usual setup of a test.
pub struct Fixture {
    pub topo: Topology,
    pub files: ClusterFiles,
    pub ca: PathBuf,
}

impl Fixture {
    /// Builds nodes and pods from `(node, pod)` pairs and a dev CA.
    pub fn new(pods: &[(&str, &str)]) -> Result<Fixture> {
        let mut b = Topology::builder();
        for (node, pod) in pods {
            b = b.pod(node, pod);
        }
        let topo = b.build()?;
        let files = ClusterFiles::new()?;
        let ca = files.ca("ca")?;
        Ok(Fixture { topo, files, ca })
    }

    pub fn netns(&self, pod: &str) -> trellis_netns::NetNs {
        self.topo
            .pod(pod)
            .unwrap_or_else(|| panic!("no pod {pod}"))
            .netns()
            .expect("pod netns opens")
    }

    pub fn addr(&self, pod: &str, port: u16) -> SocketAddr {
        SocketAddr::new(
            self.topo
                .pod(pod)
                .unwrap_or_else(|| panic!("no pod {pod}"))
                .ip,
            port,
        )
    }

    pub fn wl(&self, pod: &str) -> Wl {
        Wl::pod(&self.topo, pod)
    }

    /// Starts `node`'s proxy with the fixture's CA, enrolling `pods`.
    pub fn proxy(&self, node: &str, config: &Path, pods: &[&str]) -> Result<NodeProxy> {
        self.proxy_with(node, config, pods, &[])
    }

    /// [`proxy`](Self::proxy) with extra flags, e.g. `["--hbone-engine", "lite"]`.
    pub fn proxy_with(
        &self,
        node: &str,
        config: &Path,
        pods: &[&str],
        extra: &[&str],
    ) -> Result<NodeProxy> {
        NodeProxy::start(&self.topo, &self.files, node, config, &self.ca, pods, extra)
    }
}
