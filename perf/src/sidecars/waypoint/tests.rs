use std::path::Path;

use super::*;

fn web() -> WaypointService {
    let route = |name: &str, m: RouteMatch| RouteSpec {
        name: name.into(),
        matches: m,
        set_headers: vec![("x-route".into(), "bench".into())],
    };
    WaypointService {
        hostname: "web.bench.svc.cluster.local".into(),
        vip: "198.19.100.22".parse().unwrap(),
        ports: vec![
            ServicePortSpec {
                port: 80,
                target_port: 8080,
                protocol: PortProtocol::Http,
                routes: vec![route("bench", RouteMatch::PathPrefix("/bench".into()))],
            },
            ServicePortSpec {
                port: 9090,
                target_port: 9090,
                protocol: PortProtocol::Grpc,
                routes: vec![route("echo", RouteMatch::GrpcService("t.Echo".into()))],
            },
        ],
        endpoints: vec![
            Endpoint {
                ip: "198.18.2.2".parse().unwrap(),
                spiffe_id: "spiffe://cluster.local/ns/bench/sa/server".into(),
            },
            Endpoint {
                ip: "198.18.2.3".parse().unwrap(),
                spiffe_id: "spiffe://cluster.local/ns/bench/sa/server".into(),
            },
        ],
        allow: Some((
            "allow-client".into(),
            vec![AllowRule {
                principals: vec!["spiffe://cluster.local/ns/bench/sa/client".into()],
                paths: vec!["/bench".into(), "/t.Echo/*".into()],
            }],
        )),
    }
}

fn config(services: &[WaypointService]) -> Value {
    bootstrap(&WaypointConfig {
        name: "envoy-waypoint",
        ip: "198.18.2.9".parse().unwrap(),
        certs: CertFiles::in_dir(Path::new("/certs")),
        trust_domain: "cluster.local",
        services,
    })
}

fn named<'a>(v: &'a Value, kind: &str, name: &str) -> &'a Value {
    v["static_resources"][kind]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn istio_paths_become_envoy_path_matchers() {
    let cases = [
        ("/bench", json!({"exact": "/bench"})),
        ("/api/*", json!({"prefix": "/api/"})),
        ("*.png", json!({"suffix": ".png"})),
        ("*", json!({"prefix": "/"})),
    ];
    for (pattern, want) in cases {
        assert_eq!(path_matcher(pattern), want, "{pattern}");
    }
}

#[test]
fn hbone_listener_terminates_connect_over_mtls() {
    let v = config(&[web()]);
    let l = named(&v, "listeners", CONNECT_TERMINATE);
    assert_eq!(l["address"]["socket_address"]["port_value"], 15008);
    assert_eq!(l["address"]["socket_address"]["address"], "198.18.2.9");
    let chain = &l["filter_chains"][0];
    let tls = &chain["transport_socket"]["typed_config"];
    assert_eq!(tls["require_client_certificate"], true);
    assert_eq!(tls["common_tls_context"]["alpn_protocols"], json!(["h2"]));
    let hcm = &chain["filters"][0]["typed_config"];
    assert_eq!(hcm["http2_protocol_options"]["allow_connect"], true);
    let route = &hcm["route_config"]["virtual_hosts"][0]["routes"][0];
    assert_eq!(route["match"], json!({"connect_matcher": {}}));
    assert_eq!(route["route"]["cluster"], MAIN_INTERNAL);
    let keys: Vec<&Value> = hcm["http_filters"][0]["typed_config"]["on_request_headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["object_key"])
        .collect();
    assert!(keys.contains(&&json!(PEER_PRINCIPAL_KEY)), "{keys:?}");
    assert!(
        keys.contains(&&json!("envoy.filters.listener.original_dst.local_ip")),
        "{keys:?}"
    );
}

#[test]
fn each_service_port_gets_an_l7_chain_with_its_routes_and_policy() {
    let v = config(&[web()]);
    let l = named(&v, "listeners", MAIN_INTERNAL);
    let chains = l["filter_chains"].as_array().unwrap();
    // (port, route match, rbac present)
    let cases = [
        (80, json!({"path_separated_prefix": "/bench"})),
        (9090, json!({"prefix": "/t.Echo/", "grpc": {}})),
    ];
    for (port, matcher) in cases {
        let c = chains
            .iter()
            .find(|c| c["filter_chain_match"]["destination_port"] == port)
            .unwrap_or_else(|| panic!("no chain for {port}"));
        assert_eq!(
            c["filter_chain_match"]["prefix_ranges"][0]["address_prefix"],
            "198.19.100.22"
        );
        let hcm = &c["filters"][0]["typed_config"];
        let route = &hcm["route_config"]["virtual_hosts"][0]["routes"][0];
        assert_eq!(route["match"], matcher, "{port}");
        assert_eq!(
            route["request_headers_to_add"][0]["header"],
            json!({"key": "x-route", "value": "bench"})
        );
        let names: Vec<&str> = hcm["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["envoy.filters.http.rbac", "envoy.filters.http.router"]
        );
        let policy =
            &hcm["http_filters"][0]["typed_config"]["rules"]["policies"]["allow-client[0]"];
        assert_eq!(
            policy["principals"][0]["filter_state"]["string_match"]["exact"],
            "spiffe://cluster.local/ns/bench/sa/client"
        );
        assert_eq!(
            policy["permissions"][0]["or_rules"]["rules"][1]["url_path"]["path"],
            json!({"prefix": "/t.Echo/"})
        );
    }
}

#[test]
fn no_policy_means_no_rbac_filter() {
    let mut svc = web();
    svc.allow = None;
    let v = config(&[svc]);
    let hcm =
        &named(&v, "listeners", MAIN_INTERNAL)["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(hcm["http_filters"].as_array().unwrap().len(), 1);
}

#[test]
fn upstream_goes_over_hbone_checking_the_endpoint_identity() {
    let v = config(&[web()]);
    let c = named(&v, "clusters", "outbound|80||web.bench.svc.cluster.local");
    let eps = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
        .as_array()
        .unwrap();
    assert_eq!(eps.len(), 2);
    assert_eq!(
        eps[0]["endpoint"]["address"]["envoy_internal_address"],
        json!({"server_listener_name": CONNECT_ORIGINATE, "endpoint_id": "198.18.2.2:8080"})
    );
    assert_eq!(
        eps[0]["metadata"]["filter_metadata"][ORIGINAL_DST_NS]["local"],
        "198.18.2.2:8080"
    );
    // One HBONE cluster per identity, not per endpoint.
    let id = "spiffe://cluster.local/ns/bench/sa/server";
    let hbone: Vec<&Value> = v["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "ORIGINAL_DST")
        .collect();
    assert_eq!(hbone.len(), 1);
    assert_eq!(hbone[0]["name"], hbone_cluster(id));
    assert_eq!(
        hbone[0]["original_dst_lb_config"]["upstream_port_override"],
        15008
    );
    let ctx = &hbone[0]["transport_socket"]["typed_config"]["common_tls_context"];
    assert_eq!(
        ctx["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["exact"],
        id
    );
    assert_eq!(ctx["alpn_protocols"], json!(["h2"]));
    let originate = named(&v, "listeners", CONNECT_ORIGINATE);
    let chains = originate["filter_chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2, "one chain per endpoint address");
    assert_eq!(
        chains[0]["filters"][0]["typed_config"]["tunneling_config"]["hostname"],
        "%DOWNSTREAM_LOCAL_ADDRESS%"
    );
}
