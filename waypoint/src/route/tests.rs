use std::time::Duration;

use http::{HeaderMap, Method, Uri};
use trellis_api::config::{parse, LocalConfig};

use super::*;

const SERVICES: &str = r#"
services:
  - {name: reviews, namespace: demo, hostname: reviews.demo, ports: [{port: 80, targetPort: 8080}, {port: 9080, targetPort: 9080}]}
  - {name: v1, namespace: demo, hostname: v1.demo, ports: [{port: 80, targetPort: 8080}]}
  - {name: v2, namespace: demo, hostname: v2.demo, ports: [{port: 80, targetPort: 8080}]}
  - {name: v3, namespace: demo, hostname: v3.demo, ports: [{port: 80, targetPort: 8080}]}
  - {name: plain, namespace: demo, hostname: plain.demo, ports: [{port: 80, targetPort: 8080}]}
  - {name: grpc, namespace: demo, hostname: grpc.demo, ports: [{port: 9090, targetPort: 9090}]}
"#;

/// The table of SERVICES plus `routes` (YAML for httpRoutes/grpcRoutes), through the real parser.
fn table(routes: &str) -> (RouteTable, LocalConfig) {
    let cfg = parse(&format!("{SERVICES}{routes}")).unwrap_or_else(|e| panic!("{e}"));
    (RouteTable::build(&cfg), cfg)
}

/// A request: "METHOD uri", with `host` and extra headers.
struct Req<'a> {
    line: &'a str,
    host: &'a str,
    headers: &'a [(&'a str, &'a str)],
}

const fn get(path: &str) -> Req<'_> {
    Req {
        line: path,
        host: "reviews.demo",
        headers: &[],
    }
}

