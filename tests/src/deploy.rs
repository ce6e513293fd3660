//! `deploy/daemonset`, the kustomize tree users install Trellis with,
//! rendered by `kubectl kustomize` exactly as `kubectl apply -k` renders it.
//!
//! [`Rendered`] gives each component's container (program, args, env,
//! mounts) so that a test can start the real binaries with the arguments
//! and environment of the rendered DaemonSet, and check them against the
//! binaries' own parsers. [`validate_offline`] runs the `kubernetes-validate`
//! schemas; [`install_prerequisites`] runs the tree's own CRD script.

pub mod containers;
pub mod promql;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

pub use containers::{Container, EnvSource, EnvVar, Mount, MountSource, PodFacts};

use crate::kube::{kubectl_program, run};

/// The namespace every namespaced object of the tree is in.
pub const NAMESPACE: &str = "trellis-system";
/// The controller's Deployment and Service.
pub const CONTROLLER: &str = "trellis-controller";
/// The node proxy's DaemonSet and service account (the controller knows
/// node proxies by `trellis-system/trellis-node-proxy`).
pub const NODE_PROXY: &str = "trellis-node-proxy";
/// The CNI agent's DaemonSet.
pub const CNI_AGENT: &str = "trellis-cni-agent";
/// How long `kubectl kustomize` or a validator may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the CRD script may take (it may download two Go modules).
const PREREQUISITES_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("cannot run {what}: {detail}")]
    Run { what: String, detail: String },
    #[error("`kubectl kustomize {dir}` failed: {stderr}")]
    Kustomize { dir: String, stderr: String },
    #[error("document {index} of the rendered {dir} is not a Kubernetes object: {detail}")]
    Yaml {
        dir: String,
        index: usize,
        detail: String,
    },
    #[error("no {kind} {name} in the rendered {dir}")]
    Missing {
        kind: String,
        name: String,
        dir: String,
    },
    #[error("{kind} {name} in the rendered {dir}: {detail}")]
    Shape {
        kind: String,
        name: String,
        dir: String,
        detail: String,
    },
    #[error("kubernetes-validate is not installed ({detail}); run `python3 -m pip install 'kubernetes-validate==1.37.0'` (tests/run does it)")]
    NoValidator { detail: String },
    #[error("{what} failed ({status}): {output}")]
    Failed {
        what: String,
        status: String,
        output: String,
    },
}

pub type Result<T, E = DeployError> = std::result::Result<T, E>;

/// The kustomizations of the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Base,
    /// `overlays/istio-compat`: also Istio's labels.
    IstioCompat,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Base, Variant::IstioCompat];

    /// Its folder, relative to [`deploy_dir`].
    pub fn rel(self) -> &'static str {
        match self {
            Variant::Base => "base",
            Variant::IstioCompat => "overlays/istio-compat",
        }
    }

    pub fn dir(self) -> PathBuf {
        deploy_dir().join(self.rel())
    }
}

/// `deploy/daemonset` of this checkout.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset")
}

/// A rendered kustomization.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The folder it was rendered from.
    pub dir: PathBuf,
    /// What `kubectl kustomize` printed.
    pub yaml: String,
    pub objects: Vec<Value>,
}

impl Rendered {
    pub fn of(variant: Variant) -> Result<Rendered> {
        Rendered::of_dir(&variant.dir())
    }

    /// Runs `kubectl kustomize dir`.
    pub fn of_dir(dir: &Path) -> Result<Rendered> {
        let shown = dir.display().to_string();
        let mut cmd = Command::new(kubectl_program());
        cmd.arg("kustomize").arg(dir);
        let out =
            run(cmd, "kubectl kustomize", None, TOOL_TIMEOUT).map_err(|e| DeployError::Run {
                what: "kubectl kustomize".into(),
                detail: e.to_string(),
            })?;
        if !out.success {
            return Err(DeployError::Kustomize {
                dir: shown,
                stderr: out.stderr.trim().to_string(),
            });
        }
        let objects = parse_stream(&out.stdout).map_err(|(index, detail)| DeployError::Yaml {
            dir: shown,
            index,
            detail,
        })?;
        Ok(Rendered {
            dir: dir.to_path_buf(),
            yaml: out.stdout,
            objects,
        })
    }

    /// The object of `kind` named `name` (namespaced ones in [`NAMESPACE`]).
    pub fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    pub fn get(&self, kind: &str, name: &str) -> Result<&Value> {
        self.find(kind, name).ok_or_else(|| DeployError::Missing {
            kind: kind.into(),
            name: name.into(),
            dir: self.dir.display().to_string(),
        })
    }

    /// Container `container` of the Deployment or DaemonSet `kind`/`name`.
    pub fn container(&self, kind: &str, name: &str, container: &str) -> Result<Container> {
        Container::from_workload(self.get(kind, name)?, container).map_err(|detail| {
            DeployError::Shape {
                kind: kind.into(),
                name: name.into(),
                dir: self.dir.display().to_string(),
                detail,
            }
        })
    }

    pub fn controller(&self) -> Result<Container> {
        self.container("Deployment", CONTROLLER, "controller")
    }

    pub fn node_proxy(&self) -> Result<Container> {
        self.container("DaemonSet", NODE_PROXY, "node-proxy")
    }

    pub fn cni_agent(&self) -> Result<Container> {
        self.container("DaemonSet", CNI_AGENT, "cni-agent")
    }

