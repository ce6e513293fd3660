//! A mesh run by the real controller, in either of its modes: a netns
//! [`Topology`] whose nodes each run a `trellis-node-proxy` fed only by
//! xDS and the controller's CA, and one more node, `cp`, where the
//! controller runs (and, in Kubernetes mode, etcd and kube-apiserver on
//! that namespace's loopback).
//!
//! ```text
//! node1 netns: trellis-node-proxy ─┐              cp netns (198.19.255.<n>):
//! node2 netns: trellis-node-proxy ─┼─ xDS + CA ──▶  trellis-controller ──▶ manifests folder
//!                                  │   (TLS gRPC)                       └▶ kube-apiserver on 127.0.0.1
//! ```
//!
//! Objects (namespace `demo`, labelled ambient; pods with their node and
//! the topology's IP; services; AuthorizationPolicies) are written to the
//! manifests folder or applied to the API server through one interface,
//! so a test runs the same steps in both modes.

mod objects;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use trellis_netns::NetNs;

use crate::cluster::{ClusterFiles, Feed, NodeProxy};
use crate::controller_proc::{self, Controller, ObjectSource, RunArgs};
use crate::kube::KubeApiServer;
use crate::manifests::{
    self, HttpRouteDef, ManifestsDir, PodDef, PolicyDef, ServiceDef, TokenHolder,
};
use crate::mesh_kit::{attempt_echo, Attempt, T};
use crate::waypoint_proc::{Waypoint, WaypointSpec};
use crate::{ServerKind, TestServer, Topology};
use objects::{Holder, Objects};

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
pub const SERVICE_CIDR: &str = "198.19.128.0/24";
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

/// What a pod of the builder is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    /// Its object exists and its node's proxy enrolls it at start.
    Member,
    /// Only its netns exists at start; [`ControlledMesh::add_pod`] creates
    /// the object and enrolls it later.
    Later,
    /// It runs the waypoint named here (a Gateway): a `trellis-waypoint`
    /// in its netns, fed by the controller, not enrolled in its node's proxy.
    Waypoint(String),
}

#[derive(Clone, Debug)]
struct PodSpec {
    node: String,
    name: String,
    app: String,
    role: Role,
}

/// Builder for [`ControlledMesh`].
pub struct ControlledMeshBuilder {
    mode: Mode,
    pods: Vec<PodSpec>,
    services: Vec<ServiceDef>,
}

impl ControlledMeshBuilder {
    fn push(mut self, node: &str, name: &str, app: &str, role: Role) -> Self {
        self.pods.push(PodSpec {
            node: node.into(),
            name: name.into(),
            app: app.into(),
            role,
        });
        self
    }

    /// A running pod in the mesh: its object exists and its node's proxy
    /// enrolls it at start. Its service account is its name.
    pub fn pod(self, node: &str, name: &str, app: &str) -> Self {
        self.push(node, name, app, Role::Member)
    }

    /// A pod that is created later ([`ControlledMesh::add_pod`]): only its
    /// network namespace exists at start, as before a CNI hands it over.
    pub fn later_pod(self, node: &str, name: &str, app: &str) -> Self {
        self.push(node, name, app, Role::Later)
    }

    /// A waypoint: the Gateway `gateway` of the waypoint class, and a pod
    /// running `trellis-waypoint` for it, fed by the controller.
    pub fn waypoint(self, node: &str, pod: &str, gateway: &str) -> Self {
        self.push(node, pod, pod, Role::Waypoint(gateway.into()))
    }

    /// A ClusterIP service selecting `app: <app>`; `ports` are (port, targetPort).
    pub fn service(self, name: &str, vip: IpAddr, app: &str, ports: &[(u16, u16)]) -> Self {
        self.service_def(name, vip, app, ports, None)
    }

    /// A service whose traffic goes through the waypoint `gateway`.
    pub fn service_via(
        self,
        gateway: &str,
        name: &str,
        vip: IpAddr,
        app: &str,
        ports: &[(u16, u16)],
    ) -> Self {
        self.service_def(name, vip, app, ports, Some(gateway))
    }

