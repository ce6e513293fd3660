use super::*;
use trellis_api::config;

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
  - uid: pinned
    name: pinned
    namespace: demo
    serviceAccount: pinned
    addresses: [198.18.2.5]
    node: node2
    protocol: HBONE
    waypoint: {address: 198.18.4.2}
  - uid: wp
    name: waypoint
    namespace: demo
    serviceAccount: waypoint
    addresses: [198.18.4.2]
    node: node2
    protocol: HBONE
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
  - name: routed
    namespace: demo
    hostname: routed.demo.svc.cluster.local
    vips: [198.19.100.4]
    ports: [{port: 80, targetPort: 8080}]
    endpoints: [b1]
    waypoint: {address: 198.18.4.2, hboneMtlsPort: 15018}
  - name: routed-sick
    namespace: demo
    hostname: routed-sick.demo.svc.cluster.local
    vips: [198.19.100.5]
    ports: [{port: 80, targetPort: 8080}]
    endpoints: [sick]
    waypoint: {address: 198.18.4.2}
  - name: pinned
    namespace: demo
    hostname: pinned.demo.svc.cluster.local
    vips: [198.19.100.7]
    ports: [{port: 80, targetPort: 8080}]
    endpoints: [pinned]
"#;

fn state() -> ProxyState {
    ProxyState::new(config::parse(CONFIG).expect("test config parses")).expect("test config valid")
}

