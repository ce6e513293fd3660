//! The API resources the controller watches: the kinds translation reads
//! (and the routes it will read), with their REST paths.

use crate::objects::Kind;

/// One watched resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    pub kind: Kind,
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    /// A CRD that may not be installed: its absence is logged and retried,
    /// not an error.
    pub optional: bool,
}

impl Resource {
    const fn core(kind: Kind, plural: &'static str) -> Self {
        Resource {
            kind,
            group: "",
            version: "v1",
            plural,
            optional: false,
        }
    }

    const fn crd(
        kind: Kind,
        group: &'static str,
        version: &'static str,
        plural: &'static str,
    ) -> Self {
        Resource {
            kind,
            group,
            version,
            plural,
            optional: true,
        }
    }

    /// The `apiVersion` of its objects (list items do not carry it).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The collection across all namespaces.
    pub fn path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}/{}", self.version, self.plural)
        } else {
            format!("/apis/{}/{}/{}", self.group, self.version, self.plural)
        }
    }

    /// What `trellis_kube::watch` lists and watches.
    pub fn target(&self) -> trellis_kube::WatchTarget {
        trellis_kube::WatchTarget {
            path: self.path(),
            query: String::new(),
            display: self.display(),
            optional: self.optional,
        }
    }

    /// `plural.group`, as kubectl and CRDs name it.
    pub fn display(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// What translation reads: namespaces (enrollment labels), pods and
/// WorkloadEntries (workloads), services, Gateways (waypoints),
/// AuthorizationPolicies, and the routes kept for the L7 translation to
/// come. EndpointSlices, Nodes and ServiceAccounts are not watched:
/// translation does not read them (a pod's node is its spec.nodeName).
pub const DEFAULT_RESOURCES: &[Resource] = &[
    Resource::core(Kind::Namespace, "namespaces"),
    Resource::core(Kind::Pod, "pods"),
    Resource::core(Kind::Service, "services"),
    Resource::crd(Kind::Gateway, "gateway.networking.k8s.io", "v1", "gateways"),
    Resource::crd(
        Kind::HttpRoute,
        "gateway.networking.k8s.io",
        "v1",
        "httproutes",
    ),
    Resource::crd(
        Kind::GrpcRoute,
        "gateway.networking.k8s.io",
        "v1",
        "grpcroutes",
    ),
    Resource::crd(
        Kind::WorkloadEntry,
        "networking.istio.io",
        "v1",
        "workloadentries",
    ),
    Resource::crd(
        Kind::AuthorizationPolicy,
        "security.istio.io",
        "v1",
        "authorizationpolicies",
    ),
    Resource::crd(
        Kind::TrafficPolicy,
        "trellis.dev",
        "v1alpha1",
        "trafficpolicies",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_api_versions_agree_with_the_kinds() {
        for r in DEFAULT_RESOURCES {
            assert!(
                r.kind.api_versions().contains(&r.api_version().as_str()),
                "{:?}: {} is not an apiVersion the store reads",
                r.kind,
                r.api_version()
            );
            assert_eq!(r.optional, !r.group.is_empty(), "{:?}", r.kind);
        }
        let pods = DEFAULT_RESOURCES[1];
        assert_eq!(pods.path(), "/api/v1/pods");
        let ap = DEFAULT_RESOURCES[7];
        assert_eq!(
            ap.path(),
            "/apis/security.istio.io/v1/authorizationpolicies"
        );
        assert_eq!(ap.display(), "authorizationpolicies.security.istio.io");
    }
}
