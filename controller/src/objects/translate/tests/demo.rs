//! The demo folder, controller/examples/manifests, loaded through the real
//! folder scan and translated.

use super::*;
use crate::objects::ManifestsDir;
use trellis_api::config::{Authorization, Group, Rules, ServicePort};

#[test]
fn demo_manifests_translate_to_the_expected_config() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/manifests");
    let mut store = ObjectStore::new();
    let scan = ManifestsDir::new(root)
        .scan(&mut store)
        .expect("scan demo folder");
    assert!(scan.errors.is_empty(), "{:?}", scan.errors);
    let t = translate(&store, &TranslateOptions::default());
    assert!(t.errors.is_empty(), "{:?}", msgs(&t));
    validate(&t.config).expect("valid");
    let c = &t.config;

    let names: Vec<&str> = c.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, vec!["client", "server-0", "server-1", "server-vm"]);
    let client = workload(c, "client");
    assert_eq!(client.uid, "Kubernetes//Pod/demo/client");
    assert_eq!(client.service_account, "client");
    assert_eq!(client.node, "node-a");
    assert_eq!(client.addresses, vec![ip("198.18.1.10")]);
    assert_eq!(client.protocol, Protocol::Hbone);
    assert_eq!(client.status, HealthStatus::Healthy);
    assert_eq!(client.canonical_name.as_deref(), Some("client"));
    assert_eq!(client.canonical_revision.as_deref(), Some("v1"));
    assert!(client.authorization_policies.is_empty());
    for (name, addr) in [("server-0", "198.18.2.20"), ("server-1", "198.18.2.21")] {
        let s = workload(c, name);
        assert_eq!(s.node, "node-b");
        assert_eq!(s.service_account, "server");
        assert_eq!(s.addresses, vec![ip(addr)]);
        assert_eq!(s.protocol, Protocol::Hbone);
        assert_eq!(s.authorization_policies, vec!["demo/server-allow-client"]);
    }
    let vm = workload(c, "server-vm");
    assert_eq!(vm.uid, "Kubernetes//WorkloadEntry/demo/server-vm");
    assert_eq!(vm.node, "");
    assert_eq!(vm.protocol, Protocol::Hbone);
    assert_eq!(vm.authorization_policies, vec!["demo/server-allow-client"]);

    assert_eq!(c.services.len(), 1);
    let svc = service(c, "server");
    assert_eq!(svc.hostname, "server.demo.svc.cluster.local");
    assert_eq!(svc.vips, vec![ip("198.18.128.20")]);
    assert_eq!(
        svc.ports,
        vec![ServicePort {
            port: 80,
            target_port: 8080
        }]
    );
    assert_eq!(
        svc.endpoints,
        vec![
            "Kubernetes//Pod/demo/server-0",
            "Kubernetes//Pod/demo/server-1",
            "Kubernetes//WorkloadEntry/demo/server-vm"
        ]
    );
    assert_eq!(
        c.policies,
        vec![Authorization {
            name: "server-allow-client".into(),
            namespace: "demo".into(),
            scope: Scope::WorkloadSelector,
            action: Action::Allow,
            groups: vec![Group {
                rules: vec![Rules {
                    matches: vec![Match {
                        principals: vec![sm("cluster.local/ns/demo/sa/client")],
                        ..Match::default()
                    }]
                }]
            }],
        }]
    );
    assert!(c.waypoints.is_empty() && c.authorization_policies.is_empty());
}

#[test]
fn the_routes_example_translates_next_to_the_demo() {
    let mut store = ObjectStore::new();
    for dir in ["examples/manifests", "examples/routes"] {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let scan = ManifestsDir::new(root).scan(&mut store).expect("scan");
        assert!(scan.errors.is_empty(), "{dir}: {:?}", scan.errors);
    }
    let t = translate(&store, &TranslateOptions::default());
    assert!(t.errors.is_empty(), "{:?}", msgs(&t));
    let [r] = t.config.http_routes.as_slice() else {
        panic!("one route: {:?}", t.config.http_routes)
    };
    assert_eq!((r.namespace.as_str(), r.name.as_str()), ("demo", "server"));
    assert_eq!(r.parent_refs[0].port, Some(80));
    let names: Vec<Option<&str>> = r.rules.iter().map(|r| r.name.as_deref()).collect();
    assert_eq!(names, vec![Some("api"), Some("rest")]);
    let p = r.rules[0].policy.as_ref().expect("the api rule's policy");
    assert_eq!(
        p.rate_limit.map(|l| (l.requests_per_second, l.burst)),
        Some((200.0, 50))
    );
    assert_eq!(p.circuit_breaker.map(|c| c.max_requests), Some(100));
    assert!(p.load_balancer.and_then(|l| l.slow_start).is_some());
    assert!(r.rules[1].policy.is_none());
}
