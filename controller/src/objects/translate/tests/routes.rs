//! Routes against the objects they reference: parentRefs resolved to
//! Services (and ports), backends checked, a broken route's last good
//! version kept.

use trellis_api::config::l7::{HttpRoute, ParentRef};

use super::*;

/// Services reviews (ports http 9080, admin 9090, dns 53/UDP), reviews-v1
/// and reviews-v2 (9080), and a waypoint Gateway wp, in namespace demo.
pub(super) const SERVICES: &str = r#"apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: demo}
spec:
  clusterIP: 198.18.128.10
  ports: [{name: http, port: 9080}, {name: admin, port: 9090}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: demo}
spec: {clusterIP: 198.18.128.11, ports: [{port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: demo}
spec: {clusterIP: 198.18.128.12, ports: [{port: 9080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: demo}
spec: {gatewayClassName: trellis-waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: demo}
spec: {gatewayClassName: some-ingress}
---
"#;

pub(super) fn http_route(name: &str, parents: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  parentRefs: {parents}\n  rules:\n{rules}---\n"
    )
}

pub(super) const REVIEWS: &str = "[{group: \"\", kind: Service, name: reviews}]";

pub(super) const SPLIT: &str = "  - name: split\n    backendRefs: [{name: reviews-v1, port: 9080, weight: 90}, {name: reviews-v2, port: 9080, weight: 10}]\n";

pub(super) fn http<'a>(t: &'a Translation, name: &str) -> &'a HttpRoute {
    t.config
        .http_routes
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no HTTPRoute {name}: {:?}", msgs(t)))
}

fn service_parent(port: Option<u16>) -> ParentRef {
    ParentRef {
        kind: "Service".into(),
        group: None,
        name: "reviews".into(),
        namespace: None,
        port,
    }
}

#[test]
fn a_route_with_weighted_backends_reaches_the_config() {
    let yaml = format!("{SERVICES}{}", http_route("r", REVIEWS, SPLIT));
    let t = run(&yaml);
    assert!(t.errors.is_empty(), "{:?}", msgs(&t));
    let r = http(&t, "r");
    assert_eq!(r.namespace, "demo");
    assert_eq!(r.parent_refs, vec![service_parent(None)]);
    let weights: Vec<(&str, u32)> = r.rules[0]
        .backend_refs
        .iter()
        .map(|b| (b.name.as_str(), b.weight))
        .collect();
    assert_eq!(weights, vec![("reviews-v1", 90), ("reviews-v2", 10)]);
    assert!(t.config.grpc_routes.is_empty());
}

#[test]
fn parent_refs_by_kind_group_namespace_and_port() {
    // (parentRefs, the parents the route gets (None: not translated),
    //  what the error says (None: no error))
    type Case<'a> = (&'a str, Option<Vec<ParentRef>>, Option<&'a [&'a str]>);
    let cases: &[Case] = &[
        ("[{group: \"\", kind: Service, name: reviews}]", Some(vec![service_parent(None)]), None),
        ("[{group: core, kind: Service, name: reviews}]", Some(vec![service_parent(None)]), None),
        (
            "[{group: \"\", kind: Service, name: reviews, namespace: demo, port: 9080}]",
            Some(vec![service_parent(Some(9080))]),
            None,
        ),
        (
            "[{group: \"\", kind: Service, name: reviews, sectionName: admin}]",
            Some(vec![service_parent(Some(9090))]),
            None,
        ),
        (
            "[{group: \"\", kind: Service, name: reviews}, {group: \"\", kind: Service, name: reviews}]",
            Some(vec![service_parent(None)]),
            None,
        ),
        // An ingress route: another controller's business, not an error.
        ("[{name: ingress}]", None, None),
        (
            "[{name: ingress}, {group: \"\", kind: Service, name: reviews}]",
            Some(vec![service_parent(None)]),
            None,
        ),
        (
            "[{name: wp}]",
            None,
            Some(&["spec.parentRefs[0]: Gateway demo/wp is a waypoint", "kind: Service", "ignored"]),
        ),
        (
            // Without a group, Gateway API means its own group.
            "[{kind: Service, name: reviews}]",
            None,
            Some(&["spec.parentRefs[0]: kind \"Service\" in group \"gateway.networking.k8s.io\" is not supported", "group \"\" or core"]),
        ),
        (
            "[{group: multicluster.x-k8s.io, kind: ServiceImport, name: reviews}]",
            None,
            Some(&["spec.parentRefs[0]: kind \"ServiceImport\"", "not supported"]),
        ),
        (
            "[{group: \"\", kind: Service, name: reviews, namespace: other}]",
            None,
            Some(&["spec.parentRefs[0].namespace", "consumer routes are not supported"]),
        ),
        (
            "[{group: \"\", kind: Service, name: ratings}]",
            None,
            Some(&["spec.parentRefs[0]: no Service demo/ratings"]),
        ),
        (
            "[{group: \"\", kind: Service, name: reviews, port: 8080}]",
            None,
            Some(&["spec.parentRefs[0].port: Service demo/reviews has no TCP port 8080", "9080, 9090"]),
        ),
        (
            "[{group: \"\", kind: Service, name: reviews, sectionName: dns}]",
            None,
            Some(&["spec.parentRefs[0].sectionName: Service demo/reviews has no TCP port 53"]),
        ),
        (
            "[{group: \"\", kind: Service, name: reviews, sectionName: metrics}]",
            None,
            Some(&["spec.parentRefs[0].sectionName: Service demo/reviews has no port named \"metrics\""]),
        ),
        (
            "[{group: \"\", kind: Service, name: reviews, sectionName: http, port: 9090}]",
            None,
            Some(&["spec.parentRefs[0]: sectionName \"http\" is port 9080", "port says 9090"]),
        ),
        (
            "[{name: wp}, {group: \"\", kind: Service, name: reviews, port: 9080}]",
            Some(vec![service_parent(Some(9080))]),
            Some(&["spec.parentRefs[0]: Gateway demo/wp is a waypoint"]),
        ),
    ];
    for (parents, want, err) in cases {
        let yaml = format!("{SERVICES}{}", http_route("r", parents, SPLIT));
        let t = run(&yaml);
        let got = t.config.http_routes.first().map(|r| r.parent_refs.clone());
        assert_eq!(&got, want, "parentRefs {parents}: {:?}", msgs(&t));
        let m = msgs(&t);
        match err {
            None => assert!(m.is_empty(), "parentRefs {parents}: {m:?}"),
            Some(parts) => {
                assert_eq!(m.len(), 1, "parentRefs {parents}: {m:?}");
                assert!(m[0].starts_with("HTTPRoute demo/r: "), "{m:?}");
                for p in *parts {
                    assert!(
                        m[0].contains(p),
                        "parentRefs {parents}: {:?} lacks {p:?}",
                        m[0]
                    );
                }
            }
        }
    }
}