fn decide(
    t: &RouteTable,
    cfg: &LocalConfig,
    svc: &str,
    port: u16,
    req: &Req<'_>,
    roll: f64,
) -> Decision {
    let (method, uri) = req.line.split_once(' ').unwrap_or(("GET", req.line));
    let method: Method = method.parse().unwrap();
    let uri: Uri = uri.parse().unwrap();
    let mut headers = HeaderMap::new();
    for (n, v) in req.headers {
        headers.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let service = cfg
        .services
        .iter()
        .find(|s| s.name == svc)
        .expect("service");
    let view = RequestView {
        method: &method,
        uri: &uri,
        headers: &headers,
        host: req.host,
    };
    t.decide(service, port, &view, roll)
}

/// A decision as one comparable line.
fn outcome(d: &Decision) -> String {
    match d {
        Decision::Forward { rule, backend, .. } => {
            format!("{} -> {}", rule.key, rule.backends[*backend].service.name)
        }
        Decision::Redirect {
            status, location, ..
        } => format!("{} {location}", status.as_u16()),
        Decision::NoRoute => "404".into(),
        Decision::NoBackend { rule } => format!("500 {}", rule.key),
    }
}

const PRECEDENCE: &str = r#"
httpRoutes:
  - name: p
    namespace: demo
    parentRefs: [{name: reviews, port: 80}]
    rules:
      - {matches: [{path: {value: /api}}], backendRefs: [{name: v1}]}
      - {matches: [{path: {value: /api/v2/}}], backendRefs: [{name: v2}]}
      - {matches: [{path: {type: Exact, value: /api/v2}}], backendRefs: [{name: v3}]}
      - {name: canary, matches: [{path: {value: /api}, headers: [{name: X-Canary, value: "yes"}]}], backendRefs: [{name: v2}]}
      - {name: two-headers, matches: [{path: {value: /api}, headers: [{name: x-canary, value: "yes"}, {name: x-b, value: "1"}]}], backendRefs: [{name: v3}]}
      - {name: query, matches: [{path: {value: /api}, queryParams: [{name: debug, value: "1"}]}], backendRefs: [{name: v1}]}
      - {name: post, matches: [{path: {value: /api}, method: POST}], backendRefs: [{name: v1}]}
      - {name: catch-all, backendRefs: [{name: v1}]}
      - {name: blue, matches: [{path: {value: /api}, baggage: [{name: colour, value: blue}]}], backendRefs: [{name: v3}]}
"#;

#[test]
fn gateway_api_precedence_picks_the_most_specific_rule() {
    let (t, cfg) = table(PRECEDENCE);
    let h = |headers| Req {
        line: "GET /api/x",
        host: "reviews.demo",
        headers,
    };
    let cases = [
        (get("/api/x"), "demo/p/0 -> v1"),
        (get("/api"), "demo/p/0 -> v1"),
        (get("/apix"), "demo/p/catch-all -> v1"),
        (get("/"), "demo/p/catch-all -> v1"),
        (get("/api/v2/x"), "demo/p/1 -> v2"),
        (get("/api/v2"), "demo/p/2 -> v3"),
        (get("/api/v2/"), "demo/p/1 -> v2"),
        (h(&[("x-canary", "yes")]), "demo/p/canary -> v2"),
        (h(&[("X-CANARY", "yes")]), "demo/p/canary -> v2"),
        (h(&[("x-canary", "YES")]), "demo/p/0 -> v1"),
        (
            h(&[("x-canary", "no"), ("x-canary", "yes")]),
            "demo/p/canary -> v2",
        ),
        (
            h(&[("x-canary", "yes"), ("x-b", "1")]),
            "demo/p/two-headers -> v3",
        ),
        (get("/api/x?debug=1"), "demo/p/query -> v1"),
        (get("/api/x?a=b&debug=1"), "demo/p/query -> v1"),
        (get("/api/x?debug=10"), "demo/p/0 -> v1"),
        (
            Req {
                line: "GET /api/x?debug=1",
                host: "reviews.demo",
                headers: &[("x-canary", "yes")],
            },
            "demo/p/canary -> v2",
        ),
        (get("POST /api/x"), "demo/p/post -> v1"),
        (get("POST /api/x?debug=1"), "demo/p/query -> v1"),
        (
            Req {
                line: "GET /api/v2/x",
                host: "reviews.demo",
                headers: &[("x-canary", "yes")],
            },
            "demo/p/1 -> v2",
        ),
        (
            h(&[("baggage", "a=1, colour=blue;p=1")]),
            "demo/p/blue -> v3",
        ),
        // Baggage counts as a header match, so config order breaks the tie.
        (
            h(&[("baggage", "colour=blue"), ("x-canary", "yes")]),
            "demo/p/canary -> v2",
        ),
    ];
    for (req, want) in cases {
        let d = decide(&t, &cfg, "reviews", 80, &req, 0.0);
        assert_eq!(outcome(&d), want, "{} {:?}", req.line, req.headers);
    }
}

#[test]
fn route_order_breaks_ties_but_not_precedence() {
    let (t, cfg) = table(
        r#"
httpRoutes:
  - {name: older, namespace: demo, parentRefs: [{name: reviews}], rules: [{matches: [{path: {value: /a}}], backendRefs: [{name: v1}]}]}
  - {name: newer, namespace: demo, parentRefs: [{name: reviews}], rules: [{matches: [{path: {value: /a}}], backendRefs: [{name: v2}]}, {matches: [{path: {value: /a/b}}], backendRefs: [{name: v3}]}]}
"#,
    );
    let cases = [
        (get("/a"), "demo/older/0 -> v1"),
        (get("/a/b/c"), "demo/newer/1 -> v3"),
    ];
    for (req, want) in cases {
        assert_eq!(
            outcome(&decide(&t, &cfg, "reviews", 80, &req, 0.0)),
            want,
            "{}",
            req.line
        );
    }
}

#[test]
fn attachment_by_port_and_hostname_and_the_default_route() {
    let (t, cfg) = table(
        r#"
httpRoutes:
  - name: r
    namespace: demo
    parentRefs: [{name: reviews, port: 80}]
    hostnames: [reviews.demo, "*.example.com"]
    rules: [{matches: [{path: {value: /only}}], backendRefs: [{name: v1}]}]
"#,
    );
    let at = |host| Req {
        line: "/only",
        host,
        headers: &[],
    };
    // (service, port, request, outcome)
    let cases = [
        ("reviews", 80, get("/only"), "demo/r/0 -> v1"),
        ("reviews", 80, get("/other"), "404"),
        ("reviews", 80, at("a.example.com"), "demo/r/0 -> v1"),
        ("reviews", 80, at("a.b.EXAMPLE.com"), "demo/r/0 -> v1"),
        ("reviews", 80, at("example.com"), "404"),
        ("reviews", 80, at("reviews.other"), "404"),
        // No route attaches to port 9080: the service's implicit route.
        (
            "reviews",
            9080,
            get("/only"),
            "default/demo/reviews -> reviews",
        ),
        ("plain", 80, get("/anything"), "default/demo/plain -> plain"),
    ];
    for (svc, port, req, want) in cases {
        let d = decide(&t, &cfg, svc, port, &req, 0.5);
        assert_eq!(
            outcome(&d),
            want,
            "{svc}:{port} {} host {}",
            req.line,
            req.host
        );
    }
    let d = decide(&t, &cfg, "plain", 80, &get("/"), 0.0);
    let Decision::Forward {
        rule,
        backend: 0,
        prefix: None,
    } = d
    else {
        panic!("{d:?}")
    };
    assert_eq!(
        (
            &*rule.route_name,
            rule.backends[0].port,
            rule.backends[0].weight
        ),
        ("", None, 1)
    );
    assert!(rule.filters.is_empty() && rule.redirect.is_none() && rule.request_timeout.is_none());

    // A service the table was not built with still gets its implicit route.
    let mut unknown = cfg.services[4].clone();
    unknown.name = "new".into();
    let (m, u, h) = (Method::GET, Uri::from_static("/"), HeaderMap::new());
    let view = RequestView {
        method: &m,
        uri: &u,
        headers: &h,
        host: "new",
    };
    assert_eq!(
        outcome(&t.decide(&unknown, 80, &view, 0.0)),
        "default/demo/new -> new"
    );
}

#[test]
fn weights_split_the_roll_and_zero_weight_is_never_picked() {
    let (t, cfg) = table(
        r#"
httpRoutes:
  - name: w
    namespace: demo
    parentRefs: [{name: reviews}]
    rules:
      - {matches: [{path: {value: /a}}], backendRefs: [{name: v1, weight: 1}, {name: v2, weight: 0}, {name: v3, weight: 3}]}
      - {matches: [{path: {value: /b}}], backendRefs: [{name: v1}, {name: v2}]}
      - {matches: [{path: {value: /none}}]}
      - {matches: [{path: {value: /zero}}], backendRefs: [{name: v1, weight: 0}, {name: v2, weight: 1}]}
"#,
    );
    let cases = [
        ("/a", 0.0, "demo/w/0 -> v1"),
        ("/a", 0.24, "demo/w/0 -> v1"),
        ("/a", 0.25, "demo/w/0 -> v3"),
        ("/a", 0.5, "demo/w/0 -> v3"),
        ("/a", 0.99, "demo/w/0 -> v3"),
        ("/a", 1.0, "demo/w/0 -> v3"),
        ("/b", 0.0, "demo/w/1 -> v1"),
        ("/b", 0.49, "demo/w/1 -> v1"),
        ("/b", 0.5, "demo/w/1 -> v2"),
        ("/b", 0.99, "demo/w/1 -> v2"),
        ("/zero", 0.0, "demo/w/3 -> v2"),
        ("/none", 0.5, "500 demo/w/2"),
    ];
    for (path, roll, want) in cases {
        assert_eq!(
            outcome(&decide(&t, &cfg, "reviews", 80, &get(path), roll)),
            want,
            "{path} roll {roll}"
        );
    }
    for i in 0..1000 {
        let roll = f64::from(i) / 1000.0;
        let d = decide(&t, &cfg, "reviews", 80, &get("/a"), roll);
        assert!(
            matches!(d, Decision::Forward { backend: 0 | 2, .. }),
            "roll {roll}: {d:?}"
        );
    }
}

#[test]
fn redirect_locations() {
    // (redirect, match path prefix, request, port, outcome)
    let cases = [
        (
            "{statusCode: 301, hostname: new.example.com}",
            "/",
            "/a?x=1",
            80,
            "301 http://new.example.com/a?x=1",
        ),
        ("{}", "/", "/a", 80, "302 http://reviews.demo/a"),
        ("{}", "/", "/a", 9080, "302 http://reviews.demo:9080/a"),
        (
            "{scheme: https}",
            "/",
            "/a",
            9080,
            "302 https://reviews.demo/a",
        ),
        (
            "{scheme: https, port: 8443, statusCode: 308}",
            "/",
            "/a",
            80,
            "308 https://reviews.demo:8443/a",
        ),
        (
            "{scheme: https, port: 443}",
            "/",
            "/a",
            80,
            "302 https://reviews.demo/a",
        ),
        ("{port: 80}", "/", "/a", 9080, "302 http://reviews.demo/a"),
        (
            "{path: {type: ReplaceFullPath, replaceFullPath: /new}}",
            "/",
            "/old/a?x=1",
            80,
            "302 http://reviews.demo/new?x=1",
        ),
        (
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}",
            "/old",
            "/old/a?x=1",
            80,
            "302 http://reviews.demo/v2/a?x=1",
        ),
        (
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}",
            "/old/",
            "/old",
            80,
            "302 http://reviews.demo/",
        ),
        (
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}",
            "/",
            "/a",
            80,
            "302 http://reviews.demo/v2/a",
        ),
        (
            "{hostname: '10.0.0.1', port: 8080}",
            "/",
            "/",
            80,
            "302 http://10.0.0.1:8080/",
        ),
    ];
    for (redirect, prefix, path, port, want) in cases {
        let (t, cfg) = table(&format!(
            "httpRoutes: [{{name: r, namespace: demo, parentRefs: [{{name: reviews}}], rules: [{{matches: [{{path: {{value: '{prefix}'}}}}], filters: [{{type: RequestRedirect, requestRedirect: {redirect}}}]}}]}}]"
        ));
        let d = decide(&t, &cfg, "reviews", port, &get(path), 0.0);
        assert_eq!(outcome(&d), want, "{redirect} on {path}");
    }
}

