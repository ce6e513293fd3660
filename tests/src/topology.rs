//! Nodes and pods as network namespaces joined by veth pairs and bridges.
//!
//! Layout (i = node number from 1, in order of first mention):
//!
//! ```text
//! fabric netns: bridge br0 ── veth n<i> ──┐
//! node i netns: up0 198.19.255.i/24 ──────┘   bridge br0 198.18.i.1/24, ip_forward=1,
//!               routes 198.18.k.0/24 via 198.19.255.k for every other node k
//! pod netns:    eth0 198.18.i.j/24 (veth to v<n> on node i's br0),
//!               route 198.18.0.0/15 via 198.18.i.1 and no default route
//! host k netns: eth0 198.19.k.2/24 (veth to h<k> 198.19.k.1/24 on its node),
//!               route 198.18.0.0/15 via 198.19.k.1 and no default route;
//!               every other node routes 198.19.k.0/24 via the host's node
//! ```
//!
//! A host is a machine outside the cluster (a VM, a bare-metal server):
//! on no node's pod bridge, reachable only through the node it is linked to.
//!
//! Everything lives in namespaces created here, named `trl<pid>-<n>-...`;
//! nothing is created in, or changed in, the host's namespace. Only addresses
//! in 198.18.0.0/15 are used and there is no default route anywhere, so no
//! packet can leave the machine. `Drop` kills the processes started through
//! the topology and deletes every namespace (also during a panic); namespaces
//! left by a killed test process are removed by the next build
//! ([`cleanup_stale_namespaces`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use trellis_netns::{ListenOpts, NetNs};

use crate::cleanup::netns_admin;
pub use crate::cleanup::{cleanup_stale_namespaces, owner_pid, NETNS_DIR, PREFIX};
use crate::plan::{plan, HostSpec, PodSpec};
use crate::process::{self, ChildGuard, Pids};
use crate::servers::{ServerKind, TestServer};

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("invalid name {0:?}: use 1-32 characters from [A-Za-z0-9_-]")]
    BadName(String),
    #[error("{0:?} is reserved for the topology's fabric namespace; pick another name")]
    Reserved(String),
    #[error("{0:?} is used twice (node and pod names share one namespace)")]
    Duplicate(String),
    #[error("too many nodes: at most 254 (198.18.<node>.0/24 per node)")]
    TooManyNodes,
    #[error("no free address for pod {pod} on node {node}: a node holds at most 253 pods")]
    TooManyPods { node: String, pod: String },
    #[error("address {ip} for pod {pod} must be in 198.18.{index}.2-254 (node {node}'s subnet) and unused")]
    BadPodAddress {
        pod: String,
        node: String,
        index: u8,
        ip: Ipv4Addr,
    },
    #[error("too many hosts: at most {0} (198.19.<k>.0/24 per host)")]
    TooManyHosts(usize),
    #[error("no node, pod or host named {0:?} in this topology")]
    Unknown(String),
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = TopologyError> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TopologyError {
    let what = what.into();
    move |source| TopologyError::Io { what, source }
}

/// A pod: a netns with one interface, eth0.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    /// Name of the node it runs on.
    pub node: String,
    pub ip: IpAddr,
    /// Its node's bridge address, the pod's only gateway.
    pub gateway: IpAddr,
    netns_name: String,
    path: PathBuf,
}

/// A node: a router netns between its pods' bridge and the fabric.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    /// 1-based; the third octet of the node's pod subnet 198.18.<index>.0/24.
    pub index: u8,
    /// Address on the fabric, 198.19.255.<index>.
    pub uplink_ip: IpAddr,
    /// Address on its pods' bridge, 198.18.<index>.1.
    pub pod_gateway: IpAddr,
    netns_name: String,
    path: PathBuf,
}

/// A host outside the cluster: a netns with one interface, eth0, on a link
/// of its own to one node.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    /// The node it is linked to, its only gateway.
    pub node: String,
    /// 198.19.<k>.2.
    pub ip: IpAddr,
    /// The node's end of the link, 198.19.<k>.1.
    pub gateway: IpAddr,
    /// k: the third octet of its link's subnet.
    index: u8,
    netns_name: String,
    path: PathBuf,
}

