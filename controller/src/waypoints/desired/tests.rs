use serde_json::json;

use super::*;
use crate::objects::ObjectStore;

fn opts() -> WaypointOptions {
    WaypointOptions {
        image: "example.com/waypoint:1".into(),
        xds_address: "trellis-controller.trellis-system.svc:15012".into(),
        trust_domain: "cluster.local".into(),
        istio_labels: false,
        token_audience: "istio-ca".into(),
        root_pem: "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n".into(),
        template: std::sync::Arc::new(crate::waypoints::template::WaypointTemplate::shipped()),
    }
}

/// A Gateway document; `spec` is YAML flow under `spec:`.
fn gateway(name: &str, spec: &str, uid: bool) -> String {
    let uid = if uid {
        ", uid: 0f1e-uid, generation: 3"
    } else {
        ""
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: demo{uid}}}\nspec: {spec}\n"
    )
}

const MESH: &str =
    "{gatewayClassName: trellis-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}";

fn plans_of(docs: &[String], opts: &WaypointOptions) -> Plans {
    let mut store = ObjectStore::new();
    let errors = store.load_text("gateways.yaml", &docs.join("---\n"), false);
    assert!(errors.is_empty(), "{errors:?}");
    plans(&store, opts)
}

fn one(spec: &str, name: &str, uid: bool) -> Plan {
    let plans = plans_of(&[gateway(name, spec, uid)], &opts());
    assert_eq!(plans.len(), 1, "{plans:?}");
    plans.into_values().next().expect("one plan")
}

fn object(objects: &[Managed], kind: ManagedKind) -> &Value {
    &objects
        .iter()
        .find(|m| m.kind == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
        .body
}

#[test]
fn a_waypoint_gateway_wants_four_objects_owned_by_it() {
    let plan = one(MESH, "wp", true);
    assert_eq!(
        plan.gateway,
        GatewayRef {
            namespace: "demo".into(),
            name: "wp".into()
        }
    );
    assert_eq!((plan.uid.as_str(), plan.generation), ("0f1e-uid", 3));
    let objects = plan.objects.expect("accepted");
    // (kind, name) in apply order.
    let order: Vec<(ManagedKind, &str)> =
        objects.iter().map(|m| (m.kind, m.name.as_str())).collect();
    assert_eq!(
        order,
        [
            (ManagedKind::ServiceAccount, "wp"),
            (ManagedKind::ConfigMap, "wp-ca-root"),
            (ManagedKind::Deployment, "wp"),
            (ManagedKind::Service, "wp"),
        ]
    );
    for m in &objects {
        let b = &m.body;
        assert_eq!(b["kind"], m.kind.name());
        assert_eq!(b["apiVersion"], m.kind.api_version());
        assert_eq!(b["metadata"]["name"], m.name.as_str());
        assert_eq!(b["metadata"]["namespace"], "demo");
        assert_eq!(
            b["metadata"]["labels"],
            json!({"gateway.networking.k8s.io/gateway-name": "wp", "app.kubernetes.io/managed-by": "trellis-controller"}),
            "{}",
            m.kind
        );
        assert_eq!(
            b["metadata"]["ownerReferences"],
            json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "wp",
                    "uid": "0f1e-uid", "controller": true, "blockOwnerDeletion": true}]),
            "{}",
            m.kind
        );
    }
    assert_eq!(
        object(&objects, ManagedKind::ConfigMap)["data"]["root-cert.pem"],
        opts().root_pem.as_str()
    );

    let d = &object(&objects, ManagedKind::Deployment)["spec"];
    assert_eq!(d["replicas"], 1);
    assert_eq!(
        d["selector"]["matchLabels"],
        json!({"gateway.networking.k8s.io/gateway-name": "wp"})
    );
    let pod = &d["template"];
    assert_eq!(
        pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"], "wp",
        "the translation finds the waypoint's pods by this label"
    );
    assert_eq!(
        pod["metadata"]["labels"]["trellis.dev/dataplane-mode"],
        "none"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "wp");
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["image"], "example.com/waypoint:1");
    assert_eq!(
        c["args"],
        json!([
            "--name=demo/wp",
            "--service-account=wp",
            "--trust-domain=cluster.local",
            "--xds-address=trellis-controller.trellis-system.svc:15012",
            "--control-plane-root=/var/run/secrets/trellis/root-cert.pem",
            "--token-file=/var/run/secrets/tokens/istio-token",
            "--control-plane-name=trellis-controller.trellis-system.svc",
            "--listen=0.0.0.0:15008",
            "--metrics-addr=0.0.0.0:15020",
            "--readiness-addr=0.0.0.0:15021",
        ])
    );
    let env: Vec<(&str, &str)> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or(""),
                e["valueFrom"]["fieldRef"]["fieldPath"]
                    .as_str()
                    .unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        env,
        [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("NODE_NAME", "spec.nodeName"),
        ]
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 15021);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz/ready");
    assert_eq!(c["resources"]["requests"]["cpu"], "100m");
    let volumes = &pod["spec"]["volumes"];
    assert_eq!(
        volumes[0]["projected"]["sources"][0]["serviceAccountToken"],
        json!({"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"})
    );
    assert_eq!(volumes[1]["configMap"]["name"], "wp-ca-root");
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert_eq!(mounts, [TOKEN_DIR, ROOT_DIR]);

    let s = &object(&objects, ManagedKind::Service)["spec"];
    assert_eq!(
        s["selector"],
        json!({"gateway.networking.k8s.io/gateway-name": "wp"})
    );
    assert_eq!(
        s["ports"],
        json!([{"name": "mesh", "port": 15008, "targetPort": 15008, "protocol": "TCP"}])
    );
}

