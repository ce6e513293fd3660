use super::*;

fn dest(name: &str, ip: &str, ports: &[(u16, Protocol)]) -> Destination {
    Destination {
        name: name.into(),
        ip: ip.parse().unwrap(),
        spiffe_id: format!("spiffe://cluster.local/ns/bench/sa/{name}"),
        ports: ports
            .iter()
            .map(|&(port, protocol)| PortSpec { port, protocol })
            .collect(),
    }
}

fn config(variant: Variant, dests: &[Destination]) -> Value {
    bootstrap(&SidecarConfig {
        pod: "client",
        variant,
        certs: CertFiles::in_dir(Path::new("/certs")),
        trust_domain: "cluster.local",
        destinations: dests,
        proxy_mark: 0x539,
        inbound_http_ports: &[80],
    })
}

fn listener<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["static_resources"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no listener {name}"))
}

fn cluster<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

/// The network filter of the outbound chain for (ip, port).
fn outbound_filter(v: &Value, ip: &str, port: u16) -> String {
    let chains = listener(v, "virtualOutbound")["filter_chains"]
        .as_array()
        .unwrap();
    let chain = chains
        .iter()
        .find(|c| {
            let m = &c["filter_chain_match"];
            m["prefix_ranges"][0]["address_prefix"] == ip && m["destination_port"] == port
        })
        .unwrap_or_else(|| panic!("no outbound chain for {ip}:{port}"));
    chain["filters"][0]["name"].as_str().unwrap().to_string()
}

const TCP: &str = "envoy.filters.network.tcp_proxy";
const HCM: &str = "envoy.filters.network.http_connection_manager";

#[test]
fn outbound_filter_by_variant_and_protocol() {
    let dests = [dest(
        "server",
        "198.18.2.2",
        &[(80, Protocol::Http), (7000, Protocol::Tcp)],
    )];
    // (variant, port, filter)
    let cases = [
        (Variant::L4, 80, TCP),
        (Variant::L4, 7000, TCP),
        (Variant::L7, 80, HCM),
        (Variant::L7, 7000, TCP),
    ];
    for (variant, port, want) in cases {
        let v = config(variant, &dests);
        assert_eq!(
            outbound_filter(&v, "198.18.2.2", port),
            want,
            "{variant:?} port {port}"
        );
    }
}

#[test]
fn inbound_chains_by_variant() {
    // (variant, chains with an HCM, chains in all)
    let cases = [(Variant::L4, 0, 1), (Variant::L7, 1, 2)];
    for (variant, hcm, all) in cases {
        let v = config(variant, &[]);
        let chains = listener(&v, "virtualInbound")["filter_chains"]
            .as_array()
            .unwrap();
        assert_eq!(chains.len(), all, "{variant:?}");
        let n = chains
            .iter()
            .filter(|c| c["filters"][0]["name"] == HCM)
            .count();
        assert_eq!(n, hcm, "{variant:?}");
        for c in chains {
            let tls = &c["transport_socket"]["typed_config"];
            assert_eq!(tls["require_client_certificate"], true, "{variant:?}");
            assert_eq!(
                tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]
                    ["matcher"]["prefix"],
                "spiffe://cluster.local/"
            );
        }
    }
}

#[test]
fn one_cluster_per_destination_port_checking_its_san() {
    let dests = [
        dest(
            "server",
            "198.18.2.2",
            &[(80, Protocol::Http), (7000, Protocol::Tcp)],
        ),
        dest("other", "198.18.1.3", &[(80, Protocol::Http)]),
    ];
    let v = config(Variant::L4, &dests);
    // Three destination clusters and the two passthroughs.
    assert_eq!(
        v["static_resources"]["clusters"].as_array().unwrap().len(),
        5
    );
    for (d, port) in [(&dests[0], 80), (&dests[0], 7000), (&dests[1], 80)] {
        let c = cluster(&v, &cluster_name(d, port));
        let ep = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(ep["address"], d.ip.to_string());
        assert_eq!(ep["port_value"], port);
        let vc = &c["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"];
        assert_eq!(
            vc["match_typed_subject_alt_names"][0]["matcher"]["exact"],
            d.spiffe_id
        );
        assert_eq!(vc["trusted_ca"]["filename"], "/certs/root.pem");
        let opts = &c["upstream_bind_config"]["socket_options"];
        assert_eq!(opts[0]["name"], SO_MARK);
        assert_eq!(opts[0]["int_value"], 0x539);
    }
}

#[test]
fn listeners_capture_ports_and_admin() {
    let v = config(Variant::L7, &[]);
    for (name, port) in [
        ("virtualOutbound", OUTBOUND_PORT),
        ("virtualInbound", INBOUND_PORT),
    ] {
        let l = listener(&v, name);
        assert_eq!(l["address"]["socket_address"]["port_value"], port);
        assert_eq!(
            l["listener_filters"][0]["name"],
            "envoy.filters.listener.original_dst"
        );
    }
    assert_eq!(
        v["admin"]["address"]["socket_address"]["port_value"],
        ADMIN_PORT
    );
    // Unknown destinations pass through, with the mark so they leave the pod.
    assert_eq!(
        listener(&v, "virtualOutbound")["default_filter_chain"]["filters"][0]["typed_config"]
            ["cluster"],
        "PassthroughCluster"
    );
    assert!(cluster(&v, "PassthroughCluster")["upstream_bind_config"].is_object());
    assert!(cluster(&v, "InboundPassthroughCluster")
        .get("upstream_bind_config")
        .is_none());
}