    fn service_def(
        mut self,
        name: &str,
        vip: IpAddr,
        app: &str,
        ports: &[(u16, u16)],
        waypoint: Option<&str>,
    ) -> Self {
        self.services.push(ServiceDef {
            namespace: NAMESPACE.into(),
            name: name.into(),
            cluster_ip: vip,
            app: app.into(),
            ports: ports.to_vec(),
            waypoint: waypoint.map(str::to_string),
        });
        self
    }

    /// Builds the topology, writes or applies the objects, runs `ca init`,
    /// starts the controller, then every node's proxy and every waypoint,
    /// each ready.
    pub fn start(self) -> Result<ControlledMesh> {
        let mut b = Topology::builder();
        for p in &self.pods {
            b = b.pod(&p.node, &p.name);
        }
        let topo = b.node(CONTROL_NODE).build()?;
        let files = ClusterFiles::new()?;
        let cp = topo
            .node(CONTROL_NODE)
            .ok_or_else(|| anyhow!("the topology has no {CONTROL_NODE} node"))?;
        let pods = pod_defs(&topo, &self.pods);
        let nodes: Vec<String> = topo
            .nodes()
            .map(|n| n.name.clone())
            .filter(|n| n != CONTROL_NODE)
            .collect();
        let waypoints: Vec<&PodSpec> = self
            .pods
            .iter()
            .filter(|p| matches!(p.role, Role::Waypoint(_)))
            .collect();

        let objects = match self.mode {
            Mode::Manifests => Objects::Manifests(ManifestsDir::create(&files.path("manifests"))?),
            Mode::Kube => Objects::Kube(
                KubeApiServer::start(Some(cp.netns_name()), Some(SERVICE_CIDR))
                    .context("starting kube-apiserver")?,
            ),
        };
        objects.put(
            "namespace.yaml",
            &manifests::namespace(NAMESPACE, Some(manifests::AMBIENT_LABEL)),
        )?;
        if !waypoints.is_empty() {
            objects.install_gateway_api()?;
        }
        for p in &waypoints {
            if let Role::Waypoint(gw) = &p.role {
                let yaml = manifests::waypoint_gateway(NAMESPACE, gw);
                objects.put(&format!("gateways/{gw}.yaml"), &yaml)?;
            }
        }
        for s in &self.services {
            objects.put(&format!("services/{}.yaml", s.name), &manifests::service(s))?;
        }
        for p in self.pods.iter().filter(|p| p.role != Role::Later) {
            objects.put_pod(&pods[&p.name])?;
        }
        let holders: Vec<Holder> = nodes
            .iter()
            .map(|n| Holder::Node(n.clone()))
            .chain(
                waypoints
                    .iter()
                    .map(|p| Holder::Waypoint(pods[&p.name].clone())),
            )
            .collect();
        let tokens = objects.tokens(&holders)?;
        let mut token_files = BTreeMap::new();
        for (holder, token) in &tokens {
            let path = files.path(&format!("{}.token", holder.key()));
            std::fs::write(&path, token)?;
            token_files.insert(holder.key().to_string(), path);
        }
        let source = match &objects {
            Objects::Manifests(dir) => {
                let tokens_path = files.path("tokens.yaml");
                let entries: Vec<(String, TokenHolder)> = tokens
                    .iter()
                    .map(|(holder, token)| (token.clone(), holder.token_holder()))
                    .collect();
                std::fs::write(&tokens_path, manifests::token_file(&entries))?;
                ObjectSource::Manifests {
                    dir: dir.root().to_path_buf(),
                    tokens: tokens_path,
                }
            }
            Objects::Kube(kube) => {
                // Policies are a CRD; installed before the controller
                // starts, so it lists the kind from its first sync.
                kube.install_authorization_policy_crd()?;
                ObjectSource::Kube {
                    kubeconfig: kube.kubeconfig().to_path_buf(),
                }
            }
        };

        let ca_dir = files.path("ca");
        controller_proc::ca_init(&ca_dir)?;
        let controller = Controller::start(
            cp.netns_name(),
            RunArgs {
                source,
                ca_dir: ca_dir.clone(),
                listen: SocketAddr::new(cp.uplink_ip, 0),
                admin: "127.0.0.1:0".parse()?,
                bound_addrs_file: files.path("controller-addrs.json"),
                poll: POLL,
                extra: Vec::new(),
            },
            &files.path("controller.log"),
        )?;
        let feed = |holder: &str| Feed::Controller {
            address: controller.grpc(),
            root: ca_dir.join("root-cert.pem"),
            token_file: token_files[holder].clone(),
        };
        let with_log = |what: String| format!("{what}; controller log:\n{}", controller.log());

        let mut proxies = BTreeMap::new();
        for node in &nodes {
            let enrolled: Vec<(String, String)> = self
                .pods
                .iter()
                .filter(|p| &p.node == node && p.role == Role::Member)
                .map(|p| (pods[&p.name].uid(), p.name.clone()))
                .collect();
            let proxy = NodeProxy::start_in_node(&topo, &files, node, feed(node), &enrolled, &[])
                .with_context(|| with_log(format!("starting the proxy of {node}")))?;
            proxies.insert(node.clone(), proxy);
        }
        let mut waypoint_procs = BTreeMap::new();
        for p in &waypoints {
            let Role::Waypoint(gw) = &p.role else {
                continue;
            };
            let spec = WaypointSpec {
                pod: &p.name,
                name: &format!("{NAMESPACE}/{gw}"),
                service_account: &pods[&p.name].service_account,
                extra: &[],
            };
            let wp = Waypoint::start_fed(&topo, &files, feed(&p.name), &spec)
                .with_context(|| with_log(format!("starting the waypoint in {}", p.name)))?;
            waypoint_procs.insert(p.name.clone(), wp);
        }
        Ok(ControlledMesh {
            waypoints: waypoint_procs,
            proxies,
            controller,
            objects,
            pods,
            ca_dir,
            mode: self.mode,
            topo,
            files,
        })
    }
}

