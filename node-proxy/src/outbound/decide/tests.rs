use super::*;
use trellis_core::config;

const CONFIG: &str = r#"
workloads:
  - uid: a
    name: client
    namespace: demo
    serviceAccount: client
    addresses: [198.18.1.2]
    node: node1
    protocol: HBONE
  - uid: b1
    name: server-1
    namespace: demo
    serviceAccount: server
    addresses: [198.18.2.2]
    node: node2
    protocol: HBONE
  - uid: b2
    name: server-2
    namespace: demo
    serviceAccount: server
    addresses: [198.18.2.3]
    node: node2
    protocol: HBONE
  - uid: sick
    name: server-3
    namespace: demo
    serviceAccount: server
    addresses: [198.18.2.4]
    node: node2
    protocol: HBONE
    status: Unhealthy
  - uid: legacy
    name: legacy
    namespace: old
    addresses: [198.18.3.2]
    node: node3
    protocol: TCP
services:
  - name: server
    namespace: demo
    hostname: server.demo.svc.cluster.local
    vips: [198.19.100.1]
    ports: [{port: 80, targetPort: 8080}]
    endpoints: [b1, b2, sick]
  - name: legacy
    namespace: old
    hostname: legacy.old.svc.cluster.local
    vips: [198.19.100.2]
    ports: [{port: 80, targetPort: 9090}]
    endpoints: [legacy]
  - name: empty
    namespace: demo
    hostname: empty.demo.svc.cluster.local
    vips: [198.19.100.3]
    ports: [{port: 80, targetPort: 80}]
    endpoints: [sick]
"#;

fn state() -> ProxyState {
    ProxyState::new(config::parse(CONFIG).expect("test config parses")).expect("test config valid")
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// What a case expects, without the Arcs.
#[derive(Debug, PartialEq)]
enum Want {
    Hbone {
        target: &'static str,
        tunnel: &'static str,
        expected: &'static str,
        workload: &'static str,
        service: Option<&'static str>,
    },
    Pass {
        dst: &'static str,
        workload: Option<&'static str>,
        service: Option<&'static str>,
    },
    Err(DecideError),
}

fn summarize(r: Result<Route, DecideError>) -> String {
    match r {
        Ok(Route::Hbone {
            target,
            tunnel,
            expected,
            workload,
            service,
        }) => format!(
            "{:?}",
            (
                "hbone",
                target.to_string(),
                tunnel.to_string(),
                expected.to_string(),
                workload.uid.clone(),
                service.map(|s| s.name.clone())
            )
        ),
        Ok(Route::Passthrough {
            dst,
            workload,
            service,
        }) => format!(
            "{:?}",
            (
                "pass",
                dst.to_string(),
                workload.map(|w| w.uid.clone()),
                service.map(|s| s.name.clone())
            )
        ),
        Err(e) => format!("{e:?}"),
    }
}

fn want_summary(w: &Want) -> String {
    match w {
        Want::Hbone {
            target,
            tunnel,
            expected,
            workload,
            service,
        } => format!(
            "{:?}",
            (
                "hbone",
                target.to_string(),
                tunnel.to_string(),
                expected.to_string(),
                workload.to_string(),
                service.map(|s| s.to_string())
            )
        ),
        Want::Pass {
            dst,
            workload,
            service,
        } => format!(
            "{:?}",
            (
                "pass",
                dst.to_string(),
                workload.map(|s| s.to_string()),
                service.map(|s| s.to_string())
            )
        ),
        Want::Err(e) => format!("{e:?}"),
    }
}

#[test]
fn decisions() {
    let st = state();
    // (case name, original destination, index the balancer picks, expected route)
    let cases: Vec<(&str, &str, Option<usize>, Want)> = vec![
        (
            "hbone pod ip is tunnelled to its 15008 with its identity",
            "198.18.2.2:8080",
            None,
            Want::Hbone {
                target: "198.18.2.2:8080",
                tunnel: "198.18.2.2:15008",
                expected: "spiffe://cluster.local/ns/demo/sa/server",
                workload: "b1",
                service: None,
            },
        ),
        (
            "service vip maps the port and tunnels to the picked endpoint",
            "198.19.100.1:80",
            Some(1),
            Want::Hbone {
                target: "198.18.2.3:8080",
                tunnel: "198.18.2.3:15008",
                expected: "spiffe://cluster.local/ns/demo/sa/server",
                workload: "b2",
                service: Some("server"),
            },
        ),
        (
            "tcp workload passes through as plain tcp",
            "198.18.3.2:9090",
            None,
            Want::Pass {
                dst: "198.18.3.2:9090",
                workload: Some("legacy"),
                service: None,
            },
        ),
        (
            "service of tcp workloads passes through to the target port",
            "198.19.100.2:80",
            Some(0),
            Want::Pass {
                dst: "198.18.3.2:9090",
                workload: Some("legacy"),
                service: Some("legacy"),
            },
        ),
        (
            "address outside the mesh passes through untouched",
            "198.18.200.9:443",
            None,
            Want::Pass {
                dst: "198.18.200.9:443",
                workload: None,
                service: None,
            },
        ),
        (
            "unknown service port is an error",
            "198.19.100.1:81",
            Some(0),
            Want::Err(DecideError::UnknownServicePort {
                service: "server.demo.svc.cluster.local".into(),
                port: 81,
            }),
        ),
        (
            "service whose only endpoint is unhealthy has none",
            "198.19.100.3:80",
            None,
            Want::Err(DecideError::NoHealthyEndpoint {
                service: "empty.demo.svc.cluster.local".into(),
                port: 80,
            }),
        ),
    ];
    for (name, dst, pick, want) in cases {
        let got = decide(&st, sa(dst), |eps| {
            // Unhealthy endpoints never reach the balancer.
            assert!(
                eps.iter().all(|(w, _)| w.uid != "sick"),
                "{name}: unhealthy endpoint offered"
            );
            pick
        });
        assert_eq!(summarize(got), want_summary(&want), "case: {name}");
    }
}
