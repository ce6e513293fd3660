//! The kubelet's part, played by the harness for one pod of a Deployment
//! the controller made: the Pod object (from the Deployment's template,
//! bound to a node), its volumes filled as a kubelet fills them (a
//! projected service-account token from a TokenRequest bound to the pod,
//! ConfigMap keys as files), its container started in a topology pod's
//! netns with the template's args and env (downward API resolved), its
//! readiness probed from the node as the kubelet probes it, and its status
//! written back.
//!
//! Two ways to run the container, as there is no container runtime:
//! - [`KubeletPod::start`]: a volume is a directory of the test and each
//!   args value naming a mount path is rewritten to that directory;
//! - [`KubeletPod::start_contained`] (the cluster in a box): the process
//!   gets a mount namespace of its own with each volume at its mount path
//!   ([`crate::container`]), so the args stay exactly as rendered; hostPath
//!   volumes are the node's directories ([`NodeView`]), the service account
//!   is mounted where `--in-cluster` reads it, and the kubelet's
//!   `KUBERNETES_SERVICE_HOST`/`PORT` are set.
//!
//! ([`plan_pod`] and [`plan_contained`] are the pure part, tested below).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use trellis_netns::NetNs;

use crate::cluster::http_in;
use crate::container::{self, MountOp};
use crate::kube::KubeApiServer;
use crate::process::OwnedChild;
use crate::wait::wait_until;

/// How long a started container gets to pass its readiness probe.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What fills one volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fill {
    /// A TokenRequest for the pod's service account, written to `file`.
    Token {
        audience: String,
        expiration_secs: u64,
        file: PathBuf,
    },
    /// Each key of ConfigMap `name` as a file in `dir`.
    ConfigMap { name: String, dir: PathBuf },
    /// A node's directory (hostPath): created if missing.
    HostDir { dir: PathBuf },
    /// What a kubelet mounts at [`SERVICE_ACCOUNT_DIR`]: a token for the
    /// API server's audience bound to the pod, the API's CA, the namespace.
    ServiceAccount { dir: PathBuf },
}

/// Where a pod's API credentials are mounted (`--in-cluster` reads them).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The node a contained pod runs on, as its hostPath volumes see it.
#[derive(Clone, Copy, Debug)]
pub struct NodeView<'a> {
    /// hostPath `/p` is `<root>/p` ...
    pub root: &'a Path,
}

impl NodeView<'_> {
    /// ... except the netns files, which are the machine's: each pod's
    /// netns is a file under /var/run/netns whoever runs it.
    pub fn host_path(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.starts_with("/var/run/netns") || p.starts_with("/run/netns") {
            return p.to_path_buf();
        }
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }
}

/// Everything a kubelet would do for one pod, decided.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    /// The Pod object to create.
    pub pod: Value,
    /// The first container's args, mount paths rewritten to host dirs.
    pub args: Vec<String>,
    /// Its args as rendered.
    pub raw_args: Vec<String>,
    /// (mount path, directory, read only), parents before children.
    pub mounts: Vec<(PathBuf, PathBuf, bool)>,
    pub env: Vec<(String, String)>,
    pub fills: Vec<Fill>,
    /// The readiness probe's port (named ports resolved) and path.
    pub readiness: Option<(u16, String)>,
    /// Where the volumes (and the container's log) live.
    pub dir: PathBuf,
}

/// Decides the pod `name` of `deployment` on `node` with address `ip`;
/// its volumes live under `dir`.
pub fn plan_pod(
    deployment: &Value,
    name: &str,
    node: &str,
    ip: &str,
    dir: &Path,
) -> Result<PodPlan> {
    plan(deployment, name, node, ip, dir, None)
}

/// Decides the pod `name` of `workload` (a Deployment or a DaemonSet) for
/// [`KubeletPod::start_contained`] on the node `view`.
pub fn plan_contained(
    workload: &Value,
    name: &str,
    node: &str,
    ip: &str,
    dir: &Path,
    view: NodeView<'_>,
) -> Result<PodPlan> {
    plan(workload, name, node, ip, dir, Some(view))
}

