//! The cluster in a box: Trellis deployed the way users deploy it, with
//! everything real except the kubelet and the container runtime, which
//! the harness plays.
//!
//! Real: a kube-apiserver and etcd (in the control node's netns), the
//! `deploy/daemonset/base` tree applied with `kubectl apply -k`, the
//! controller started from the rendered Deployment (`--in-cluster`), and
//! on each node the CNI agent and the node proxy started from the
//! rendered DaemonSets; pods made with kubectl, given their netns by the
//! real CNI chain (Debian's `bridge` + `host-local` + `loopback`, then the
//! `trellis-cni` the agent's installer put on the node, which hands the
//! pod to the node proxy over ZDS).
//!
//! Played by the harness ([`crate::kubelet`], [`crate::container`]):
//! - the kubelet: Node objects; each system pod's Pod object, its volumes
//!   (bound service account tokens, ConfigMaps, the node's hostPath dirs),
//!   its readiness probe and its status; an app pod's status (the IP
//!   host-local gave) after CNI ADD; a container restart;
//! - the container runtime: a mount namespace per container with its
//!   volumes at the manifest's mount paths (args exactly as rendered); the
//!   CNI ADD/DEL runs (as libcni runs them), in the node's mount view;
//! - cluster DNS and kube-proxy, which this box has not: the controller's
//!   Service name is an /etc/hosts entry naming the controller pod's IP,
//!   and the `kubernetes` Service is a relay on each node's 127.0.0.1 to
//!   the API server's (its serving certificate names 127.0.0.1).
//!
//! Not played: security contexts (every container runs as root; the
//! controller's runAsUser is not applied), resource limits, and a second
//! controller replica (one runs).
//!
//! Layout: nodes `node1`, `node2` and `cp` ([`crate::topology`]); node i's
//! pods get 198.18.i.100+ on its `br0`, whose routes reach the other nodes;
//! a waypoint Deployment's pod runs in `wp-pod` on node2 (198.18.2.2, a
//! topology pod the CNI does not enroll). The steps are [`scenario`].

pub mod scenario;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use trellis_netns::NetNs;

use crate::cluster::{http_in, sum_samples};
use crate::cni_kit::{primary_network, workspace_bin, PluginRun, PodNetns, Runtime, Sandbox};
use crate::container::MountOp;
use crate::controller_proc::{ca_init, controller_bin};
use crate::deploy::{self, CNI_AGENT, CONTROLLER, NAMESPACE as SYSTEM_NS, NODE_PROXY};
use crate::kube::KubeApiServer;
use crate::kubelet::{plan_contained, Contained, KubeletPod, NodeView};
use crate::manifests::{self, PodDef};
use crate::Topology;

/// The namespace of the app pods.
pub const APP_NS: &str = "demo";
/// The worker nodes.
pub const NODES: [&str; 2] = ["node1", "node2"];
const CONTROL: &str = "cp";
/// Cluster IPs (nothing routes them: there is no kube-proxy); the fixed
/// ones the scenario asks for sit in its static band (see there).
use crate::controlled_mesh::SERVICE_CIDR;
/// The controller's Service name, as the node proxies dial it.
const CONTROLLER_SVC: &str = "trellis-controller.trellis-system.svc";
/// The node proxy's admin API (127.0.0.1 of its netns), metrics, readiness.
const PROXY_ADMIN: u16 = 15000;
const PROXY_METRICS: u16 = 15020;
/// The CNI agent's admin port (host network).
const AGENT_ADMIN: u16 = 15023;
/// The netns (on node2, outside the CNI range, not captured) the
/// harness runs a waypoint Deployment's pod in.
const WAYPOINT_POD: &str = "wp-pod";

/// An app pod the runtime made.
pub struct AppPod {
    pub node: String,
    pub ip: Ipv4Addr,
    pub uid: String,
    pub service_account: String,
    /// The last plugin runs of its ADD.
    pub add_runs: Vec<PluginRun>,
    netns: PodNetns,
    sandbox: Sandbox,
    result: Value,
}

impl AppPod {
    pub fn netns(&self) -> io::Result<NetNs> {
        self.netns.netns()
    }

    pub fn has_capture_rules(&self) -> Result<bool> {
        self.netns.has_capture_rules()
    }

    pub fn spiffe_id(&self) -> String {
        manifests::spiffe_id(APP_NS, &self.service_account)
    }
}

