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
        db.spiffe_id(),
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

// ---------------------------------------------------------------- L7

/// Two services, a waypoint workload, and one of every L7 feature, all valid.
const L7_GOOD: &str = r#"
workloads:
  - {uid: wp, name: waypoint, namespace: demo, serviceAccount: waypoint, addresses: [10.0.0.9], protocol: HBONE}
  - {uid: r1, name: reviews-1, namespace: demo, addresses: [10.0.0.1], waypoint: {address: 10.0.0.9}}
services:
  - {name: reviews, namespace: demo, hostname: reviews.demo, vips: [10.96.0.1], ports: [{port: 80, targetPort: 8080}], endpoints: [r1], waypoint: {address: 10.0.0.9}}
  - {name: reviews-v2, namespace: demo, hostname: reviews-v2.demo, ports: [{port: 80, targetPort: 8080}]}
  - {name: grpc, namespace: other, hostname: grpc.other, ports: [{port: 9090, targetPort: 9090}]}
httpRoutes:
  - name: reviews
    namespace: demo
    parentRefs: [{name: reviews, port: 80}]
    hostnames: [reviews.demo, "*.example.com"]
    rules:
      - name: canary
        matches:
          - path: {type: PathPrefix, value: /api}
            headers: [{name: X-Canary, value: "yes"}]
            queryParams: [{name: v, value: "2"}]
            method: GET
            baggage: [{name: colour, value: blue}]
          - {}
        filters:
          - type: RequestHeaderModifier
            requestHeaderModifier: {set: [{name: x-a, value: b}], add: [{name: x-c, value: d}], remove: [x-e]}
          - type: URLRewrite
            urlRewrite: {hostname: reviews.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
        backendRefs:
          - {name: reviews, port: 80, weight: 0}
          - name: reviews-v2
            weight: 1000000
            filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-v, value: "2"}]}}]
        timeouts: {request: 2s, backendRequest: 500ms}
        policy:
          retry: {attempts: 3, retryOn: [5xx, reset], budget: {percent: 100}}
          rateLimit: {requestsPerSecond: 0.5}
          perCallerRateLimit: {requestsPerSecond: 10, burst: 5}
          adaptiveConcurrency: {initialLimit: 1, minLimit: 1, maxLimit: 1, tolerance: 1.0}
          circuitBreaker: {maxRequests: 1}
          outlierDetection: {maxEjectionPercent: 100}
          fault: {delay: {fixedDelay: 1s, percent: 0}, abort: {httpStatus: 503, percent: 100}}
      - matches: [{path: {type: Exact, value: /old}}]
        filters:
          - type: RequestRedirect
            requestRedirect: {scheme: https, hostname: new.example.com, port: 8443, statusCode: 308, path: {type: ReplaceFullPath, replaceFullPath: /new}}
      - matches: [{path: {value: /strip}}]
        filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: ""}}}]
        backendRefs: [{name: reviews}]
grpcRoutes:
  - name: reviews
    namespace: other
    parentRefs: [{name: grpc}]
    rules:
      - matches: [{method: {service: helloworld.Greeter}, headers: [{name: x-user, value: a}]}, {method: {method: SayHello}}]
        filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-grpc, value: "1"}]}}]
        backendRefs: [{name: reviews, namespace: demo, port: 80}]
authorizationPolicies:
  - name: allow
    namespace: demo
    targetRefs: [{kind: Service, name: reviews}]
    rules:
      - when:
          - {key: "request.headers[x-user]", values: [alice]}
          - {key: source.principal, notValues: ["*/sa/bad"]}
          - {key: source.namespace, values: [demo]}
          - {key: source.ip, values: [10.0.0.0/8, 10.1.2.3]}
waypoints:
  - {name: waypoint, namespace: demo, totalRateLimit: {requestsPerSecond: 1000, burst: 100}}
"#;

#[test]
fn l7_config_with_every_feature_is_valid() {
    let cfg = parse(L7_GOOD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.http_routes[0].rules.len(), 3);
    // The same config serialized and parsed again stays valid.
    let yaml = serde_yaml_ng::to_string(&cfg).expect("serializes");
    assert_eq!(parse(&yaml).expect("round trip parses"), cfg);
}

/// Applies `edit` to the good config's YAML and returns the problems.
fn l7_problems(edit: impl Fn(&mut serde_yaml_ng::Value)) -> Vec<String> {
    let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(L7_GOOD).expect("yaml");
    edit(&mut v);
    let yaml = serde_yaml_ng::to_string(&v).expect("yaml");
    match parse(&yaml) {
        Err(ConfigError::Invalid(p)) => p,
        other => panic!("expected semantic problems, got {other:?}"),
    }
}