fn plan(
    deployment: &Value,
    name: &str,
    node: &str,
    ip: &str,
    dir: &Path,
    view: Option<NodeView<'_>>,
) -> Result<PodPlan> {
    let namespace = deployment
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the Deployment has no metadata.namespace"))?
        .to_string();
    let template = deployment
        .pointer("/spec/template")
        .ok_or_else(|| anyhow!("the Deployment has no spec.template"))?;
    let mut spec = template
        .get("spec")
        .cloned()
        .ok_or_else(|| anyhow!("the pod template has no spec"))?;
    spec["nodeName"] = json!(node);
    let service_account = spec["serviceAccountName"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
            "annotations": template.pointer("/metadata/annotations").cloned().unwrap_or(json!({})),
        },
        "spec": spec,
    });

    let mut fills = Vec::new();
    let mut volume_dirs = Vec::new();
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let vname = v["name"]
            .as_str()
            .ok_or_else(|| anyhow!("a volume has no name"))?;
        let vdir = dir.join(vname);
        if let Some(sources) = v.pointer("/projected/sources").and_then(Value::as_array) {
            for s in sources {
                let t = s.get("serviceAccountToken").ok_or_else(|| {
                    anyhow!("volume {vname}: only serviceAccountToken projections are played")
                })?;
                fills.push(Fill::Token {
                    audience: t["audience"].as_str().unwrap_or("").to_string(),
                    expiration_secs: t["expirationSeconds"].as_u64().unwrap_or(3600),
                    file: vdir.join(
                        t["path"]
                            .as_str()
                            .ok_or_else(|| anyhow!("volume {vname}: token without a path"))?,
                    ),
                });
            }
        } else if let Some(cm) = v.pointer("/configMap/name").and_then(Value::as_str) {
            fills.push(Fill::ConfigMap {
                name: cm.to_string(),
                dir: vdir.clone(),
            });
        } else if let (Some(path), Some(view)) = (
            v.pointer("/hostPath/path").and_then(Value::as_str),
            view.as_ref(),
        ) {
            let host = view.host_path(path);
            fills.push(Fill::HostDir { dir: host.clone() });
            volume_dirs.push((vname.to_string(), host));
            continue;
        } else {
            bail!("volume {vname}: only projected tokens, ConfigMaps and (contained) hostPaths are played: {v}");
        }
        volume_dirs.push((vname.to_string(), vdir));
    }

    let c = spec
        .pointer("/containers/0")
        .ok_or_else(|| anyhow!("the pod template has no container"))?;
    let mut contained: Vec<(PathBuf, PathBuf, bool)> = Vec::new();
    if view.is_some() && spec["automountServiceAccountToken"] != json!(false) {
        let sa_dir = dir.join("kube-api-access");
        fills.push(Fill::ServiceAccount {
            dir: sa_dir.clone(),
        });
        contained.push((SERVICE_ACCOUNT_DIR.into(), sa_dir, true));
    }
    // Longest mount path first, so a nested mount wins over its parent.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let (Some(vname), Some(path)) = (m["name"].as_str(), m["mountPath"].as_str()) else {
            bail!("a volumeMount without name or mountPath: {m}");
        };
        let (_, vdir) = volume_dirs
            .iter()
            .find(|(n, _)| n == vname)
            .ok_or_else(|| anyhow!("volumeMount {vname} names no volume"))?;
        mounts.push((path.to_string(), vdir.clone()));
        contained.push((path.into(), vdir.clone(), m["readOnly"] == json!(true)));
    }
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    contained.sort_by_key(|(p, _, _)| p.components().count());
    let raw_args = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            a.as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("a non-string arg: {a}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let args = raw_args.iter().map(|a| rewrite(a, &mounts)).collect();

    let mut env = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let key = e["name"]
            .as_str()
            .ok_or_else(|| anyhow!("an env entry without a name"))?;
        let value = match (
            e["value"].as_str(),
            e.pointer("/valueFrom/fieldRef/fieldPath"),
        ) {
            (Some(v), _) => v.to_string(),
            (None, Some(Value::String(path))) => match path.as_str() {
                "metadata.name" => name.to_string(),
                "metadata.namespace" => namespace.clone(),
                "spec.nodeName" => node.to_string(),
                "spec.serviceAccountName" => service_account.clone(),
                "status.podIP" => ip.to_string(),
                other => bail!("env {key}: fieldPath {other} is not played"),
            },
            _ => bail!("env {key}: only values and fieldRefs are played: {e}"),
        };
        env.push((key.to_string(), value));
    }
    let readiness = c.pointer("/readinessProbe/httpGet").map(|g| {
        // A named port is the container's port of that name.
        let port = match &g["port"] {
            Value::String(n) => c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == n.as_str())
                .map_or(Value::Null, |p| p["containerPort"].clone()),
            p => p.clone(),
        };
        (
            port.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(0),
            g["path"].as_str().unwrap_or("/").to_string(),
        )
    });
    Ok(PodPlan {
        namespace,
        name: name.to_string(),
        service_account,
        pod,
        args,
        raw_args,
        mounts: contained,
        env,
        fills,
        readiness,
        dir: dir.to_path_buf(),
    })
}

