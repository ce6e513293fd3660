//! Which pods join the mesh: a pure decision from what the runtime says of
//! the pod and what the agent knows, from its flags or from the API server.

use std::collections::BTreeSet;

use trellis_kube::labels::{self, Labels, Mode, DATAPLANE_MODE};

use crate::wire::PodRef;

/// Namespaces never enrolled whatever the flags or labels say: the mesh's
/// own components and the cluster's must not depend on the mesh to start.
pub const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "trellis-system", "istio-system"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnrollPolicy {
    /// The agent's flags: `--ambient-namespace NS` (repeatable) or
    /// `--all-namespaces`. For nodes without an API server (tests, demos).
    Flags {
        namespaces: BTreeSet<String>,
        all_namespaces: bool,
    },
    /// Kubernetes mode: the namespace's and the pod's
    /// `trellis.dev/dataplane-mode` labels (and Istio's with
    /// `istio_labels`), by the rule the controller uses
    /// ([`trellis_kube::labels::enrolled`]).
    Labels { istio_labels: bool },
}

impl Default for EnrollPolicy {
    fn default() -> Self {
        EnrollPolicy::Flags {
            namespaces: BTreeSet::new(),
            all_namespaces: false,
        }
    }
}

/// What the API server says of a pod, read at ADD (Kubernetes mode).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// None: the namespace does not exist.
    pub namespace_labels: Option<Labels>,
    pub pod_labels: Labels,
    /// `spec.serviceAccountName`, for ZDS's `WorkloadInfo`.
    pub service_account: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Enroll,
    Skip(SkipReason),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("the sandbox is not a Kubernetes pod (no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS)")]
    NotAPod,
    #[error("namespace {0} is a system namespace and never enrolled")]
    SystemNamespace(String),
    #[error("namespace {0} is not enrolled in the mesh (agent flag --ambient-namespace)")]
    NotEnrolled(String),
    #[error("namespace {0} is not labelled {DATAPLANE_MODE}=ambient")]
    NotLabelled(String),
    #[error("pod {0} is labelled {DATAPLANE_MODE}=none")]
    OptedOut(String),
    #[error("the pod's labels were not read from the API server")]
    NoFacts,
}