/// One worker node: its directories, runtime, agent and proxy.
pub struct NodeBox {
    pub name: String,
    pub ip: IpAddr,
    pub index: u8,
    netns: String,
    pub runtime: Runtime,
    pub agent: KubeletPod,
    pub proxy: KubeletPod,
    next_ip: u8,
    /// What the kubelet gives this node's contained pods.
    contained: Contained,
    _relay: Relay,
}

impl NodeBox {
    fn ns(&self) -> Result<NetNs> {
        Ok(NetNs::open(
            Path::new(crate::cleanup::NETNS_DIR).join(&self.netns),
        )?)
    }

    fn get(&self, addr: SocketAddr, path: &str) -> Result<String> {
        let (status, body) = http_in(Some(&self.ns()?), addr, "GET", path, "")?;
        if status != 200 {
            bail!("GET {path} on {addr} answered {status}: {body}");
        }
        Ok(body)
    }

    /// Sum of the node proxy's `name` samples with all of `labels`.
    pub fn proxy_metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self
            .get(SocketAddr::new(self.ip, PROXY_METRICS), "/metrics")
            .unwrap_or_default();
        sum_samples(&text, name, labels)
    }

    /// `GET path` on the node proxy's admin API.
    pub fn proxy_admin_get(&self, path: &str) -> Result<String> {
        self.get(([127, 0, 0, 1], PROXY_ADMIN).into(), path)
    }

    /// The node proxy's `GET /pods`.
    pub fn proxy_pods(&self) -> Result<String> {
        self.proxy_admin_get("/pods")
    }

    /// The agent's `name` gauge or counter (all samples summed).
    pub fn agent_metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self
            .get(SocketAddr::new(self.ip, AGENT_ADMIN), "/metrics")
            .unwrap_or_default();
        sum_samples(&text, name, labels)
    }

    pub fn logs(&self) -> String {
        format!(
            "--- agent on {n}:\n{}\n--- node proxy on {n}:\n{}",
            self.agent.log(),
            self.proxy.log(),
            n = self.name
        )
    }
}

pub struct KubeCluster {
    pub nodes: BTreeMap<String, NodeBox>,
    pub controller: KubeletPod,
    pub pods: BTreeMap<String, AppPod>,
    // Dropped in this order: processes above, then the API server, then
    // the namespaces, then the files.
    pub kube: KubeApiServer,
    pub topo: Topology,
    pub dir: tempfile::TempDir,
}

impl KubeCluster {
    /// Builds the box: API server, CRDs, the CA, the base tree, the
    /// controller, then each node's agent (which installs the plugin) and
    /// node proxy, each ready. `demo` exists, not labelled.
    pub fn start() -> Result<KubeCluster> {
        crate::cni_kit::require_reference_plugins()?;
        let topo = Topology::builder()
            .node(NODES[0])
            .node(NODES[1])
            .node(CONTROL)
            .pod(NODES[1], WAYPOINT_POD)
            .build()?;
        let dir = tempfile::Builder::new()
            .prefix("trellis-kube-cluster-")
            .tempdir()?;
        let cp = topo
            .node(CONTROL)
            .ok_or_else(|| anyhow!("no {CONTROL} node"))?;
        let kube = KubeApiServer::start(Some(cp.netns_name()), Some(SERVICE_CIDR))
            .context("starting kube-apiserver")?;
        let api_port = api_port(kube.kubeconfig())?;
        let api_ca = kube
            .kubeconfig()
            .parent()
            .ok_or_else(|| anyhow!("kubeconfig without a dir"))?
            .join("certs/apiserver.crt");

        // The prerequisites, the CA as deploy/daemonset/README.md says, the tree.
        deploy::install_prerequisites_in(kube.kubeconfig(), Some(cp.netns_name()))?;
        let ca = dir.path().join("ca");
        ca_init(&ca)?;
        kube.apply(&manifests::namespace(SYSTEM_NS, None))?;
        let file = |n: &str| format!("--from-file={}", ca.join(n).display());
        kube.kubectl(
            &[
                "-n",
                SYSTEM_NS,
                "create",
                "secret",
                "generic",
                "cacerts",
                &file("root-cert.pem"),
                &file("ca-cert.pem"),
                &file("ca-key.pem"),
                &file("cert-chain.pem"),
            ],
            None,
        )?;
        kube.kubectl(
            &[
                "-n",
                SYSTEM_NS,
                "create",
                "configmap",
                "trellis-ca-root-cert",
                &format!(
                    "--from-file=root-cert.pem={}",
                    ca.join("root-cert.pem").display()
                ),
            ],
            None,
        )?;
        let base = deploy::Variant::Base.dir();
        let base = base.to_str().ok_or_else(|| anyhow!("non UTF-8 path"))?;
        kube.kubectl(&["apply", "--server-side", "-k", base], None)?;
        kube.apply(&manifests::namespace(APP_NS, None))?;
        for n in topo.nodes() {
            kube.apply(&format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {}\n",
                n.name
            ))?;
        }

