//! A synthetic cluster as Kubernetes manifests: namespaces enrolled in the
//! mesh, pods spread over nodes, services selecting them, and one
//! namespace-wide AuthorizationPolicy per namespace. The controller reads
//! them through the same ObjectStore the manifests folder feeds.
//!
//! Addresses are computed from indices so the clients know which VIPs to
//! look up without being told; nothing is ever dialled (no traffic).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

/// How big the cluster is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    pub pods: usize,
    pub services: usize,
    pub nodes: usize,
    pub namespaces: usize,
}

impl Scale {
    /// The target: 100,000 pods, 10,000 services, 1,000 nodes.
    pub const FULL: Scale = Scale {
        pods: 100_000,
        services: 10_000,
        nodes: 1_000,
        namespaces: 100,
    };
    pub const QUICK: Scale = Scale {
        pods: 10_000,
        services: 1_000,
        nodes: 100,
        namespaces: 10,
    };

    /// Checks the shape the generator needs: everything divides evenly.
    pub fn check(&self) -> Result<(), String> {
        let ok = self.namespaces > 0
            && self.nodes > 0
            && self.services > 0
            && self.pods.is_multiple_of(self.namespaces)
            && self.services.is_multiple_of(self.namespaces)
            && self.pods.is_multiple_of(self.services)
            && self.pods < (1 << 24)
            && self.services < (1 << 20);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "scale {self:?}: pods and services must divide evenly by namespaces, pods by services; pods < 2^24, services < 2^20"
            ))
        }
    }

    fn pods_per_service(&self) -> usize {
        self.pods / self.services
    }
}

/// Pod `g`'s address: 10.0.0.0/8, by index.
pub fn pod_ip(g: usize) -> IpAddr {
    let g = g + 1;
    IpAddr::V4(Ipv4Addr::new(10, (g >> 16) as u8, (g >> 8) as u8, g as u8))
}

/// Service `g`'s cluster IP: 172.16.0.0/12, by index.
pub fn service_vip(g: usize) -> IpAddr {
    let g = g + 1;
    IpAddr::V4(Ipv4Addr::new(
        172,
        16 + (g >> 16) as u8,
        (g >> 8) as u8,
        g as u8,
    ))
}

pub fn node_name(n: usize) -> String {
    format!("node-{n}")
}

/// One manifests "file" per namespace: (source name, YAML text).
pub fn manifests(s: &Scale) -> Vec<(String, String)> {
    let pods_per_ns = s.pods / s.namespaces;
    let svcs_per_ns = s.services / s.namespaces;
    (0..s.namespaces)
        .map(|n| {
            let ns = format!("ns-{n}");
            let mut y = String::with_capacity(pods_per_ns * 420 + svcs_per_ns * 300);
            let _ = write!(
                y,
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    trellis.dev/dataplane-mode: ambient\n"
            );
            let _ = write!(
                y,
                "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-own\n  namespace: {ns}\nspec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        namespaces: [\"{ns}\"]\n"
            );
            for k in 0..svcs_per_ns {
                let g = n * svcs_per_ns + k;
                let _ = write!(
                    y,
                    "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{g}\n  namespace: {ns}\nspec:\n  clusterIP: {}\n  selector:\n    app: svc-{g}\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n",
                    service_vip(g)
                );
            }
            for p in 0..pods_per_ns {
                let g = n * pods_per_ns + p;
                let svc = g / s.pods_per_service();
                let _ = write!(
                    y,
                    "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-{g}\n  namespace: {ns}\n  labels:\n    app: svc-{svc}\nspec:\n  nodeName: {}\n  containers:\n  - name: app\n    image: app\nstatus:\n  phase: Running\n  podIP: {}\n",
                    node_name(g % s.nodes),
                    pod_ip(g)
                );
            }
            (format!("generated/{ns}.yaml"), y)
        })
        .collect()
}

/// The "one change": a new AuthorizationPolicy in ns-0, which every node
/// proxy receives (policies are in every node's wildcard scope).
pub fn change(k: usize) -> (String, String) {
    (
        format!("generated/change-{k}.yaml"),
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: change-{k}\n  namespace: ns-0\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [\"blocked-{k}\"]\n"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_addresses() {
        assert!(Scale::FULL.check().is_ok());
        assert!(Scale::QUICK.check().is_ok());
        let bad = Scale {
            pods: 10,
            services: 3,
            nodes: 1,
            namespaces: 1,
        };
        assert!(bad.check().is_err());
        assert_eq!(pod_ip(0).to_string(), "10.0.0.1");
        assert_eq!(pod_ip(65_535).to_string(), "10.1.0.0");
        assert_eq!(service_vip(0).to_string(), "172.16.0.1");
        assert_ne!(service_vip(9_999), service_vip(9_998));
        let tiny = Scale {
            pods: 4,
            services: 2,
            nodes: 2,
            namespaces: 1,
        };
        let m = manifests(&tiny);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].1.matches("kind: Pod").count(), 4);
        assert_eq!(m[0].1.matches("kind: Service").count(), 2);
        assert!(m[0].1.contains("nodeName: node-1"));
    }
}