/// The usual caller: an enrolled pod using its own address.
const CLIENT: (&str, &str) = ("a", "198.18.1.2");
/// The waypoint itself, sending on what it received.
const WAYPOINT: (&str, &str) = ("wp", "198.18.4.2");

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
        via_waypoint: bool,
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
            via_waypoint,
        }) => format!(
            "{:?}",
            (
                "hbone",
                target.to_string(),
                tunnel.to_string(),
                expected.to_string(),
                workload.uid.clone(),
                service.map(|s| s.name.clone()),
                via_waypoint
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
            via_waypoint,
        } => format!(
            "{:?}",
            (
                "hbone",
                target.to_string(),
                tunnel.to_string(),
                expected.to_string(),
                workload.to_string(),
                service.map(|s| s.to_string()),
                via_waypoint
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

/// (case name, source (uid, ip), original destination, index the balancer picks, expected route)
type Case = (
    &'static str,
    (&'static str, &'static str),
    &'static str,
    Option<usize>,
    Want,
);

#[test]
fn decisions() {
    let st = state();
    let cases: Vec<Case> = vec![
        (
            "hbone pod ip is tunnelled to its 15008 with its identity",
            CLIENT,
            "198.18.2.2:8080",
            None,
            Want::Hbone {
                target: "198.18.2.2:8080",
                tunnel: "198.18.2.2:15008",
                expected: "spiffe://cluster.local/ns/demo/sa/server",
                workload: "b1",
                service: None,
                via_waypoint: false,
            },
        ),
        (
            "service vip maps the port and tunnels to the picked endpoint",
            CLIENT,
            "198.19.100.1:80",
            Some(1),
            Want::Hbone {
                target: "198.18.2.3:8080",
                tunnel: "198.18.2.3:15008",
                expected: "spiffe://cluster.local/ns/demo/sa/server",
                workload: "b2",
                service: Some("server"),
                via_waypoint: false,
            },
        ),
        (
            "tcp workload passes through as plain tcp",
            CLIENT,
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
            CLIENT,
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
            CLIENT,
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
            CLIENT,
            "198.19.100.1:81",
            Some(0),
            Want::Err(DecideError::UnknownServicePort {
                service: "server.demo.svc.cluster.local".into(),
                port: 81,
            }),
        ),
        (
            "service whose only endpoint is unhealthy has none",
            CLIENT,
            "198.19.100.3:80",
            None,
            Want::Err(DecideError::NoHealthyEndpoint {
                service: "empty.demo.svc.cluster.local".into(),
                port: 80,
            }),
        ),
        (
            "service with a waypoint tunnels to the waypoint with the vip as authority",
            CLIENT,
            "198.19.100.4:80",
            Some(0),
            Want::Hbone {
                target: "198.19.100.4:80",
                tunnel: "198.18.4.2:15018",
                expected: "spiffe://cluster.local/ns/demo/sa/waypoint",
                workload: "wp",
                service: Some("routed"),
                via_waypoint: true,
            },
        ),
        (
            "service with a waypoint but no healthy endpoint still goes to the waypoint",
            CLIENT,
            "198.19.100.5:80",
            None,
            Want::Hbone {
                target: "198.19.100.5:80",
                tunnel: "198.18.4.2:15008",
                expected: "spiffe://cluster.local/ns/demo/sa/waypoint",
                workload: "wp",
                service: Some("routed-sick"),
                via_waypoint: true,
            },
        ),
        (
            "service with a waypoint and an unknown port is still an error",
            CLIENT,
            "198.19.100.4:81",
            Some(0),
            Want::Err(DecideError::UnknownServicePort {
                service: "routed.demo.svc.cluster.local".into(),
                port: 81,
            }),
        ),
        (
            "waypoint's own connection to its service goes to an endpoint",
            WAYPOINT,
            "198.19.100.4:80",
            Some(0),
            Want::Hbone {
                target: "198.18.2.2:8080",
                tunnel: "198.18.2.2:15008",
                expected: "spiffe://cluster.local/ns/demo/sa/server",
                workload: "b1",
                service: Some("routed"),
                via_waypoint: false,
            },
        ),
        (
            "waypoint workload seen from loopback (dedicated mode) goes to an endpoint",
            ("wp", "127.0.0.1"),
            "198.19.100.4:80",
            Some(0),
            Want::Hbone {
                target: "198.18.2.2:8080",
                tunnel: "198.18.2.2:15008",
                expected: "spiffe://cluster.local/ns/demo/sa/server",
                workload: "b1",
                service: Some("routed"),
                via_waypoint: false,
            },
        ),
        (
            "workload with a waypoint tunnels to the waypoint with the pod ip as authority",
            CLIENT,
            "198.18.2.5:8080",
            None,
            Want::Hbone {
                target: "198.18.2.5:8080",
                tunnel: "198.18.4.2:15008",
                expected: "spiffe://cluster.local/ns/demo/sa/waypoint",
                workload: "wp",
                service: None,
                via_waypoint: true,
            },
        ),
        (
            "waypoint's own connection to a workload with that waypoint goes direct",
            WAYPOINT,
            "198.18.2.5:8080",
            None,
            Want::Hbone {
                target: "198.18.2.5:8080",
                tunnel: "198.18.2.5:15008",
                expected: "spiffe://cluster.local/ns/demo/sa/pinned",
                workload: "pinned",
                service: None,
                via_waypoint: false,
            },
        ),
        (
            "service vip without a waypoint ignores its endpoint's workload waypoint",
            CLIENT,
            "198.19.100.7:80",
            Some(0),
            Want::Hbone {
                target: "198.18.2.5:8080",
                tunnel: "198.18.2.5:15008",
                expected: "spiffe://cluster.local/ns/demo/sa/pinned",
                workload: "pinned",
                service: Some("pinned"),
                via_waypoint: false,
            },
        ),
    ];
    for (name, (src_uid, src_ip), dst, pick, want) in cases {
        let src_wl = st
            .workload_by_uid(src_uid)
            .expect("case source is a workload");
        let src = Source {
            workload: src_wl,
            ip: src_ip.parse().unwrap(),
        };
        let got = decide(&st, src, sa(dst), |eps| {
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

/// A config whose waypoint address is no workload's fails validation, so
/// decide cannot meet one today; should a state ever carry one, the
/// connection fails with a message that names the owner and the address.
#[test]
fn unknown_waypoint_errors_name_owner_and_address() {
    let address = "198.18.9.9".parse().unwrap();
    let cases = [
        (
            DecideError::UnknownServiceWaypoint {
                service: "lost.demo.svc.cluster.local".into(),
                address,
            },
            [
                "service lost.demo.svc.cluster.local",
                "198.18.9.9",
                "service's waypoint address",
            ],
        ),
        (
            DecideError::UnknownWorkloadWaypoint {
                workload: "demo/stray".into(),
                address,
            },
            [
                "workload demo/stray",
                "198.18.9.9",
                "workload's waypoint address",
            ],
        ),
    ];
    for (err, parts) in cases {
        let msg = err.to_string();
        for p in parts {
            assert!(msg.contains(p), "{msg:?} lacks {p:?}");
        }
    }
}

#[test]
fn missing_names_what_on_demand_must_fetch() {
    let mut cfg = config::parse(CONFIG).expect("test config parses");
    // A service whose waypoint is not (yet) held: valid in a partial view.
    cfg.services.push(config::Service {
        name: "far".into(),
        namespace: "demo".into(),
        hostname: "far.demo.svc.cluster.local".into(),
        vips: vec!["198.19.100.9".parse().unwrap()],
        ports: vec![config::ServicePort {
            port: 80,
            target_port: 80,
        }],
        endpoints: vec![],
        waypoint: Some(config::WaypointAddress {
            address: "198.18.9.9".parse().unwrap(),
            hbone_mtls_port: 15008,
        }),
    });
    config::validate_partial(&cfg).expect("valid as a partial view");
    let st = {
        let store = trellis_core::state::StateStore::new(
            ProxyState::new(Default::default()).expect("empty"),
        );
        store
            .apply(trellis_api::Update::Delta {
                upserts: cfg
                    .workloads
                    .iter()
                    .cloned()
                    .map(trellis_api::Resource::Workload)
                    .chain(
                        cfg.services
                            .iter()
                            .cloned()
                            .map(trellis_api::Resource::Service),
                    )
                    .collect(),
                removals: vec![],
            })
            .expect("delta applies");
        store.snapshot()
    };
    let cases = [
        ("198.19.100.1:80", None),               // known service
        ("198.18.2.2:8080", None),               // known workload
        ("198.19.100.4:80", None),               // service with a known waypoint
        ("198.18.2.5:8080", None),               // workload with a known waypoint
        ("198.18.7.7:80", Some("198.18.7.7")),   // unknown address
        ("198.19.100.9:80", Some("198.18.9.9")), // waypoint not held
    ];
    for (dst, want) in cases {
        assert_eq!(
            missing(&st, sa(dst)),
            want.map(|w| w.parse::<IpAddr>().unwrap()),
            "{dst}"
        );
    }
}
