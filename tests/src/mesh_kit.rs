//! A whole mesh for end-to-end tests: a netns [`Topology`], a config built
//! from typed workloads, services and policies, a dev CA, and one real
//! `trellis-node-proxy` process (shared mode) per node that has enrolled pods.
//!
//! ```no_run
//! # use trellis_e2e::mesh_kit::Mesh;
//! let mesh = Mesh::builder()
//!     .member("node1", "client", "demo", "client")
//!     .member("node2", "server", "demo", "server")
//!     .start()
//!     .unwrap();
//! let echo = mesh.echo("server", 8080);
//! ```
//!
//! Processes and files come from [`crate::cluster`] ([`NodeProxy`] is the
//! per-process handle: pid, log, admin, metrics, readiness, SIGTERM, exit);
//! this module adds the config as typed `trellis_core` records (workloads,
//! services, policies), per-node config and CA overrides (trust-root and
//! identity-mismatch cases), reloads that wait until each proxy applied the
//! new version, and a client that classifies what a connection attempt did.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::waypoint_proc::{Waypoint, WaypointSpec};
use anyhow::{anyhow, bail, Context, Result};
use trellis_api::config::{
    Action, Authorization, Group, LocalConfig, Match, Protocol, Rules, Scope, Service, ServicePort,
    Workload,
};
use trellis_netns::NetNs;

use crate::cluster::{ClusterFiles, NodeProxy};
use crate::{wait_for, ServerKind, TestServer, Topology};

/// Default deadline for connections and waits in mesh tests.
pub const T: Duration = Duration::from_secs(5);
/// The trust domain of every dev CA made here.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// `cluster.local/ns/<ns>/sa/<sa>`, as policies write principals.
pub fn principal(ns: &str, sa: &str) -> String {
    format!("{TRUST_DOMAIN}/ns/{ns}/sa/{sa}")
}

/// A match on principals (`*` prefix/suffix patterns allowed).
pub fn principals(p: &[&str]) -> Match {
    Match {
        principals: p.iter().map(|s| s.parse().expect("non-empty")).collect(),
        ..Default::default()
    }
}

/// A match on the source identity's namespace.
pub fn namespaces(n: &[&str]) -> Match {
    Match {
        namespaces: n.iter().map(|s| s.parse().expect("non-empty")).collect(),
        ..Default::default()
    }
}

/// A match on destination ports.
pub fn ports(p: &[u16]) -> Match {
    Match {
        destination_ports: p.to_vec(),
        ..Default::default()
    }
}

/// A policy whose single group requires every one of `all` to hold (each is
/// its own rule); with no matches it matches every connection.
pub fn policy(
    ns: &str,
    name: &str,
    scope: Scope,
    action: Action,
    all: Vec<Match>,
) -> Authorization {
    let rules = all
        .into_iter()
        .map(|m| Rules { matches: vec![m] })
        .collect();
    Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope,
        action,
        groups: vec![Group { rules }],
    }
}

/// A workload record for a pod (uid and name = the pod's name).
pub fn workload(topo: &Topology, pod: &str, ns: &str, sa: &str, protocol: Protocol) -> Workload {
    let p = topo
        .pod(pod)
        .unwrap_or_else(|| panic!("no pod {pod} in the topology"));
    Workload {
        uid: pod.into(),
        name: pod.into(),
        namespace: ns.into(),
        service_account: sa.into(),
        trust_domain: TRUST_DOMAIN.into(),
        addresses: vec![p.ip],
        node: p.node.clone(),
        protocol,
        status: Default::default(),
        authorization_policies: vec![],
        canonical_name: None,
        canonical_revision: None,
        cluster_id: None,
        waypoint: None,
        services: vec![],
    }
}

/// The workload `uid` of a config being changed; panics if there is none.
pub fn workload_mut<'a>(cfg: &'a mut LocalConfig, uid: &str) -> &'a mut Workload {
    cfg.workloads
        .iter_mut()
        .find(|w| w.uid == uid)
        .unwrap_or_else(|| panic!("no workload {uid} in the config"))
}

/// Renders a config as the proxy reads it, refusing one the proxy would reject.
pub fn render(cfg: &LocalConfig) -> Result<String> {
    let text = serde_yaml_ng::to_string(cfg)?;
    trellis_api::config::parse(&text)
        .map_err(|e| anyhow!("the test built an invalid config: {e}\n{text}"))?;
    Ok(text)
}