        let cp_ns = cp.netns()?;
        let controller = KubeletPod::start_contained(
            &kube,
            plan_contained(
                &applied(&kube, "deployment", CONTROLLER)?,
                "trellis-controller-0",
                CONTROL,
                &cp.uplink_ip.to_string(),
                &dir.path().join("controller"),
                NodeView {
                    root: &dir.path().join("nodes").join(CONTROL),
                },
            )?,
            &controller_bin()?,
            cp.netns_name(),
            &cp_ns,
            cp.uplink_ip,
            &Contained {
                api_host: "127.0.0.1".into(),
                api_port,
                api_ca: api_ca.clone(),
                hosts: Vec::new(),
            },
        )
        .context("starting the controller")?;

        let mut nodes = BTreeMap::new();
        for (i, name) in NODES.iter().enumerate() {
            let node = start_node(
                &kube,
                &topo,
                dir.path(),
                name,
                i as u8 + 1,
                &Contained {
                    api_host: "127.0.0.1".into(),
                    api_port: 0,
                    api_ca: api_ca.clone(),
                    hosts: vec![(CONTROLLER_SVC.into(), cp.uplink_ip)],
                },
                api_port,
            )
            .with_context(|| {
                format!(
                    "starting node {name}; controller log:\n{}",
                    controller.log()
                )
            })?;
            nodes.insert(name.to_string(), node);
        }
        Ok(KubeCluster {
            nodes,
            controller,
            pods: BTreeMap::new(),
            kube,
            topo,
            dir,
        })
    }

    pub fn node(&self, name: &str) -> &NodeBox {
        &self.nodes[name]
    }

    pub fn node_mut(&mut self, name: &str) -> &mut NodeBox {
        self.nodes.get_mut(name).expect("a node of the box")
    }

    pub fn pod(&self, name: &str) -> &AppPod {
        &self.pods[name]
    }

    /// Labels [`APP_NS`] `trellis.dev/dataplane-mode=ambient`.
    pub fn enroll_namespace(&self) -> Result<()> {
        let label = format!("{}=ambient", manifests::AMBIENT_LABEL);
        self.kube
            .kubectl(&["label", "namespace", APP_NS, &label, "--overwrite"], None)?;
        Ok(())
    }

    /// Makes pod `name` (`app: app`, its own service account) on `node`
    /// with kubectl, runs CNI ADD as the runtime does, and writes its
    /// status (host-local's IP) as the kubelet does.
    pub fn add_pod(&mut self, node: &str, name: &str, app: &str) -> Result<&AppPod> {
        self.add_pod_unreported(node, name, app)?;
        self.report_pod_status(name)?;
        Ok(&self.pods[name])
    }

    /// Writes the pod's IP and readiness to its status, as the kubelet does
    /// once the sandbox is up. Until then the controller cannot know the
    /// pod's address, so no proxy has its config.
    pub fn report_pod_status(&self, name: &str) -> Result<()> {
        let ip = self.pod(name).ip.to_string();
        Ok(self.kube.pod_status(APP_NS, name, &ip, true)?)
    }

    /// [`Self::add_pod`] up to the end of the CNI chain, without the
    /// status: the window in which the app may already run (CNI ADD has
    /// returned) but the controller has not seen the pod's address.
    pub fn add_pod_unreported(&mut self, node: &str, name: &str, app: &str) -> Result<&AppPod> {
        let nb = self
            .nodes
            .get_mut(node)
            .ok_or_else(|| anyhow!("no node {node}"))?;
        let ip = Ipv4Addr::new(198, 18, nb.index, nb.next_ip);
        nb.next_ip += 1;
        let def = PodDef {
            namespace: APP_NS.into(),
            name: name.into(),
            service_account: name.into(),
            node: node.into(),
            ip: ip.into(),
            app: app.into(),
            gateway: None,
            labels: Vec::new(),
        };
        self.kube.apply(&manifests::stream(&[
            manifests::service_account(APP_NS, name),
            manifests::pod(&def, false),
        ]))?;
        let uid = self.kube.kubectl(
            &[
                "get",
                "pod",
                name,
                "-n",
                APP_NS,
                "-o",
                "jsonpath={.metadata.uid}",
            ],
            None,
        )?;
        let netns = PodNetns::create(self.topo.prefix(), name)?;
        let sandbox = Sandbox {
            container_id: format!("sandbox-{name}"),
            netns: netns.path().to_path_buf(),
            namespace: APP_NS.into(),
            name: name.into(),
            uid: uid.clone(),
            ip,
        };
        nb.runtime.loopback(&sandbox)?;
        let runs = nb.runtime.add(&sandbox)?;
        let last = runs.last().ok_or_else(|| anyhow!("no plugin ran"))?;
        if !last.success {
            bail!("CNI ADD of {name} failed: {runs:?}\n{}", nb.logs());
        }
        let result = last.json()?;
        let got = result
            .pointer("/ips/0/address")
            .and_then(Value::as_str)
            .and_then(|a| a.split('/').next())
            .ok_or_else(|| anyhow!("no IP in the ADD result {result}"))?
            .to_string();
        let pod = AppPod {
            node: node.into(),
            ip: got.parse()?,
            uid,
            service_account: name.into(),
            add_runs: runs,
            netns,
            sandbox,
            result,
        };
        self.pods.insert(name.to_string(), pod);
        Ok(&self.pods[name])
    }

    /// Deletes the pod with kubectl and runs CNI DEL as the runtime does
    /// when it tears the sandbox down; returns the DEL runs.
    pub fn delete_pod(&mut self, name: &str) -> Result<Vec<PluginRun>> {
        let pod = self
            .pods
            .remove(name)
            .ok_or_else(|| anyhow!("no pod {name}"))?;
        self.kube.delete_pod(APP_NS, name)?;
        let runs = self.nodes[&pod.node]
            .runtime
            .del(&pod.sandbox, Some(&pod.result))?;
        Ok(runs)
    }

    /// Runs pod `pod` of the waypoint Deployment `name` (made by the
    /// controller for a Gateway) in [`WAYPOINT_POD`] on node2, as the
    /// kubelet would: waits for the Deployment, then starts the pod.
    pub fn run_waypoint(&self, name: &str, pod: &str) -> Result<KubeletPod> {
        let deployment = crate::wait::wait_for(
            Duration::from_secs(30),
            &format!("the controller to make Deployment {APP_NS}/{name}"),
            || {
                self.kube
                    .get_json("deployment", APP_NS, name)
                    .ok()
                    .flatten()
            },
        )?;
        let wp = self
            .topo
            .pod(WAYPOINT_POD)
            .ok_or_else(|| anyhow!("no {WAYPOINT_POD}"))?;
        let node = &self.nodes[NODES[1]];
        KubeletPod::start_contained(
            &self.kube,
            plan_contained(
                &deployment,
                pod,
                NODES[1],
                &wp.ip.to_string(),
                &self.dir.path().join("waypoints").join(pod),
                NodeView {
                    root: &self.dir.path().join("nodes").join(NODES[1]),
                },
            )?,
            &crate::waypoint_proc::waypoint_bin()?,
            wp.netns_name(),
            &node.ns()?,
            wp.ip,
            &node.contained,
        )
    }

    /// Every process's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut s = format!("--- controller:\n{}\n", self.controller.log());
        for n in self.nodes.values() {
            s += &n.logs();
            s.push('\n');
        }
        s
    }
}

