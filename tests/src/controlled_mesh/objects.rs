//! The controller's objects behind one interface: files in its manifests
//! folder, or objects in the API server, so a test's steps are the same in
//! both modes.

use std::io::Read;

use anyhow::{Context, Result};

use super::{PROXY_ACCOUNT, PROXY_NAMESPACE};
use crate::kube::KubeApiServer;
use crate::manifests::{self, ManifestsDir, PodDef, PolicyDef, TokenHolder, WorkloadEntryDef};

/// The controller's objects, in the folder or in the API server.
pub(super) enum Objects {
    Manifests(ManifestsDir),
    Kube(KubeApiServer),
}

impl Objects {
    /// A namespace-level object (namespace, service) under `file` in the folder.
    pub(super) fn put(&self, file: &str, yaml: &str) -> Result<()> {
        match self {
            Objects::Manifests(dir) => dir
                .write(file, yaml)
                .with_context(|| format!("writing manifest {file}")),
            Objects::Kube(kube) => Ok(kube.apply(yaml)?),
        }
    }

    fn pod_file(p: &PodDef) -> String {
        format!("pods/{}-{}.yaml", p.namespace, p.name)
    }

    fn policy_file(ns: &str, name: &str) -> String {
        format!("policies/{ns}-{name}.yaml")
    }

    /// The pod and its service account; in the API server its status is
    /// written afterwards, as a kubelet would.
    pub(super) fn put_pod(&self, p: &PodDef) -> Result<()> {
        let sa = manifests::service_account(&p.namespace, &p.service_account);
        match self {
            Objects::Manifests(dir) => {
                let yaml = manifests::stream(&[sa, manifests::pod(p, true)]);
                dir.write(&Self::pod_file(p), &yaml)
                    .with_context(|| format!("writing the manifest of pod {}", p.name))
            }
            Objects::Kube(kube) => {
                kube.apply(&manifests::stream(&[sa, manifests::pod(p, false)]))?;
                kube.pod_status(&p.namespace, &p.name, &p.ip.to_string(), true)?;
                Ok(())
            }
        }
    }

    pub(super) fn delete_pod(&self, p: &PodDef) -> Result<()> {
        match self {
            Objects::Manifests(dir) => dir
                .remove(&Self::pod_file(p))
                .with_context(|| format!("removing the manifest of pod {}", p.name)),
            Objects::Kube(kube) => Ok(kube.delete_pod(&p.namespace, &p.name)?),
        }
    }

    fn entry_file(w: &WorkloadEntryDef) -> String {
        format!("workloadentries/{}-{}.yaml", w.namespace, w.name)
    }

    /// A VM's WorkloadEntry and its service account.
    pub(super) fn put_workload_entry(&self, w: &WorkloadEntryDef) -> Result<()> {
        let yaml = manifests::stream(&[
            manifests::service_account(&w.namespace, &w.service_account),
            manifests::workload_entry(w),
        ]);
        match self {
            Objects::Manifests(dir) => dir
                .write(&Self::entry_file(w), &yaml)
                .with_context(|| format!("writing the manifest of workload entry {}", w.name)),
            Objects::Kube(kube) => Ok(kube.apply(&yaml)?),
        }
    }

    pub(super) fn delete_workload_entry(&self, w: &WorkloadEntryDef) -> Result<()> {
        match self {
            Objects::Manifests(dir) => dir
                .remove(&Self::entry_file(w))
                .with_context(|| format!("removing the manifest of workload entry {}", w.name)),
            Objects::Kube(kube) => Ok(kube
                .kubectl(
                    &["delete", "workloadentry", &w.name, "-n", &w.namespace],
                    None,
                )
                .map(drop)?),
        }
    }

    pub(super) fn put_policy(&self, p: &PolicyDef) -> Result<()> {
        let yaml = manifests::authorization_policy(p);
        match self {
            Objects::Manifests(dir) => dir
                .write(&Self::policy_file(&p.namespace, &p.name), &yaml)
                .with_context(|| format!("writing the manifest of policy {}", p.name)),
            Objects::Kube(kube) => Ok(kube.apply(&yaml)?),
        }
    }

    /// Replaces a policy with a version the controller must refuse: YAML
    /// that does not parse in the folder; in the API server (whose CRD
    /// validation refuses broken YAML) an action the CRD accepts and
    /// Trellis does not (AUDIT).
    pub(super) fn break_policy(&self, p: &PolicyDef) -> Result<()> {
        match self {
            Objects::Manifests(dir) => {
                let good = manifests::authorization_policy(p);
                let broken = good.replace("rules:", "rules: [");
                dir.write(&Self::policy_file(&p.namespace, &p.name), &broken)
                    .with_context(|| format!("writing the broken policy {}", p.name))
            }
            Objects::Kube(kube) => {
                let audit = PolicyDef {
                    action: "AUDIT".into(),
                    ..p.clone()
                };
                Ok(kube.apply(&manifests::authorization_policy(&audit))?)
            }
        }
    }

