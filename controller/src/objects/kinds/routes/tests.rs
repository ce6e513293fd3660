//! Routes as read: Gateway API documents through the real parser into the
//! model, and every document Trellis cannot honour refused with its path.

use trellis_api::config::l7::{
    FilterType, HeaderModifier, HeaderValue, PathMatchType, PathModifier, PathModifierType,
};

use super::super::{parse_text, Object};

fn parse(yaml: &str) -> Result<Object, String> {
    let mut docs = parse_text("r.yaml", yaml, false);
    assert_eq!(docs.len(), 1, "one document");
    match docs.remove(0) {
        Ok((_, _, o)) => Ok(o),
        Err((_, rejected)) => Err(rejected.error.to_string()),
    }
}

fn http_route(spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: demo}}\nspec:\n{spec}"
    )
}

fn grpc_route(spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g, namespace: demo}}\nspec:\n{spec}"
    )
}

const PARENT: &str = "  parentRefs: [{group: \"\", kind: Service, name: reviews}]\n";

#[test]
fn an_http_route_becomes_the_model_route() {
    let yaml = http_route(&format!(
        r#"{PARENT}  hostnames: [reviews.demo.svc.cluster.local]
  rules:
  - name: canary
    matches:
    - path: {{type: Exact, value: /api}}
      headers: [{{name: x-canary, value: "1"}}]
      queryParams: [{{type: Exact, name: v, value: "2"}}]
      method: GET
    - {{}}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-route, value: canary}}]}}
    backendRefs:
    - {{name: reviews-v1, port: 9080, weight: 90}}
    - name: reviews-v2
      port: 9080
      weight: 10
      filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /v2}}}}}}]
    timeouts: {{request: 2s, backendRequest: 500ms}}
  - backendRefs: [{{group: "", kind: Service, name: reviews-v1}}]
"#
    ));
    let Ok(Object::HttpRoute(r)) = parse(&yaml) else {
        panic!("parsed: {:?}", parse(&yaml))
    };
    assert_eq!(r.parent_refs.len(), 1);
    assert!(r.parent_refs[0].is_service());
    let m = &r.route;
    assert_eq!((m.name.as_str(), m.namespace.as_str()), ("r", "demo"));
    assert!(
        m.parent_refs.is_empty(),
        "parents are resolved at translation"
    );
    assert_eq!(m.hostnames, vec!["reviews.demo.svc.cluster.local"]);
    let canary = &m.rules[0];
    assert_eq!(canary.name.as_deref(), Some("canary"));
    let first = &canary.matches[0];
    let path = first.path.as_ref().expect("path");
    assert_eq!(
        (path.kind, path.value.as_str()),
        (PathMatchType::Exact, "/api")
    );
    assert_eq!(
        (
            first.headers[0].name.as_str(),
            first.headers[0].value.as_str()
        ),
        ("x-canary", "1")
    );
    assert_eq!(first.query_params[0].name, "v");
    assert_eq!(first.method.as_deref(), Some("GET"));
    assert_eq!(
        canary.matches[1],
        Default::default(),
        "an empty match matches all"
    );
    assert_eq!(canary.filters[0].kind, FilterType::RequestHeaderModifier);
    assert_eq!(
        canary.filters[0].request_header_modifier,
        Some(HeaderModifier {
            set: vec![HeaderValue {
                name: "x-route".into(),
                value: "canary".into()
            }],
            ..Default::default()
        })
    );
    let weights: Vec<(&str, Option<u16>, u32)> = canary
        .backend_refs
        .iter()
        .map(|b| (b.name.as_str(), b.port, b.weight))
        .collect();
    assert_eq!(
        weights,
        vec![
            ("reviews-v1", Some(9080), 90),
            ("reviews-v2", Some(9080), 10)
        ]
    );
    assert_eq!(
        canary.backend_refs[1].filters[0]
            .url_rewrite
            .as_ref()
            .and_then(|u| u.path.clone()),
        Some(PathModifier {
            kind: PathModifierType::ReplaceFullPath,
            replace_full_path: Some("/v2".into()),
            replace_prefix_match: None,
        })
    );
    let t = canary.timeouts.expect("timeouts");
    assert_eq!(t.request.map(|d| d.0.as_millis()), Some(2000));
    assert_eq!(t.backend_request.map(|d| d.0.as_millis()), Some(500));
    assert_eq!(m.rules[1].backend_refs[0].weight, 1, "weight defaults to 1");
    assert!(m.rules[1].matches.is_empty(), "no matches: every path");
}

#[test]
fn an_http_route_without_rules_gets_gateway_apis_default_rule() {
    let Ok(Object::HttpRoute(r)) = parse(&http_route(PARENT)) else {
        panic!("parsed")
    };
    assert_eq!(r.route.rules, vec![Default::default()]);
}

#[test]
fn a_grpc_route_becomes_the_model_route() {
    let yaml = grpc_route(&format!(
        r#"{PARENT}  rules:
  - name: greet
    matches:
    - method: {{service: helloworld.Greeter, method: SayHello}}
      headers: [{{name: x-user, value: alice}}]
    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{add: [{{name: x-by, value: trellis}}]}}}}]
    backendRefs: [{{name: greeter, port: 50051}}]
