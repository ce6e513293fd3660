use serde_json::json;

use super::*;

fn ok(username: &str, extra: Value) -> Value {
    json!({"authenticated": true, "user": {"username": username, "extra": extra}})
}

#[test]
fn review_status_maps_to_a_caller() {
    let cfg = TokenReviewConfig::default();
    let cases: Vec<(&str, Value, Decision)> = vec![
        (
            "waypoint",
            ok("system:serviceaccount:shop:waypoint", json!({})),
            Decision::Caller(Caller::Waypoint {
                spiffe_id: "spiffe://cluster.local/ns/shop/sa/waypoint".into(),
            }),
        ),
        (
            "a VM's token (TokenRequest for its WorkloadEntry's account, bound to no pod)",
            ok("system:serviceaccount:demo:vm", json!({})),
            Decision::Caller(Caller::Waypoint {
                spiffe_id: "spiffe://cluster.local/ns/demo/sa/vm".into(),
            }),
        ),
        (
            "ztunnel with node claim",
            ok("system:serviceaccount:istio-system:ztunnel", json!({NODE_NAME: ["node-a"], POD_NAME: ["z-1"]})),
            Decision::Caller(Caller::NodeProxy { node: "node-a".into() }),
        ),
        (
            "trellis node proxy with node claim",
            ok("system:serviceaccount:trellis-system:trellis-node-proxy", json!({NODE_NAME: ["node-b"]})),
            Decision::Caller(Caller::NodeProxy { node: "node-b".into() }),
        ),
        (
            "ztunnel bound to a pod only",
            ok("system:serviceaccount:istio-system:ztunnel", json!({POD_NAME: ["z-1"], POD_UID: ["u1"]})),
            Decision::LookupPod {
                namespace: "istio-system".into(),
                name: "z-1".into(),
                uid: Some("u1".into()),
            },
        ),
        (
            "ztunnel unbound",
            ok("system:serviceaccount:istio-system:ztunnel", json!({})),
            Decision::Refuse(AuthError::Invalid("service account istio-system/ztunnel is a node proxy's, but the token is not bound to a pod, so its node is unknown; use the pod's projected service account token".into())),
        ),
        (
            "same name in another namespace is a waypoint",
            ok("system:serviceaccount:default:ztunnel", json!({NODE_NAME: ["node-a"]})),
            Decision::Caller(Caller::Waypoint {
                spiffe_id: "spiffe://cluster.local/ns/default/sa/ztunnel".into(),
            }),
        ),
        (
            "not a service account",
            ok("admin", json!({})),
            Decision::Refuse(AuthError::Invalid("user \"admin\" is not a service account; proxies authenticate with their service account token".into())),
        ),
        (
            "malformed service account name",
            ok("system:serviceaccount:onlyns", json!({})),
            Decision::Refuse(AuthError::Invalid("user \"system:serviceaccount:onlyns\" is not a service account; proxies authenticate with their service account token".into())),
        ),
        (
            "refused with a reason",
            json!({"authenticated": false, "error": "invalid bearer token"}),
            Decision::Refuse(AuthError::Invalid("invalid bearer token".into())),
        ),
        (
            "refused without a reason",
            json!({}),
            Decision::Refuse(AuthError::Invalid("the API server did not authenticate it".into())),
        ),
    ];
    for (name, status, want) in cases {
        assert_eq!(decide(&status, &cfg), want, "{name}");
    }
}

#[test]
fn trust_domain_and_accounts_are_configurable() {
    let cfg = TokenReviewConfig {
        trust_domain: "example.org".into(),
        node_proxy_accounts: vec![("mesh".into(), "np".into())],
        ..Default::default()
    };
    assert_eq!(
        decide(
            &ok(
                "system:serviceaccount:istio-system:ztunnel",
                json!({NODE_NAME: ["n"]})
            ),
            &cfg
        ),
        Decision::Caller(Caller::Waypoint {
            spiffe_id: "spiffe://example.org/ns/istio-system/sa/ztunnel".into()
        })
    );
    assert_eq!(
        decide(
            &ok("system:serviceaccount:mesh:np", json!({NODE_NAME: ["n"]})),
            &cfg
        ),
        Decision::Caller(Caller::NodeProxy { node: "n".into() })
    );
}

