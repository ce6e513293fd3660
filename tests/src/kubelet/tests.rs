use super::*;

fn deployment() -> Value {
    json!({"metadata": {"name": "wp", "namespace": "demo"}, "spec": {"template": {
        "metadata": {"labels": {"app": "wp"}},
        "spec": {
            "serviceAccountName": "wp-sa",
            "containers": [{
                "name": "c",
                "args": ["--token-file=/var/run/secrets/tokens/t", "--root", "/etc/root/ca.pem",
                         "--x=/var/run/secrets/tokensX", "--listen=0.0.0.0:15008"],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "LOG", "value": "debug"},
                ],
                "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}},
                "volumeMounts": [
                    {"name": "tok", "mountPath": "/var/run/secrets/tokens"},
                    {"name": "root", "mountPath": "/etc/root"},
                ],
            }],
            "volumes": [
                {"name": "tok", "projected": {"sources": [{"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 600, "path": "t"}}]}},
                {"name": "root", "configMap": {"name": "wp-ca-root"}},
            ],
        },
    }}})
}

#[test]
fn a_template_becomes_a_pod_with_its_volumes_args_and_env_resolved() {
    let p = plan_pod(
        &deployment(),
        "wp-0",
        "node1",
        "198.18.0.5",
        Path::new("/v"),
    )
    .expect("plan");
    assert_eq!(
        p.args,
        [
            "--token-file=/v/tok/t",
            "--root",
            "/v/root/ca.pem",
            "--x=/var/run/secrets/tokensX",
            "--listen=0.0.0.0:15008"
        ]
    );
    let env: Vec<(&str, &str)> = p
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("POD_NAME", "wp-0"),
            ("NODE_NAME", "node1"),
            ("LOG", "debug")
        ]
    );
    assert_eq!(
        p.fills,
        [
            Fill::Token {
                audience: "istio-ca".into(),
                expiration_secs: 600,
                file: "/v/tok/t".into()
            },
            Fill::ConfigMap {
                name: "wp-ca-root".into(),
                dir: "/v/root".into()
            },
        ]
    );
    assert_eq!(p.readiness, Some((15021, "/healthz/ready".into())));
    assert_eq!(p.service_account, "wp-sa");
    assert_eq!(p.pod["spec"]["nodeName"], "node1");
    assert_eq!(p.pod["metadata"]["labels"]["app"], "wp");
}

#[test]
fn what_the_harness_cannot_play_is_refused_by_name() {
    // (edit of the Deployment, words of the error)
    type Edit = fn(&mut Value);
    let cases: [(Edit, &str); 3] = [
        (
            |d| {
                d["spec"]["template"]["spec"]["volumes"][1] =
                    json!({"name": "root", "hostPath": {"path": "/x"}})
            },
            "volume root",
        ),
        (
            |d| {
                d["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["fieldRef"]
                    ["fieldPath"] = json!("status.hostIP")
            },
            "status.hostIP",
        ),
        (
            |d| {
                d["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["name"] =
                    json!("nope")
            },
            "nope",
        ),
    ];
    for (edit, words) in cases {
        let mut d = deployment();
        edit(&mut d);
        let e = plan_pod(&d, "p", "n", "1.2.3.4", Path::new("/v")).expect_err(words);
        assert!(e.to_string().contains(words), "{e}");
    }
}

#[test]
fn a_contained_daemonset_pod_mounts_host_paths_and_its_service_account() {
    let ds = json!({"metadata": {"name": "agent", "namespace": "sys"}, "spec": {"template": {
        "spec": {
            "serviceAccountName": "agent",
            "hostNetwork": true,
            "containers": [{
                "name": "c",
                "args": ["--sock=/var/run/trellis/s.sock", "--in-cluster"],
                "ports": [{"name": "http-mon", "containerPort": 15023}],
                "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": "http-mon"}},
                "volumeMounts": [
                    {"name": "run", "mountPath": "/var/run/trellis"},
                    {"name": "netns", "mountPath": "/var/run/netns", "readOnly": true},
                ],
            }],
            "volumes": [
                {"name": "run", "hostPath": {"path": "/var/run/trellis"}},
                {"name": "netns", "hostPath": {"path": "/var/run/netns"}},
            ],
        },
    }}});
    let view = NodeView {
        root: Path::new("/n1"),
    };
    let p =
        plan_contained(&ds, "agent-n1", "n1", "198.19.255.1", Path::new("/v"), view).expect("plan");
    assert_eq!(
        p.raw_args,
        ["--sock=/var/run/trellis/s.sock", "--in-cluster"]
    );
    // Parents before children (by depth); the netns files are the machine's.
    assert_eq!(
        p.mounts,
        [
            (
                PathBuf::from("/var/run/trellis"),
                PathBuf::from("/n1/var/run/trellis"),
                false
            ),
            (
                PathBuf::from("/var/run/netns"),
                PathBuf::from("/var/run/netns"),
                true
            ),
            (
                PathBuf::from(SERVICE_ACCOUNT_DIR),
                PathBuf::from("/v/kube-api-access"),
                true
            ),
        ]
    );
    assert!(p.fills.contains(&Fill::ServiceAccount {
        dir: "/v/kube-api-access".into()
    }));
    assert_eq!(p.readiness, Some((15023, "/healthz/ready".to_string())));
    // Without a node view a hostPath is refused, as before.
    let err = plan_pod(&ds, "agent-n1", "n1", "198.19.255.1", Path::new("/v")).unwrap_err();
    assert!(err.to_string().contains("hostPath"), "{err}");
}
