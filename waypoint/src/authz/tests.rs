use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use trellis_api::config::l7::{L7Action, L7Condition, L7Policy, L7Rule};

use super::*;

/// What a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Allow,
    /// Denied by the DENY policy "ns/name".
    DenyBy(&'static str),
    /// Denied because ALLOW policies apply and none matched.
    NoAllow,
}

/// The request of a case; `BASE` is an authenticated GET from demo/client.
#[derive(Clone, Copy)]
struct Req {
    principal: Option<&'static str>,
    namespace: Option<&'static str>,
    ip: &'static str,
    host: &'static str,
    method: &'static str,
    path: &'static str,
    port: u16,
    headers: &'static [(&'static str, &'static str)],
}

const BASE: Req = Req {
    principal: Some("cluster.local/ns/demo/sa/client"),
    namespace: Some("demo"),
    ip: "10.0.1.1",
    host: "reviews.demo.svc.cluster.local",
    method: "GET",
    path: "/api/v1/items",
    port: 8080,
    headers: &[],
};

/// A caller without a verified identity.
const PLAIN: Req = Req {
    principal: None,
    namespace: None,
    ..BASE
};

/// Another workload: prod/batch.
const BATCH: Req = Req {
    principal: Some("cluster.local/ns/prod/sa/batch"),
    namespace: Some("prod"),
    ..BASE
};

struct Case {
    name: &'static str,
    /// Policies, each a YAML flow mapping.
    policies: Vec<String>,
    /// The service the request is for, as "ns/name".
    service: &'static str,
    req: Req,
    want: Want,
}

/// An ALLOW policy demo/a for the whole namespace, with the given rules (YAML).
fn a(rules: &str) -> String {
    format!("{{name: a, namespace: demo, action: ALLOW, rules: {rules}}}")
}

/// A DENY policy demo/d for the whole namespace, with the given rules (YAML).
fn d(rules: &str) -> String {
    format!("{{name: d, namespace: demo, action: DENY, rules: {rules}}}")
}

fn case(name: &'static str, policies: Vec<String>, req: Req, want: Want) -> Case {
    Case {
        name,
        policies,
        service: "demo/reviews",
        req,
        want,
    }
}