/// `arg` with a mount path (as the value, or after `=`) replaced by its dir.
fn rewrite(arg: &str, mounts: &[(String, PathBuf)]) -> String {
    let (flag, value) = match arg.split_once('=') {
        Some((f, v)) => (Some(f), v),
        None => (None, arg),
    };
    let value = mounts
        .iter()
        .find_map(|(path, dir)| {
            let rest = value.strip_prefix(path.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then(|| format!("{}{rest}", dir.display()))
        })
        .unwrap_or_else(|| value.to_string());
    match flag {
        Some(f) => format!("{f}={value}"),
        None => value,
    }
}

/// What the kubelet does besides the volumes for a contained pod.
#[derive(Clone, Debug)]
pub struct Contained {
    /// `KUBERNETES_SERVICE_HOST`/`PORT` as this pod reaches the API server.
    pub api_host: String,
    pub api_port: u16,
    /// The API server's CA, the `ca.crt` of the service account mount.
    pub api_ca: PathBuf,
    /// Names the cluster's DNS would answer (Service names), as an
    /// /etc/hosts of the container.
    pub hosts: Vec<(String, std::net::IpAddr)>,
}

/// How the container is started (again, on a restart) and probed.
struct Launch {
    argv: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
    probe_netns: PathBuf,
    ip: std::net::IpAddr,
}

/// A pod the harness runs; its process is killed (by PID) on drop.
pub struct KubeletPod {
    pub plan: PodPlan,
    child: OwnedChild,
    log: PathBuf,
    launch: Launch,
    /// How many times the container was started.
    pub starts: u32,
}

impl KubeletPod {
    /// Creates the Pod object, fills its volumes, starts `binary` with the
    /// container's args and env in `pod_netns`, and waits until the
    /// readiness probe, made from `node_netns` to `ip`, answers 200; then
    /// writes the pod Ready.
    pub fn start(
        kube: &KubeApiServer,
        plan: PodPlan,
        binary: &Path,
        pod_netns: &str,
        node_netns: &NetNs,
        ip: std::net::IpAddr,
    ) -> Result<KubeletPod> {
        let mut argv: Vec<std::ffi::OsString> = vec![
            "netns".into(),
            "exec".into(),
            pod_netns.into(),
            binary.into(),
        ];
        argv.extend(plan.args.iter().map(Into::into));
        KubeletPod::run(kube, plan, argv, node_netns, ip)
    }

    /// Like [`KubeletPod::start`], with the container in a mount namespace
    /// of its own ([`crate::container`]): every volume at its mount path,
    /// the args exactly as rendered, the service account where
    /// `--in-cluster` reads it, `extra`'s env and /etc/hosts.
    pub fn start_contained(
        kube: &KubeApiServer,
        mut plan: PodPlan,
        binary: &Path,
        netns: &str,
        probe_netns: &NetNs,
        ip: std::net::IpAddr,
        extra: &Contained,
    ) -> Result<KubeletPod> {
        std::fs::create_dir_all(&plan.dir)?;
        let mut ops = Vec::new();
        // A tmpfs over the secrets dir: the host has none of these files.
        if plan
            .mounts
            .iter()
            .any(|(p, _, _)| p.starts_with("/var/run/secrets"))
        {
            ops.push(MountOp::Tmpfs {
                dst: "/var/run/secrets".into(),
            });
        }
        for (path, dir, read_only) in &plan.mounts {
            std::fs::create_dir_all(dir)?;
            ops.push(MountOp::Bind {
                src: dir.clone(),
                dst: path.clone(),
                read_only: *read_only,
            });
        }
        if !extra.hosts.is_empty() {
            let hosts = plan.dir.join("hosts");
            let mut text = String::from("127.0.0.1 localhost\n");
            for (name, ip) in &extra.hosts {
                text += &format!("{ip} {name}\n");
            }
            write(&hosts, &text)?;
            ops.push(MountOp::Bind {
                src: hosts,
                dst: "/etc/hosts".into(),
                read_only: true,
            });
        }
        let cmd = container::command(netns, &ops, binary)?;
        let mut argv: Vec<std::ffi::OsString> = cmd.get_args().map(Into::into).collect();
        argv.extend(plan.raw_args.iter().map(Into::into));
        plan.env
            .push(("KUBERNETES_SERVICE_HOST".into(), extra.api_host.clone()));
        plan.env
            .push(("KUBERNETES_SERVICE_PORT".into(), extra.api_port.to_string()));
        for fill in plan.fills.iter_mut() {
            if let Fill::ServiceAccount { dir } = fill {
                write(
                    &dir.join("ca.crt"),
                    &std::fs::read_to_string(&extra.api_ca)?,
                )?;
            }
        }
        KubeletPod::run(kube, plan, argv, probe_netns, ip)
    }

    /// Creates the pod, fills its volumes, runs `ip argv` with the plan's
    /// env, probes it from `probe_netns`, writes it Ready.
    fn run(
        kube: &KubeApiServer,
        plan: PodPlan,
        argv: Vec<std::ffi::OsString>,
        probe_netns: &NetNs,
        ip: std::net::IpAddr,
    ) -> Result<KubeletPod> {
        let launch = Launch {
            argv,
            env: plan.env.clone(),
            probe_netns: probe_netns.path().to_path_buf(),
            ip,
        };
        let ns = plan.namespace.clone();
        std::fs::create_dir_all(&plan.dir)?;
        kube.kubectl(&["create", "-f", "-"], Some(&plan.pod.to_string()))
            .with_context(|| format!("creating pod {ns}/{}", plan.name))?;
        kube.pod_status(&ns, &plan.name, &launch.ip.to_string(), false)?;
        for fill in &plan.fills {
            fill_volume(kube, &plan, fill)?;
        }
        let log = plan.dir.join(format!("{}.log", plan.name));
        let child = spawn(&launch, &log)?;
        let mut pod = KubeletPod {
            plan,
            child,
            log,
            launch,
            starts: 1,
        };
        pod.wait_ready()?;
        kube.pod_status(&ns, &pod.plan.name, &pod.launch.ip.to_string(), true)?;
        Ok(pod)
    }

    /// Waits until the readiness probe answers 200 (or the process exits).
    pub fn wait_ready(&mut self) -> Result<()> {
        let Some((port, path)) = self.plan.readiness.clone() else {
            return Ok(());
        };
        let node_netns = NetNs::open(&self.launch.probe_netns)?;
        let addr = std::net::SocketAddr::new(self.launch.ip, port);
        let mut exited = None;
        let ready = wait_until(READY_TIMEOUT, "the readiness probe to answer 200", || {
            if let Ok(Some(s)) = self.child.try_wait() {
                exited = Some(s);
                return true;
            }
            matches!(
                http_in(Some(&node_netns), addr, "GET", &path, ""),
                Ok((200, _))
            )
        });
        match (ready, exited) {
            (_, Some(status)) => bail!("the container exited with {status}:\n{}", self.log()),
            (Err(e), None) => bail!("{e}; its log:\n{}", self.log()),
            (Ok(()), None) => Ok(()),
        }
    }

    /// Kills the container (SIGKILL, as a crash) and waits for its exit.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Starts the container again in the same pod, as the kubelet does
    /// after it exited (restartPolicy Always), and waits until ready.
    pub fn restart(&mut self) -> Result<()> {
        self.child.kill();
        self.child = spawn(&self.launch, &self.log)?;
        self.starts += 1;
        self.wait_ready()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the container wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts the container's process, appending to its log.
fn spawn(launch: &Launch, log: &Path) -> Result<OwnedChild> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let child = Command::new("ip")
        .args(&launch.argv)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {:?}", launch.argv))?;
    Ok(OwnedChild::new(child))
}

fn fill_volume(kube: &KubeApiServer, plan: &PodPlan, fill: &Fill) -> Result<()> {
    let ns = plan.namespace.as_str();
    match fill {
        Fill::Token {
            audience,
            expiration_secs,
            file,
        } => {
            let mut args = vec![
                "create".to_string(),
                "token".into(),
                plan.service_account.clone(),
                "-n".into(),
                ns.into(),
                format!("--duration={expiration_secs}s"),
                "--bound-object-kind=Pod".into(),
                format!("--bound-object-name={}", plan.name),
            ];
            if !audience.is_empty() {
                args.push(format!("--audience={audience}"));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let token = kube.kubectl(&args, None)?;
            write(file, token.trim())
        }
        Fill::HostDir { dir } => Ok(std::fs::create_dir_all(dir)?),
        Fill::ServiceAccount { dir } => {
            let token = kube.kubectl(
                &[
                    "create",
                    "token",
                    &plan.service_account,
                    "-n",
                    ns,
                    "--bound-object-kind=Pod",
                    &format!("--bound-object-name={}", plan.name),
                ],
                None,
            )?;
            write(&dir.join("token"), token.trim())?;
            write(&dir.join("namespace"), ns)
        }
        Fill::ConfigMap { name, dir } => {
            let cm = kube.kubectl(&["get", "configmap", name, "-n", ns, "-o", "json"], None)?;
            let cm: Value = serde_json::from_str(&cm).context("ConfigMap JSON")?;
            for (key, value) in cm["data"].as_object().into_iter().flatten() {
                write(&dir.join(key), value.as_str().unwrap_or(""))?;
            }
            Ok(())
        }
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests;