#[test]
fn audiences_are_reviewed_in_turn() {
    let aud = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let istio = aud(&["istio-ca"]);
    let two = aud(&["istio-ca", "trellis"]);
    // (audiences, api_audience, the reviews made in turn)
    type Case<'a> = (Vec<String>, bool, Vec<Option<&'a [String]>>);
    let cases: Vec<Case> = vec![
        (istio.clone(), true, vec![Some(&istio), None]),
        (istio.clone(), false, vec![Some(&istio)]),
        (two.clone(), true, vec![Some(&two), None]),
        // Nothing named: the API server's audience, whatever api_audience says.
        (vec![], false, vec![None]),
        (vec![], true, vec![None]),
    ];
    for (audiences, api_audience, want) in cases {
        let cfg = TokenReviewConfig {
            audiences: audiences.clone(),
            api_audience,
            ..Default::default()
        };
        assert_eq!(review_plan(&cfg), want, "{audiences:?} {api_audience}");
    }
    let d = TokenReviewConfig::default();
    assert_eq!(
        review_plan(&d),
        vec![Some(&istio[..]), None],
        "Istio's token first, then a plain service-account token"
    );
}

#[test]
fn a_refusal_names_each_audience_tried() {
    let istio = ["istio-ca".to_string()];
    let err = refused(&[
        (
            Some(&istio[..]),
            "token audiences [\"x\"] is invalid".into(),
        ),
        (
            None,
            "token audiences [\"x\"] is invalid for the API".into(),
        ),
    ]);
    assert_eq!(
        err,
        AuthError::Invalid(
            "for audience istio-ca: token audiences [\"x\"] is invalid; \
             for the API server's audience: token audiences [\"x\"] is invalid for the API"
                .into()
        )
    );
}

#[test]
fn bound_pod_gives_the_node() {
    let pod = json!({"metadata": {"name": "z-1", "uid": "u1"}, "spec": {"nodeName": "node-a"}});
    let unscheduled = json!({"metadata": {"name": "z-1", "uid": "u1"}, "spec": {}});
    let cases: Vec<(&Value, Option<&str>, Result<&str, &str>)> = vec![
        (&pod, Some("u1"), Ok("node-a")),
        (&pod, None, Ok("node-a")),
        (&pod, Some("u2"), Err("was replaced by another pod")),
        (&unscheduled, Some("u1"), Err("not scheduled to a node yet")),
    ];
    for (p, uid, want) in cases {
        match (node_of_pod(p, uid), want) {
            (Ok(n), Ok(w)) => assert_eq!(n, w),
            (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{e}"),
            (got, want) => panic!("{uid:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn cache_expires_and_stays_bounded() {
    let mut c = Cache {
        entries: HashMap::new(),
    };
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let w = |i: usize| Caller::Waypoint {
        spiffe_id: format!("w{i}"),
    };
    c.put("a", w(0), t0 + s(60), t0, 2);
    assert_eq!(c.get("a", t0 + s(59)), Some(w(0)));
    assert_eq!(c.get("a", t0 + s(60)), None, "expired");
    assert!(
        c.entries.is_empty(),
        "an expired entry is dropped when seen"
    );
    c.put("a", w(0), t0 + s(10), t0, 2);
    c.put("b", w(1), t0 + s(60), t0, 2);
    // Full: the expired one makes room.
    c.put("c", w(2), t0 + s(80), t0 + s(20), 2);
    assert_eq!(c.entries.len(), 2);
    assert_eq!(c.get("b", t0 + s(30)), Some(w(1)));
    // Full of live entries: cleared, never over the bound.
    c.put("d", w(3), t0 + s(90), t0 + s(30), 2);
    assert!(c.entries.len() <= 2);
    assert_eq!(c.get("d", t0 + s(31)), Some(w(3)));
    c.put("e", w(4), t0 + s(90), t0, 0);
    assert_eq!(c.get("e", t0), None, "size 0 disables the cache");
}

#[tokio::test]
async fn reviews_beyond_the_in_flight_limit_are_unavailable_at_once() {
    // A client for a server that is never dialled: the limit answers first.
    let dir = tempfile::tempdir().expect("tempdir");
    crate::ca::init(dir.path(), "cluster.local", false).expect("a CA to name in the kubeconfig");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: k, cluster: {{server: \"https://127.0.0.1:9\", certificate-authority: {}}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n",
            dir.path().join("root-cert.pem").display()
        ),
    )
    .expect("kubeconfig");
    let client = Client::new(crate::kube::ApiConfig::from_kubeconfig(&kubeconfig).expect("config"));
    let review = TokenReview::new(
        client,
        TokenReviewConfig {
            max_in_flight: 1,
            ..Default::default()
        },
    );
    let held = review.admit().expect("the one slot");
    let refused = review.authenticate("some-token").await;
    match refused {
        Err(AuthError::Unavailable(m)) => {
            assert!(m.contains("1 token reviews are already in flight"), "{m}")
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    drop(held);
    assert!(review.admit().is_ok(), "the slot is free again");
}
