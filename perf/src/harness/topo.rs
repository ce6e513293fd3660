//! The benchmark topology: two nodes, a client pod on node1, a server pod on
//! node2, and extra pods on node1 for the per-pod memory measurement; the mesh
//! config and dev CA; the node proxies as child processes; their admin API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use trellis_e2e::cluster::http_in;
use trellis_e2e::proxy_args::{Feed, ProxyArgs, ProxyMode};
use trellis_e2e::{ChildGuard, Pod, Topology};
use trellis_netns::NetNs;

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const NAMESPACE: &str = "bench";

/// The built topology plus a temp dir with the mesh config and the dev CA.
pub struct BenchTopo {
    pub topo: Topology,
    pub client: Pod,
    pub server: Pod,
    /// Pods on node1 that exist only to be enrolled for the per-pod RSS figure.
    pub extra: Vec<Pod>,
    dir: tempfile::TempDir,
}

/// One HBONE workload of namespace [`NAMESPACE`] in `mesh.yaml`, as YAML list item.
pub fn workload(uid: &str, sa: &str, ip: std::net::IpAddr, node: &str) -> String {
    format!(
        "  - uid: {uid}\n    name: {uid}\n    namespace: {NAMESPACE}\n    serviceAccount: {sa}\n    addresses: [{ip}]\n    node: {node}\n    protocol: HBONE\n"
    )
}

/// One service of namespace [`NAMESPACE`] in `mesh.yaml`, as YAML list
/// item: its VIP, `ports` as (port, targetPort), the workload uids of its
/// endpoints, and the address of its waypoint if it has one.
pub fn service(
    name: &str,
    vip: std::net::IpAddr,
    ports: &[(u16, u16)],
    endpoints: &[&str],
    waypoint: Option<std::net::IpAddr>,
) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|(p, t)| format!("{{port: {p}, targetPort: {t}}}"))
        .collect();
    let mut y = format!(
        "  - name: {name}\n    namespace: {NAMESPACE}\n    hostname: {name}.{NAMESPACE}.svc.{TRUST_DOMAIN}\n    vips: [{vip}]\n    ports: [{}]\n    endpoints: [{}]\n",
        ports.join(", "),
        endpoints.join(", ")
    );
    if let Some(ip) = waypoint {
        y += &format!("    waypoint: {{address: {ip}}}\n");
    }
    y
}

/// The `waypoints:` section declaring the waypoint `name` of [`NAMESPACE`].
pub fn waypoints(name: &str) -> String {
    format!("waypoints:\n  - {{name: {name}, namespace: {NAMESPACE}}}\n")
}

impl BenchTopo {
    /// Builds the namespaces, writes `mesh.yaml` (every pod an HBONE workload,
    /// no policies: all allowed) and the dev CA.
    pub fn build(extra_pods: usize) -> Result<BenchTopo> {
        let extra_names: Vec<String> = (1..=extra_pods).map(|i| format!("extra{i}")).collect();
        let extra: Vec<(&str, &str)> = extra_names.iter().map(|n| ("node1", n.as_str())).collect();
        BenchTopo::build_with(&extra, |client, server, extra| {
            let mut yaml = String::from("workloads:\n");
            yaml += &workload("client", "client", client.ip, "node1");
            yaml += &workload("server", "server", server.ip, "node2");
            for p in extra {
                yaml += &workload(&p.name, "extra", p.ip, "node1");
            }
            yaml
        })
    }

    /// Builds the namespaces (client pod on node1, server pod on node2, and
    /// `extra` pods as (node, name)), writes `mesh.yaml` as `config` renders
    /// it from the built pods, and the dev CA.
    pub fn build_with(
        extra: &[(&str, &str)],
        config: impl FnOnce(&Pod, &Pod, &[Pod]) -> String,
    ) -> Result<BenchTopo> {
        let mut b = Topology::builder()
            .node("node1")
            .node("node2")
            .pod("node1", "client")
            .pod("node2", "server");
        for (node, name) in extra {
            b = b.pod(node, name);
        }
        let topo = b.build().context("building the netns topology")?;
        let get = |n: &str| topo.pod(n).cloned().ok_or_else(|| anyhow!("no pod {n}"));
        let client = get("client")?;
        let server = get("server")?;
        let extra = extra
            .iter()
            .map(|(_, n)| get(n))
            .collect::<Result<Vec<_>>>()?;
        let dir = tempfile::Builder::new()
            .prefix("trellis-bench-")
            .tempdir()
            .context("creating the bench temp dir")?;
        let yaml = config(&client, &server, &extra);
        std::fs::write(dir.path().join("mesh.yaml"), yaml).context("writing mesh.yaml")?;
        hbone::DevCa::generate(TRUST_DOMAIN)
            .context("generating the dev CA")?
            .write_to_dir(&dir.path().join("ca"))
            .context("writing the dev CA")?;
        Ok(BenchTopo {
            topo,
            client,
            server,
            extra,
            dir,
        })
    }