#[test]
fn forward_carries_rule_settings_and_the_prefix_for_rewrites() {
    let (t, cfg) = table(
        r#"
httpRoutes:
  - name: r
    namespace: demo
    parentRefs: [{name: reviews}]
    rules:
      - name: rewrite
        matches: [{path: {value: /api/}}]
        filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}]
        backendRefs: [{name: v1, port: 80, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-b, value: "1"}]}}]}]
        timeouts: {request: 0s, backendRequest: 500ms}
        policy: {retry: {attempts: 2}}
      - matches: [{path: {type: Exact, value: /exact}}]
        backendRefs: [{name: v2}]
        timeouts: {request: 3s}
"#,
    );
    let d = decide(&t, &cfg, "reviews", 80, &get("/api/x?q=1"), 0.0);
    let Decision::Forward {
        rule,
        backend,
        prefix,
    } = d
    else {
        panic!("{d:?}")
    };
    assert_eq!(
        (&*rule.key, &*rule.route_name, rule.grpc),
        ("demo/r/rewrite", "demo/r", false)
    );
    assert_eq!(
        (rule.request_timeout, rule.per_try_timeout),
        (None, Some(Duration::from_millis(500)))
    );
    assert_eq!(rule.policy.retry.as_ref().map(|r| r.attempts), Some(2));
    let b = &rule.backends[backend];
    assert_eq!((b.port, b.filters.is_empty()), (Some(80), false));
    assert_eq!(prefix.as_deref(), Some("/api"));

    let mut parts = http::Request::get("/api/x?q=1")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    rule.filters.apply_request(&mut parts, prefix.as_deref());
    b.filters.apply_request(&mut parts, prefix.as_deref());
    assert_eq!(parts.uri.to_string(), "/v2/x?q=1");
    assert_eq!(parts.headers["x-b"], "1");

    let d = decide(&t, &cfg, "reviews", 80, &get("/exact"), 0.0);
    let Decision::Forward {
        rule, prefix: None, ..
    } = d
    else {
        panic!("{d:?}")
    };
    assert_eq!(
        (&*rule.key, rule.request_timeout),
        ("demo/r/1", Some(Duration::from_secs(3)))
    );
    assert_eq!(rule.policy, TrafficPolicy::default());
    // 2 explicit rules + the implicit rule of each of the 6 services.
    assert_eq!(t.rules().count(), 8);
}

