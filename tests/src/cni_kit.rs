//! The CNI side of a node, driven as a container runtime drives it: empty
//! pod network namespaces, the real `trellis-cni-agent` process, and a
//! runtime stand-in that runs the CNI plugins (Debian's `bridge`,
//! `host-local` and `loopback`, then `trellis-cni`) exactly as libcni does:
//! `CNI_*` in the environment, each plugin's config with the previous
//! result as `prevResult` on stdin, the result or error JSON on stdout.
//!
//! The plugins run inside a node's network namespace (`ip netns exec`), so
//! the bridge they make is the node's, never the host's. Pods get
//! addresses in [`POD_SUBNET`], inside 198.18.0.0/15, with no route out.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::cleanup::{netns_admin, NETNS_DIR};
use crate::process::OwnedChild;

/// The subnet of the CNI-made pods: the bridge plugin's, on each node.
pub const POD_SUBNET: &str = "198.18.200.0/24";
/// Its gateway, the address of the node's CNI bridge.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
/// The bridge the `bridge` plugin creates in the node's netns.
pub const BRIDGE: &str = "trlcni0";
/// Where Debian's containernetworking-plugins installs the reference plugins.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";
/// Upper bound for one plugin run.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A binary of this workspace, built next to the test executable
/// (`cargo build -p trellis-cni` builds the plugin and the agent).
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} not found near {}; build it with `cargo build -p trellis-cni`",
        exe.display()
    )
}

/// Checks the reference plugins are installed (tests/run installs them).
pub fn require_reference_plugins() -> Result<()> {
    for p in ["bridge", "host-local", "loopback"] {
        let path = Path::new(DEBIAN_CNI_DIR).join(p);
        if !path.is_file() {
            bail!(
                "{} is missing: install Debian's containernetworking-plugins (apt-get install containernetworking-plugins; tests/run does it)",
                path.display()
            );
        }
    }
    Ok(())
}

/// An empty network namespace for a pod, as a runtime creates it before
/// running CNI ADD: only a `lo`, down. Deleted on drop.
pub struct PodNetns {
    name: String,
    path: PathBuf,
}

impl PodNetns {
    /// `prefix` should be a topology's prefix, so a test killed before its
    /// drop leaves a namespace the stale cleanup recognises.
    pub fn create(prefix: &str, pod: &str) -> Result<PodNetns> {
        let name = format!("{prefix}-c-{pod}");
        netns_admin("add", &name).map_err(|e| anyhow!("{e}"))?;
        Ok(PodNetns {
            path: Path::new(NETNS_DIR).join(&name),
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn netns(&self) -> std::io::Result<trellis_netns::NetNs> {
        trellis_netns::NetNs::open(&self.path)
    }

    /// Whether the capture table is installed in the pod.
    pub fn has_capture_rules(&self) -> Result<bool> {
        let out = crate::process::run(
            "ip",
            &["netns", "exec", &self.name, "nft", "list", "tables"],
            crate::process::EXEC_TIMEOUT,
        )
        .map_err(|e| anyhow!("{e}"))?;
        Ok(out.contains("inet trellis"))
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        if let Err(e) = netns_admin("delete", &self.name) {
            eprintln!(
                "trellis-e2e: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// A pod sandbox as the runtime knows it.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub container_id: String,
    pub netns: PathBuf,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Asked of host-local with `IP=` in `CNI_ARGS`, so configs can name it first.
    pub ip: Ipv4Addr,
}

impl Sandbox {
    /// `CNI_ARGS` as kubelet's runtimes pass it, plus host-local's `IP`.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;IP={};K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.ip, self.namespace, self.name, self.container_id, self.uid
        )
    }
}

/// What a plugin printed and how it exited.
#[derive(Debug)]
pub struct PluginRun {
    pub plugin: String,
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

impl PluginRun {
    /// The stdout as JSON (the result, or the error object).
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| {
            format!(
                "{} printed no JSON: {:?} (stderr {:?})",
                self.plugin, self.stdout, self.stderr
            )
        })
    }
}

/// The runtime stand-in for one node: runs plugins in the node's netns.
pub struct Runtime {
    node_netns: String,
    cni_path: String,
    /// The pod network: bridge + host-local, then trellis-cni.
    pub conflist: Value,
    /// host-local's allocations; gone with the runtime.
    _ipam_dir: Option<tempfile::TempDir>,
    /// The node's own directories at their paths (its /var/run/trellis,
    /// where the chained entry's agent socket is), as plugins see them.
    mounts: Vec<crate::container::MountOp>,
}

/// The primary pod network of a node, as its conflist names it: `bridge`
/// on `bridge` with host-local addresses in `subnet` (allocations kept in
/// `ipam_dir`), `gateway` the bridge's address.
pub fn primary_network(bridge: &str, subnet: &str, gateway: Ipv4Addr, ipam_dir: &Path) -> Value {
    json!({
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": subnet, "gateway": gateway.to_string() }]],
            "dataDir": ipam_dir,
        },
    })
}

impl Runtime {
    /// A node's pod network: `bridge` on [`BRIDGE`] with host-local
    /// addresses in [`POD_SUBNET`], then `trellis-cni` with `trellis` merged
    /// into its config (agentSocket, captureTimeoutMs, failOpen).
    pub fn new(node_netns: &str, trellis: Value) -> Result<Runtime> {
        require_reference_plugins()?;
        let plugin_dir = workspace_bin("trellis-cni")?
            .parent()
            .ok_or_else(|| anyhow!("no directory"))?
            .to_path_buf();
        let ipam_dir = tempfile::Builder::new()
            .prefix("trellis-cni-ipam-")
            .tempdir()?;
        let mut entry = json!({ "type": "trellis-cni" });
        if let (Some(e), Value::Object(extra)) = (entry.as_object_mut(), trellis) {
            e.extend(extra);
        }
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "trellis-e2e",
            "plugins": [
                primary_network(BRIDGE, POD_SUBNET, POD_GATEWAY, ipam_dir.path()),
                entry,
            ],
        });
        Ok(Runtime {
            node_netns: node_netns.to_string(),
            cni_path: format!("{DEBIAN_CNI_DIR}:{}", plugin_dir.display()),
            conflist,
            _ipam_dir: Some(ipam_dir),
            mounts: Vec::new(),
        })
    }