    /// An extra pod by name.
    pub fn extra_pod(&self, name: &str) -> Result<&Pod> {
        self.extra
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow!("no extra pod {name}"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `trellis-node-proxy --mode shared --workers 1` in `node`'s netns
    /// (behind `$TRELLIS_PROXY_WRAPPER` if set, for manual investigation),
    /// pinned to `cpu`, enrolling `pod`; waits until it has written its bound
    /// addresses (it does so after enrolling the startup pods).
    pub fn start_proxy(&self, bin: &Path, node: &str, pod: &Pod, cpu: usize) -> Result<NodeProxy> {
        self.start_proxy_args(bin, node, pod, cpu, &[])
    }

    /// [`start_proxy`](Self::start_proxy) with `extra` arguments for the
    /// proxy. Two variables help manual investigation:
    /// `TRELLIS_PROXY_WRAPPER` (e.g. `heaptrack`, `valgrind --tool=massif`;
    /// the PID is then the wrapper's, so CPU and RSS figures are not the
    /// proxy's) and `TRELLIS_PROXY_ARGS` (more arguments, e.g.
    /// `--hbone-engine lite`, for any bench that starts node proxies).
    pub fn start_proxy_args(
        &self,
        bin: &Path,
        node: &str,
        pod: &Pod,
        cpu: usize,
        extra: &[&str],
    ) -> Result<NodeProxy> {
        let wrapper = std::env::var("TRELLIS_PROXY_WRAPPER").unwrap_or_default();
        let wrapper: Vec<&str> = wrapper.split_whitespace().collect();
        self.start_proxy_with(bin, node, pod, cpu, &wrapper, extra)
    }

    /// [`start_proxy`](Self::start_proxy) with the proxy run under `wrapper`
    /// (a command and its arguments that exec the proxy, such as valgrind;
    /// empty: none) and `extra` arguments for the proxy (such as
    /// `--max-connections N`), followed by those in `TRELLIS_PROXY_ARGS`.
    pub fn start_proxy_with(
        &self,
        bin: &Path,
        node: &str,
        pod: &Pod,
        cpu: usize,
        wrapper: &[&str],
        extra: &[&str],
    ) -> Result<NodeProxy> {
        let node_ns = self
            .topo
            .node(node)
            .ok_or_else(|| anyhow!("no node {node}"))?
            .netns_path()
            .to_path_buf();
        let addrs_file = self.dir().join(format!("{node}-addrs.json"));
        let _ = std::fs::remove_file(&addrs_file);
        // The tests' command line (each node its own runtime dir: lock and
        // hand-over socket, as on separate machines), run under `taskset`
        // and the wrapper.
        let args = ProxyArgs {
            node: node.to_string(),
            mode: ProxyMode::Shared,
            feed: self.files_feed(),
            pods: vec![(pod.name.clone(), pod.netns_path().to_path_buf())],
            bound_addrs_file: addrs_file.clone(),
            extra: extra
                .iter()
                .map(|s| s.to_string())
                .chain(proxy_args_from_env())
                .collect(),
        };
        let argv = pinned_argv(cpu, wrapper, bin, &args.argv())?;
        let full: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut guard = self
            .topo
            .spawn(node, &full)
            .with_context(|| format!("starting the {node} proxy"))?;
        // Tools such as valgrind start the proxy slowly.
        let startup = Duration::from_secs(if wrapper.is_empty() { 20 } else { 120 });
        let addrs = wait_bound_addrs(
            &mut guard,
            &addrs_file,
            startup,
            &format!("the {node} proxy"),
        )?;
        let addr = |k: &str| addrs.get(k);
        Ok(NodeProxy {
            node: node.to_string(),
            pid: guard.pid(),
            admin: addr("admin")?,
            metrics: addr("metrics")?,
            node_ns,
            guard,
        })
    }
}

impl BenchTopo {
    /// The mesh config and dev CA this topology wrote, as a node proxy's feed.
    pub fn files_feed(&self) -> Feed {
        Feed::Files {
            config: self.dir().join("mesh.yaml"),
            ca_dir: self.dir().join("ca"),
        }
    }
}

/// `taskset -c <cpu> [wrapper...] <bin> <args...>`, as the strings the
/// topology's launcher takes.
pub fn pinned_argv(
    cpu: usize,
    wrapper: &[&str],
    bin: &Path,
    args: &[std::ffi::OsString],
) -> Result<Vec<String>> {
    let mut argv = vec!["taskset".to_string(), "-c".into(), cpu.to_string()];
    argv.extend(wrapper.iter().map(|w| w.to_string()));
    argv.push(bin.display().to_string());
    for a in args {
        let a = a
            .to_str()
            .ok_or_else(|| anyhow!("an argument is not UTF-8: {a:?}"))?;
        argv.push(a.to_string());
    }
    Ok(argv)
}

impl BenchTopo {
    /// Trellis in sidecar shape: `trellis-node-proxy --mode dedicated
    /// --capture` inside `pod`'s netns, serving only that pod (its
    /// workload uid is the pod's name), pinned to `cpu`; waits until it
    /// has written its bound addresses.
    pub fn start_sidecar_proxy(&self, bin: &Path, pod: &Pod, cpu: usize) -> Result<NodeProxy> {
        // A directory per pod: its runtime dir (node lock, hand-over
        // socket) sits beside the bound-addresses file, and every
        // sidecar-shaped proxy on a node needs its own.
        let dir = self.dir().join(format!("{}-sidecar", pod.name));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let addrs_file = dir.join("addrs.json");
        let _ = std::fs::remove_file(&addrs_file);
        let args = ProxyArgs {
            node: pod.node.clone(),
            mode: ProxyMode::Host {
                workload_uid: pod.name.clone(),
            },
            feed: self.files_feed(),
            pods: vec![],
            bound_addrs_file: addrs_file.clone(),
            extra: vec![],
        };
        let argv = pinned_argv(cpu, &[], bin, &args.argv())?;
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let who = format!("the sidecar-shaped proxy of {}", pod.name);
        let mut guard = self
            .topo
            .spawn(&pod.name, &argv)
            .with_context(|| format!("starting {who}"))?;
        let addrs = wait_bound_addrs(&mut guard, &addrs_file, Duration::from_secs(60), &who)?;
        Ok(NodeProxy {
            node: pod.name.clone(),
            pid: guard.pid(),
            admin: addrs.get("admin")?,
            metrics: addrs.get("metrics")?,
            node_ns: pod.netns_path().to_path_buf(),
            guard,
        })
    }
}

/// A node proxy child process. Killed when dropped (and when the topology is).
pub struct NodeProxy {
    pub node: String,
    pub pid: u32,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    node_ns: PathBuf,
    guard: ChildGuard,
}

impl NodeProxy {
    /// One HTTP/1.1 request to the proxy's admin or metrics server, from inside the node netns.
    fn http(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String)> {
        let ns = NetNs::open(&self.node_ns)?;
        http_in(Some(&ns), addr, method, path, body)
            .with_context(|| format!("calling the {} proxy at {addr}", self.node))
    }

    /// `POST /pods {"uid":..,"netns":..}`.
    pub fn enroll(&self, uid: &str, netns: &Path) -> Result<()> {
        let body = serde_json::json!({"uid": uid, "netns": netns}).to_string();
        let (status, text) = self.http(self.admin, "POST", "/pods", &body)?;
        if status != 200 {
            bail!("enrolling {uid} on {}: HTTP {status}: {text}", self.node);
        }
        Ok(())
    }

    /// Number of pods `GET /pods` lists.
    pub fn pod_count(&self) -> Result<usize> {
        let (status, text) = self.http(self.admin, "GET", "/pods", "")?;
        if status != 200 {
            bail!("GET /pods on {}: HTTP {status}", self.node);
        }
        let v: serde_json::Value = serde_json::from_str(text.trim())
            .with_context(|| format!("parsing GET /pods: {text:?}"))?;
        Ok(v["pods"].as_array().map(|a| a.len()).unwrap_or(0))
    }

    /// Prometheus text from /metrics.
    pub fn metrics_text(&self) -> Result<String> {
        let (status, text) = self.http(self.metrics, "GET", "/metrics", "")?;
        if status != 200 {
            bail!("GET /metrics on {}: HTTP {status}", self.node);
        }
        Ok(text)
    }

    /// Sum of every sample of one metric.
    pub fn metric_sum(&self, name: &str) -> Result<f64> {
        Ok(trellis_e2e::demo::sum_metric(&self.metrics_text()?, name))
    }

    /// Fails with the proxy's log if it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.guard.try_status() {
            bail!(
                "the {} proxy exited ({status}); its log:\n{}",
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

/// Waits until something listens on TCP `port` inside `ns` (from /proc/net/tcp, no connection made).
pub fn wait_listening(ns: &NetNs, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let tables = ns.run_in(|| {
            let a = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default();
            let b = std::fs::read_to_string("/proc/thread-self/net/tcp6").unwrap_or_default();
            a + &b
        })?;
        let listening = tables.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "0A"
                && f[1]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        });
        if listening {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "nothing listens on port {port} in {} after {timeout:?}",
                ns.path().display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `trellis-node-proxy` next to this executable (target/release when run with cargo).
/// The addresses a proxy wrote to its `--bound-addrs-file`.
pub struct BoundAddrs {
    json: serde_json::Value,
    who: String,
}

impl BoundAddrs {
    /// The address under `key` (`admin`, `metrics`, `readiness`, ...).
    pub fn get(&self, key: &str) -> Result<SocketAddr> {
        self.json[key]
            .as_str()
            .ok_or_else(|| anyhow!("no {key} address in {} from {}", self.json, self.who))?
            .parse()
            .with_context(|| format!("parsing the {key} address of {}", self.who))
    }
}

/// Waits until the process behind `guard` has written `file` as JSON (it
/// does so once it listens), failing with its log if it exits first or
/// `within` passes. `who` names it in errors ("the node1 proxy").
pub fn wait_bound_addrs(
    guard: &mut ChildGuard,
    file: &Path,
    within: Duration,
    who: &str,
) -> Result<BoundAddrs> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = guard.try_status() {
            bail!(
                "{who} exited during startup ({status}); its log:\n{}",
                guard.log()
            );
        }
        if let Some(json) = std::fs::read(file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            return Ok(BoundAddrs {
                json,
                who: who.to_string(),
            });
        }
        if Instant::now() > deadline {
            bail!(
                "{who} did not write {} within {within:?}; its log:\n{}",
                file.display(),
                guard.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn proxy_binary() -> Result<PathBuf> {
    sibling_binary("trellis-node-proxy", "trellis-node-proxy")
}

/// The binary `name` of `package` next to this executable; the bench runs the
/// binaries from its own target dir, so a stale or missing one is an error
/// that names the build command.
pub fn sibling_binary(name: &str, package: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let bin = exe
        .parent()
        .ok_or_else(|| anyhow!("executable has no parent dir"))?
        .join(name);
    if !bin.is_file() {
        bail!(
            "{} is missing: build it first with `cargo build --release -p {package}` \
             (the bench runs it from its own target dir)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Fails naming the package if a tool is not in PATH.
pub fn require_tool(tool: &str, package: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file());
    if !found {
        bail!("`{tool}` not found: apt-get install {package}");
    }
    Ok(())
}

impl NodeProxy {
    /// How many workloads and services the proxy holds (`GET /config_dump`).
    pub fn config_counts(&self) -> Result<(usize, usize)> {
        let (status, text) = self.http(self.admin, "GET", "/config_dump", "")?;
        if status != 200 {
            bail!("GET /config_dump on {}: HTTP {status}", self.node);
        }
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing GET /config_dump of {}", self.node))?;
        let len = |k: &str| v["config"][k].as_array().map_or(0, |a| a.len());
        Ok((len("workloads"), len("services")))
    }
}

/// `TRELLIS_PROXY_ARGS`, split on whitespace: more flags for every node
/// proxy a bench starts (e.g. `--hbone-engine lite`), for comparisons by hand.
fn proxy_args_from_env() -> Vec<String> {
    std::env::var("TRELLIS_PROXY_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn a_launch_is_pinned_then_wrapped_then_the_binary_and_its_arguments() {
        let args: Vec<OsString> = vec!["--mode".into(), "shared".into()];
        // (wrapper, expected)
        let cases: [(&[&str], &[&str]); 2] = [
            (&[], &["taskset", "-c", "1", "/b/p", "--mode", "shared"]),
            (
                &["valgrind", "--tool=callgrind"],
                &[
                    "taskset",
                    "-c",
                    "1",
                    "valgrind",
                    "--tool=callgrind",
                    "/b/p",
                    "--mode",
                    "shared",
                ],
            ),
        ];
        for (wrapper, want) in cases {
            let got = pinned_argv(1, wrapper, Path::new("/b/p"), &args).unwrap();
            assert_eq!(got, want, "{wrapper:?}");
        }
        let bad = vec![OsString::from_vec(vec![0xff, 0xfe])];
        let e = pinned_argv(0, &[], Path::new("/b/p"), &bad).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }
}