fn config(policies: &[String]) -> LocalConfig {
    let yaml = format!(
        "services:\n\
         - {{name: reviews, namespace: demo, hostname: reviews.demo.svc.cluster.local, ports: [{{port: 8080, targetPort: 9080}}, {{port: 9090, targetPort: 9090}}]}}\n\
         - {{name: ratings, namespace: demo, hostname: ratings.demo.svc.cluster.local, ports: [{{port: 8080, targetPort: 9080}}]}}\n\
         - {{name: reviews, namespace: prod, hostname: reviews.prod.svc.cluster.local, ports: [{{port: 8080, targetPort: 9080}}]}}\n\
         authorizationPolicies: [{}]\n",
        policies.join(", ")
    );
    trellis_api::config::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

fn run(set: &PolicySet, service: &str, req: &Req) -> AuthzDecision {
    let (ns, name) = service.split_once('/').unwrap();
    let headers = header_map(req.headers);
    let authz = AuthzRequest {
        conn: TcpAuthzRequest {
            source_principal: req.principal,
            source_namespace: req.namespace,
            source_ip: req.ip.parse().unwrap(),
            port: req.port,
        },
        host: req.host,
        method: req.method,
        path: req.path,
        headers: &headers,
    };
    set.evaluate(ns, name, &authz)
}

fn check(want: Want, got: &AuthzDecision) -> bool {
    match want {
        Want::Allow => *got == AuthzDecision::Allow,
        Want::DenyBy(p) => *got == AuthzDecision::Deny { policy: p.into() },
        Want::NoAllow => {
            *got == AuthzDecision::Deny {
                policy: DEFAULT_DENY.into(),
            }
        }
    }
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    vec![
        // Basics.
        case("no policies allows", vec![], BASE, Want::Allow),
        case("allow-all rule allows", vec![a("[{}]")], PLAIN, Want::Allow),
        case("allow without rules denies all", vec![a("[]")], BASE, Want::NoAllow),
        case("deny without rules denies nothing", vec![d("[]")], BASE, Want::Allow),
        case("deny-all rule denies", vec![d("[{}]")], BASE, Want::DenyBy("demo/d")),
        case("deny wins over a matching allow", vec![a("[{}]"), d("[{to: [{operation: {methods: [GET]}}]}]")], BASE, Want::DenyBy("demo/d")),
        case("allow matches when a deny does not", vec![a("[{}]"), d("[{to: [{operation: {methods: [DELETE]}}]}]")], BASE, Want::Allow),
        case("any allow policy suffices", vec![a("[{to: [{operation: {methods: [POST]}}]}]"), "{name: b, namespace: demo, rules: [{to: [{operation: {methods: [GET]}}]}]}".into()], BASE, Want::Allow),
        case("any rule of a policy suffices", vec![a("[{to: [{operation: {methods: [POST]}}]}, {to: [{operation: {paths: ['/api/*']}}]}]")], BASE, Want::Allow),
        case("all sections of a rule must match", vec![a("[{from: [{source: {namespaces: [demo]}}], to: [{operation: {methods: [POST]}}]}]")], BASE, Want::NoAllow),
        // from: principals and namespaces.
        case("principal allows", vec![a("[{from: [{source: {principals: ['cluster.local/ns/demo/sa/client']}}]}]")], BASE, Want::Allow),
        case("principal rejects another identity", vec![a("[{from: [{source: {principals: ['cluster.local/ns/demo/sa/client']}}]}]")], BATCH, Want::NoAllow),
        case("spiffe:// principal matches bare identity", vec![a("[{from: [{source: {principals: ['spiffe://cluster.local/ns/demo/sa/client']}}]}]")], BASE, Want::Allow),
        case("spiffe:// request principal matches", vec![a("[{from: [{source: {principals: ['cluster.local/ns/demo/sa/client']}}]}]")], Req { principal: Some("spiffe://cluster.local/ns/demo/sa/client"), ..BASE }, Want::Allow),
        case("principal prefix", vec![a("[{from: [{source: {principals: ['cluster.local/ns/demo/*']}}]}]")], BASE, Want::Allow),
        case("principal suffix", vec![a("[{from: [{source: {principals: ['*/sa/batch']}}]}]")], BASE, Want::NoAllow),
        case("any source entry suffices", vec![a("[{from: [{source: {namespaces: [prod]}}, {source: {namespaces: [demo]}}]}]")], BASE, Want::Allow),
        case("all fields of a source must hold", vec![a("[{from: [{source: {namespaces: [demo], principals: ['*/sa/batch']}}]}]")], BASE, Want::NoAllow),
        case("namespace allows", vec![a("[{from: [{source: {namespaces: [demo]}}]}]")], BASE, Want::Allow),
        case("namespace rejects another", vec![a("[{from: [{source: {namespaces: [demo]}}]}]")], BATCH, Want::NoAllow),
        case("notNamespaces deny hits others", vec![d("[{from: [{source: {notNamespaces: [demo]}}]}]")], BATCH, Want::DenyBy("demo/d")),
        case("notNamespaces deny spares its own", vec![d("[{from: [{source: {notNamespaces: [demo]}}]}]")], BASE, Want::Allow),
        case("notPrincipals allow excludes the principal", vec![a("[{from: [{source: {notPrincipals: ['cluster.local/ns/demo/sa/client']}}]}]")], BASE, Want::NoAllow),
        case("notPrincipals allow admits others", vec![a("[{from: [{source: {notPrincipals: ['cluster.local/ns/demo/sa/client']}}]}]")], BATCH, Want::Allow),
        // Unauthenticated callers.
        case("unauthenticated fails a principal allow", vec![a("[{from: [{source: {principals: ['*']}}]}]")], PLAIN, Want::NoAllow),
        case("unauthenticated fails a namespace allow", vec![a("[{from: [{source: {namespaces: [demo]}}]}]")], PLAIN, Want::NoAllow),
        case("deny notPrincipals * denies unauthenticated", vec![d("[{from: [{source: {notPrincipals: ['*']}}]}]")], PLAIN, Want::DenyBy("demo/d")),
        case("deny notPrincipals * spares authenticated", vec![d("[{from: [{source: {notPrincipals: ['*']}}]}]")], BASE, Want::Allow),
        case("deny notNamespaces denies unauthenticated", vec![d("[{from: [{source: {notNamespaces: [demo]}}]}]")], PLAIN, Want::DenyBy("demo/d")),
        case("deny on a principal spares unauthenticated", vec![d("[{from: [{source: {principals: ['*']}}]}]")], PLAIN, Want::Allow),
        // to: methods, paths, hosts, ports.
        case("method allows", vec![a("[{to: [{operation: {methods: [GET, HEAD]}}]}]")], BASE, Want::Allow),
        case("method rejects another", vec![a("[{to: [{operation: {methods: [GET, HEAD]}}]}]")], Req { method: "POST", ..BASE }, Want::NoAllow),
        case("methods are case-sensitive", vec![a("[{to: [{operation: {methods: [get]}}]}]")], BASE, Want::NoAllow),
        case("notMethods deny", vec![d("[{to: [{operation: {notMethods: [GET]}}]}]")], Req { method: "DELETE", ..BASE }, Want::DenyBy("demo/d")),
        case("path exact", vec![a("[{to: [{operation: {paths: [/api/v1/items]}}]}]")], BASE, Want::Allow),
        case("path exact rejects a longer path", vec![a("[{to: [{operation: {paths: [/api/v1]}}]}]")], BASE, Want::NoAllow),
        case("path prefix", vec![a("[{to: [{operation: {paths: ['/api/*']}}]}]")], BASE, Want::Allow),
        case("path prefix rejects another", vec![a("[{to: [{operation: {paths: ['/admin/*']}}]}]")], BASE, Want::NoAllow),
        case("path suffix", vec![a("[{to: [{operation: {paths: ['*/items']}}]}]")], BASE, Want::Allow),
        case("path presence", vec![a("[{to: [{operation: {paths: ['*']}}]}]")], BASE, Want::Allow),
        case("notPaths deny hits admin", vec![d("[{to: [{operation: {notPaths: ['/api/*']}}]}]")], Req { path: "/admin", ..BASE }, Want::DenyBy("demo/d")),
        case("notPaths deny spares api", vec![d("[{to: [{operation: {notPaths: ['/api/*']}}]}]")], BASE, Want::Allow),
        case("host exact ignores case", vec![a("[{to: [{operation: {hosts: [Reviews.Demo.svc.cluster.local]}}]}]")], Req { host: "REVIEWS.demo.svc.cluster.local", ..BASE }, Want::Allow),
        case("host suffix ignores case", vec![a("[{to: [{operation: {hosts: ['*.DEMO.svc.cluster.local']}}]}]")], BASE, Want::Allow),
        case("host prefix", vec![a("[{to: [{operation: {hosts: ['reviews*']}}]}]")], Req { host: "reviews", ..BASE }, Want::Allow),
        case("host rejects another", vec![a("[{to: [{operation: {hosts: [ratings]}}]}]")], Req { host: "reviews", ..BASE }, Want::NoAllow),
        case("notHosts deny", vec![d("[{to: [{operation: {notHosts: ['*.cluster.local']}}]}]")], Req { host: "evil.example.com", ..BASE }, Want::DenyBy("demo/d")),
        case("port allows", vec![a("[{to: [{operation: {ports: [8080]}}]}]")], BASE, Want::Allow),
        case("port rejects another", vec![a("[{to: [{operation: {ports: [9090]}}]}]")], BASE, Want::NoAllow),
        case("notPorts allow", vec![a("[{to: [{operation: {notPorts: [8080]}}]}]")], BASE, Want::NoAllow),
        case("any operation suffices", vec![a("[{to: [{operation: {methods: [POST]}}, {operation: {paths: ['/api/*']}}]}]")], BASE, Want::Allow),
        case("all fields of an operation must hold", vec![a("[{to: [{operation: {methods: [GET], paths: ['/admin/*']}}]}]")], BASE, Want::NoAllow),
        // when: headers and source.
        case("header value allows", vec![a("[{when: [{key: 'request.headers[x-user]', values: [alice]}]}]")], Req { headers: &[("x-user", "alice")], ..BASE }, Want::Allow),
        case("header name is case-insensitive", vec![a("[{when: [{key: 'request.headers[X-User]', values: [alice]}]}]")], Req { headers: &[("x-user", "alice")], ..BASE }, Want::Allow),
        case("header value rejects another", vec![a("[{when: [{key: 'request.headers[x-user]', values: [alice]}]}]")], Req { headers: &[("x-user", "bob")], ..BASE }, Want::NoAllow),
        case("missing header fails values", vec![a("[{when: [{key: 'request.headers[x-user]', values: ['*']}]}]")], BASE, Want::NoAllow),
        case("missing header passes notValues", vec![a("[{when: [{key: 'request.headers[x-user]', notValues: [mallory]}]}]")], BASE, Want::Allow),
        case("header notValues deny", vec![d("[{when: [{key: 'request.headers[x-user]', notValues: ['*']}]}]")], BASE, Want::DenyBy("demo/d")),
        case("header uses the first value", vec![a("[{when: [{key: 'request.headers[x-user]', values: [alice]}]}]")], Req { headers: &[("x-user", "bob"), ("x-user", "alice")], ..BASE }, Want::NoAllow),
        case("header prefix", vec![a("[{when: [{key: 'request.headers[authorization]', values: ['Bearer *']}]}]")], Req { headers: &[("authorization", "Bearer x")], ..BASE }, Want::Allow),
        case("every condition must hold", vec![a("[{when: [{key: 'request.headers[x-a]', values: ['1']}, {key: 'request.headers[x-b]', values: ['2']}]}]")], Req { headers: &[("x-a", "1")], ..BASE }, Want::NoAllow),
        case("source.ip cidr allows", vec![a("[{when: [{key: source.ip, values: [10.0.0.0/8]}]}]")], BASE, Want::Allow),
        case("source.ip cidr rejects outsider", vec![a("[{when: [{key: source.ip, values: [10.0.0.0/8]}]}]")], Req { ip: "192.0.2.1", ..BASE }, Want::NoAllow),
        case("source.ip bare address", vec![a("[{when: [{key: source.ip, values: [10.0.1.1]}]}]")], BASE, Want::Allow),
        case("source.ip ipv4-mapped request", vec![a("[{when: [{key: source.ip, values: [10.0.0.0/8]}]}]")], Req { ip: "::ffff:10.0.1.1", ..BASE }, Want::Allow),
        case("source.ip notValues deny", vec![d("[{when: [{key: source.ip, notValues: [10.0.0.0/8]}]}]")], Req { ip: "192.0.2.1", ..BASE }, Want::DenyBy("demo/d")),
        case("source.principal condition", vec![a("[{when: [{key: source.principal, values: ['*/sa/client']}]}]")], BASE, Want::Allow),
        case("source.principal unauthenticated fails values", vec![a("[{when: [{key: source.principal, values: ['*']}]}]")], PLAIN, Want::NoAllow),
        case("source.principal unauthenticated passes notValues", vec![d("[{when: [{key: source.principal, notValues: ['*']}]}]")], PLAIN, Want::DenyBy("demo/d")),
        case("source.namespace condition", vec![a("[{when: [{key: source.namespace, values: [prod]}]}]")], BATCH, Want::Allow),
    ]
}

#[test]
fn table() {
    let mut failures = Vec::new();
    for c in cases() {
        let set = PolicySet::build(&config(&c.policies));
        assert!(
            set.problems().is_empty(),
            "{}: {:?}",
            c.name,
            set.problems()
        );
        let got = run(&set, c.service, &c.req);
        if !check(c.want, &got) {
            failures.push(format!("{}: want {:?}, got {:?}", c.name, c.want, got));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Policies scoped by targetRefs, checked against several services.
#[test]
fn target_refs_scope_policies() {
    let cfg = config(&[
        // Only demo/ratings: deny everything.
        "{name: ratings-deny, namespace: demo, action: DENY, targetRefs: [{kind: Service, name: ratings}], rules: [{}]}".into(),
        // Only prod/reviews.
        "{name: prod-allow, namespace: prod, targetRefs: [{kind: Service, name: reviews}], rules: [{from: [{source: {namespaces: [prod]}}]}]}".into(),
        // Only port 9090 of demo/reviews.
        "{name: port-deny, namespace: demo, action: DENY, targetRefs: [{kind: Service, name: reviews, port: 9090}], rules: [{}]}".into(),
    ]);
    let set = PolicySet::build(&cfg);
    assert!(set.problems().is_empty(), "{:?}", set.problems());
    #[rustfmt::skip]
    let cases: &[(&str, &str, Req, Want)] = &[
        ("ratings is denied", "demo/ratings", BASE, Want::DenyBy("demo/ratings-deny")),
        ("reviews has no policy on 8080", "demo/reviews", BASE, Want::Allow),
        ("reviews port 9090 is denied", "demo/reviews", Req { port: 9090, ..BASE }, Want::DenyBy("demo/port-deny")),
        ("a service with no targeted policy", "demo/details", BASE, Want::Allow),
        ("a workload addressed directly (no service name)", "demo/", BASE, Want::Allow),
        ("prod/reviews needs prod callers", "prod/reviews", BASE, Want::NoAllow),
        ("prod/reviews admits prod callers", "prod/reviews", BATCH, Want::Allow),
        ("a namespace without policies", "other/reviews", BASE, Want::Allow),
    ];
    for (name, service, req, want) in cases {
        let got = run(&set, service, req);
        assert!(check(*want, &got), "{name}: want {want:?}, got {got:?}");
    }
}

/// A targetRef may name the service's namespace (validation only lets it
/// name the policy's own; built directly so the index is tested anyway).
#[test]
fn target_ref_namespace_is_honoured() {
    let cfg = LocalConfig {
        authorization_policies: vec![L7Policy {
            target_refs: vec![trellis_api::config::l7::ParentRef {
                kind: "Service".into(),
                group: None,
                name: "reviews".into(),
                namespace: Some("prod".into()),
                port: None,
            }],
            ..policy(L7Action::Deny, L7Rule::default())
        }],
        ..Default::default()
    };
    let set = PolicySet::build(&cfg);
    assert!(set.problems().is_empty(), "{:?}", set.problems());
    assert_eq!(run(&set, "demo/reviews", &BASE), AuthzDecision::Allow);
    assert_eq!(
        run(&set, "prod/reviews", &BASE),
        AuthzDecision::Deny {
            policy: "demo/p".into()
        }
    );
}

/// A namespace-wide policy applies to services with targeted policies too.
#[test]
fn namespace_policies_join_targeted_ones() {
    let cfg = config(&[
        "{name: ns-allow, namespace: demo, rules: [{to: [{operation: {methods: [GET]}}]}]}".into(),
        "{name: ratings-allow, namespace: demo, targetRefs: [{kind: Service, name: ratings}], rules: [{to: [{operation: {methods: [POST]}}]}]}".into(),
        "{name: ratings-deny, namespace: demo, action: DENY, targetRefs: [{kind: Service, name: ratings}], rules: [{to: [{operation: {paths: ['/admin*']}}]}]}".into(),
        "{name: ns-deny, namespace: demo, action: DENY, rules: [{to: [{operation: {paths: ['/admin*', '/private*']}}]}]}".into(),
    ]);
    let set = PolicySet::build(&cfg);
    #[rustfmt::skip]
    let cases: &[(&str, &str, Req, Want)] = &[
        ("ratings GET via the namespace allow", "demo/ratings", BASE, Want::Allow),
        ("ratings POST via its own allow", "demo/ratings", Req { method: "POST", ..BASE }, Want::Allow),
        ("reviews POST has only the namespace allow", "demo/reviews", Req { method: "POST", ..BASE }, Want::NoAllow),
        ("ratings admin: the first matching deny in config order", "demo/ratings", Req { path: "/admin", ..BASE }, Want::DenyBy("demo/ratings-deny")),
        ("ratings private hits the namespace deny", "demo/ratings", Req { path: "/private", ..BASE }, Want::DenyBy("demo/ns-deny")),
        ("reviews admin hits the namespace deny", "demo/reviews", Req { path: "/admin", ..BASE }, Want::DenyBy("demo/ns-deny")),
    ];
    for (name, service, req, want) in cases {
        let got = run(&set, service, req);
        assert!(check(*want, &got), "{name}: want {want:?}, got {got:?}");
    }
}

fn policy(action: L7Action, rule: L7Rule) -> L7Policy {
    L7Policy {
        name: "p".into(),
        namespace: "demo".into(),
        target_refs: vec![],
        action,
        rules: vec![rule],
    }
}

fn when(key: &str, values: &[&str]) -> L7Rule {
    L7Rule {
        when: vec![L7Condition {
            key: key.into(),
            values: values.iter().map(|v| v.parse().unwrap()).collect(),
            not_values: vec![],
        }],
        ..Default::default()
    }
}

/// Parts the waypoint cannot enforce fail closed and are reported. Built
/// directly: config validation may reject them before they get here.
#[test]
fn unenforceable_parts_fail_closed() {
    #[rustfmt::skip]
    let cases: &[(&str, L7Action, L7Rule, Want)] = &[
        ("unknown key in allow never matches", L7Action::Allow, when("request.auth.claims[iss]", &["x"]), Want::NoAllow),
        ("unknown key in deny always matches", L7Action::Deny, when("request.auth.claims[iss]", &["x"]), Want::DenyBy("demo/p")),
        ("bad header name in allow", L7Action::Allow, when("request.headers[bad header]", &["x"]), Want::NoAllow),
        ("bad header name in deny", L7Action::Deny, when("request.headers[bad header]", &["x"]), Want::DenyBy("demo/p")),
        ("bad ip in allow", L7Action::Allow, when("source.ip", &["10.0.*"]), Want::NoAllow),
        ("bad ip in deny", L7Action::Deny, when("source.ip", &["not-an-ip"]), Want::DenyBy("demo/p")),
    ];
    for (name, action, rule, want) in cases {
        let cfg = LocalConfig {
            authorization_policies: vec![policy(*action, rule.clone())],
            ..Default::default()
        };
        let set = PolicySet::build(&cfg);
        assert_eq!(set.problems().len(), 1, "{name}: {:?}", set.problems());
        let got = run(&set, "demo/reviews", &BASE);
        assert!(check(*want, &got), "{name}: want {want:?}, got {got:?}");
    }
}

#[test]
fn non_service_target_refs_are_reported_and_skipped() {
    let cfg = LocalConfig {
        authorization_policies: vec![L7Policy {
            target_refs: vec![trellis_api::config::l7::ParentRef {
                kind: "Gateway".into(),
                group: Some("gateway.networking.k8s.io".into()),
                name: "reviews".into(),
                namespace: None,
                port: None,
            }],
            ..policy(L7Action::Deny, L7Rule::default())
        }],
        ..Default::default()
    };
    let set = PolicySet::build(&cfg);
    assert!(matches!(
        set.problems(),
        [PolicyProblem::NotAService { .. }]
    ));
    assert_eq!(run(&set, "demo/reviews", &BASE), AuthzDecision::Allow);
    let msg = set.problems()[0].to_string();
    assert!(msg.contains("demo/p") && msg.contains("Service"), "{msg}");
}

/// TCP streams: ALLOW rules needing HTTP never match, DENY rules ignore HTTP fields.
#[test]
fn tcp_streams() {
    #[rustfmt::skip]
    let cases: &[(&str, Vec<String>, Want)] = &[
        ("no policies", vec![], Want::Allow),
        ("allow on namespace admits", vec![a("[{from: [{source: {namespaces: [demo]}}]}]")], Want::Allow),
        ("allow on port admits", vec![a("[{to: [{operation: {ports: [8080]}}]}]")], Want::Allow),
        ("allow on a method never matches", vec![a("[{to: [{operation: {methods: [GET]}}]}]")], Want::NoAllow),
        ("allow on a header never matches", vec![a("[{when: [{key: 'request.headers[x]', values: ['*']}]}]")], Want::NoAllow),
        ("allow mixing http and port fields never matches", vec![a("[{to: [{operation: {ports: [8080]}}, {operation: {paths: ['/x']}}]}]")], Want::NoAllow),
        ("deny on a method denies all", vec![d("[{to: [{operation: {methods: [DELETE]}}]}]")], Want::DenyBy("demo/d")),
        ("deny on a header denies all", vec![d("[{when: [{key: 'request.headers[x]', values: [y]}]}]")], Want::DenyBy("demo/d")),
        ("deny on path keeps its port field", vec![d("[{to: [{operation: {paths: ['/x'], ports: [9090]}}]}]")], Want::Allow),
        ("deny on namespace keeps working", vec![d("[{from: [{source: {namespaces: [prod]}}], to: [{operation: {methods: [GET]}}]}]")], Want::Allow),
    ];
    for (name, policies, want) in cases {
        let set = PolicySet::build(&config(policies));
        let req = TcpAuthzRequest {
            source_principal: BASE.principal,
            source_namespace: BASE.namespace,
            source_ip: BASE.ip.parse::<IpAddr>().unwrap(),
            port: BASE.port,
        };
        let got = set.evaluate_tcp("demo", "reviews", &req);
        assert!(check(*want, &got), "{name}: want {want:?}, got {got:?}");
    }
}

#[test]
fn is_empty() {
    assert!(PolicySet::build(&LocalConfig::default()).is_empty());
    assert!(!PolicySet::build(&config(&[a("[]")])).is_empty());
}