#[test]
fn a_missing_backend_leaves_the_route_out_with_an_error() {
    // (backendRefs, what the error says)
    let cases = [
        ("[{name: reviews-v1, port: 9080}, {name: reviews-v3, port: 9080}]", "spec.rules[0].backendRefs[1]: no Service demo/reviews-v3"),
        ("[{name: reviews-v1, port: 8080}]", "spec.rules[0].backendRefs[0].port: Service demo/reviews-v1 has no TCP port 8080; its ports are: 9080"),
    ];
    for (backends, want) in cases {
        let rules = format!("  - backendRefs: {backends}\n");
        let yaml = format!(
            "{SERVICES}{}{}",
            http_route("r", REVIEWS, &rules),
            http_route("ok", REVIEWS, SPLIT)
        );
        let t = run(&yaml);
        assert!(
            t.config.http_routes.iter().all(|r| r.name != "r"),
            "{backends}"
        );
        assert!(
            t.config.http_routes.iter().any(|r| r.name == "ok"),
            "the rest still applies"
        );
        let m = msgs(&t);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].starts_with("HTTPRoute demo/r: ") && m[0].contains(want),
            "{:?} lacks {want:?}",
            m[0]
        );
        assert!(m[0].contains("left out"), "{m:?}");
    }
}

#[test]
fn matches_filters_and_timeouts_reach_the_config_as_written() {
    let rules = r#"  - name: api
    matches: [{path: {type: PathPrefix, value: /api}, method: POST, headers: [{name: x-v, value: "2"}]}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}]
    backendRefs: [{name: reviews-v2, port: 9080}]
    timeouts: {request: 3s}
  - name: old
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}}]
"#;
    let yaml = format!("{SERVICES}{}", http_route("r", REVIEWS, rules));
    let t = run(&yaml);
    assert!(t.errors.is_empty(), "{:?}", msgs(&t));
    let r = http(&t, "r");
    let api = &r.rules[0];
    assert_eq!(api.matches[0].method.as_deref(), Some("POST"));
    assert_eq!(
        api.matches[0].path.as_ref().map(|p| p.value.as_str()),
        Some("/api")
    );
    assert_eq!(
        api.filters[0].kind,
        trellis_api::config::l7::FilterType::UrlRewrite
    );
    assert_eq!(
        api.timeouts.and_then(|t| t.request).map(|d| d.0.as_secs()),
        Some(3)
    );
    let old = &r.rules[1];
    assert!(old.backend_refs.is_empty());
    assert_eq!(
        old.filters[0]
            .request_redirect
            .as_ref()
            .map(|r| r.status_code),
        Some(301)
    );
}

