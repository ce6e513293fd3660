use std::net::IpAddr;

use prost::Message;
use prost_types::Any;

use super::*;
use crate::config::{parse, LocalConfig, Match, StringMatch};
use crate::pb::istio::security as spb;
use crate::Update;

const EXAMPLES: [(&str, &str); 2] = [
    (
        "local-config.yaml",
        include_str!("../../examples/local-config.yaml"),
    ),
    (
        "waypoint-config.yaml",
        include_str!("../../examples/waypoint-config.yaml"),
    ),
];

/// What a proxy rebuilds from every resource of `cfg`: membership moved
/// onto workloads, as on the wire.
fn wire_shape(cfg: &LocalConfig) -> LocalConfig {
    let mut want = cfg.clone();
    for w in &mut want.workloads {
        let mut services: Vec<String> = cfg
            .services
            .iter()
            .filter(|s| crate::xds::members(cfg, s).iter().any(|m| m.uid == w.uid))
            .map(|s| format!("{}/{}", s.namespace, s.hostname))
            .collect();
        services.sort();
        w.services = services;
    }
    for s in &mut want.services {
        s.endpoints.clear();
    }
    want
}

fn decode_all(objects: &[XdsObject]) -> LocalConfig {
    let upserts = objects
        .iter()
        .map(|o| {
            decode(o.type_url, &o.name, &o.resource)
                .unwrap_or_else(|e| panic!("{} does not decode: {e}", o.name))
        })
        .collect();
    Update::Delta {
        upserts,
        removals: vec![],
    }
    .apply_to(&LocalConfig::default())
}

#[test]
fn every_example_survives_the_wire() {
    for (file, yaml) in EXAMPLES {
        let cfg = parse(yaml).unwrap_or_else(|e| panic!("{file}: {e}"));
        let objects = encode_config(&cfg, "net1");
        let got = decode_all(&objects);
        assert_eq!(got, wire_shape(&cfg), "{file}");
        // The wire shape is a valid whole config in its own right.
        crate::config::validate(&got).unwrap_or_else(|e| panic!("{file}: {e}"));
        // Each object is named as the update path keys it.
        for o in &objects {
            let r = decode(o.type_url, &o.name, &o.resource).expect("decodes");
            let key = r.key();
            let expect = match o.type_url {
                CONFIG_OBJECT_TYPE => format!("{}/{}", key.kind.as_str(), key.name),
                _ => key.name,
            };
            assert_eq!(o.name, expect, "{file}");
        }
    }
}

#[test]
fn workloads_carry_node_and_aliases_services_only_aliases() {
    let cfg = parse(EXAMPLES[0].1).expect("example parses");
    let objects = encode_config(&cfg, "net1");
    for w in &cfg.workloads {
        let o = objects
            .iter()
            .find(|o| o.name == w.uid)
            .expect("workload sent");
        assert_eq!(o.type_url, ADDRESS_TYPE);
        assert_eq!(
            o.node.as_deref(),
            Some(w.node.as_str()).filter(|n| !n.is_empty())
        );
        let want: Vec<String> = w.addresses.iter().map(|ip| format!("net1/{ip}")).collect();
        assert_eq!(o.aliases, want);
    }
    for s in &cfg.services {
        let name = format!("{}/{}", s.namespace, s.hostname);
        let o = objects
            .iter()
            .find(|o| o.name == name)
            .expect("service sent");
        assert_eq!(o.node, None);
        assert_eq!(o.aliases.len(), s.vips.len());
        // Members: the service's endpoints, whichever side lists them.
        let mut want: Vec<&str> = members(&cfg, s).iter().map(|w| w.uid.as_str()).collect();
        let mut got: Vec<&str> = o.members.iter().map(String::as_str).collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{name}");
    }
    assert!(
        objects.iter().any(|o| !o.members.is_empty()),
        "the example has a service with endpoints"
    );
    assert_eq!(
        ip_alias("", "::ffff:10.0.0.1".parse::<IpAddr>().expect("ip")),
        "/10.0.0.1",
        "aliases use the canonical form of an address"
    );
}

fn any(type_url: &str, msg: &impl Message) -> Any {
    Any {
        type_url: type_url.into(),
        value: msg.encode_to_vec(),
    }
}