#[test]
fn grpc_routes_match_service_and_method_then_fall_back_to_http() {
    let (t, cfg) = table(
        r#"
grpcRoutes:
  - name: g
    namespace: demo
    parentRefs: [{name: grpc}]
    rules:
      - {name: svc, matches: [{method: {service: helloworld.Greeter}}], backendRefs: [{name: v2}]}
      - {name: exact, matches: [{method: {service: helloworld.Greeter, method: SayHello}}], backendRefs: [{name: v3}]}
      - {name: method, matches: [{method: {method: Ping}}], backendRefs: [{name: v1}]}
      - {name: user, matches: [{method: {service: helloworld.Greeter}, headers: [{name: x-user, value: a}]}], backendRefs: [{name: v1}]}
      - {name: coloured, matches: [{method: {service: other.Svc}, baggage: [{name: colour, value: red}]}], backendRefs: [{name: v3}]}
  - {name: only-grpc, namespace: demo, parentRefs: [{name: plain}], rules: [{backendRefs: [{name: v1}]}]}
httpRoutes:
  - {name: h, namespace: demo, parentRefs: [{name: grpc}], rules: [{backendRefs: [{name: v1}]}]}
"#,
    );
    const GRPC: (&str, &str) = ("content-type", "application/grpc");
    let req = |line, headers| Req {
        line,
        host: "grpc.demo",
        headers,
    };
    // (service, request, outcome)
    let cases = [
        (
            "grpc",
            req("POST /helloworld.Greeter/SayHello", &[GRPC][..]),
            "demo/g/exact -> v3",
        ),
        (
            "grpc",
            req(
                "POST /helloworld.Greeter/SayHello",
                &[("content-type", "application/grpc+proto")],
            ),
            "demo/g/exact -> v3",
        ),
        (
            "grpc",
            req("POST /helloworld.Greeter/Other", &[GRPC]),
            "demo/g/svc -> v2",
        ),
        (
            "grpc",
            req("POST /helloworld.Greeter/Other", &[GRPC, ("x-user", "a")]),
            "demo/g/user -> v1",
        ),
        (
            "grpc",
            req("POST /other.Svc/Ping", &[GRPC]),
            "demo/g/method -> v1",
        ),
        (
            "grpc",
            req("POST /other.Svc/Nope", &[GRPC, ("baggage", "colour=red")]),
            "demo/g/coloured -> v3",
        ),
        (
            "grpc",
            req("POST /other.Svc/Nope", &[GRPC]),
            "demo/h/0 -> v1",
        ),
        (
            "grpc",
            req(
                "POST /helloworld.Greeter/SayHello",
                &[("content-type", "application/json")],
            ),
            "demo/h/0 -> v1",
        ),
        (
            "plain",
            req("POST /x.Y/Z", &[GRPC]),
            "demo/only-grpc/0 -> v1",
        ),
        ("plain", req("POST /x.Y/Z", &[]), "404"),
    ];
    for (svc, req, want) in cases {
        let port = if svc == "grpc" { 9090 } else { 80 };
        let d = decide(&t, &cfg, svc, port, &req, 0.0);
        assert_eq!(outcome(&d), want, "{svc} {} {:?}", req.line, req.headers);
        if let Decision::Forward { rule, prefix, .. } = &d {
            assert_eq!(rule.grpc, !rule.key.starts_with("demo/h/"), "{}", rule.key);
            assert!(!rule.grpc || prefix.is_none());
        }
    }
}