/// Decides whether a pod is enrolled. `facts` are read only in
/// Kubernetes mode ([`EnrollPolicy::Labels`]).
pub fn decide(policy: &EnrollPolicy, pod: Option<&PodRef>, facts: Option<&PodFacts>) -> Decision {
    let Some(pod) = pod else {
        return Decision::Skip(SkipReason::NotAPod);
    };
    if SYSTEM_NAMESPACES.contains(&pod.namespace.as_str()) {
        return Decision::Skip(SkipReason::SystemNamespace(pod.namespace.clone()));
    }
    match policy {
        EnrollPolicy::Flags {
            namespaces,
            all_namespaces,
        } => {
            if *all_namespaces || namespaces.contains(&pod.namespace) {
                Decision::Enroll
            } else {
                Decision::Skip(SkipReason::NotEnrolled(pod.namespace.clone()))
            }
        }
        EnrollPolicy::Labels { istio_labels } => {
            let Some(f) = facts else {
                return Decision::Skip(SkipReason::NoFacts);
            };
            let ns = f.namespace_labels.as_ref();
            if labels::enrolled(ns, Some(&f.pod_labels), *istio_labels) {
                Decision::Enroll
            } else if labels::mode(Some(&f.pod_labels), *istio_labels) == Mode::Excluded {
                Decision::Skip(SkipReason::OptedOut(format!(
                    "{}/{}",
                    pod.namespace, pod.name
                )))
            } else {
                Decision::Skip(SkipReason::NotLabelled(pod.namespace.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str) -> PodRef {
        PodRef {
            namespace: ns.into(),
            name: "p".into(),
            uid: "u".into(),
            service_account: String::new(),
        }
    }

    fn facts(ns: &[(&str, &str)], pod: &[(&str, &str)]) -> PodFacts {
        let l = |p: &[(&str, &str)]| -> Labels {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        PodFacts {
            namespace_labels: Some(l(ns)),
            pod_labels: l(pod),
            service_account: "default".into(),
        }
    }

    /// (name, policy, pod, facts, decision)
    type Case<'a> = (
        &'a str,
        &'a EnrollPolicy,
        Option<PodRef>,
        Option<PodFacts>,
        Decision,
    );

    #[test]
    fn decision_table() {
        let listed = EnrollPolicy::Flags {
            namespaces: ["demo".to_string(), "kube-system".to_string()].into(),
            all_namespaces: false,
        };
        let all = EnrollPolicy::Flags {
            namespaces: BTreeSet::new(),
            all_namespaces: true,
        };
        let none = EnrollPolicy::default();
        let kube = EnrollPolicy::Labels {
            istio_labels: false,
        };
        let istio = EnrollPolicy::Labels { istio_labels: true };
        let amb = [(DATAPLANE_MODE, "ambient")];
        let off = [(DATAPLANE_MODE, "none")];
        let istio_amb = [(labels::ISTIO_DATAPLANE_MODE, "ambient")];
        let no_ns = PodFacts {
            namespace_labels: None,
            ..facts(&[], &[])
        };
        let cases: Vec<Case> = vec![
            (
                "listed namespace",
                &listed,
                Some(pod("demo")),
                None,
                Decision::Enroll,
            ),
            (
                "other namespace",
                &listed,
                Some(pod("web")),
                None,
                Decision::Skip(SkipReason::NotEnrolled("web".into())),
            ),
            (
                "system namespace even when listed",
                &listed,
                Some(pod("kube-system")),
                None,
                Decision::Skip(SkipReason::SystemNamespace("kube-system".into())),
            ),
            (
                "all namespaces",
                &all,
                Some(pod("web")),
                None,
                Decision::Enroll,
            ),
            (
                "all namespaces but the mesh's own",
                &all,
                Some(pod("trellis-system")),
                None,
                Decision::Skip(SkipReason::SystemNamespace("trellis-system".into())),
            ),
            (
                "empty policy",
                &none,
                Some(pod("demo")),
                None,
                Decision::Skip(SkipReason::NotEnrolled("demo".into())),
            ),
            (
                "not a pod",
                &all,
                None,
                None,
                Decision::Skip(SkipReason::NotAPod),
            ),
            (
                "labelled namespace",
                &kube,
                Some(pod("demo")),
                Some(facts(&amb, &[])),
                Decision::Enroll,
            ),
            (
                "unlabelled namespace",
                &kube,
                Some(pod("demo")),
                Some(facts(&[], &[])),
                Decision::Skip(SkipReason::NotLabelled("demo".into())),
            ),
            (
                "pod opts out",
                &kube,
                Some(pod("demo")),
                Some(facts(&amb, &off)),
                Decision::Skip(SkipReason::OptedOut("demo/p".into())),
            ),
            (
                "pod opts in",
                &kube,
                Some(pod("demo")),
                Some(facts(&[], &amb)),
                Decision::Enroll,
            ),
            (
                "system namespace even when labelled",
                &kube,
                Some(pod("istio-system")),
                Some(facts(&amb, &[])),
                Decision::Skip(SkipReason::SystemNamespace("istio-system".into())),
            ),
            (
                "namespace gone",
                &kube,
                Some(pod("demo")),
                Some(no_ns),
                Decision::Skip(SkipReason::NotLabelled("demo".into())),
            ),
            (
                "istio label without --istio-labels",
                &kube,
                Some(pod("demo")),
                Some(facts(&istio_amb, &[])),
                Decision::Skip(SkipReason::NotLabelled("demo".into())),
            ),
            (
                "istio label with --istio-labels",
                &istio,
                Some(pod("demo")),
                Some(facts(&istio_amb, &[])),
                Decision::Enroll,
            ),
            (
                "labels mode without facts",
                &kube,
                Some(pod("demo")),
                None,
                Decision::Skip(SkipReason::NoFacts),
            ),
        ];
        for (name, policy, pod, facts, want) in cases {
            assert_eq!(decide(policy, pod.as_ref(), facts.as_ref()), want, "{name}");
        }
    }
}