#[test]
fn the_hbone_listener_port_is_the_waypoints_port() {
    // (listeners, port of --listen, the container and the Service)
    let cases = [
        ("[{name: mesh, port: 15009, protocol: HBONE}]", 15009),
        (
            "[{name: a, port: 15010, protocol: HBONE}, {name: b, port: 15010, protocol: HBONE, hostname: x.example}]",
            15010,
        ),
        ("[]", 15008),
    ];
    for (listeners, port) in cases {
        let spec = format!("{{gatewayClassName: trellis-waypoint, listeners: {listeners}}}");
        let objects = one(&spec, "wp", true).objects.expect(listeners);
        let d =
            &object(&objects, ManagedKind::Deployment)["spec"]["template"]["spec"]["containers"][0];
        let listen = format!("--listen=0.0.0.0:{port}");
        assert!(
            d["args"].as_array().expect("args").contains(&json!(listen)),
            "{listeners}: {}",
            d["args"]
        );
        assert_eq!(d["ports"][0]["containerPort"], port, "{listeners}");
        let s = &object(&objects, ManagedKind::Service)["spec"]["ports"][0];
        assert_eq!((&s["port"], &s["targetPort"]), (&json!(port), &json!(port)));
    }
}

#[test]
fn gateways_that_cannot_have_a_waypoint_are_refused_with_a_reason() {
    // (name, spec, uid, reason, words of the message)
    let long = "w".repeat(64);
    let cases: &[(&str, &str, bool, &str, &str)] = &[
        ("wp.v1", MESH, true, "Invalid", "must be a DNS label"),
        ("1wp", MESH, true, "Invalid", "starting with a letter"),
        ("wp-", MESH, true, "Invalid", "not ending with '-'"),
        (&long, MESH, true, "Invalid", "at most 63"),
        (
            "wp",
            "{gatewayClassName: trellis-waypoint, listeners: [{name: web, port: 80, protocol: HTTP}]}",
            true,
            "ListenersNotValid",
            "listener \"web\" has protocol HTTP; a waypoint serves HBONE only",
        ),
        (
            "wp",
            "{gatewayClassName: trellis-waypoint, listeners: [{name: a, port: 15008, protocol: HBONE}, {name: b, port: 15009, protocol: HBONE}]}",
            true,
            "ListenersNotValid",
            "one HBONE port",
        ),
        (
            "wp",
            "{gatewayClassName: trellis-waypoint, addresses: [{value: 10.0.0.1}], listeners: [{name: mesh, port: 15008, protocol: HBONE}]}",
            true,
            "UnsupportedAddress",
            "spec.addresses",
        ),
        ("wp", MESH, false, "Invalid", "metadata.uid"),
    ];
    for (name, spec, uid, reason, words) in cases {
        let refusal = one(spec, name, *uid).objects.expect_err(name);
        assert_eq!(refusal.reason, *reason, "{name} {spec}");
        assert!(
            refusal.message.contains(words),
            "{name} {spec}: {}",
            refusal.message
        );
    }
}

