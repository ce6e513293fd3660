//! Building a [`ControlledMesh`]: the topology, the objects, the
//! controller, then every proxy, in that order.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use anyhow::{anyhow, Context, Result};

use super::objects::{Holder, Objects};
use super::{ControlledMesh, Mode, CONTROL_NODE, NAMESPACE, POLL, SERVICE_CIDR};
use crate::cluster::{ClusterFiles, Feed, NodeProxy};
use crate::controller_proc::{self, Controller, ObjectSource, RunArgs};
use crate::kube::KubeApiServer;
use crate::manifests::{self, ManifestsDir, PodDef, ServiceDef, TokenHolder, WorkloadEntryDef};
use crate::waypoint_proc::{Waypoint, WaypointSpec};
use crate::Topology;

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

/// A VM of the builder.
#[derive(Clone, Debug)]
struct VmSpec {
    node: String,
    name: String,
    app: String,
    /// Whose token its proxy gets: its own service account's, normally.
    token_account: String,
}

/// Builder for [`ControlledMesh`].
pub struct ControlledMeshBuilder {
    mode: Mode,
    pods: Vec<PodSpec>,
    vms: Vec<VmSpec>,
    services: Vec<ServiceDef>,
    controller_args: Vec<String>,
}

impl ControlledMeshBuilder {
    pub(super) fn new(mode: Mode) -> Self {
        ControlledMeshBuilder {
            mode,
            pods: vec![],
            vms: vec![],
            services: vec![],
            controller_args: vec![],
        }
    }

    /// More `trellis-controller run` arguments (e.g. a short
    /// `--max-cert-validity`).
    pub fn controller_args(mut self, args: &[&str]) -> Self {
        self.controller_args
            .extend(args.iter().map(|a| a.to_string()));
        self
    }

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

    /// A VM outside the cluster, linked to `node` alone: a WorkloadEntry
    /// labelled `app: <app>` with service account = its name, and a node
    /// proxy in its netns dedicated to that entry (`--capture`), with a
    /// token of that service account.
    pub fn vm(self, node: &str, name: &str, app: &str) -> Self {
        self.vm_with_token_of(node, name, app, name)
    }

    /// A VM whose proxy is given a token of another service account,
    /// `account` (an operator's mistake): the CA must refuse it the VM's
    /// identity.
    pub fn vm_with_token_of(mut self, node: &str, name: &str, app: &str, account: &str) -> Self {
        self.vms.push(VmSpec {
            node: node.into(),
            name: name.into(),
            app: app.into(),
            token_account: account.into(),
        });
        self
    }

    /// A ClusterIP service selecting `app: <app>` (pods and VMs); `ports`
    /// are (port, targetPort).
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
        for v in &self.vms {
            b = b.host(&v.node, &v.name);
        }
        let topo = b.node(CONTROL_NODE).build()?;
        let files = ClusterFiles::new()?;
        let cp = topo
            .node(CONTROL_NODE)
            .ok_or_else(|| anyhow!("the topology has no {CONTROL_NODE} node"))?;
        let pods = pod_defs(&topo, &self.pods);
        let vms = vm_defs(&topo, &self.vms);
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
        if !vms.is_empty() {
            objects.install_workload_entries()?;
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
        for v in vms.values() {
            objects.put_workload_entry(v)?;
        }
        let holders: Vec<Holder> = nodes
            .iter()
            .map(|n| Holder::Node(n.clone()))
            .chain(
                waypoints
                    .iter()
                    .map(|p| Holder::Waypoint(pods[&p.name].clone())),
            )
            .chain(self.vms.iter().map(|v| Holder::Vm {
                entry: vms[&v.name].clone(),
                account: v.token_account.clone(),
            }))
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
                extra: self.controller_args.clone(),
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
        let mut vm_proxies = BTreeMap::new();
        for (name, entry) in &vms {
            let proxy =
                NodeProxy::start_on_host(&topo, &files, name, feed(name), &entry.uid(), &[])
                    .with_context(|| with_log(format!("starting the proxy of VM {name}")))?;
            vm_proxies.insert(name.clone(), proxy);
        }
        Ok(ControlledMesh {
            waypoints: waypoint_procs,
            vm_proxies,
            proxies,
            controller,
            objects,
            pods,
            vms,
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

/// Each VM's WorkloadEntry: namespace [`NAMESPACE`], service account =
/// its name, the topology's host address.
fn vm_defs(topo: &Topology, specs: &[VmSpec]) -> BTreeMap<String, WorkloadEntryDef> {
    specs
        .iter()
        .map(|v| {
            let def = WorkloadEntryDef {
                namespace: NAMESPACE.into(),
                name: v.name.clone(),
                service_account: v.name.clone(),
                ip: topo.host(&v.name).expect("built from these VMs").ip,
                app: v.app.clone(),
            };
            (v.name.clone(), def)
        })
        .collect()
}
