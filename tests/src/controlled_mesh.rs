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
use crate::manifests::{self, ManifestsDir, PodDef, PolicyDef};
use crate::mesh_kit::{attempt_echo, Attempt, T};
use crate::{TestServer, Topology};
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

#[derive(Clone, Debug)]
struct PodSpec {
    node: String,
    name: String,
    app: String,
    /// False: only its netns exists at start; [`ControlledMesh::add_pod`]
    /// creates the object and enrolls it later.
    running: bool,
}

struct ServiceSpec {
    name: String,
    vip: IpAddr,
    app: String,
    ports: Vec<(u16, u16)>,
}

/// Builder for [`ControlledMesh`].
pub struct ControlledMeshBuilder {
    mode: Mode,
    pods: Vec<PodSpec>,
    services: Vec<ServiceSpec>,
}

impl ControlledMeshBuilder {
    /// A running pod in the mesh: its object exists and its node's proxy
    /// enrolls it at start. Its service account is its name.
    pub fn pod(mut self, node: &str, name: &str, app: &str) -> Self {
        self.pods.push(PodSpec {
            node: node.into(),
            name: name.into(),
            app: app.into(),
            running: true,
        });
        self
    }

    /// A pod that is created later ([`ControlledMesh::add_pod`]): only its
    /// network namespace exists at start, as before a CNI hands it over.
    pub fn later_pod(mut self, node: &str, name: &str, app: &str) -> Self {
        self.pods.push(PodSpec {
            node: node.into(),
            name: name.into(),
            app: app.into(),
            running: false,
        });
        self
    }

    /// A ClusterIP service selecting `app: <app>`; `ports` are (port, targetPort).
    pub fn service(mut self, name: &str, vip: IpAddr, app: &str, ports: &[(u16, u16)]) -> Self {
        self.services.push(ServiceSpec {
            name: name.into(),
            vip,
            app: app.into(),
            ports: ports.to_vec(),
        });
        self
    }

    /// Builds the topology, writes or applies the objects, runs `ca init`,
    /// starts the controller and then every node's proxy, each ready.
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
        let pods: BTreeMap<String, PodDef> = self
            .pods
            .iter()
            .map(|p| {
                let ip = topo.pod(&p.name).expect("built from these pods").ip;
                let def = PodDef {
                    namespace: NAMESPACE.into(),
                    name: p.name.clone(),
                    service_account: p.name.clone(),
                    node: p.node.clone(),
                    ip,
                    app: p.app.clone(),
                };
                (p.name.clone(), def)
            })
            .collect();
        let nodes: Vec<String> = topo
            .nodes()
            .map(|n| n.name.clone())
            .filter(|n| n != CONTROL_NODE)
            .collect();

        let objects = match self.mode {
            Mode::Manifests => Objects::Manifests(ManifestsDir::create(&files.path("manifests"))?),
            Mode::Kube => Objects::Kube(
                KubeApiServer::start(Some(cp.netns_name()), Some(SERVICE_CIDR))
                    .context("starting kube-apiserver")?,
            ),
        };
        objects.put("namespace.yaml", &manifests::namespace(NAMESPACE, true))?;
        for s in &self.services {
            let yaml = manifests::service(NAMESPACE, &s.name, s.vip, &s.app, &s.ports);
            objects.put(&format!("services/{}.yaml", s.name), &yaml)?;
        }
        let running: Vec<&PodSpec> = self.pods.iter().filter(|p| p.running).collect();
        for p in &running {
            objects.put_pod(&pods[&p.name])?;
        }
        let tokens = objects.node_tokens(&nodes)?;
        let mut token_files = BTreeMap::new();
        for (node, token) in &tokens {
            let path = files.path(&format!("{node}.token"));
            std::fs::write(&path, token)?;
            token_files.insert(node.clone(), path);
        }
        let source = match &objects {
            Objects::Manifests(dir) => {
                let tokens_path = files.path("tokens.yaml");
                let entries: Vec<(String, String)> = tokens
                    .iter()
                    .map(|(node, token)| (token.clone(), node.clone()))
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
            },
            &files.path("controller.log"),
        )?;

        let mut proxies = BTreeMap::new();
        for node in &nodes {
            let enrolled: Vec<(String, String)> = running
                .iter()
                .filter(|p| &p.node == node)
                .map(|p| (pods[&p.name].uid(), p.name.clone()))
                .collect();
            let feed = Feed::Controller {
                address: controller.grpc(),
                root: ca_dir.join("root-cert.pem"),
                token_file: token_files[node].clone(),
            };
            let proxy = NodeProxy::start_in_node(&topo, &files, node, feed, &enrolled, &[])
                .with_context(|| {
                    format!(
                        "starting the proxy of {node}; controller log:\n{}",
                        controller.log()
                    )
                })?;
            proxies.insert(node.clone(), proxy);
        }
        Ok(ControlledMesh {
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

/// The `n`th address of [`SERVICE_CIDR`], for a service's cluster IP.
pub fn service_vip(n: u8) -> IpAddr {
    IpAddr::from([198, 19, 128, n])
}

/// A running mesh with its controller; dropping it stops the proxies, the
/// controller and the API server, then removes the namespaces and files.
pub struct ControlledMesh {
    // Fields drop in order: processes before the namespaces and files they use.
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

    pub fn netns(&self, pod: &str) -> NetNs {
        self.topo
            .pod(pod)
            .unwrap_or_else(|| panic!("no pod {pod}"))
            .netns()
            .unwrap_or_else(|e| panic!("opening the netns of {pod}: {e}"))
    }

    /// The netns of a node (or of [`CONTROL_NODE`]).
    pub fn node_netns(&self, node: &str) -> NetNs {
        self.topo
            .node(node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .netns()
            .unwrap_or_else(|e| panic!("opening the netns of {node}: {e}"))
    }

    /// Echo server on the pod's IP and `port`, inside its netns.
    pub fn echo(&self, pod: &str, port: u16) -> TestServer {
        TestServer::echo(Some(&self.netns(pod)), self.addr(pod, port))
            .unwrap_or_else(|e| panic!("echo server on {pod}:{port}: {e}"))
    }

    /// Identity server (answers "<peer> <local>") on the pod's IP and `port`.
    pub fn identity(&self, pod: &str, port: u16) -> TestServer {
        TestServer::identity(Some(&self.netns(pod)), self.addr(pod, port))
            .unwrap_or_else(|e| panic!("identity server on {pod}:{port}: {e}"))
    }

    /// The controller's and every proxy's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = format!("--- controller ---\n{}", self.controller.log());
        for p in self.proxies.values() {
            s += &format!("--- {} proxy ---\n{}", p.node, p.log());
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