#[test]
fn a_grpc_route_is_translated_and_may_not_share_an_http_routes_name() {
    let grpc = |name: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  parentRefs: {REVIEWS}\n  rules: [{{matches: [{{method: {{service: reviews.Reviews}}}}], backendRefs: [{{name: reviews-v1, port: 9080}}]}}]\n---\n"
        )
    };
    let yaml = format!(
        "{SERVICES}{}{}{}",
        grpc("g"),
        grpc("r"),
        http_route("r", REVIEWS, SPLIT)
    );
    let t = run(&yaml);
    let names: Vec<&str> = t
        .config
        .grpc_routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, vec!["g"]);
    assert_eq!(
        t.config.grpc_routes[0].parent_refs,
        vec![service_parent(None)]
    );
    assert_eq!(
        t.config.grpc_routes[0].rules[0].matches[0]
            .method
            .as_ref()
            .and_then(|m| m.service.as_deref()),
        Some("reviews.Reviews")
    );
    assert!(
        t.config.http_routes.iter().any(|r| r.name == "r"),
        "the HTTPRoute keeps the name"
    );
    let m = msgs(&t);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].starts_with("GRPCRoute demo/r: an HTTPRoute demo/r exists too"),
        "{m:?}"
    );
}

#[test]
fn a_broken_route_keeps_its_last_good_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("services.yaml"), SERVICES).expect("write");
    let route = dir.path().join("route.yaml");
    std::fs::write(&route, http_route("r", REVIEWS, SPLIT)).expect("write");
    let mut store = ObjectStore::new();
    let mut src = crate::objects::ManifestsDir::new(dir.path());
    let scan = src.scan(&mut store).expect("scan");
    assert!(scan.errors.is_empty(), "{:?}", scan.errors);

    // An edit with a typo and a regex: refused whole, naming file and fields.
    let broken = http_route("r", REVIEWS, SPLIT)
        .replace("weight: 10", "wieght: 10")
        .replace(
            "  - name: split\n",
            "  - name: split\n    matches: [{path: {type: RegularExpression, value: /}}]\n",
        );
    std::fs::write(&route, broken).expect("write");
    let scan = src.scan(&mut store).expect("scan");
    let errs: Vec<String> = scan.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("file route.yaml, document 1")
            && errs[0].contains("HTTPRoute demo/r")
            && errs[0].contains("unknown field `wieght`"),
        "{errs:?}"
    );
    let t = translate(&store, &TranslateOptions::default());
    assert!(t.errors.is_empty(), "{:?}", msgs(&t));
    let weights: Vec<u32> = http(&t, "r").rules[0]
        .backend_refs
        .iter()
        .map(|b| b.weight)
        .collect();
    assert_eq!(weights, vec![90, 10], "the last good version is served");

    // Only the typo fixed: the regex is still refused, the old version stays.
    let regex = http_route("r", REVIEWS, &SPLIT.replace("weight: 10", "weight: 50")).replace(
        "  - name: split\n",
        "  - name: split\n    matches: [{path: {type: RegularExpression, value: /}}]\n",
    );
    std::fs::write(&route, regex).expect("write");
    let scan = src.scan(&mut store).expect("scan");
    assert!(
        scan.errors
            .iter()
            .any(|e| e.to_string().contains("RegularExpression is not supported")),
        "{:?}",
        scan.errors
    );
    let t = translate(&store, &TranslateOptions::default());
    assert_eq!(http(&t, "r").rules[0].backend_refs[1].weight, 10);

    // Fixed: the new weights apply.
    std::fs::write(
        &route,
        http_route("r", REVIEWS, &SPLIT.replace("weight: 10", "weight: 50")),
    )
    .expect("write");
    let scan = src.scan(&mut store).expect("scan");
    assert!(scan.errors.is_empty(), "{:?}", scan.errors);
    let t = translate(&store, &TranslateOptions::default());
    assert_eq!(http(&t, "r").rules[0].backend_refs[1].weight, 50);
}

#[test]
fn the_guard_names_the_route_and_its_field() {
    // A route the steps above would never hand over: its backend is not a
    // service. The guard drops it and speaks of the route's spec.
    let mut cfg = LocalConfig {
        services: run(SERVICES).config.services,
        ..LocalConfig::default()
    };
    let mut route = http(
        &run(&format!("{SERVICES}{}", http_route("r", REVIEWS, SPLIT))),
        "r",
    )
    .clone();
    route.rules[0].backend_refs[1].name = "gone".into();
    cfg.http_routes.push(route);
    let mut errors = Vec::new();
    let cfg = super::super::guard::valid(cfg, &mut errors);
    assert!(cfg.http_routes.is_empty());
    assert_eq!(cfg.services.len(), 3, "the rest stays");
    let m: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].starts_with(
            "HTTPRoute demo/r: spec.rules[0].backendRefs[1].name: no service \"gone\""
        ),
        "{m:?}"
    );
}