#[derive(Clone)]
struct PodSpec {
    node: String,
    name: String,
    /// (namespace, service account) of an HBONE workload enrolled in its
    /// node's proxy; None for a pod outside the mesh.
    workload: Option<(String, String)>,
    /// The pod runs a waypoint (an HBONE workload that is not enrolled).
    waypoint: bool,
}

type Override = Box<dyn Fn(&mut LocalConfig)>;
type Change = Box<dyn FnOnce(&mut LocalConfig)>;

/// Builder for [`Mesh`].
#[derive(Default)]
pub struct MeshBuilder {
    pods: Vec<PodSpec>,
    services: Vec<Service>,
    policies: Vec<Authorization>,
    own_ca: Vec<String>,
    overrides: Vec<(String, Override)>,
    args: Vec<String>,
    changes: Vec<Change>,
    waypoint_args: Vec<String>,
}

impl MeshBuilder {
    /// A pod in the mesh: an HBONE workload enrolled in its node's proxy.
    pub fn member(mut self, node: &str, pod: &str, ns: &str, sa: &str) -> Self {
        self.pods.push(PodSpec {
            node: node.into(),
            name: pod.into(),
            workload: Some((ns.into(), sa.into())),
            waypoint: false,
        });
        self
    }

    /// A waypoint pod: an HBONE workload `ns/sa` that runs `trellis-waypoint`
    /// (named `<ns>/<pod>`) instead of being enrolled in its node's proxy.
    pub fn waypoint(mut self, node: &str, pod: &str, ns: &str, sa: &str) -> Self {
        self.pods.push(PodSpec {
            node: node.into(),
            name: pod.into(),
            workload: Some((ns.into(), sa.into())),
            waypoint: true,
        });
        self
    }