/// The rendered object as applied (read back from the API server).
fn applied(kube: &KubeApiServer, kind: &str, name: &str) -> Result<Value> {
    kube.get_json(kind, SYSTEM_NS, name)?
        .ok_or_else(|| anyhow!("no {kind} {name} after kubectl apply -k"))
}

/// The port of the kubeconfig's `server: https://127.0.0.1:PORT`.
fn api_port(kubeconfig: &Path) -> Result<u16> {
    let text = std::fs::read_to_string(kubeconfig)?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| {
            anyhow!(
                "no server: https://127.0.0.1:PORT in {}",
                kubeconfig.display()
            )
        })
}

/// A node: its primary conflist, its agent (ready: the plugin installed),
/// the runtime on what was installed, its node proxy (ready).
fn start_node(
    kube: &KubeApiServer,
    topo: &Topology,
    dir: &Path,
    name: &str,
    index: u8,
    contained: &Contained,
    api_port: u16,
) -> Result<NodeBox> {
    let node = topo.node(name).ok_or_else(|| anyhow!("no node {name}"))?;
    let root = dir.join("nodes").join(name);
    let view = NodeView { root: &root };
    let conf_dir = view.host_path("/etc/cni/net.d");
    let bin_dir = view.host_path("/opt/cni/bin");
    std::fs::create_dir_all(&conf_dir)?;
    std::fs::create_dir_all(&bin_dir)?;
    let conflist = conf_dir.join("10-trellis-e2e.conflist");
    let mut bridge = primary_network(
        "br0",
        &format!("198.18.{index}.0/24"),
        Ipv4Addr::new(198, 18, index, 1),
        &view.host_path("/var/lib/cni/networks"),
    );
    // Other nodes' pods through the bridge's address; no default route.
    bridge["ipam"]["routes"] = json!([{ "dst": "198.18.0.0/15" }]);
    let primary = json!({
        "cniVersion": "1.0.0",
        "name": "trellis-e2e",
        "plugins": [bridge],
    });
    std::fs::write(&conflist, primary.to_string())?;

    let relay = Relay::start(&node.netns()?, &topo.open_netns(CONTROL)?, api_port)?;
    let contained = Contained {
        api_port: relay.port,
        ..contained.clone()
    };
    let ns = node.netns()?;
    // A pod of DaemonSet `ds` on this node, its container running `binary`.
    let daemon_pod = |ds: &str, binary: &Path| -> Result<KubeletPod> {
        KubeletPod::start_contained(
            kube,
            plan_contained(
                &applied(kube, "daemonset", ds)?,
                &format!("{ds}-{name}"),
                name,
                &node.uplink_ip.to_string(),
                &root.join("pods").join(ds),
                view,
            )?,
            binary,
            node.netns_name(),
            &ns,
            node.uplink_ip,
            &contained,
        )
    };
    let agent = daemon_pod(CNI_AGENT, &workspace_bin("trellis-cni-agent")?)
        .context("starting the CNI agent")?;
    let installed: Value = serde_json::from_slice(&std::fs::read(&conflist)?)?;
    let runtime = Runtime::on_node(
        node.netns_name(),
        installed,
        &bin_dir,
        vec![MountOp::Bind {
            src: view.host_path("/var/run/trellis"),
            dst: "/var/run/trellis".into(),
            read_only: false,
        }],
    )?;
    let proxy = daemon_pod(NODE_PROXY, &crate::cluster::node_proxy_bin()?)
        .with_context(|| format!("starting the node proxy; agent log:\n{}", agent.log()))?;
    Ok(NodeBox {
        name: name.into(),
        ip: node.uplink_ip,
        index,
        netns: node.netns_name().to_string(),
        runtime,
        agent,
        proxy,
        next_ip: 100,
        contained,
        _relay: relay,
    })
}

/// The `kubernetes` Service on one node, played: a TCP relay from the
/// node's 127.0.0.1 to the API server on the control node's 127.0.0.1.
struct Relay {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(node: &NetNs, control: &NetNs, api_port: u16) -> Result<Relay> {
        let listener = node.run_in(|| TcpListener::bind("127.0.0.1:0"))??;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let control = NetNs::open(control.path())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let up = control.run_in(|| TcpStream::connect(("127.0.0.1", api_port)));
                        if let Ok(Ok(up)) = up {
                            let _ = down.set_nonblocking(false);
                            pipe(down, up);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(Relay {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies both ways until either side closes (then closes both).
fn pipe(a: TcpStream, b: TcpStream) {
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
        });
    };
    if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
        copy(a, b2);
        copy(b, a2);
    }
}

/// The path of a node's directory `p` (for tests that look at the node).
pub fn node_dir(cluster: &KubeCluster, node: &str, p: &str) -> PathBuf {
    NodeView {
        root: &cluster.dir.path().join("nodes").join(node),
    }
    .host_path(p)
}