#[test]
fn only_waypoint_classes_get_plans() {
    let istio = MESH.replace("trellis-waypoint", "istio-waypoint");
    let other = MESH.replace("trellis-waypoint", "nginx");
    let docs = [
        gateway("a", MESH, true),
        gateway("b", &istio, true),
        gateway("c", &other, true),
    ];
    // (istio_labels, the Gateways with a plan)
    for (istio_labels, want) in [(false, vec!["a"]), (true, vec!["a", "b"])] {
        let o = WaypointOptions {
            istio_labels,
            ..opts()
        };
        let got: Vec<String> = plans_of(&docs, &o).into_keys().map(|g| g.name).collect();
        assert_eq!(got, want, "istio_labels {istio_labels}");
    }
}

#[test]
fn the_controllers_address_names_the_certificate_only_when_it_is_a_dns_name() {
    // (--waypoint-xds-address, --control-plane-name of the waypoint)
    let cases = [
        (
            "trellis-controller.trellis-system.svc:15012",
            Some("trellis-controller.trellis-system.svc"),
        ),
        ("localhost:40000", Some("localhost")),
        ("198.18.0.1:15012", None),
        ("[fd00::1]:15012", None),
    ];
    for (address, name) in cases {
        assert_eq!(dns_host(address), name, "{address}");
        let o = WaypointOptions {
            xds_address: address.into(),
            ..opts()
        };
        let gw = GatewayRef {
            namespace: "demo".into(),
            name: "wp".into(),
        };
        let args = waypoint_args(&gw, 15008, &o);
        let got = args
            .iter()
            .find_map(|a| a.strip_prefix("--control-plane-name="));
        assert_eq!(got, name, "{address}: {args:?}");
        assert!(args.contains(&format!("--xds-address={address}")));
    }
}

#[test]
fn the_xds_address_flag_needs_a_host_and_a_port() {
    let cases = [
        ("a.svc:15012", true),
        ("127.0.0.1:1", true),
        ("[::1]:15012", true),
        ("a.svc", false),
        (":15012", false),
        ("a.svc:0", false),
        ("a.svc:port", false),
    ];
    for (address, ok) in cases {
        assert_eq!(host_port(address).is_ok(), ok, "{address}");
    }
    assert!(host_port("x").unwrap_err().contains("host:port"));
}

#[test]
fn paths_name_each_kind_in_its_api_group() {
    let cases = [
        (
            ManagedKind::Deployment,
            "/apis/apps/v1/namespaces/demo/deployments/wp",
            "/apis/apps/v1/deployments",
        ),
        (
            ManagedKind::Service,
            "/api/v1/namespaces/demo/services/wp",
            "/api/v1/services",
        ),
        (
            ManagedKind::ServiceAccount,
            "/api/v1/namespaces/demo/serviceaccounts/wp",
            "/api/v1/serviceaccounts",
        ),
        (
            ManagedKind::ConfigMap,
            "/api/v1/namespaces/demo/configmaps/wp",
            "/api/v1/configmaps",
        ),
    ];
    for (kind, one, all) in cases {
        assert_eq!(kind.path("demo", "wp"), one);
        assert_eq!(kind.collection_path(), all);
    }
}

#[test]
fn the_template_shapes_what_the_controller_leaves_open() {
    let template = crate::waypoints::template::WaypointTemplate::parse(
        "t.yaml",
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {labels: {team: mesh}}
spec:
  replicas: 3
  template:
    spec:
      tolerations: [{key: dedicated, operator: Exists}]
      containers:
        - name: waypoint
          image: ignored.example/waypoint:0
          args: [--ignored]
          resources: {requests: {cpu: 2}}
---
apiVersion: v1
kind: Service
spec: {type: NodePort}
"#,
    )
    .expect("valid template");
    let o = WaypointOptions {
        template: std::sync::Arc::new(template),
        ..opts()
    };
    let plans = plans_of(&[gateway("wp", MESH, true)], &o);
    let objects = plans.values().next().unwrap().objects.as_ref().unwrap();
    let d = object(objects, ManagedKind::Deployment);
    // The template's own fields...
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["metadata"]["labels"]["team"], "mesh");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    let c = &pod["containers"][0];
    assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
    assert_eq!(c["resources"]["requests"]["cpu"], 2);
    // ...and the controller's win where both set them; no probe, as this
    // template gives none.
    assert_eq!(c["image"], "example.com/waypoint:1");
    assert_eq!(c["args"][0], "--name=demo/wp");
    assert!(c.get("readinessProbe").is_none());
    assert_eq!(d["metadata"]["name"], "wp");
    assert_eq!(d["metadata"]["ownerReferences"][0]["name"], "wp");
    let s = object(objects, ManagedKind::Service);
    assert_eq!(s["spec"]["type"], "NodePort");
    assert_eq!(s["spec"]["ports"][0]["port"], 15008);
}
