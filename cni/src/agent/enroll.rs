//! Which pods join the mesh: a pure decision from what the runtime says of
//! the pod and what the agent was told.
//!
//! Today the agent is told by its flags (`--ambient-namespace NS`, or
//! `--all-namespaces`); reading the namespace's `trellis.dev/dataplane-mode`
//! label from the Kubernetes API is the next source, and it will feed this
//! same function.

use std::collections::BTreeSet;

use crate::wire::PodRef;

/// Namespaces never enrolled whatever the flags say: the mesh's own
/// components and the cluster's must not depend on the mesh to start.
pub const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "trellis-system", "istio-system"];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnrollPolicy {
    /// Namespaces whose pods are enrolled.
    pub namespaces: BTreeSet<String>,
    /// Enroll every namespace but the system ones.
    pub all_namespaces: bool,
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
}

/// Decides whether a pod is enrolled.
pub fn decide(policy: &EnrollPolicy, pod: Option<&PodRef>) -> Decision {
    let Some(pod) = pod else {
        return Decision::Skip(SkipReason::NotAPod);
    };
    if SYSTEM_NAMESPACES.contains(&pod.namespace.as_str()) {
        return Decision::Skip(SkipReason::SystemNamespace(pod.namespace.clone()));
    }
    if policy.all_namespaces || policy.namespaces.contains(&pod.namespace) {
        Decision::Enroll
    } else {
        Decision::Skip(SkipReason::NotEnrolled(pod.namespace.clone()))
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
        }
    }

    #[test]
    fn decision_table() {
        let listed = EnrollPolicy {
            namespaces: ["demo".to_string(), "kube-system".to_string()].into(),
            all_namespaces: false,
        };
        let all = EnrollPolicy {
            all_namespaces: true,
            ..Default::default()
        };
        let none = EnrollPolicy::default();
        let cases: Vec<(&str, &EnrollPolicy, Option<PodRef>, Decision)> = vec![
            (
                "listed namespace",
                &listed,
                Some(pod("demo")),
                Decision::Enroll,
            ),
            (
                "other namespace",
                &listed,
                Some(pod("web")),
                Decision::Skip(SkipReason::NotEnrolled("web".into())),
            ),
            (
                "system namespace even when listed",
                &listed,
                Some(pod("kube-system")),
                Decision::Skip(SkipReason::SystemNamespace("kube-system".into())),
            ),
            ("all namespaces", &all, Some(pod("web")), Decision::Enroll),
            (
                "all namespaces but the mesh's own",
                &all,
                Some(pod("trellis-system")),
                Decision::Skip(SkipReason::SystemNamespace("trellis-system".into())),
            ),
            (
                "empty policy",
                &none,
                Some(pod("demo")),
                Decision::Skip(SkipReason::NotEnrolled("demo".into())),
            ),
            ("not a pod", &all, None, Decision::Skip(SkipReason::NotAPod)),
        ];
        for (name, policy, pod, want) in cases {
            assert_eq!(decide(policy, pod.as_ref()), want, "{name}");
        }
    }
}
