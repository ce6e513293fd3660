use super::*;

const EXAMPLE: &str = include_str!("../../examples/local-config.yaml");

fn invalid(yaml: &str) -> Vec<String> {
    match parse(yaml) {
        Err(ConfigError::Invalid(p)) => p,
        other => panic!("expected semantic problems, got {other:?}"),
    }
}

#[test]
fn example_file_parses_with_defaults_applied() {
    let cfg = parse(EXAMPLE).expect("example config is valid");
    assert_eq!(cfg.workloads.len(), 4);
    assert_eq!(cfg.services.len(), 1);
    assert_eq!(cfg.policies.len(), 2);

    let db = &cfg.workloads[3];
    assert_eq!(db.service_account, "default");
    assert_eq!(db.trust_domain, "cluster.local");
    assert_eq!(db.protocol, Protocol::Tcp);
    assert_eq!(db.status, HealthStatus::Healthy);
    assert_eq!(db.canonical_name(), "db-0");
    assert_eq!(db.canonical_revision(), "latest");
    assert_eq!(
        db.identity().to_string(),
        "spiffe://cluster.local/ns/legacy/sa/default"
    );

    let client = &cfg.workloads[0];
    assert_eq!(client.protocol, Protocol::Hbone);
    assert_eq!(client.canonical_name(), "client");
    assert_eq!(client.canonical_revision(), "v1");

    let svc = &cfg.services[0];
    assert_eq!(
        svc.ports,
        vec![ServicePort {
            port: 80,
            target_port: 8080
        }]
    );
    assert_eq!(svc.endpoints.len(), 2);

    assert_eq!(cfg.policies[0].scope, Scope::WorkloadSelector);
    assert_eq!(cfg.policies[0].action, Action::Allow);
    assert_eq!(cfg.policies[1].scope, Scope::Namespace);
    assert_eq!(cfg.policies[1].action, Action::Deny);
    assert_eq!(
        cfg.policies[1].groups[0].rules[0].matches[0].not_source_ips,
        vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]
    );
}

#[test]
fn serialized_config_parses_back_to_the_same_value() {
    let cfg = parse(EXAMPLE).expect("example config is valid");
    let yaml = serde_yaml_ng::to_string(&cfg).expect("serializes");
    assert_eq!(parse(&yaml).expect("round trip parses"), cfg);
    let json = serde_json::to_value(&cfg).expect("serializes to json");
    assert_eq!(json["workloads"][0]["serviceAccount"], "client");
    assert_eq!(json["policies"][0]["scope"], "WORKLOAD_SELECTOR");
}