/// Each pod's object: namespace [`NAMESPACE`], service account = its
/// name, the topology's address.
fn pod_defs(topo: &Topology, specs: &[PodSpec]) -> BTreeMap<String, PodDef> {
    specs
        .iter()
        .map(|p| {
            let def = PodDef {
                namespace: NAMESPACE.into(),
                name: p.name.clone(),
                service_account: p.name.clone(),
                node: p.node.clone(),
                ip: topo.pod(&p.name).expect("built from these pods").ip,
                app: p.app.clone(),
                gateway: match &p.role {
                    Role::Waypoint(gw) => Some(gw.clone()),
                    _ => None,
                },
                labels: Vec::new(),
            };
            (p.name.clone(), def)
        })
        .collect()
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
    proxies: BTreeMap<String, NodeProxy>,
    controller: Controller,
    objects: Objects,
    pods: BTreeMap<String, PodDef>,
    ca_dir: PathBuf,
    mode: Mode,
    pub topo: Topology,
    pub files: ClusterFiles,
}

impl ControlledMesh {
    pub fn builder(mode: Mode) -> ControlledMeshBuilder {
        ControlledMeshBuilder {
            mode,
            pods: vec![],
            services: vec![],
        }
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

    pub fn addr(&self, pod: &str, port: u16) -> SocketAddr {
        SocketAddr::new(self.pod(pod).ip, port)
    }

    /// The netns of a pod or a node (or of [`CONTROL_NODE`]).
    pub fn netns(&self, name: &str) -> NetNs {
        self.topo.open_netns(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Echo server on the pod's IP and `port`, inside its netns.
    pub fn echo(&self, pod: &str, port: u16) -> TestServer {
        self.serve(ServerKind::Echo, pod, port)
    }

    /// Identity server (answers "<peer> <local>") on the pod's IP and `port`.
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
        for p in self.proxies.values() {
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