    /// Extra flags for every waypoint, e.g. `["--drain-deadline", "3s"]`.
    pub fn waypoint_args(mut self, args: &[&str]) -> Self {
        self.waypoint_args
            .extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Edits the config once the workloads, services and policies are in
    /// (for routes, L7 policies, waypoint addresses).
    pub fn configure(mut self, f: impl FnOnce(&mut LocalConfig) + 'static) -> Self {
        self.changes.push(Box::new(f));
        self
    }

    /// Adds the L7 sections (httpRoutes, grpcRoutes, authorizationPolicies,
    /// waypoints) of a YAML snippet, so tests write routes as operators do.
    pub fn l7_yaml(self, yaml: &str) -> Self {
        let snippet: LocalConfig = serde_yaml_ng::from_str(yaml)
            .unwrap_or_else(|e| panic!("test L7 snippet does not parse: {e}\n{yaml}"));
        self.configure(move |cfg| add_l7(cfg, snippet))
    }

    /// A pod outside the mesh: not in the config, not enrolled.
    pub fn outsider(mut self, node: &str, pod: &str) -> Self {
        self.pods.push(PodSpec {
            node: node.into(),
            name: pod.into(),
            workload: None,
            waypoint: false,
        });
        self
    }

    /// A service in namespace "demo": `ports` are (port, targetPort), `endpoints` pod names.
    pub fn service(
        mut self,
        name: &str,
        vip: IpAddr,
        ports: &[(u16, u16)],
        endpoints: &[&str],
    ) -> Self {
        self.services.push(Service {
            name: name.into(),
            namespace: "demo".into(),
            hostname: format!("{name}.demo.svc.{TRUST_DOMAIN}"),
            vips: vec![vip],
            ports: ports
                .iter()
                .map(|&(port, target_port)| ServicePort { port, target_port })
                .collect(),
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            waypoint: None,
        });
        self
    }

    pub fn policy(mut self, p: Authorization) -> Self {
        self.policies.push(p);
        self
    }

    /// Gives `node`'s proxy its own dev CA instead of the mesh's shared one.
    pub fn own_ca(mut self, node: &str) -> Self {
        self.own_ca.push(node.into());
        self
    }

    /// Changes the config `node`'s proxy reads (now and on every reload),
    /// e.g. to make the nodes disagree about a workload.
    pub fn node_config(mut self, node: &str, f: impl Fn(&mut LocalConfig) + 'static) -> Self {
        self.overrides.push((node.into(), Box::new(f)));
        self
    }

    /// Extra flags for every proxy, e.g. `["--drain-deadline", "3s"]`.
    pub fn proxy_args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Builds the topology, writes CA and config files, starts the proxies
    /// and waits until each is ready.
    pub fn start(self) -> Result<Mesh> {
        let mut b = Topology::builder();
        for p in &self.pods {
            b = b.pod(&p.node, &p.name);
        }
        let topo = b.build()?;
        let files = ClusterFiles::new()?;
        let ca = files.ca("ca")?;
        let mut config = LocalConfig::default();
        for p in &self.pods {
            if let Some((ns, sa)) = &p.workload {
                config
                    .workloads
                    .push(workload(&topo, &p.name, ns, sa, Protocol::Hbone));
            }
        }
        config.services = self.services;
        config.policies = self.policies;
        for change in self.changes {
            change(&mut config);
        }
        // One proxy per node with enrolled pods, in order of first mention.
        let mut enrolled: Vec<(String, Vec<String>)> = vec![];
        for p in &self.pods {
            if p.workload.is_none() || p.waypoint {
                continue;
            }
            match enrolled.iter_mut().find(|(n, _)| *n == p.node) {
                Some((_, pods)) => pods.push(p.name.clone()),
                None => enrolled.push((p.node.clone(), vec![p.name.clone()])),
            }
        }
        let mut mesh = Mesh {
            waypoints: BTreeMap::new(),
            proxies: BTreeMap::new(),
            files,
            topo,
            ca,
            config,
            overrides: self.overrides,
            nodes: enrolled.iter().map(|(n, _)| n.clone()).collect(),
        };
        mesh.write_configs()?;
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        for (node, pods) in &enrolled {
            let ca = if self.own_ca.contains(node) {
                mesh.files.ca(&format!("ca-{node}"))?
            } else {
                mesh.ca.clone()
            };
            let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
            let proxy = NodeProxy::start(
                &mesh.topo,
                &mesh.files,
                node,
                &mesh.config_path(node),
                &ca,
                &pods,
                &args,
            )
            .with_context(|| format!("starting the proxy of {node}"))?;
            mesh.proxies.insert(node.clone(), proxy);
        }
        let wargs: Vec<&str> = self.waypoint_args.iter().map(String::as_str).collect();
        for p in self.pods.iter().filter(|p| p.waypoint) {
            let (ns, sa) = p.workload.clone().expect("waypoints have a workload");
            let name = format!("{ns}/{}", p.name);
            let wp = Waypoint::start(
                &mesh.topo,
                &mesh.files,
                &mesh.waypoint_config_path(),
                &mesh.ca,
                &WaypointSpec {
                    pod: &p.name,
                    name: &name,
                    service_account: &sa,
                    extra: &wargs,
                },
            )
            .with_context(|| format!("starting the waypoint in {}", p.name))?;
            mesh.waypoints.insert(p.name.clone(), wp);
        }
        Ok(mesh)
    }
}

/// Appends the L7 sections of `snippet` to `cfg`.
pub fn add_l7(cfg: &mut LocalConfig, snippet: LocalConfig) {
    cfg.http_routes.extend(snippet.http_routes);
    cfg.grpc_routes.extend(snippet.grpc_routes);
    cfg.authorization_policies
        .extend(snippet.authorization_policies);
    cfg.waypoints.extend(snippet.waypoints);
}

/// Routes service `name` (namespace demo) through the waypoint at `ip`.
pub fn use_waypoint(cfg: &mut LocalConfig, service: &str, ip: IpAddr) {
    let svc = cfg
        .services
        .iter_mut()
        .find(|s| s.name == service)
        .unwrap_or_else(|| panic!("no service {service}"));
    svc.waypoint = Some(trellis_api::config::WaypointAddress {
        address: ip,
        hbone_mtls_port: 15008,
    });
}

/// A running mesh; dropping it kills the proxies and removes the namespaces.
pub struct Mesh {
    // Fields drop in order: processes before the files and namespaces they use.
    waypoints: BTreeMap<String, Waypoint>,
    proxies: BTreeMap<String, NodeProxy>,
    pub files: ClusterFiles,
    pub topo: Topology,
    /// The shared dev CA directory.
    pub ca: PathBuf,
    config: LocalConfig,
    overrides: Vec<(String, Override)>,
    nodes: Vec<String>,
}

impl Mesh {
    pub fn builder() -> MeshBuilder {
        MeshBuilder::default()
    }

