//! A mesh run by the real controller, in either of its modes: a netns
//! [`Topology`] whose nodes each run a `trellis-node-proxy` fed only by
//! xDS and the controller's CA, and one more node, `cp`, where the
//! controller runs (and, in Kubernetes mode, etcd and kube-apiserver on
//! that namespace's loopback).
//!
//! ```text
//! node1 netns: trellis-node-proxy ─┐              cp netns (198.19.255.<n>):
//! node2 netns: trellis-node-proxy ─┼─ xDS + CA ──▶  trellis-controller ──▶ manifests folder
//! vm host netns (linked to node1): │   (TLS gRPC)                       └▶ kube-apiserver on 127.0.0.1
//!   trellis-node-proxy --capture ──┘
//! ```
//!
//! A VM is a [`crate::Host`] outside the cluster with a WorkloadEntry
//! (its address, `app` label and service account) and a dedicated node
//! proxy inside its netns that captures it, authenticated by a token of the
//! entry's service account (not bound to any pod).
//!
//! Objects (namespace `demo`, labelled ambient; pods with their node and
//! the topology's IP; services; AuthorizationPolicies) are written to the
//! manifests folder or applied to the API server through one interface,
//! so a test runs the same steps in both modes.

mod builder;
mod objects;

pub use builder::ControlledMeshBuilder;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use trellis_netns::NetNs;

use crate::cluster::{ClusterFiles, NodeProxy};
use crate::controller_proc::Controller;
use crate::kube::KubeApiServer;
use crate::manifests::{self, HttpRouteDef, PodDef, PolicyDef, WorkloadEntryDef};
use crate::mesh_kit::{attempt_echo, Attempt, T};
use crate::waypoint_proc::Waypoint;
use crate::{ServerKind, TestServer, Topology};
use objects::Objects;

/// The mesh namespace every test pod lives in.
pub const NAMESPACE: &str = "demo";
/// The node (namespace) the controller runs in.
pub const CONTROL_NODE: &str = "cp";
/// Kubernetes mode: where the node proxies' pods and service account live.
const PROXY_NAMESPACE: &str = "trellis-system";
const PROXY_ACCOUNT: &str = "trellis-node-proxy";
/// Where service cluster IPs come from (the API server allocates from it
/// too): inside 198.18.0.0/15, which every pod routes to its node and whose
/// connections the pod's capture rules hand to the proxy; assigned to no
/// interface anywhere.
///
/// A /20 whose first /24 holds every address the tests ask for
/// ([`service_vip`]): the API server keeps the first 1/16 of a range (at
/// most 256 addresses) as a static band, and allocates the addresses it
/// picks itself (the Services the controller makes for waypoints) above
/// it while it can. In a /24 the band was 16 addresses, and an allocated
/// waypoint Service once took 198.19.128.32 before a test asked for it
/// ("provided IP is already allocated").
pub const SERVICE_CIDR: &str = "198.19.128.0/20";
/// How often the controller scans its manifests folder.
const POLL: Duration = Duration::from_millis(100);

/// Where the controller's objects come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A folder of manifests and a bootstrap token file.
    Manifests,
    /// A real kube-apiserver; pod-bound service account tokens (TokenRequest).
    Kube,
}

/// The `n`th address of [`SERVICE_CIDR`], for a service's cluster IP.
pub fn service_vip(n: u8) -> IpAddr {
    IpAddr::from([198, 19, 128, n])
}

/// A running mesh with its controller; dropping it stops the proxies, the
/// controller and the API server, then removes the namespaces and files.
pub struct ControlledMesh {
    // Fields drop in order: processes before the namespaces and files they use.
    waypoints: BTreeMap<String, Waypoint>,
    vm_proxies: BTreeMap<String, NodeProxy>,
    proxies: BTreeMap<String, NodeProxy>,
    controller: Controller,
    objects: Objects,
    pods: BTreeMap<String, PodDef>,
    vms: BTreeMap<String, WorkloadEntryDef>,
    ca_dir: PathBuf,
    mode: Mode,
    pub topo: Topology,
    pub files: ClusterFiles,
}