macro_rules! netns_accessors {
    ($t:ty) => {
        impl $t {
            /// The `ip netns` name.
            pub fn netns_name(&self) -> &str {
                &self.netns_name
            }
            /// `/var/run/netns/<name>`, what the node proxy is given.
            pub fn netns_path(&self) -> &Path {
                &self.path
            }
            /// A fresh handle on the namespace.
            pub fn netns(&self) -> io::Result<NetNs> {
                NetNs::open(&self.path)
            }
            /// Runs `f` on this thread inside the namespace (sockets made there stay there).
            pub fn run_in<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
                self.netns()?.run_in(f)
            }
        }
    };
}
netns_accessors!(Pod);
netns_accessors!(Node);
netns_accessors!(Host);

/// Builder for [`Topology`]; see the module doc for the layout.
#[derive(Default)]
pub struct TopologyBuilder {
    nodes: Vec<String>,
    pods: Vec<PodSpec>,
    hosts: Vec<HostSpec>,
    mtu: Option<u32>,
}

impl TopologyBuilder {
    /// Adds a node (pods name their node, which adds it too).
    pub fn node(mut self, name: &str) -> Self {
        if !self.nodes.iter().any(|n| n == name) {
            self.nodes.push(name.to_string());
        }
        self
    }

    /// Adds a pod on `node`, addressed 198.18.<node>.<next free from 2>.
    pub fn pod(self, node: &str, name: &str) -> Self {
        self.pod_spec(node, name, None)
    }

    /// Adds a pod with a chosen address inside its node's 198.18.<node>.0/24.
    pub fn pod_with_ip(self, node: &str, name: &str, ip: Ipv4Addr) -> Self {
        self.pod_spec(node, name, Some(ip))
    }

    fn pod_spec(mut self, node: &str, name: &str, ip: Option<Ipv4Addr>) -> Self {
        self = self.node(node);
        self.pods.push(PodSpec {
            node: node.to_string(),
            name: name.to_string(),
            ip,
        });
        self
    }

    /// Adds a host outside the cluster (a VM) linked to `node` alone,
    /// addressed 198.19.<k>.2 for the k-th host.
    pub fn host(mut self, node: &str, name: &str) -> Self {
        self = self.node(node);
        self.hosts.push(HostSpec {
            node: node.to_string(),
            name: name.to_string(),
        });
        self
    }

    /// MTU of every veth and bridge (default: the kernel's, 1500).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Creates the namespaces and links. On error, whatever was created is removed.
    pub fn build(self) -> Result<Topology> {
        let plan = plan(&self.nodes, &self.pods, &self.hosts)?;
        cleanup_stale_namespaces();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let logs = tempfile::Builder::new()
            .prefix("trellis-topology-")
            .tempdir()
            .map_err(io_err("creating the process log directory"))?;
        let mut topo = Topology {
            fabric: format!("{prefix}-fabric"),
            prefix,
            nodes: vec![],
            pods: vec![],
            hosts: vec![],
            created: vec![],
            pids: Pids::default(),
            logs,
            mtu: self.mtu,
        };
        for (index, name) in plan.nodes.iter().enumerate() {
            let index = index as u8 + 1;
            let netns_name = format!("{}-n-{name}", topo.prefix);
            topo.nodes.push(Node {
                name: name.clone(),
                index,
                uplink_ip: Ipv4Addr::new(198, 19, 255, index).into(),
                pod_gateway: Ipv4Addr::new(198, 18, index, 1).into(),
                path: Path::new(NETNS_DIR).join(&netns_name),
                netns_name,
            });
        }
        for (node, name, ip) in plan.pods {
            let netns_name = format!("{}-p-{name}", topo.prefix);
            topo.pods.push(Pod {
                gateway: Ipv4Addr::new(198, 18, ip.octets()[2], 1).into(),
                ip: ip.into(),
                node,
                name,
                path: Path::new(NETNS_DIR).join(&netns_name),
                netns_name,
            });
        }
        for (node, name, k) in plan.hosts {
            let netns_name = format!("{}-h-{name}", topo.prefix);
            topo.hosts.push(Host {
                ip: Ipv4Addr::new(198, 19, k, 2).into(),
                gateway: Ipv4Addr::new(198, 19, k, 1).into(),
                index: k,
                node,
                name,
                path: Path::new(NETNS_DIR).join(&netns_name),
                netns_name,
            });
        }
        // `topo` owns what exists so far: an early return drops it and cleans up.
        topo.create()?;
        tracing::info!(prefix = %topo.prefix, nodes = topo.nodes.len(), pods = topo.pods.len(), "topology ready");
        Ok(topo)
    }
}

