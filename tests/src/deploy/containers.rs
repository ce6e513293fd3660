//! One container of a rendered workload, as a process runs it: the program,
//! its arguments, its environment and what is mounted where. Pure: it reads
//! the rendered objects only, so the cluster-in-a-box harness can start a
//! binary exactly as the DaemonSet would, with [`Container::env_values`]
//! playing the kubelet's downward API.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A container of a pod template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    /// `image` with its tag, as kustomize's `images:` set it.
    pub image: String,
    /// The entry point; the binary's name is its first element.
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub mounts: Vec<Mount>,
    /// `containerPort`s by name (unnamed ones are left out).
    pub ports: Vec<(String, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvVar {
    pub name: String,
    pub source: EnvSource,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvSource {
    Value(String),
    /// The downward API: `fieldRef.fieldPath`.
    Field(String),
}

/// What a pod is, for the downward API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    pub node_name: String,
    pub pod_name: String,
    pub namespace: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub path: PathBuf,
    pub read_only: bool,
    pub source: MountSource,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountSource {
    HostPath(PathBuf),
    ConfigMap(String),
    Secret(String),
    /// A projected service account token, written at `<mount>/<path>`.
    Token {
        audience: String,
        path: String,
        expiration_seconds: Option<i64>,
    },
    /// A volume of another kind (its kind's field name).
    Other(String),
}

impl Container {
    /// The container `name` of a Deployment's or DaemonSet's pod template.
    pub fn from_workload(workload: &Value, name: &str) -> Result<Container, String> {
        let spec = &workload["spec"]["template"]["spec"];
        let c = spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .ok_or_else(|| format!("no container {name:?} in its pod template"))?;
        let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
        let mounts = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| mount(m, &volumes))
            .collect::<Result<_, _>>()?;
        Ok(Container {
            name: name.to_string(),
            image: str_field(c, "image")?,
            command: strings(&c["command"], "command")?,
            args: strings(&c["args"], "args")?,
            env: c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .map(env_var)
                .collect::<Result<_, _>>()?,
            mounts,
            ports: c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let port = u16::try_from(p["containerPort"].as_u64()?).ok()?;
                    Some((p["name"].as_str()?.to_string(), port))
                })
                .collect(),
        })
    }

    /// The binary the container runs (the first element of `command`).
    pub fn program(&self) -> Option<&str> {
        self.command.first().map(String::as_str)
    }

    /// The environment as a process gets it in pod `pod`: every variable
    /// with its value, downward API fields resolved.
    pub fn env_values(&self, pod: &PodFacts) -> Result<Vec<(String, String)>, String> {
        self.env
            .iter()
            .map(|e| {
                let value = match &e.source {
                    EnvSource::Value(v) => v.clone(),
                    EnvSource::Field(f) => match f.as_str() {
                        "spec.nodeName" => pod.node_name.clone(),
                        "metadata.name" => pod.pod_name.clone(),
                        "metadata.namespace" => pod.namespace.clone(),
                        other => {
                            return Err(format!(
                                "env {}: the field {other:?} is not one the harness can resolve (spec.nodeName, metadata.name, metadata.namespace)",
                                e.name
                            ))
                        }
                    },
                };
                Ok((e.name.clone(), value))
            })
            .collect()
    }

    /// The value of flag `--name` in `args` (`--name=value` or `--name value`).
    pub fn flag(&self, name: &str) -> Option<&str> {
        flag_value(&self.args, name)
    }

    /// The mount whose path holds `file` (the longest such mount path).
    pub fn mount_holding(&self, file: &Path) -> Option<&Mount> {
        self.mounts
            .iter()
            .filter(|m| file.starts_with(&m.path))
            .max_by_key(|m| m.path.components().count())
    }

    /// A named container port.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports.iter().find(|(n, _)| n == name).map(|(_, p)| *p)
    }
}

/// The value of flag `--name` in `args` (`--name=value` or `--name value`).
pub fn flag_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let eq = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&eq) {
            Some(v)
        } else if a == name {
            args.get(i + 1).map(String::as_str)
        } else {
            None
        }
    })
}

fn str_field(v: &Value, field: &str) -> Result<String, String> {
    v[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{field} is missing or not a string"))
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{what} holds {s}, not a string"))
            })
            .collect(),
        other => Err(format!("{what} is {other}, not a list")),
    }
}

fn env_var(e: &Value) -> Result<EnvVar, String> {
    let name = str_field(e, "name")?;
    let source = if let Some(v) = e["value"].as_str() {
        EnvSource::Value(v.to_string())
    } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
        EnvSource::Field(f.to_string())
    } else {
        return Err(format!(
            "env {name}: neither a value nor a fieldRef (secrets, config maps and resource fields are not used by Trellis's containers)"
        ));
    };
    Ok(EnvVar { name, source })
}

fn mount(m: &Value, volumes: &[Value]) -> Result<Mount, String> {
    let name = str_field(m, "name")?;
    let path = PathBuf::from(str_field(m, "mountPath")?);
    let volume = volumes
        .iter()
        .find(|v| v["name"] == name.as_str())
        .ok_or_else(|| format!("volumeMount {name} names no volume of the pod"))?;
    Ok(Mount {
        path,
        read_only: m["readOnly"].as_bool().unwrap_or(false),
        source: volume_source(volume),
    })
}

fn volume_source(v: &Value) -> MountSource {
    if let Some(p) = v["hostPath"]["path"].as_str() {
        return MountSource::HostPath(PathBuf::from(p));
    }
    if let Some(n) = v["configMap"]["name"].as_str() {
        return MountSource::ConfigMap(n.to_string());
    }
    if let Some(n) = v["secret"]["secretName"].as_str() {
        return MountSource::Secret(n.to_string());
    }
    if let Some([only]) = v["projected"]["sources"].as_array().map(Vec::as_slice) {
        let t = &only["serviceAccountToken"];
        if let Some(path) = t["path"].as_str() {
            return MountSource::Token {
                audience: t["audience"].as_str().unwrap_or_default().to_string(),
                path: path.to_string(),
                expiration_seconds: t["expirationSeconds"].as_i64(),
            };
        }
    }
    let kind = v
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "name").cloned())
        .unwrap_or_default();
    MountSource::Other(kind)
}