    pub(super) fn delete_policy(&self, ns: &str, name: &str) -> Result<()> {
        match self {
            Objects::Manifests(dir) => dir
                .remove(&Self::policy_file(ns, name))
                .with_context(|| format!("removing the manifest of policy {name}")),
            Objects::Kube(kube) => Ok(kube
                .kubectl(&["delete", "authorizationpolicy", name, "-n", ns], None)
                .map(drop)?),
        }
    }

    /// A bearer token for each holder (a node's proxy, a waypoint by its
    /// pod, a VM): random bootstrap tokens for the token file; in
    /// Kubernetes mode TokenRequests bound to a pod, which the controller's
    /// TokenReview maps to a node (the node proxy's service account) or to
    /// the pod's own identity (a waypoint), and for a VM a token of its
    /// service account bound to nothing, for the audience `istio-ca` (what
    /// an operator makes with `kubectl create token`). A waypoint's pod
    /// must exist.
    pub(super) fn tokens(&self, holders: &[Holder]) -> Result<Vec<(Holder, String)>> {
        match self {
            Objects::Manifests(_) => holders
                .iter()
                .map(|h| Ok((h.clone(), random_token()?)))
                .collect(),
            Objects::Kube(kube) => {
                kube.apply(&manifests::stream(&[
                    manifests::namespace(PROXY_NAMESPACE, None),
                    manifests::service_account(PROXY_NAMESPACE, PROXY_ACCOUNT),
                ]))?;
                holders
                    .iter()
                    .map(|h| {
                        let token = match h {
                            Holder::Node(node) => node_proxy_token(kube, node)?,
                            Holder::Waypoint(p) => {
                                kube.bound_token(&p.namespace, &p.service_account, &p.name)?
                            }
                            Holder::Vm { entry, account } => {
                                kube.apply(&manifests::service_account(&entry.namespace, account))?;
                                kube.token_for_audience(
                                    &entry.namespace,
                                    account,
                                    VM_TOKEN_AUDIENCE,
                                )?
                            }
                        };
                        Ok((h.clone(), token))
                    })
                    .collect()
            }
        }
    }

    /// Istio's WorkloadEntry CRD (Kubernetes mode), before the controller starts.
    pub(super) fn install_workload_entries(&self) -> Result<()> {
        match self {
            Objects::Manifests(_) => Ok(()),
            Objects::Kube(kube) => Ok(kube.install_workload_entry_crd()?),
        }
    }

    /// Gateway API's CRDs (Kubernetes mode), before the controller starts.
    pub(super) fn install_gateway_api(&self) -> Result<()> {
        match self {
            Objects::Manifests(_) => Ok(()),
            Objects::Kube(kube) => Ok(kube.install_gateway_api_crds()?),
        }
    }
}

/// The audience of a VM's token: the controller's CA reviews tokens for it
/// (Istio's, which its VM bootstrap uses too).
const VM_TOKEN_AUDIENCE: &str = "istio-ca";

/// Who a token is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Holder {
    Node(String),
    Waypoint(PodDef),
    /// A VM's node proxy, with a token of `account` (its entry's service
    /// account, unless a test gives it another's).
    Vm {
        entry: WorkloadEntryDef,
        account: String,
    },
}

impl Holder {
    /// Names its token file.
    pub(super) fn key(&self) -> &str {
        match self {
            Holder::Node(n) => n,
            Holder::Waypoint(p) => &p.name,
            Holder::Vm { entry, .. } => &entry.name,
        }
    }

    pub(super) fn token_holder(&self) -> TokenHolder {
        match self {
            Holder::Node(n) => TokenHolder::NodeProxy(n.clone()),
            Holder::Waypoint(p) => TokenHolder::Waypoint(p.spiffe_id()),
            // The token file knows no VMs: an account's own identity is
            // what a waypoint entry grants, as a TokenReview does.
            Holder::Vm { entry, account } => {
                TokenHolder::Waypoint(manifests::spiffe_id(&entry.namespace, account))
            }
        }
    }
}

/// A Node object and a node-proxy pod on it, and a token bound to that pod.
fn node_proxy_token(kube: &KubeApiServer, node: &str) -> Result<String> {
    let pod = PodDef {
        namespace: PROXY_NAMESPACE.into(),
        name: format!("node-proxy-{node}"),
        service_account: PROXY_ACCOUNT.into(),
        node: node.into(),
        // Not in the mesh namespace: never a workload.
        ip: "198.19.255.254".parse().expect("literal"),
        app: "trellis-node-proxy".into(),
        gateway: None,
        labels: Vec::new(),
    };
    let node_object = format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n");
    kube.apply(&manifests::stream(&[
        node_object,
        manifests::pod(&pod, false),
    ]))?;
    Ok(kube.bound_token(PROXY_NAMESPACE, PROXY_ACCOUNT, &pod.name)?)
}

/// 128 random bits as hex, from the kernel.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