#[test]
fn unknown_field_reports_its_location_and_name() {
    let yaml =
        "workloads:\n  - uid: a\n    name: a\n    namespace: demo\n    serviceAcount: typo\n";
    match parse(yaml) {
        Err(ConfigError::Syntax {
            message,
            line,
            column,
        }) => {
            assert!(message.contains("serviceAcount"), "{message}");
            assert!(message.contains("workloads[0]"), "{message}");
            assert_eq!(line, Some(5), "{message}");
            assert!(column.is_some());
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn wrong_type_and_bad_enum_are_syntax_errors() {
    for yaml in [
        "workloads:\n  - {uid: a, name: a, namespace: d, addresses: [not-an-ip]}\n",
        "workloads:\n  - {uid: a, name: a, namespace: d, protocol: UDP}\n",
        "policies:\n  - {name: p, namespace: d, scope: CLUSTER, action: ALLOW}\n",
        "services:\n  - {name: s, namespace: d, hostname: h, ports: [{port: 70000, targetPort: 1}]}\n",
        "policies:\n  - {name: p, namespace: d, scope: GLOBAL, action: ALLOW, groups: [{rules: [{matches: [{sourceIps: [10.0.0.0/40]}]}]}]}\n",
        "policies:\n  - {name: p, namespace: d, scope: GLOBAL, action: ALLOW, groups: [{rules: [{matches: [{principals: [\"\"]}]}]}]}\n",
    ] {
        assert!(
            matches!(parse(yaml), Err(ConfigError::Syntax { .. })),
            "{yaml} should be a syntax error"
        );
    }
}

#[test]
fn empty_file_is_refused_but_empty_mapping_is_fine() {
    assert!(matches!(parse(""), Err(ConfigError::Empty)));
    assert!(matches!(
        parse("# only a comment\n\n---\n"),
        Err(ConfigError::Empty)
    ));
    assert_eq!(parse("{}").expect("empty mapping"), LocalConfig::default());
}

#[test]
fn every_semantic_problem_is_reported_with_its_path() {
    let yaml = r#"
workloads:
  - {uid: "", name: "", namespace: demo, addresses: [10.0.0.1]}
  - {uid: dup, name: a, namespace: demo, addresses: [10.0.0.2]}
  - {uid: dup, name: b, namespace: demo, addresses: [10.0.0.2]}
  - {uid: c, name: c, namespace: "bad ns", serviceAccount: "s/a", trustDomain: Cluster.Local}
  - {uid: d, name: d, namespace: demo, authorizationPolicies: [demo/missing, nonsense]}
services:
  - name: s1
    namespace: demo
    hostname: s1.demo
    vips: [10.96.0.1]
    ports: [{port: 0, targetPort: 80}, {port: 81, targetPort: 0}]
    endpoints: [dup, ghost]
  - {name: s2, namespace: demo, hostname: s2.demo, vips: [10.96.0.1]}
policies:
  - {name: p, namespace: demo, scope: GLOBAL, action: ALLOW}
  - {name: p, namespace: demo, scope: GLOBAL, action: DENY}
"#;
    let problems = invalid(yaml);
    let expect = [
        "workloads[0].uid: must not be empty",
        "workloads[0].name: must not be empty",
        "workloads[2].uid: \"dup\" is already the uid of workloads[1]",
        "workloads[2].addresses[0]: 10.0.0.2 is also an address of workloads[1]",
        "workloads[3].namespace: \"bad ns\" cannot be part of a SPIFFE identity",
        "workloads[3].serviceAccount: \"s/a\" cannot be part of a SPIFFE identity",
        "workloads[3].trustDomain: \"Cluster.Local\" is not a SPIFFE trust domain",
        "workloads[4].authorizationPolicies[0]: no policy \"demo/missing\"",
        "workloads[4].authorizationPolicies[1]: \"nonsense\" must be <namespace>/<name>",
        "services[0].ports[0].port: 0 is not a usable port",
        "services[0].ports[1].targetPort: 0 is not a usable port",
        "services[0].endpoints[1]: no workload has uid \"ghost\"",
        "services[1].vips[0]: 10.96.0.1 is also a VIP of services[0] (demo/s1)",
        "policies[1]: \"demo/p\" is already defined by policies[0]",
    ];
    for e in expect {
        assert!(
            problems.iter().any(|p| p.starts_with(e)),
            "missing problem {e:?} in {problems:#?}"
        );
    }
    assert_eq!(
        problems.len(),
        expect.len(),
        "unexpected extra problems: {problems:#?}"
    );
    // The error's Display carries every problem, for one log line.
    let msg = ConfigError::Invalid(problems).to_string();
    assert!(msg.starts_with("config has 14 problem(s): "), "{msg}");
}

#[test]
fn ipv4_mapped_address_collides_with_plain_ipv4() {
    let problems = invalid(
        "workloads:\n  - {uid: a, name: a, namespace: d, addresses: [10.0.0.1]}\n  - {uid: b, name: b, namespace: d, addresses: ['::ffff:10.0.0.1']}\n",
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("workloads[1].addresses[0]: 10.0.0.1 is also"));
}

#[test]
fn string_match_forms() {
    let cases = [
        ("*", StringMatch::Presence),
        (
            "cluster.local/ns/demo/*",
            StringMatch::Prefix("cluster.local/ns/demo/".into()),
        ),
        ("*/sa/client", StringMatch::Suffix("/sa/client".into())),
        ("demo", StringMatch::Exact("demo".into())),
    ];
    for (text, want) in cases {
        let got: StringMatch = text.parse().expect("parses");
        assert_eq!(got, want, "{text}");
        assert_eq!(got.to_string(), text, "display round trips");
    }
    assert!(StringMatch::Presence.matches("x"));
    assert!(!StringMatch::Presence.matches(""));
    assert!(StringMatch::Prefix("de".into()).matches("demo"));
    assert!(!StringMatch::Prefix("de".into()).matches("prod"));
    assert!(StringMatch::Suffix("mo".into()).matches("demo"));
    assert!(!StringMatch::Exact("demo".into()).matches("demo2"));
    assert_eq!("".parse::<StringMatch>(), Err(EmptyStringMatch));
}

#[test]
fn ip_lists_accept_bare_addresses() {
    let yaml = "policies:\n  - {name: p, namespace: d, scope: GLOBAL, action: DENY, groups: [{rules: [{matches: [{sourceIps: [10.1.2.3, 'fd00::1', 10.0.0.0/8]}]}]}]}\n";
    let cfg = parse(yaml).expect("valid");
    let nets = &cfg.policies[0].groups[0].rules[0].matches[0].source_ips;
    let want: Vec<IpNet> = ["10.1.2.3/32", "fd00::1/128", "10.0.0.0/8"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(nets, &want);
}