/// Sets the field at `path` (dot-separated keys and indexes; index `len`
/// appends) to the YAML `value`, creating missing mapping keys.
fn set<'a>(path: &'a str, value: &'a str) -> impl Fn(&mut serde_yaml_ng::Value) + 'a {
    move |root| {
        let mut v = root;
        for part in path.split('.') {
            v = match (part.parse::<usize>(), v) {
                (Ok(n), serde_yaml_ng::Value::Sequence(seq)) => {
                    if n == seq.len() {
                        seq.push(serde_yaml_ng::Value::Null);
                    }
                    &mut seq[n]
                }
                (_, v) => &mut v[part],
            };
        }
        *v = serde_yaml_ng::from_str(value).expect("value");
    }
}

#[test]
fn every_l7_problem_is_reported_with_its_path() {
    let r0 = "httpRoutes.0";
    let rule0 = "httpRoutes.0.rules.0";
    let cases: Vec<(String, &str, &str)> = vec![
        (format!("{r0}.name"), "''", "httpRoutes[0].name: must not be empty"),
        (format!("{r0}.namespace"), "''", "httpRoutes[0].namespace: must not be empty"),
        (format!("{rule0}.backendRefs.0.namespace"), "''", "httpRoutes[0].rules[0].backendRefs[0].namespace: must not be empty"),
        (format!("{r0}.parentRefs"), "[]", "httpRoutes[0].parentRefs: must not be empty"),
        (format!("{r0}.parentRefs.0.kind"), "Gateway", "httpRoutes[0].parentRefs[0].kind: \"Gateway\" is not supported"),
        (format!("{r0}.parentRefs.0.group"), "gateway.networking.k8s.io", "httpRoutes[0].parentRefs[0].group: a Service is in the core group"),
        (format!("{r0}.parentRefs.0.name"), "nope", "httpRoutes[0].parentRefs[0].name: no service \"nope\" in namespace \"demo\""),
        (format!("{r0}.parentRefs.0.namespace"), "other", "httpRoutes[0].parentRefs[0].name: no service \"reviews\" in namespace \"other\""),
        (format!("{r0}.parentRefs.0.port"), "81", "httpRoutes[0].parentRefs[0].port: service demo/reviews has no port 81; its ports are: 80"),
        (format!("{r0}.hostnames.1"), "'*.bad_host'", "httpRoutes[0].hostnames[1]: \"*.bad_host\" is not a hostname"),
        (format!("{r0}.rules.1.name"), "canary", "httpRoutes[0].rules[1].name: \"canary\" is already the name of rules[0]"),
        (format!("{rule0}.backendRefs.1.name"), "x", "httpRoutes[0].rules[0].backendRefs[1].name: no service \"x\" in namespace \"demo\""),
        (format!("{rule0}.backendRefs.1.port"), "8080", "httpRoutes[0].rules[0].backendRefs[1].port: service demo/reviews-v2 has no port 8080"),
        (format!("{rule0}.backendRefs.1.weight"), "1000001", "httpRoutes[0].rules[0].backendRefs[1].weight: 1000001 is above the maximum"),
        (format!("{rule0}.backendRefs.1.weight"), "0", "httpRoutes[0].rules[0].backendRefs: every weight is 0"),
        (format!("{rule0}.filters.0.type"), "ResponseHeaderModifier", "httpRoutes[0].rules[0].filters[0]: type ResponseHeaderModifier needs the responseHeaderModifier field"),
        (format!("{rule0}.filters.0.urlRewrite"), "{}", "httpRoutes[0].rules[0].filters[0].urlRewrite: set, but type is RequestHeaderModifier"),
        (format!("{rule0}.filters.1.type"), "RequestHeaderModifier", "httpRoutes[0].rules[0].filters[1].type: a second RequestHeaderModifier filter"),
        (format!("{rule0}.filters.0.requestHeaderModifier.set.0.name"), "'x a'", "httpRoutes[0].rules[0].filters[0].requestHeaderModifier.set[0].name: \"x a\" is not an HTTP header name"),
        (format!("{rule0}.filters.0.requestHeaderModifier.add.0.value"), "\"a\\r\\nb\"", "httpRoutes[0].rules[0].filters[0].requestHeaderModifier.add[0].value: \"a\\r\\nb\" holds a control character"),
        (format!("{rule0}.filters.0.requestHeaderModifier.remove.0"), "':path'", "httpRoutes[0].rules[0].filters[0].requestHeaderModifier.remove[0]: \":path\" is not an HTTP header name"),
        (format!("{rule0}.filters.0.requestHeaderModifier.set.1"), "{name: X-A, value: c}", "httpRoutes[0].rules[0].filters[0].requestHeaderModifier.set[1].name: \"X-A\" is listed twice"),
        (format!("{rule0}.matches.0.headers.0.name"), "'x:y'", "httpRoutes[0].rules[0].matches[0].headers[0].name: \"x:y\" can never match"),
        (format!("{rule0}.matches.0.headers.0.value"), "\"a\\0\"", "httpRoutes[0].rules[0].matches[0].headers[0].value: \"a\\0\" can never match"),
        (format!("{rule0}.matches.0.queryParams.0.name"), "'a=b'", "httpRoutes[0].rules[0].matches[0].queryParams[0].name: \"a=b\" can never match"),
        (format!("{rule0}.matches.0.baggage.0.value"), "'a,b'", "httpRoutes[0].rules[0].matches[0].baggage[0].value: \"a,b\" can never match"),
        (format!("{rule0}.matches.0.method"), "get", "httpRoutes[0].rules[0].matches[0].method: \"get\" is not an HTTP method"),
        (format!("{rule0}.matches.0.path.value"), "api", "httpRoutes[0].rules[0].matches[0].path.value: \"api\" is not a URL path"),
        (format!("{rule0}.matches.0.path.type"), "Exact", "httpRoutes[0].rules[0].filters[1].urlRewrite.path: ReplacePrefixMatch needs every match of the rule to be a PathPrefix match"),
        (format!("{rule0}.filters.1.urlRewrite.path.replaceFullPath"), "/x", "httpRoutes[0].rules[0].filters[1].urlRewrite.path.replaceFullPath: set, but type is ReplacePrefixMatch"),
        (format!("{rule0}.filters.1.urlRewrite.path.type"), "ReplaceFullPath", "httpRoutes[0].rules[0].filters[1].urlRewrite.path: type ReplaceFullPath needs the replaceFullPath field"),
        (format!("{rule0}.filters.1.urlRewrite.hostname"), "'a/b'", "httpRoutes[0].rules[0].filters[1].urlRewrite.hostname: \"a/b\" is not a hostname"),
        (format!("{rule0}.timeouts.backendRequest"), "3s", "httpRoutes[0].rules[0].timeouts.backendRequest: 3s is longer than timeouts.request (2s)"),
        (format!("{rule0}.policy.retry.attempts"), "11", "httpRoutes[0].rules[0].policy.retry.attempts: 11 is above the maximum 10"),
        (format!("{rule0}.policy.retry.retryOn"), "[]", "httpRoutes[0].rules[0].policy.retry.retryOn: empty"),
        (format!("{rule0}.policy.retry.budget.percent"), "100.5", "httpRoutes[0].rules[0].policy.retry.budget.percent: 100.5 is not a percentage"),
        (format!("{rule0}.policy.rateLimit.requestsPerSecond"), "0", "httpRoutes[0].rules[0].policy.rateLimit.requestsPerSecond: 0 must be a number above 0"),
        (format!("{rule0}.policy.rateLimit.requestsPerSecond"), ".inf", "httpRoutes[0].rules[0].policy.rateLimit.requestsPerSecond: inf must be a number above 0"),
        (format!("{rule0}.policy.perCallerRateLimit.burst"), "0", "httpRoutes[0].rules[0].policy.perCallerRateLimit.burst: must be at least 1"),
        (format!("{rule0}.policy.adaptiveConcurrency.minLimit"), "0", "httpRoutes[0].rules[0].policy.adaptiveConcurrency.minLimit: must be at least 1"),
        (format!("{rule0}.policy.adaptiveConcurrency.initialLimit"), "2", "httpRoutes[0].rules[0].policy.adaptiveConcurrency: limits must satisfy minLimit <= initialLimit <= maxLimit, got 1 <= 2 <= 1"),
        (format!("{rule0}.policy.adaptiveConcurrency.tolerance"), "0.9", "httpRoutes[0].rules[0].policy.adaptiveConcurrency.tolerance: 0.9 must be a number of at least 1.0"),
        (format!("{rule0}.policy.adaptiveConcurrency.tolerance"), ".nan", "httpRoutes[0].rules[0].policy.adaptiveConcurrency.tolerance: NaN must be"),
        (format!("{rule0}.policy.circuitBreaker.maxRequests"), "0", "httpRoutes[0].rules[0].policy.circuitBreaker.maxRequests: must be at least 1"),
        (format!("{rule0}.policy.outlierDetection.maxEjectionPercent"), "101", "httpRoutes[0].rules[0].policy.outlierDetection.maxEjectionPercent: 101 is above 100"),
        (format!("{rule0}.policy.outlierDetection.baseEjectionTime"), "0s", "httpRoutes[0].rules[0].policy.outlierDetection.baseEjectionTime: must be above 0s"),
        (format!("{rule0}.policy.fault.delay.percent"), "-1", "httpRoutes[0].rules[0].policy.fault.delay.percent: -1 is not a percentage"),
        (format!("{rule0}.policy.fault.abort.percent"), ".nan", "httpRoutes[0].rules[0].policy.fault.abort.percent: NaN is not a percentage"),
        (format!("{rule0}.policy.fault.abort.httpStatus"), "600", "httpRoutes[0].rules[0].policy.fault.abort.httpStatus: 600 is not an HTTP status"),
        (format!("{rule0}.backendRefs.1.filters.0"), "{type: RequestRedirect, requestRedirect: {}}", "httpRoutes[0].rules[0].backendRefs[1].filters[0].type: RequestRedirect is not allowed here"),
        (format!("{rule0}.filters.2"), "{type: RequestRedirect, requestRedirect: {}}", "httpRoutes[0].rules[0].filters: RequestRedirect and URLRewrite cannot be combined"),
        ("httpRoutes.0.rules.1.backendRefs".into(), "[{name: reviews}]", "httpRoutes[0].rules[1]: has both a RequestRedirect filter and backendRefs"),
        ("httpRoutes.0.rules.1.filters.0.requestRedirect.statusCode".into(), "304", "httpRoutes[0].rules[1].filters[0].requestRedirect.statusCode: 304 is not a redirect status"),
        ("httpRoutes.0.rules.1.filters.0.requestRedirect.scheme".into(), "ftp", "httpRoutes[0].rules[1].filters[0].requestRedirect.scheme: \"ftp\" is not supported"),
        ("httpRoutes.0.rules.1.filters.0.requestRedirect.port".into(), "0", "httpRoutes[0].rules[1].filters[0].requestRedirect.port: 0 is not a usable port"),
        ("httpRoutes.0.rules.1.filters.0.requestRedirect.path".into(), "{type: ReplacePrefixMatch, replacePrefixMatch: /x}", "httpRoutes[0].rules[1].filters[0].requestRedirect.path: ReplacePrefixMatch needs every match"),
        ("httpRoutes.0.rules.1.filters.0.requestRedirect.path.replaceFullPath".into(), "'/a?b'", "httpRoutes[0].rules[1].filters[0].requestRedirect.path.replaceFullPath: \"/a?b\" is not a URL path"),
        ("httpRoutes.1".into(), "{name: reviews, namespace: demo, parentRefs: [{name: reviews}]}", "httpRoutes[1]: \"demo/reviews\" is already defined by httpRoutes[0]"),
        ("grpcRoutes.0.namespace".into(), "demo", "grpcRoutes[0]: \"demo/reviews\" is already defined by httpRoutes[0]"),
        ("grpcRoutes.0.rules.0.matches.0.method".into(), "{}", "grpcRoutes[0].rules[0].matches[0].method: needs service, method or both"),
        ("grpcRoutes.0.rules.0.matches.1.method.method".into(), "a/b", "grpcRoutes[0].rules[0].matches[1].method.method: \"a/b\" is not a gRPC method name"),
        ("grpcRoutes.0.rules.0.filters.0".into(), "{type: URLRewrite, urlRewrite: {}}", "grpcRoutes[0].rules[0].filters[0].type: URLRewrite is not allowed here; on a gRPC route only header modifiers apply"),
        ("grpcRoutes.0.rules.0.backendRefs.0.namespace".into(), "other", "grpcRoutes[0].rules[0].backendRefs[0].name: no service \"reviews\" in namespace \"other\""),
        ("grpcRoutes.0.parentRefs.0.port".into(), "80", "grpcRoutes[0].parentRefs[0].port: service other/grpc has no port 80; its ports are: 9090"),
        ("authorizationPolicies.0.name".into(), "' '", "authorizationPolicies[0].name: must not be empty"),
        ("authorizationPolicies.0.targetRefs.0.kind".into(), "Pod", "authorizationPolicies[0].targetRefs[0].kind: \"Pod\" is not supported"),
        ("authorizationPolicies.0.targetRefs.0.name".into(), "ghost", "authorizationPolicies[0].targetRefs[0].name: no service \"ghost\" in namespace \"demo\""),
        ("authorizationPolicies.0.targetRefs.0.namespace".into(), "other", "authorizationPolicies[0].targetRefs[0].namespace: a policy applies only to services in its own namespace"),
        ("authorizationPolicies.0.rules.0.when.0.key".into(), "request.auth.claims[iss]", "authorizationPolicies[0].rules[0].when[0].key: \"request.auth.claims[iss]\" is not supported; use request.headers[<name>], source.principal, source.namespace or source.ip"),
        ("authorizationPolicies.0.rules.0.when.0.key".into(), "'request.headers[a b]'", "authorizationPolicies[0].rules[0].when[0].key: \"a b\" in \"request.headers[a b]\" is not an HTTP header name"),
        ("authorizationPolicies.0.rules.0.when.0.values".into(), "[]", "authorizationPolicies[0].rules[0].when[0]: needs values or notValues"),
        ("authorizationPolicies.0.rules.0.when.3.values".into(), "[10.0.0.300]", "authorizationPolicies[0].rules[0].when[3].values[0]: \"10.0.0.300\" is not an IP address or CIDR"),
        ("authorizationPolicies.1".into(), "{name: allow, namespace: demo}", "authorizationPolicies[1]: \"demo/allow\" is already defined by authorizationPolicies[0]"),
        ("workloads.1.waypoint.address".into(), "10.0.0.99", "workloads[1].waypoint.address: 10.0.0.99 is not an address of any workload"),
        ("services.0.waypoint".into(), "{address: 10.0.0.98, hboneMtlsPort: 0}", "services[0].waypoint.address: 10.0.0.98 is not an address of any workload"),
        ("services.0.waypoint.hboneMtlsPort".into(), "0", "services[0].waypoint.hboneMtlsPort: 0 is not a usable port"),
        ("waypoints.0.namespace".into(), "''", "waypoints[0].namespace: must not be empty"),
        ("waypoints.1".into(), "{name: waypoint, namespace: demo}", "waypoints[1]: \"demo/waypoint\" is already defined by waypoints[0]"),
        ("waypoints.0.totalRateLimit.requestsPerSecond".into(), "-1", "waypoints[0].totalRateLimit.requestsPerSecond: -1 must be a number above 0"),
    ];
    for (path, value, want) in &cases {
        let problems = l7_problems(set(path, value));
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "setting {path} = {value}: missing {want:?} in {problems:#?}"
        );
    }
}