"#
    ));
    let Ok(Object::GrpcRoute(r)) = parse(&yaml) else {
        panic!("parsed: {:?}", parse(&yaml))
    };
    let rule = &r.route.rules[0];
    let method = rule.matches[0].method.as_ref().expect("method");
    assert_eq!(method.service.as_deref(), Some("helloworld.Greeter"));
    assert_eq!(method.method.as_deref(), Some("SayHello"));
    assert_eq!(rule.matches[0].headers[0].value, "alice");
    assert_eq!(rule.filters[0].kind, FilterType::ResponseHeaderModifier);
    assert_eq!(rule.backend_refs[0].port, Some(50051));
}

#[test]
fn routes_trellis_cannot_honour_are_refused_naming_the_field() {
    let rule = |body: &str| http_route(&format!("{PARENT}  rules:\n  - {body}\n"));
    // (what, document, every part the message must hold)
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "a typo",
            rule("matchs: [{path: {value: /}}]"),
            &["HTTPRoute demo/r", "spec.rules[0]", "unknown field `matchs`"],
        ),
        (
            "a wrong type",
            rule("backendRefs: [{name: a, weight: lots}]"),
            &["spec.rules[0].backendRefs[0].weight", "invalid type"],
        ),
        (
            "a regex path",
            rule("matches: [{path: {type: RegularExpression, value: '/a.*'}}]"),
            &["spec.rules[0].matches[0].path.type", "RegularExpression is not supported", "Exact and PathPrefix"],
        ),
        (
            "a regex header",
            rule("matches: [{headers: [{type: RegularExpression, name: a, value: b.*}]}]"),
            &["spec.rules[0].matches[0].headers[0].type", "type Exact"],
        ),
        (
            "a mirror",
            rule("filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}}}]"),
            &["spec.rules[0].filters[0].type: RequestMirror is not supported", "URLRewrite"],
        ),
        (
            "a stray field of an unsupported filter",
            rule("filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [x]}, cors: {allowOrigins: ['*']}}]"),
            &["spec.rules[0].filters[0].cors: not supported"],
        ),
        (
            "Gateway API retries",
            rule("retry: {attempts: 2}"),
            &["spec.rules[0].retry", "TrafficPolicy"],
        ),
        (
            "session persistence",
            rule("sessionPersistence: {sessionName: s}"),
            &["spec.rules[0].sessionPersistence: not supported"],
        ),
        (
            "a backend of another kind",
            rule("backendRefs: [{group: multicluster.x-k8s.io, kind: ServiceImport, name: a, port: 80}]"),
            &["spec.rules[0].backendRefs[0]", "\"ServiceImport\"", "kind Service"],
        ),
        (
            "a backend in another namespace",
            rule("backendRefs: [{name: a, namespace: other, port: 80}]"),
            &["spec.rules[0].backendRefs[0].namespace", "ReferenceGrant"],
        ),
        (
            "what the model's validator refuses",
            rule("matches: [{headers: [{name: 'bad name', value: x}]}]"),
            &["spec.rules[0].matches[0].headers[0].name", "can never match"],
        ),
        (
            "a redirect next to backends",
            rule("filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]\n    backendRefs: [{name: a, port: 80}]"),
            &["spec.rules[0]: has both a RequestRedirect filter and backendRefs"],
        ),
        (
            "two problems at once",
            rule("retry: {attempts: 2}\n    matches: [{path: {type: RegularExpression, value: /}}]"),
            &["spec.rules[0].retry", "spec.rules[0].matches[0].path.type"],
        ),
        (
            "an unsupported field of the spec",
            http_route(&format!("{PARENT}  useDefaultGateways: All\n")),
            &["spec.useDefaultGateways: not supported"],
        ),
        (
            "a gRPC regex method",
            grpc_route(&format!("{PARENT}  rules: [{{matches: [{{method: {{type: RegularExpression, service: a.B}}}}]}}]\n")),
            &["GRPCRoute demo/g", "spec.rules[0].matches[0].method.type"],
        ),
        (
            "an HTTP-only filter on a gRPC route",
            grpc_route(&format!("{PARENT}  rules: [{{filters: [{{type: URLRewrite}}]}}]\n")),
            &["spec.rules[0].filters[0].type", "\"URLRewrite\" is not a filter type", "ResponseHeaderModifier"],
        ),
        (
            "an HTTP-only field on a gRPC route",
            grpc_route(&format!("{PARENT}  rules: [{{timeouts: {{request: 1s}}}}]\n")),
            &["spec.rules[0]", "unknown field `timeouts`"],
        ),
    ];
    for (what, yaml, wants) in cases {
        let err = match parse(&yaml) {
            Err(e) => e,
            Ok(o) => panic!("{what}: accepted: {o:?}"),
        };
        for want in wants {
            assert!(err.contains(want), "{what}: {err:?} lacks {want:?}");
        }
        assert!(err.contains("file r.yaml, document 1"), "{what}: {err}");
    }
}

#[test]
fn what_the_api_server_adds_is_accepted() {
    // Defaults the API server fills in, and a status another controller wrote.
    let yaml = http_route(&format!(
        r#"{PARENT}  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs: [{{group: "", kind: Service, name: reviews, port: 9080, weight: 1}}]
status:
  parents: [{{parentRef: {{name: reviews}}, controllerName: example.com/x, conditions: []}}]
"#
    ))
    .replace(
        "metadata: {name: r, namespace: demo}",
        "metadata: {name: r, namespace: demo, uid: 0b4f, resourceVersion: \"7\", generation: 1, creationTimestamp: \"2025-01-01T00:00:00Z\"}",
    );
    assert!(
        matches!(parse(&yaml), Ok(Object::HttpRoute(_))),
        "{:?}",
        parse(&yaml)
    );
}