    /// The proxy of `node`; panics if that node has none.
    pub fn proxy(&self, node: &str) -> &NodeProxy {
        self.proxies
            .get(node)
            .unwrap_or_else(|| panic!("no proxy on {node}"))
    }

    /// The waypoint running in `pod`; panics if there is none.
    pub fn waypoint(&self, pod: &str) -> &Waypoint {
        self.waypoints
            .get(pod)
            .unwrap_or_else(|| panic!("no waypoint in {pod}"))
    }

    pub fn waypoint_mut(&mut self, pod: &str) -> &mut Waypoint {
        self.waypoints
            .get_mut(pod)
            .unwrap_or_else(|| panic!("no waypoint in {pod}"))
    }

    /// The config file every waypoint reads (the config without node overrides).
    pub fn waypoint_config_path(&self) -> PathBuf {
        self.files.path("waypoint.yaml")
    }

    /// Puts `new` in place as the proxy of `node` (after a take-over) and
    /// returns the one it replaces, still running (draining).
    pub fn replace_proxy(&mut self, node: &str, new: NodeProxy) -> NodeProxy {
        self.proxies
            .insert(node.to_string(), new)
            .unwrap_or_else(|| panic!("no proxy on {node}"))
    }

    pub fn proxy_mut(&mut self, node: &str) -> &mut NodeProxy {
        self.proxies
            .get_mut(node)
            .unwrap_or_else(|| panic!("no proxy on {node}"))
    }

    pub fn ip(&self, pod: &str) -> IpAddr {
        self.topo
            .pod(pod)
            .unwrap_or_else(|| panic!("no pod {pod}"))
            .ip
    }

    pub fn addr(&self, pod: &str, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(pod), port)
    }