#[test]
fn l7_bounds_are_enforced() {
    let many = |n: usize, item: &str| format!("[{}]", vec![item; n].join(", "));
    let cases = [
        (
            "httpRoutes.0.rules.0.matches",
            many(17, "{}"),
            "httpRoutes[0].rules[0].matches: 17 matches, at most 16",
        ),
        (
            "httpRoutes.0.rules",
            many(65, "{}"),
            "httpRoutes[0].rules: 65 rules, at most 64",
        ),
        (
            "httpRoutes.0.rules.0.backendRefs",
            many(17, "{name: reviews}"),
            "httpRoutes[0].rules[0].backendRefs: 17 backends, at most 16",
        ),
        (
            "httpRoutes.0.rules.0.matches.0.headers",
            many(17, "{name: a, value: b}"),
            "httpRoutes[0].rules[0].matches[0].headers: 17 entries, at most 16",
        ),
    ];
    for (path, value, want) in &cases {
        let problems = l7_problems(set(path, value));
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "setting {path}: missing {want:?} in {problems:#?}"
        );
    }
}

#[test]
fn zero_timeouts_mean_none_and_do_not_conflict() {
    let problems = l7_problems(|v| {
        set(
            "httpRoutes.0.rules.0.timeouts",
            "{request: 0s, backendRequest: 10s}",
        )(v);
        // Something else must be wrong for l7_problems to return; only it may be.
        set("waypoints.0.name", "''")(v);
    });
    assert_eq!(problems, vec!["waypoints[0].name: must not be empty"]);
}

#[test]
fn the_waypoint_example_config_is_valid() {
    let cfg = parse(include_str!("../../examples/waypoint-config.yaml"))
        .unwrap_or_else(|e| panic!("examples/waypoint-config.yaml: {e}"));
    assert_eq!(cfg.http_routes.len(), 1);
    assert_eq!(cfg.http_routes[0].rules.len(), 3);
    assert_eq!(cfg.authorization_policies.len(), 1);
    assert!(cfg.services[0].waypoint.is_some());
}