/// A built topology; dropping it removes it. See the module doc.
pub struct Topology {
    prefix: String,
    fabric: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    hosts: Vec<Host>,
    /// Namespaces that exist now, in creation order.
    created: Vec<String>,
    pids: Pids,
    logs: tempfile::TempDir,
    mtu: Option<u32>,
}

impl Topology {
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter()
    }

    /// The address of a pod or a host.
    pub fn ip_of(&self, name: &str) -> Result<IpAddr> {
        self.pod(name)
            .map(|p| p.ip)
            .or_else(|| self.host(name).map(|h| h.ip))
            .ok_or_else(|| TopologyError::Unknown(name.to_string()))
    }

    /// `trl<pid>-<n>`, the start of every namespace name here.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every namespace of this topology (fabric, nodes, pods, hosts), by `ip netns` name.
    pub fn netns_names(&self) -> Vec<String> {
        self.created.clone()
    }

    /// The `ip netns` name of a node, pod or host (or "fabric").
    pub fn netns_name(&self, name: &str) -> Result<&str> {
        if name == "fabric" {
            return Ok(&self.fabric);
        }
        self.pod(name)
            .map(|p| p.netns_name.as_str())
            .or_else(|| self.node(name).map(|n| n.netns_name.as_str()))
            .or_else(|| self.host(name).map(|h| h.netns_name.as_str()))
            .ok_or_else(|| TopologyError::Unknown(name.to_string()))
    }

    /// A fresh handle on the namespace of a node or pod.
    pub fn open_netns(&self, name: &str) -> Result<NetNs> {
        let path = Path::new(NETNS_DIR).join(self.netns_name(name)?);
        NetNs::open(&path).map_err(io_err(format!("opening {}", path.display())))
    }

    /// Runs `f` on this thread inside the namespace of a node or pod.
    pub fn run_in<T>(&self, name: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.open_netns(name)?
            .run_in(f)
            .map_err(io_err(format!("entering the namespace of {name}")))
    }

    /// A test server of `kind` on the IP of a pod or host and `port`,
    /// inside its namespace.
    pub fn serve(&self, kind: ServerKind, pod: &str, port: u16) -> Result<TestServer> {
        let ip = self.ip_of(pod)?;
        let addr = SocketAddr::new(ip, port);
        let ns = self.open_netns(pod)?;
        TestServer::start(kind, Some(&ns), addr, ListenOpts::default())
            .map_err(io_err(format!("a {kind:?} server on {pod} at {addr}")))
    }

    /// Runs a command to completion in a node's or pod's namespace
    /// (`ip netns exec`) and returns its stdout; fails on a non-zero exit.
    pub fn exec(&self, name: &str, argv: &[&str]) -> Result<String> {
        let mut args = vec!["netns", "exec", self.netns_name(name)?];
        args.extend_from_slice(argv);
        process::run("ip", &args, process::EXEC_TIMEOUT)
    }

    /// Starts a long-running command in a node's or pod's namespace. Its
    /// output goes to a log file ([`ChildGuard::log`]). It is killed when the
    /// guard is dropped, or at the latest when the topology is.
    pub fn spawn(&self, name: &str, argv: &[&str]) -> Result<ChildGuard> {
        let ns = self.netns_name(name)?.to_string();
        process::spawn(&ns, argv, self.logs.path(), &self.pids)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        process::run("ip", args, process::EXEC_TIMEOUT).map(drop)
    }

    fn add_netns(&mut self, name: String) -> Result<()> {
        netns_admin("add", &name)?;
        self.created.push(name);
        Ok(())
    }

    /// Adds a veth named `name` in `ns` with its peer `peer` in `peer_ns`.
    fn veth(&self, ns: &str, name: &str, peer: &str, peer_ns: &str) -> Result<()> {
        let mtu = self.mtu.map(|m| m.to_string());
        let mut args = vec!["-n", ns, "link", "add", name];
        if let Some(m) = &mtu {
            args.extend(["mtu", m]);
        }
        args.extend(["type", "veth", "peer", "name", peer]);
        if let Some(m) = &mtu {
            args.extend(["mtu", m]);
        }
        args.extend(["netns", peer_ns]);
        self.ip(&args)
    }

    fn bridge(&self, ns: &str) -> Result<()> {
        let mtu = self.mtu.map(|m| m.to_string());
        let mut args = vec!["-n", ns, "link", "add", "br0"];
        if let Some(m) = &mtu {
            args.extend(["mtu", m]);
        }
        args.extend(["type", "bridge"]);
        self.ip(&args)?;
        self.ip(&["-n", ns, "link", "set", "br0", "up"])
    }

    fn create(&mut self) -> Result<()> {
        let fabric = self.fabric.clone();
        self.add_netns(fabric.clone())?;
        let names: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.netns_name.clone())
            .chain(self.pods.iter().map(|p| p.netns_name.clone()))
            .chain(self.hosts.iter().map(|h| h.netns_name.clone()))
            .collect();
        for name in names {
            self.add_netns(name)?;
        }
        for ns in self.created.clone() {
            self.ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        self.bridge(&fabric)?;
        for node in &self.nodes {
            let ns = node.netns_name.as_str();
            let fabric_port = format!("n{}", node.index);
            self.veth(ns, "up0", &fabric_port, &fabric)?;
            self.ip(&[
                "-n",
                &fabric,
                "link",
                "set",
                &fabric_port,
                "master",
                "br0",
                "up",
            ])?;
            self.ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", node.uplink_ip),
                "dev",
                "up0",
            ])?;
            self.ip(&["-n", ns, "link", "set", "up0", "up"])?;
            self.bridge(ns)?;
            self.ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", node.pod_gateway),
                "dev",
                "br0",
            ])?;
            // /proc/sys/net is per namespace, resolved for the writing thread.
            node.run_in(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
                .and_then(|r| r)
                .map_err(io_err(format!("enabling ip_forward in {ns}")))?;
            for other in self.nodes.iter().filter(|o| o.index != node.index) {
                let subnet = format!("198.18.{}.0/24", other.index);
                let via = other.uplink_ip.to_string();
                self.ip(&["-n", ns, "route", "add", &subnet, "via", &via, "dev", "up0"])?;
            }
        }
        for (n, pod) in self.pods.iter().enumerate() {
            let node = self
                .node(&pod.node)
                .ok_or_else(|| TopologyError::Unknown(pod.node.clone()))?;
            let (ns, node_ns) = (pod.netns_name.as_str(), node.netns_name.as_str());
            let node_port = format!("v{n}");
            self.veth(ns, "eth0", &node_port, node_ns)?;
            self.ip(&[
                "-n", node_ns, "link", "set", &node_port, "master", "br0", "up",
            ])?;
            self.address_eth0(ns, pod.ip, pod.gateway)?;
        }
        for host in &self.hosts {
            self.link_host(host)?;
        }
        Ok(())
    }

    /// Gives a pod's or host's eth0 its `/24` address and its one route,
    /// 198.18.0.0/15 via `gateway` (no default route).
    fn address_eth0(&self, ns: &str, ip: IpAddr, gateway: IpAddr) -> Result<()> {
        let own = format!("{ip}/24");
        self.ip(&["-n", ns, "addr", "add", &own, "dev", "eth0"])?;
        self.ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        let gw = gateway.to_string();
        self.ip(&[
            "-n",
            ns,
            "route",
            "add",
            "198.18.0.0/15",
            "via",
            &gw,
            "dev",
            "eth0",
        ])
    }

    /// A host's own link to its node, and the other nodes' routes to it
    /// through that node.
    fn link_host(&self, host: &Host) -> Result<()> {
        let node = self
            .node(&host.node)
            .ok_or_else(|| TopologyError::Unknown(host.node.clone()))?;
        let (ns, node_ns) = (host.netns_name.as_str(), node.netns_name.as_str());
        let node_port = format!("h{}", host.index);
        self.veth(ns, "eth0", &node_port, node_ns)?;
        let node_end = format!("{}/24", host.gateway);
        self.ip(&["-n", node_ns, "addr", "add", &node_end, "dev", &node_port])?;
        self.ip(&["-n", node_ns, "link", "set", &node_port, "up"])?;
        self.address_eth0(ns, host.ip, host.gateway)?;
        let subnet = format!("198.19.{}.0/24", host.index);
        let via = node.uplink_ip.to_string();
        for other in self.nodes.iter().filter(|o| o.index != node.index) {
            self.ip(&[
                "-n",
                &other.netns_name,
                "route",
                "add",
                &subnet,
                "via",
                &via,
                "dev",
                "up0",
            ])?;
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes first: a namespace with a process in it outlives its name.
        process::kill_all(&self.pids);
        for ns in self.created.drain(..).rev() {
            if let Err(e) = netns_admin("delete", &ns) {
                eprintln!("trellis-e2e: could not delete network namespace {ns}: {e}");
            }
        }
    }
}