    pub fn netns(&self, pod: &str) -> NetNs {
        self.topo.open_netns(pod).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `/var/run/netns/...` of a pod, as the admin API's POST /pods wants it.
    pub fn netns_path(&self, pod: &str) -> PathBuf {
        self.topo
            .pod(pod)
            .unwrap_or_else(|| panic!("no pod {pod}"))
            .netns_path()
            .to_path_buf()
    }

    /// Echo server on the pod's IP and `port`, inside its netns.
    pub fn echo(&self, pod: &str, port: u16) -> TestServer {
        self.topo
            .serve(ServerKind::Echo, pod, port)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The config as written for nodes without an override.
    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    pub fn config_path(&self, node: &str) -> PathBuf {
        self.files.path(&format!("{node}.yaml"))
    }

    fn node_text(&self, node: &str) -> Result<String> {
        let mut cfg = self.config.clone();
        for (_, f) in self.overrides.iter().filter(|(n, _)| n == node) {
            f(&mut cfg);
        }
        render(&cfg)
    }

    fn write_configs(&self) -> Result<()> {
        for node in &self.nodes {
            self.files
                .write_config(&format!("{node}.yaml"), &self.node_text(node)?)?;
        }
        self.files
            .write_config("waypoint.yaml", &render(&self.config)?)?;
        Ok(())
    }

    /// Changes the config, writes every node's file, and waits until each
    /// proxy whose config text changed has applied a newer version.
    pub fn reload(&mut self, change: impl FnOnce(&mut LocalConfig)) -> Result<()> {
        let before: Vec<(String, String, u64)> = self
            .proxies
            .iter()
            .map(|(n, p)| Ok((n.clone(), self.node_text(n)?, p.config_version())))
            .collect::<Result<_>>()?;
        let wp_before: Vec<(String, u64)> = self
            .waypoints
            .iter()
            .map(|(n, w)| (n.clone(), w.config_version()))
            .collect();
        let wp_text = render(&self.config)?;
        change(&mut self.config);
        self.write_configs()?;
        if render(&self.config)? != wp_text {
            for (pod, old) in wp_before {
                let w = self.waypoint(&pod);
                wait_for(
                    T,
                    &format!("waypoint {pod} to apply the new config"),
                    || (w.config_version() > old).then_some(()),
                )
                .map_err(|e| anyhow!("{e}\n{}", w.log()))?;
            }
        }
        for (node, old_text, old_version) in before {
            if self.node_text(&node)? == old_text {
                continue;
            }
            let p = self.proxy(&node);
            wait_for(T, &format!("{node} to apply the new config"), || {
                (p.config_version() > old_version).then_some(())
            })
            .map_err(|e| anyhow!("{e}\n{}", p.log()))?;
        }
        Ok(())
    }

    /// Writes `text` as `node`'s config file as is (for broken files).
    pub fn write_raw_config(&self, node: &str, text: &str) -> Result<()> {
        self.files.write_config(&format!("{node}.yaml"), text)?;
        Ok(())
    }

    /// Tries an echo round trip from `from` (a pod) to `dst`.
    pub fn attempt_echo(&self, from: &str, dst: SocketAddr, payload: &[u8]) -> io::Result<Attempt> {
        attempt_echo(Some(&self.netns(from)), dst, payload, T)
    }
}

/// `GET /config_dump` of a proxy as JSON.
pub fn config_dump(p: &NodeProxy) -> Result<serde_json::Value> {
    let (status, body) = p.admin("GET", "/config_dump", "")?;
    if status != 200 {
        bail!("GET /config_dump answered {status}: {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// Uids listed by `GET /pods`.
pub fn listed_pods(p: &NodeProxy) -> Result<Vec<String>> {
    let (status, body) = p.admin("GET", "/pods", "")?;
    if status != 200 {
        bail!("GET /pods answered {status}: {body}");
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["pods"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// What a connection attempt through the mesh did, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The connection carried data; what came back.
    Echoed(Vec<u8>),
    /// The connection was closed (EOF or reset) before any byte came back:
    /// how a proxy refuses a connection it has already accepted.
    Closed,
}

/// Whether an I/O error is the peer closing or refusing the connection.
pub fn is_closed_by_peer(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// Sends `payload`, half-closes, and reads until EOF. A timeout or any other
/// error is returned as an error: a refusal must be prompt.
pub fn attempt_echo(
    ns: Option<&NetNs>,
    dst: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> io::Result<Attempt> {
    let mut s = match crate::connect(ns, dst, timeout) {
        Ok(s) => s,
        Err(e) if is_closed_by_peer(&e) => return Ok(Attempt::Closed),
        Err(e) => return Err(e),
    };
    // The proxy may close while we write; what we read decides the outcome.
    let _ = s
        .write_all(payload)
        .and_then(|_| s.shutdown(std::net::Shutdown::Write));
    let mut back = Vec::new();
    match s.read_to_end(&mut back) {
        Ok(_) if back.is_empty() => Ok(Attempt::Closed),
        Ok(_) => Ok(Attempt::Echoed(back)),
        Err(e) if is_closed_by_peer(&e) && back.is_empty() => Ok(Attempt::Closed),
        Err(e) => Err(e),
    }
}

/// `trellis_proxy_errors_total{reason}` of a proxy.
pub fn errors(p: &NodeProxy, reason: &str) -> f64 {
    p.metric("trellis_proxy_errors_total", &[("reason", reason)])
}

/// Waits until `errors(p, reason)` reaches at least `at_least`; panics with the metrics otherwise.
pub fn wait_errors(p: &NodeProxy, reason: &str, at_least: f64) {
    if let Err(e) = crate::wait_until(T, &format!("{} {reason} >= {at_least}", p.node), || {
        errors(p, reason) >= at_least
    }) {
        panic!(
            "{e}\n{}\n--- {} log ---\n{}",
            crate::cluster::samples(&p.metrics_text().unwrap_or_default(), "trellis_").join("\n"),
            p.node,
            p.log()
        );
    }
}

/// Routes `service` (namespace demo) through the waypoint running in pod
/// `waypoint_pod`, at that pod's workload address.
pub fn use_waypoint_pod(cfg: &mut LocalConfig, service: &str, waypoint_pod: &str) {
    let ip = workload_mut(cfg, waypoint_pod).addresses[0];
    use_waypoint(cfg, service, ip);
}

/// The L7 sections of a YAML snippet (as [`MeshBuilder::l7_yaml`] reads
/// them), to add with [`add_l7`] in a [`Mesh::reload`].
pub fn l7_snippet(yaml: &str) -> LocalConfig {
    serde_yaml_ng::from_str(yaml)
        .unwrap_or_else(|e| panic!("test L7 snippet does not parse: {e}\n{yaml}"))
}