    /// `(kind, name)` of every object, in rendered order.
    pub fn inventory(&self) -> Vec<(String, String)> {
        self.objects
            .iter()
            .map(|o| {
                (
                    o["kind"].as_str().unwrap_or_default().to_string(),
                    o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }
}

/// The objects of a YAML stream (documents split at `---` lines, as
/// kubectl prints them); on error, the document's index and why.
pub fn parse_stream(yaml: &str) -> Result<Vec<Value>, (usize, String)> {
    let mut docs = vec![String::new()];
    for line in yaml.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    let mut out = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        let v: Value = serde_yaml_ng::from_str(doc).map_err(|e| (index, e.to_string()))?;
        if v.is_null() {
            continue;
        }
        if !v["kind"].is_string() || !v["apiVersion"].is_string() {
            return Err((index, "it has no kind or apiVersion".into()));
        }
        out.push(v);
    }
    Ok(out)
}

/// What `kubernetes-validate` said of a stream, line by line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Validation {
    /// `kind/name` (kind in lower case) of each object that passed.
    pub passed: Vec<String>,
    /// Kinds it has no schema for (custom resources).
    pub no_schema: Vec<String>,
    /// Every ERROR or FATAL line.
    pub errors: Vec<String>,
}

/// Reads `kubernetes-validate`'s output.
pub fn parse_validation(output: &str) -> Validation {
    let mut v = Validation::default();
    for line in output.lines() {
        if line.starts_with("ERROR") || line.starts_with("FATAL") {
            v.errors.push(line.to_string());
        } else if let Some(rest) = line.split(" passed for resource ").nth(1) {
            if let Some(object) = rest.split_whitespace().next() {
                v.passed.push(object.to_string());
            }
        } else if let Some(rest) = line.split("Couldn't find schema for kind ").nth(1) {
            if let Some(kind) = rest.split_whitespace().next() {
                v.no_schema.push(kind.to_string());
            }
        }
    }
    v
}

/// The schema version for the API server of `tests/kube/versions.env`
/// (`KUBE_VERSION=v1.37.2` → `1.37.0`): kubernetes-validate bundles one
/// schema per minor version, named `<minor>.0`.
pub fn schema_version(versions_env: &str) -> Result<String, String> {
    let v = versions_env
        .lines()
        .find_map(|l| l.trim().strip_prefix("KUBE_VERSION="))
        .ok_or("no KUBE_VERSION= line")?;
    let mut parts = v.trim().trim_start_matches('v').split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor))
            if !major.is_empty()
                && major.chars().all(|c| c.is_ascii_digit())
                && !minor.is_empty()
                && minor.chars().all(|c| c.is_ascii_digit()) =>
        {
            Ok(format!("{major}.{minor}.0"))
        }
        _ => Err(format!("KUBE_VERSION={v} is not vMAJOR.MINOR.PATCH")),
    }
}

/// `kubernetes-validate --strict` of `file` against `schema` (e.g. 1.37.0).
pub fn validate_offline(file: &Path, schema: &str) -> Result<Validation> {
    let mut check = Command::new("python3");
    check.args(["-m", "kubernetes_validate", "--version"]);
    let out = run(check, "kubernetes-validate --version", None, TOOL_TIMEOUT).map_err(|e| {
        DeployError::NoValidator {
            detail: e.to_string(),
        }
    })?;
    if !out.success {
        return Err(DeployError::NoValidator {
            detail: out.stderr.trim().to_string(),
        });
    }
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "kubernetes_validate", "--strict", "-k", schema])
        .arg(file);
    let what = format!(
        "kubernetes-validate --strict -k {schema} {}",
        file.display()
    );
    let out = run(cmd, &what, None, TOOL_TIMEOUT).map_err(|e| DeployError::Run {
        what: what.clone(),
        detail: e.to_string(),
    })?;
    let v = parse_validation(&out.stdout);
    // Exit 1 comes with ERROR lines; anything else unexplained is a failure.
    if !out.success && v.errors.is_empty() {
        return Err(DeployError::Failed {
            what,
            status: out.status,
            output: format!("{}{}", out.stdout, out.stderr),
        });
    }
    Ok(v)
}

/// Runs `deploy/daemonset/install-prerequisites.sh` against the cluster of
/// `kubeconfig`; its output.
pub fn install_prerequisites(kubeconfig: &Path) -> Result<String> {
    install_prerequisites_in(kubeconfig, None)
}

/// [`install_prerequisites`] run inside `netns` (an `ip netns` name), for
/// an API server that listens on that namespace's loopback.
pub fn install_prerequisites_in(kubeconfig: &Path, netns: Option<&str>) -> Result<String> {
    let script = deploy_dir().join("install-prerequisites.sh");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "bash"]);
            c
        }
        None => Command::new("bash"),
    };
    cmd.arg(&script)
        .env("KUBECONFIG", kubeconfig)
        .env("KUBECTL", kubectl_program());
    let what = "deploy/daemonset/install-prerequisites.sh";
    let out = run(cmd, what, None, PREREQUISITES_TIMEOUT).map_err(|e| DeployError::Run {
        what: what.into(),
        detail: e.to_string(),
    })?;
    if !out.success {
        return Err(DeployError::Failed {
            what: what.into(),
            status: out.status,
            output: format!("{}{}", out.stdout, out.stderr),
        });
    }
    Ok(out.stdout)
}

/// The `NAME=value` assignments of a shell script (e.g. the versions at the
/// top of install-prerequisites.sh).
pub fn shell_assignment<'a>(script: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    script
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().trim_matches('"'))
}