impl ControlledMesh {
    pub fn builder(mode: Mode) -> ControlledMeshBuilder {
        ControlledMeshBuilder::new(mode)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The proxy of `node`; panics if there is none.
    pub fn proxy(&self, node: &str) -> &NodeProxy {
        self.proxies
            .get(node)
            .unwrap_or_else(|| panic!("no proxy on {node}"))
    }

    pub fn proxies(&self) -> impl Iterator<Item = &NodeProxy> {
        self.proxies.values()
    }

    /// The node proxy of VM `name`; panics if there is none.
    pub fn vm_proxy(&self, name: &str) -> &NodeProxy {
        self.vm_proxies
            .get(name)
            .unwrap_or_else(|| panic!("no VM {name}"))
    }

    /// The VM's WorkloadEntry as the controller gets it; panics if unknown.
    pub fn vm(&self, name: &str) -> &WorkloadEntryDef {
        self.vms
            .get(name)
            .unwrap_or_else(|| panic!("no VM {name} in this mesh"))
    }

    /// Deletes a VM's WorkloadEntry. Its netns and proxy stay, so what
    /// reaches it afterwards is up to the mesh alone.
    pub fn delete_vm_entry(&self, name: &str) -> Result<()> {
        self.objects.delete_workload_entry(self.vm(name))
    }

    /// The waypoint running in `pod`; panics if there is none.
    pub fn waypoint(&self, pod: &str) -> &Waypoint {
        self.waypoints
            .get(pod)
            .unwrap_or_else(|| panic!("no waypoint in {pod}"))
    }

    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    pub fn controller_mut(&mut self) -> &mut Controller {
        &mut self.controller
    }

    /// The API server, in Kubernetes mode.
    pub fn kube(&self) -> Option<&KubeApiServer> {
        match &self.objects {
            Objects::Kube(k) => Some(k),
            Objects::Manifests(_) => None,
        }
    }

    /// The pod's object as the controller gets it; panics if unknown.
    pub fn pod(&self, name: &str) -> &PodDef {
        self.pods
            .get(name)
            .unwrap_or_else(|| panic!("no pod {name} in this mesh"))
    }

    /// `port` on the address of a pod or a VM.
    pub fn addr(&self, name: &str, port: u16) -> SocketAddr {
        let ip = match self.vms.get(name) {
            Some(v) => v.ip,
            None => self.pod(name).ip,
        };
        SocketAddr::new(ip, port)
    }

    /// The netns of a pod, a VM or a node (or of [`CONTROL_NODE`]).
    pub fn netns(&self, name: &str) -> NetNs {
        self.topo.open_netns(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Echo server on the IP of a pod or VM and `port`, inside its netns.
    pub fn echo(&self, pod: &str, port: u16) -> TestServer {
        self.serve(ServerKind::Echo, pod, port)
    }

    /// Identity server (answers "<peer> <local>") on the IP of a pod or VM and `port`.
    pub fn identity(&self, pod: &str, port: u16) -> TestServer {
        self.serve(ServerKind::Identity, pod, port)
    }

    fn serve(&self, kind: ServerKind, pod: &str, port: u16) -> TestServer {
        self.topo
            .serve(kind, pod, port)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The controller's and every proxy's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = format!("--- controller ---\n{}", self.controller.log());
        for p in self.proxies.values().chain(self.vm_proxies.values()) {
            s += &format!("--- {} proxy ---\n{}", p.node, p.log());
        }
        for (pod, w) in &self.waypoints {
            s += &format!("--- waypoint {pod} ---\n{}", w.log());
        }
        s
    }

    /// The directory `ca init` wrote: the mesh's only CA.
    pub fn ca_dir(&self) -> &Path {
        &self.ca_dir
    }

    /// Creates a later pod's object (with status), then enrolls it in its
    /// node's proxy over the admin API, as the CNI would once the pod runs.
    pub fn add_pod(&self, name: &str) -> Result<()> {
        let p = self.pod(name);
        self.objects.put_pod(p)?;
        let netns = self
            .topo
            .pod(name)
            .ok_or_else(|| anyhow!("no pod {name}"))?
            .netns_path();
        let body = serde_json::json!({"uid": p.uid(), "netns": netns}).to_string();
        let (status, text) = self.proxy(&p.node).admin("POST", "/pods", &body)?;
        if status != 200 {
            bail!("enrolling {name} in {}'s proxy: {status} {text}", p.node);
        }
        Ok(())
    }

    /// Deletes a pod's object. Its netns and enrollment stay, so what
    /// serves it afterwards is up to the mesh alone.
    pub fn delete_pod(&self, name: &str) -> Result<()> {
        self.objects.delete_pod(self.pod(name))
    }

    /// Creates or replaces an AuthorizationPolicy.
    pub fn apply_policy(&self, p: &PolicyDef) -> Result<()> {
        self.objects.put_policy(p)
    }

    pub fn delete_policy(&self, ns: &str, name: &str) -> Result<()> {
        self.objects.delete_policy(ns, name)
    }

    /// Creates or replaces an HTTPRoute.
    pub fn apply_route(&self, r: &HttpRouteDef) -> Result<()> {
        let file = format!("routes/{}-{}.yaml", r.namespace, r.name);
        self.objects.put(&file, &manifests::http_route(r))
    }

    /// Replaces the policy `p` with a version the controller must refuse
    /// (broken YAML in the folder; an action Trellis does not support in
    /// the API server). The last good version must stay in force.
    pub fn break_policy(&self, p: &PolicyDef) -> Result<()> {
        self.objects.break_policy(p)
    }

    /// One echo attempt from pod `from` to `dst`; an error if it hangs.
    pub fn attempt(&self, from: &str, dst: SocketAddr, payload: &[u8]) -> std::io::Result<Attempt> {
        attempt_echo(Some(&self.netns(from)), dst, payload, T)
    }

    /// Repeats echo attempts from `from` to `dst` until one ends as `want`
    /// says (each attempt must end promptly, never hang), for at most
    /// `deadline`. Returns how long it took.
    pub fn wait_for_outcome(
        &self,
        from: &str,
        dst: SocketAddr,
        want: Outcome,
        deadline: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        let payload = format!("{from} -> {dst}");
        let mut last;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let got = self
                .attempt(from, dst, payload.as_bytes())
                .with_context(|| format!("{from} -> {dst} hung or failed (try {tries})"))?;
            let ok = match (&got, want) {
                (Attempt::Echoed(b), Outcome::Echoed) => b == payload.as_bytes(),
                (Attempt::Closed, Outcome::Closed) => true,
                _ => false,
            };
            if ok {
                return Ok(start.elapsed());
            }
            last = got;
            if start.elapsed() > deadline {
                bail!(
                    "{from} -> {dst}: still {last:?} after {tries} tries in {deadline:?}, want {want:?}\n--- controller log ---\n{}",
                    self.controller.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What a connection attempt should end as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The payload came back.
    Echoed,
    /// Refused or reset by a proxy before any byte came back.
    Closed,
}