    /// A node whose conflist and plugins are files on it (written by the
    /// agent's installer): each run sees `mounts` (the node's own dirs).
    pub fn on_node(
        node_netns: &str,
        conflist: Value,
        bin_dir: &Path,
        mounts: Vec<crate::container::MountOp>,
    ) -> Result<Runtime> {
        require_reference_plugins()?;
        Ok(Runtime {
            node_netns: node_netns.to_string(),
            cni_path: format!("{DEBIAN_CNI_DIR}:{}", bin_dir.display()),
            conflist,
            _ipam_dir: None,
            mounts,
        })
    }

    /// Runs the network config and the plugin binary the agent's installer
    /// put in a node's conf dir and bin dir, as a runtime would.
    pub fn use_installed(&mut self, conflist: Value, bin_dir: &Path) {
        self.conflist = conflist;
        self.cni_path = format!("{DEBIAN_CNI_DIR}:{}", bin_dir.display());
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The config one plugin of the list gets, as libcni builds it.
    fn plugin_conf(&self, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    /// Runs one plugin binary with `command`, `conf` on stdin.
    pub fn invoke(
        &self,
        command: &str,
        conf: &Value,
        sandbox: &Sandbox,
        ifname: &str,
    ) -> Result<PluginRun> {
        let plugin = conf["type"]
            .as_str()
            .ok_or_else(|| anyhow!("plugin config without type: {conf}"))?
            .to_string();
        let bin = self
            .cni_path
            .split(':')
            .map(|d| Path::new(d).join(&plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow!("plugin {plugin} not in CNI_PATH {}", self.cni_path))?;
        let netns = sandbox.netns.display().to_string();
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", &sandbox.container_id),
            ("CNI_NETNS", &netns),
            ("CNI_IFNAME", ifname),
            ("CNI_ARGS", &sandbox.cni_args()),
            ("CNI_PATH", &self.cni_path),
        ];
        self.run_raw(&bin, &env, conf.to_string().as_bytes())
    }

    /// Runs a plugin binary with exactly this environment and stdin, in the
    /// node's netns, within a deadline.
    pub fn run_raw(&self, bin: &Path, env: &[(&str, &str)], stdin: &[u8]) -> Result<PluginRun> {
        let mut child = crate::container::command(&self.node_netns, &self.mounts, bin)?
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", bin.display()))?;
        // Pipes are read on threads so a chatty plugin cannot block on a full one.
        let out = read_on_thread(child.stdout.take());
        let err = read_on_thread(child.stderr.take());
        let input = child.stdin.take();
        let mut owned = OwnedChild::new(child);
        if let Some(mut input) = input {
            // A plugin may exit before reading stdin (a missing variable).
            let _ = input.write_all(stdin);
        }
        let deadline = Instant::now() + PLUGIN_TIMEOUT;
        let status = loop {
            if let Some(s) = owned.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                bail!("{} did not finish within {PLUGIN_TIMEOUT:?}", bin.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        Ok(PluginRun {
            plugin: bin
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            stdout: stdout.trim().to_string(),
            stderr,
            success: status.success(),
        })
    }

    /// Brings up `lo` in the pod with the loopback plugin, as containerd
    /// does before the pod network.
    pub fn loopback(&self, sandbox: &Sandbox) -> Result<()> {
        let conf = json!({ "cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback" });
        let run = self.invoke("ADD", &conf, sandbox, "lo")?;
        if !run.success {
            bail!("loopback ADD failed: {} {}", run.stdout, run.stderr);
        }
        Ok(())
    }

    /// ADD through the list: each plugin gets the previous one's result.
    /// Returns every plugin's run, in order; stops at the first failure.
    pub fn add(&self, sandbox: &Sandbox) -> Result<Vec<PluginRun>> {
        let mut runs: Vec<PluginRun> = Vec::new();
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let conf = self.plugin_conf(&plugin, prev.as_ref());
            let run = self.invoke("ADD", &conf, sandbox, "eth0")?;
            let ok = run.success;
            if ok {
                prev = Some(run.json()?);
            }
            runs.push(run);
            if !ok {
                break;
            }
        }
        Ok(runs)
    }

    /// DEL through the list in reverse, each with `result` (the cached
    /// result of ADD) as prevResult.
    pub fn del(&self, sandbox: &Sandbox, result: Option<&Value>) -> Result<Vec<PluginRun>> {
        let mut runs = Vec::new();
        for plugin in self.plugins().iter().rev() {
            let conf = self.plugin_conf(plugin, result);
            runs.push(self.invoke("DEL", &conf, sandbox, "eth0")?);
        }
        Ok(runs)
    }

    /// CHECK through the list, each with the cached ADD result.
    pub fn check(&self, sandbox: &Sandbox, result: &Value) -> Result<Vec<PluginRun>> {
        let mut runs = Vec::new();
        for plugin in self.plugins() {
            let conf = self.plugin_conf(&plugin, Some(result));
            runs.push(self.invoke("CHECK", &conf, sandbox, "eth0")?);
        }
        Ok(runs)
    }
}

fn read_on_thread(
    pipe: Option<impl std::io::Read + Send + 'static>,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    })
}

/// A running `trellis-cni-agent`, killed on drop.
pub struct Agent {
    child: OwnedChild,
    pub zds_socket: PathBuf,
    pub plugin_socket: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Starts the agent with its sockets under `dir`, enrolling the pods of
    /// `namespaces`, and waits until both sockets exist.
    pub fn start(dir: &Path, namespaces: &[&str]) -> Result<Agent> {
        let args: Vec<&str> = namespaces
            .iter()
            .flat_map(|ns| ["--ambient-namespace", ns])
            .collect();
        Agent::start_with(dir, &args)
    }

    /// Starts the agent with its sockets under `dir` and these further
    /// arguments (Kubernetes mode, the installer, the admin port).
    pub fn start_with(dir: &Path, args: &[&str]) -> Result<Agent> {
        let bin = workspace_bin("trellis-cni-agent")?;
        let zds_socket = dir.join("zds.sock");
        let plugin_socket = dir.join("cni-plugin.sock");
        let log = dir.join("agent.log");
        let _ = std::fs::remove_file(&plugin_socket);
        let mut cmd = Command::new(&bin);
        cmd.arg("--zds-socket")
            .arg(&zds_socket)
            .arg("--plugin-socket")
            .arg(&plugin_socket)
            .arg("--state-file")
            .arg(dir.join("agent-state.json"))
            .args(["--ack-timeout", "5s"])
            .args(args);
        if !args.contains(&"--admin-addr") {
            cmd.args(["--admin-addr", "127.0.0.1:0"]);
        }
        let out = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .env("RUST_LOG", "info");
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut agent = Agent {
            child: OwnedChild::new(child),
            zds_socket,
            plugin_socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(agent.zds_socket.exists() && agent.plugin_socket.exists()) {
            if let Some(status) = agent.child.try_wait()? {
                bail!("agent exited with {status} at start:\n{}", agent.log());
            }
            if Instant::now() > deadline {
                bail!("agent sockets not there after 10s:\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(agent)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A shared-mode node proxy for `node`, its pods coming from this
    /// agent over ZDS (config and CA from files).
    pub fn node_proxy(
        &self,
        topo: &crate::Topology,
        files: &crate::cluster::ClusterFiles,
        node: &str,
        config: &Path,
        ca: &Path,
    ) -> Result<crate::cluster::NodeProxy> {
        let zds = self.zds_socket.display().to_string();
        crate::cluster::NodeProxy::start(
            topo,
            files,
            node,
            config,
            ca,
            &[],
            &["--zds-socket", &zds, "--drain-deadline", "2s"],
        )
    }

    /// The admin port the agent bound, from its start line.
    pub fn admin_addr(&self) -> Result<std::net::SocketAddr> {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("trellis-cni-agent listening"))
            .ok_or_else(|| anyhow!("no start line in the agent log:\n{log}"))?;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admin="))
            .ok_or_else(|| anyhow!("no admin= in {line:?}"))?;
        Ok(addr.parse()?)
    }

    /// GET on the admin port: (status, body).
    pub fn admin(&self, path: &str) -> Result<(u16, String)> {
        crate::cluster::http(self.admin_addr()?, "GET", path, "")
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.child.sigterm();
        self.child.wait_exit(Duration::from_secs(10))
    }
}
