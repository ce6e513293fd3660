//! The kubelet's part, played by the harness for one pod of a Deployment
//! the controller made: the Pod object (from the Deployment's template,
//! bound to a node), its volumes filled as a kubelet fills them (a
//! projected service-account token from a TokenRequest bound to the pod,
//! ConfigMap keys as files), its container started in a topology pod's
//! netns with the template's args and env (downward API resolved), its
//! readiness probed from the node as the kubelet probes it, and its status
//! written back.
//!
//! There is no container runtime, so a volume is a directory of the test
//! and each args value naming a mount path is rewritten to that directory
//! ([`plan_pod`] is the pure part, tested below).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use trellis_netns::NetNs;

use crate::cluster::http_in;
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
    pub env: Vec<(String, String)>,
    pub fills: Vec<Fill>,
    /// The readiness probe's port and path.
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
        } else {
            bail!("volume {vname}: only projected tokens and ConfigMaps are played: {v}");
        }
        volume_dirs.push((vname.to_string(), vdir));
    }

    let c = spec
        .pointer("/containers/0")
        .ok_or_else(|| anyhow!("the pod template has no container"))?;
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
    }
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let args = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let a = a.as_str().ok_or_else(|| anyhow!("a non-string arg: {a}"))?;
            Ok(rewrite(a, &mounts))
        })
        .collect::<Result<Vec<_>>>()?;

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
        (
            g["port"]
                .as_u64()
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

/// A pod the harness runs; its process is killed (by PID) on drop.
pub struct KubeletPod {
    pub plan: PodPlan,
    child: OwnedChild,
    log: PathBuf,
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
        let ns = plan.namespace.clone();
        std::fs::create_dir_all(&plan.dir)?;
        kube.kubectl(&["create", "-f", "-"], Some(&plan.pod.to_string()))
            .with_context(|| format!("creating pod {ns}/{}", plan.name))?;
        kube.pod_status(&ns, &plan.name, &ip.to_string(), false)?;
        for fill in &plan.fills {
            fill_volume(kube, &plan, fill)?;
        }
        let log = plan.dir.join(format!("{}.log", plan.name));
        let out = std::fs::File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", pod_netns])
            .arg(binary)
            .args(&plan.args)
            .envs(plan.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {} in {pod_netns}", binary.display()))?;
        let mut pod = KubeletPod {
            plan,
            child: OwnedChild::new(child),
            log,
        };
        if let Some((port, path)) = pod.plan.readiness.clone() {
            let addr = std::net::SocketAddr::new(ip, port);
            let mut exited = None;
            let ready = wait_until(READY_TIMEOUT, "the readiness probe to answer 200", || {
                if let Ok(Some(s)) = pod.child.try_wait() {
                    exited = Some(s);
                    return true;
                }
                matches!(
                    http_in(Some(node_netns), addr, "GET", &path, ""),
                    Ok((200, _))
                )
            });
            match (ready, exited) {
                (_, Some(status)) => bail!("the container exited with {status}:\n{}", pod.log()),
                (Err(e), None) => bail!("{e}; its log:\n{}", pod.log()),
                (Ok(()), None) => {}
            }
        }
        kube.pod_status(&ns, &pod.plan.name, &ip.to_string(), true)?;
        Ok(pod)
    }

    /// Everything the container wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
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