fn workload_any(w: wpb::Workload) -> Any {
    any(
        ADDRESS_TYPE,
        &wpb::Address {
            r#type: Some(wpb::address::Type::Workload(w)),
        },
    )
}

fn good_workload() -> wpb::Workload {
    wpb::Workload {
        uid: "c//Pod/ns/p".into(),
        name: "p".into(),
        namespace: "ns".into(),
        addresses: vec![vec![198, 18, 0, 1]],
        tunnel_protocol: wpb::TunnelProtocol::Hbone as i32,
        ..Default::default()
    }
}

fn policy(m: spb::Match) -> spb::Authorization {
    spb::Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        rules: vec![spb::Rule {
            clauses: vec![spb::Clause { matches: vec![m] }],
        }],
        ..Default::default()
    }
}

#[test]
fn bad_resources_are_refused_with_the_reason() {
    let bad_ip = wpb::Workload {
        addresses: vec![vec![1, 2, 3]],
        ..good_workload()
    };
    let legacy = wpb::Workload {
        tunnel_protocol: wpb::TunnelProtocol::LegacyIstioMtls as i32,
        ..good_workload()
    };
    let unknown_tunnel = wpb::Workload {
        tunnel_protocol: 42,
        ..good_workload()
    };
    let no_uid = wpb::Workload {
        uid: String::new(),
        ..good_workload()
    };
    let hostname_waypoint = wpb::Workload {
        waypoint: Some(wpb::GatewayAddress {
            destination: Some(wpb::gateway_address::Destination::Hostname(
                wpb::NamespacedHostname {
                    namespace: "ns".into(),
                    hostname: "wp.ns.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 15008,
        }),
        ..good_workload()
    };
    let big_port = any(
        ADDRESS_TYPE,
        &wpb::Address {
            r#type: Some(wpb::address::Type::Service(wpb::Service {
                name: "s".into(),
                namespace: "ns".into(),
                hostname: "s.ns".into(),
                ports: vec![wpb::Port {
                    service_port: 70000,
                    target_port: 80,
                    app_protocol: 0,
                }],
                ..Default::default()
            })),
        },
    );
    let dry_run = spb::Authorization {
        dry_run: true,
        ..policy(spb::Match::default())
    };
    let empty_match = policy(spb::Match {
        principals: vec![spb::StringMatch { match_type: None }],
        ..Default::default()
    });
    let long_prefix = policy(spb::Match {
        source_ips: vec![spb::Address {
            address: vec![10, 0, 0, 0],
            length: 33,
        }],
        ..Default::default()
    });
    let bad_object = any(
        CONFIG_OBJECT_TYPE,
        &ConfigObject {
            kind: "gateway".into(),
            json: "{}".into(),
        },
    );
    let bad_json = any(
        CONFIG_OBJECT_TYPE,
        &ConfigObject {
            kind: "waypoint".into(),
            json: "{\"name\": 1}".into(),
        },
    );
    let cases: Vec<(&str, &str, Any, &str)> = vec![
        (
            "3-byte address",
            ADDRESS_TYPE,
            workload_any(bad_ip),
            "addresses[0]: 3 bytes",
        ),
        (
            "sidecar workload",
            ADDRESS_TYPE,
            workload_any(legacy),
            "LEGACY_ISTIO_MTLS",
        ),
        (
            "unknown tunnel",
            ADDRESS_TYPE,
            workload_any(unknown_tunnel),
            "tunnelProtocol: 42",
        ),
        (
            "no uid",
            ADDRESS_TYPE,
            workload_any(no_uid),
            "uid: must not be empty",
        ),
        (
            "waypoint by hostname",
            ADDRESS_TYPE,
            workload_any(hostname_waypoint),
            "waypoint by hostname",
        ),
        (
            "port out of range",
            ADDRESS_TYPE,
            big_port,
            "ports[0].servicePort: 70000",
        ),
        (
            "empty address",
            ADDRESS_TYPE,
            any(ADDRESS_TYPE, &wpb::Address { r#type: None }),
            "neither a workload nor a service",
        ),
        (
            "garbage bytes",
            ADDRESS_TYPE,
            Any {
                type_url: ADDRESS_TYPE.into(),
                value: vec![0xff, 0xff, 0xff],
            },
            "does not decode",
        ),
        (
            "packed as another type",
            AUTHORIZATION_TYPE,
            workload_any(good_workload()),
            "it is packed as",
        ),
        (
            "unknown type",
            "type.googleapis.com/x.Y",
            Any {
                type_url: "type.googleapis.com/x.Y".into(),
                value: vec![],
            },
            "not a type Trellis",
        ),
        (
            "dry-run policy",
            AUTHORIZATION_TYPE,
            any(AUTHORIZATION_TYPE, &dry_run),
            "dry-run",
        ),
        (
            "empty string match",
            AUTHORIZATION_TYPE,
            any(AUTHORIZATION_TYPE, &empty_match),
            "rules[0].clauses[0].matches[0].principals[0]",
        ),
        (
            "prefix too long",
            AUTHORIZATION_TYPE,
            any(AUTHORIZATION_TYPE, &long_prefix),
            "/33 is not a prefix length",
        ),
        (
            "unknown object kind",
            CONFIG_OBJECT_TYPE,
            bad_object,
            "\"gateway\" is not a config object kind",
        ),
        (
            "object json of the wrong shape",
            CONFIG_OBJECT_TYPE,
            bad_json,
            "invalid type",
        ),
    ];
    for (what, type_url, any, want) in cases {
        match decode(type_url, "the-name", &any) {
            Ok(r) => panic!("{what}: decoded to {r:?}"),
            Err(e) => assert!(e.to_string().contains(want), "{what}: {e} lacks {want:?}"),
        }
    }
}

#[test]
fn wire_defaults_fill_in() {
    let w = wpb::Workload {
        status: 7,
        ..good_workload()
    };
    let Resource::Workload(w) = decode(ADDRESS_TYPE, "x", &workload_any(w)).expect("decodes")
    else {
        panic!("not a workload")
    };
    assert_eq!(w.service_account, "default");
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(
        w.status,
        crate::config::HealthStatus::Unhealthy,
        "unknown status is unhealthy"
    );
    assert_eq!(w.canonical_name, None);

    let svc = wpb::Service {
        name: "s".into(),
        namespace: "ns".into(),
        hostname: "s.ns.svc.cluster.local".into(),
        ports: vec![wpb::Port {
            service_port: 8080,
            target_port: 0,
            app_protocol: 0,
        }],
        ..Default::default()
    };
    let a = any(
        ADDRESS_TYPE,
        &wpb::Address {
            r#type: Some(wpb::address::Type::Service(svc)),
        },
    );
    let Resource::Service(s) = decode(ADDRESS_TYPE, "x", &a).expect("decodes") else {
        panic!("not a service")
    };
    assert_eq!(
        s.ports[0].target_port, 8080,
        "target port 0 means the service port"
    );

    let sa = policy(spb::Match {
        service_accounts: vec![spb::ServiceAccountMatch {
            namespace: "a".into(),
            service_account: "b".into(),
        }],
        ..Default::default()
    });
    let Resource::Authorization(p) =
        decode(AUTHORIZATION_TYPE, "x", &any(AUTHORIZATION_TYPE, &sa)).expect("decodes")
    else {
        panic!("not a policy")
    };
    assert_eq!(
        p.groups[0].rules[0].matches[0],
        Match {
            principals: vec![StringMatch::Suffix("/ns/a/sa/b".into())],
            ..Default::default()
        }
    );
}

#[test]
fn partial_validation_allows_dangling_references_only() {
    let mut cfg = parse(EXAMPLES[0].1).expect("example parses");
    cfg.workloads[0].services = vec!["ns/not-here.ns.svc.cluster.local".into()];
    cfg.workloads[0].authorization_policies = vec!["ns/not-here".into()];
    let strict = crate::config::validate(&cfg).expect_err("strict refuses dangling references");
    assert!(
        strict
            .to_string()
            .contains("no service with namespace/hostname"),
        "{strict}"
    );
    assert!(strict.to_string().contains("no policy"), "{strict}");
    crate::config::validate_partial(&cfg).expect("partial accepts them");

    cfg.workloads[0].services = vec!["no-slash".into()];
    let e = crate::config::validate_partial(&cfg).expect_err("a malformed key is still refused");
    assert!(
        e.to_string().contains("must be <namespace>/<hostname>"),
        "{e}"
    );
}
