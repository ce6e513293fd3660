//! The controller's Kubernetes mode against a real kube-apiserver (with
//! etcd, no kubelet: tests write pod status themselves), started per test
//! through the shared harness ([`trellis_e2e::kube`]); the source runs
//! in-process ([`trellis_e2e::kube_source`]).
//!
//! - the source lists and watches namespaces, services, pods and
//!   AuthorizationPolicies into the store, and translate() sees them: pod
//!   status becomes address and health, a deleted pod goes, a policy whose
//!   CRD is installed after the start is picked up, and a policy changed to
//!   something Trellis rejects keeps its last good version;
//! - watches broken by a dropped connection resume and catch up on what
//!   changed meanwhile, deletions included;
//! - TokenReview maps a node proxy's pod-bound token to its node (from the
//!   token's node claim, or from the pod when the token has none), any
//!   other service account to a waypoint identity, and refuses garbage.
//!
//! Needs $KUBE_APISERVER and $ETCD (tests/kube/install.sh prints them) and
//! kubectl. Without them each test says so and passes, unless
//! TRELLIS_REQUIRE_KUBE=1 makes that a failure. The AuthorizationPolicy
//! CRD comes from the Go module istio.io/api (`go mod download`); without
//! go or the module, that part is skipped with a message (a failure too
//! when TRELLIS_REQUIRE_KUBE=1).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use trellis_api::config::{HealthStatus, Protocol};
use trellis_controller::auth::{AuthError, Authenticator, Caller, TokenReview, TokenReviewConfig};
use trellis_controller::kube::{ApiConfig, Client};
use trellis_e2e::kube::KubeApiServer;
use trellis_e2e::kube_source::{
    client, installed, namespace_yaml, pod_yaml, run_source, start_kube, wait_for, workload,
    DEADLINE,
};

const POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-allow, namespace: mesh}
spec:
  selector: {matchLabels: {app: web}}
  action: ACTION
  rules:
  - from: [{source: {principals: [cluster.local/ns/mesh/sa/client]}}]
";

/// Pods mesh/web-1 on node-a (10.1.0.11, ready) and mesh/web-2 on node-b
/// (10.1.0.12, ready when `web2_ready`). No kubelet: the test is the
/// kubelet, writing their status.
fn web_pods(kube: &KubeApiServer, web2_ready: bool) {
    for (pod, node, ip, ready) in [
        ("web-1", "node-a", "10.1.0.11", true),
        ("web-2", "node-b", "10.1.0.12", web2_ready),
    ] {
        kube.apply(&pod_yaml("mesh", pod, "web", node))
            .expect("apply");
        kube.pod_status("mesh", pod, ip, ready).expect("pod status");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_from_the_api_server_become_config() {
    let Some(kube) = start_kube() else { return };
    let (mut rx, task) = run_source(client(&kube));

    kube.apply(&namespace_yaml("mesh")).expect("apply");
    kube.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: mesh}\n\
         spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n",
    )
    .expect("apply");
    web_pods(&kube, false);

    let s = wait_for(&mut rx, "two enrolled workloads with their status", |s| {
        let a = workload(s, "mesh", "web-1");
        let b = workload(s, "mesh", "web-2");
        a.is_some_and(|w| w.status == HealthStatus::Healthy)
            && b.is_some_and(|w| w.status == HealthStatus::Unhealthy)
    })
    .await;
    let w1 = workload(&s, "mesh", "web-1").unwrap();
    assert_eq!(
        w1.addresses,
        vec!["10.1.0.11".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(w1.node, "node-a");
    assert_eq!(
        w1.protocol,
        Protocol::Hbone,
        "the namespace is labelled ambient"
    );
    assert_eq!(workload(&s, "mesh", "web-2").unwrap().node, "node-b");
    let svc = wait_for(&mut rx, "the service with both endpoints", |s| {
        s.config
            .services
            .iter()
            .any(|v| v.name == "web" && v.endpoints.len() == 2)
    })
    .await;
    let web = svc
        .config
        .services
        .iter()
        .find(|v| v.name == "web")
        .unwrap();
    assert_eq!(web.hostname, "web.mesh.svc.cluster.local");
    assert_eq!(web.vips.len(), 1, "the API server allocated a cluster IP");

    // Ready comes; then a pod goes. Forced: a graceful delete only marks
    // the pod and waits for a kubelet to confirm, and there is none.
    kube.pod_status("mesh", "web-2", "10.1.0.12", true)
        .expect("pod status");
    wait_for(&mut rx, "web-2 healthy", |s| {
        workload(s, "mesh", "web-2").is_some_and(|w| w.status == HealthStatus::Healthy)
    })
    .await;
    kube.delete_pod("mesh", "web-1").expect("delete");
    let s = wait_for(&mut rx, "web-1 removed", |s| {
        workload(s, "mesh", "web-1").is_none()
    })
    .await;
    assert!(workload(&s, "mesh", "web-2").is_some());
    assert!(s
        .config
        .services
        .iter()
        .any(|v| v.name == "web" && v.endpoints.len() == 1));

    // The policy CRD is installed after the source started: the source
    // finds it on its retry. The harness waits until its kind is served.
    let crd = kube.install_authorization_policy_crd();
    if !installed("the AuthorizationPolicy CRD", crd) {
        task.abort();
        return;
    }
    kube.apply(&POLICY.replace("ACTION", "ALLOW"))
        .expect("the AuthorizationPolicy is created");
    let s = wait_for(&mut rx, "the policy in the config", |s| {
        s.config
            .policies
            .iter()
            .any(|p| p.name == "web-allow" && p.namespace == "mesh")
    })
    .await;
    assert!(
        workload(&s, "mesh", "web-2").is_some_and(|w| w
            .authorization_policies
            .iter()
            .any(|p| p.contains("web-allow"))),
        "the selected workload lists the policy: {:?}",
        workload(&s, "mesh", "web-2")
    );

    // The CRD accepts AUDIT; Trellis does not. The last good policy stays,
    // and the problem is reported against the object.
    kube.apply(&POLICY.replace("ACTION", "AUDIT"))
        .expect("apply");
    let s = wait_for(&mut rx, "the rejected update reported", |s| {
        s.errors
            .iter()
            .any(|e| e.contains("AuthorizationPolicy/mesh/web-allow"))
    })
    .await;
    assert!(
        s.config.policies.iter().any(|p| p.name == "web-allow"),
        "the last good version is kept: {:?}",
        s.config.policies
    );
    assert!(
        s.errors.iter().any(|e| e.contains("not supported")),
        "{:?}",
        s.errors
    );
    // Fixed again: the error clears.
    kube.apply(&POLICY.replace("ACTION", "DENY"))
        .expect("apply");
    wait_for(&mut rx, "the fixed policy, error cleared", |s| {
        s.errors.is_empty() && s.config.policies.iter().any(|p| p.name == "web-allow")
    })
    .await;
    kube.kubectl(
        &["delete", "authorizationpolicy", "web-allow", "-n", "mesh"],
        None,
    )
    .expect("delete");
    wait_for(&mut rx, "the deleted policy gone", |s| {
        s.config.policies.is_empty()
    })
    .await;
    task.abort();
}

// ---- broken watches -------------------------------------------------------

/// A loopback TCP forwarder to the API server that the test can cut: all
/// its connections are dropped and new ones refused until it is resumed.
struct Cutter {
    addr: std::net::SocketAddr,
    open: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Cutter {
    async fn start(upstream: String) -> Cutter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (open2, cut2) = (open.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                if !open2.load(Ordering::SeqCst) {
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut_rx = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Cutter { addr, open, cut }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn resume(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_watches_resume_and_catch_up() {
    let Some(kube) = start_kube() else { return };
    // The same kubeconfig, through the forwarder; the server's certificate
    // is for 127.0.0.1, so it still verifies.
    let text = std::fs::read_to_string(kube.kubeconfig()).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .expect("server line")
        .to_string();
    let cutter = Cutter::start(server.clone()).await;
    let proxied = kube.dir().join("kubeconfig-cut");
    std::fs::write(&proxied, text.replace(&server, &cutter.addr.to_string())).unwrap();
    let cut_client = Client::new(ApiConfig::from_kubeconfig(&proxied).expect("kubeconfig"));
    let (mut rx, task) = run_source(cut_client);

    kube.apply(&namespace_yaml("mesh")).expect("apply");
    kube.apply(&pod_yaml("mesh", "a", "a", "node-a"))
        .expect("apply");
    kube.pod_status("mesh", "a", "10.1.0.21", true)
        .expect("pod status");
    wait_for(&mut rx, "pod a", |s| workload(s, "mesh", "a").is_some()).await;

    // While the watches are down, one pod goes and another comes.
    cutter.cut();
    kube.delete_pod("mesh", "a").expect("delete");
    kube.apply(&pod_yaml("mesh", "b", "b", "node-a"))
        .expect("apply");
    kube.pod_status("mesh", "b", "10.1.0.22", true)
        .expect("pod status");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        workload(&rx.borrow(), "mesh", "a").is_some(),
        "nothing is seen while cut"
    );
    cutter.resume();

    let s = wait_for(
        &mut rx,
        "a gone and b there after the watches resume",
        |s| workload(s, "mesh", "a").is_none() && workload(s, "mesh", "b").is_some(),
    )
    .await;
    assert_eq!(
        workload(&s, "mesh", "b").unwrap().addresses,
        vec!["10.1.0.22".parse::<std::net::IpAddr>().unwrap()]
    );
    task.abort();
}

// ---- TokenReview ----------------------------------------------------------

/// A token of `istio-system/ztunnel` bound to pod `ztunnel-a`, for
/// `audience`, as a projected token volume gives one (Istio's ztunnel
/// mounts one for `istio-ca`).
fn audience_token(kube: &KubeApiServer, audience: &str) -> String {
    kube.kubectl(
        &[
            "create",
            "token",
            "ztunnel",
            "-n",
            "istio-system",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "ztunnel-a",
            "--audience",
            audience,
        ],
        None,
    )
    .expect("token")
    .trim()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_maps_service_accounts_to_callers() {
    let Some(kube) = start_kube() else { return };
    let auth = TokenReview::new(client(&kube), TokenReviewConfig::default());
    kube.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: ztunnel, namespace: istio-system}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: waypoint, namespace: shop}\n",
    )
    .expect("apply");
    // A node proxy pod already on its node: the token carries the node.
    kube.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ztunnel-a, namespace: istio-system}\n\
         spec: {nodeName: node-a, serviceAccountName: ztunnel, containers: [{name: c, image: registry.invalid/z}]}\n",
    )
    .expect("apply");
    let token = kube
        .bound_token("istio-system", "ztunnel", "ztunnel-a")
        .expect("token");
    assert_eq!(
        auth.authenticate(token.trim()).await,
        Ok(Caller::NodeProxy {
            node: "node-a".into()
        })
    );
    // Cached: the same answer again.
    assert_eq!(
        auth.authenticate(token.trim()).await,
        Ok(Caller::NodeProxy {
            node: "node-a".into()
        })
    );
    // Istio's ztunnel presents its projected token, for audience istio-ca,
    // which the API server refuses for its own audience.
    let istio_token = audience_token(&kube, "istio-ca");
    assert_eq!(
        auth.authenticate(istio_token.trim()).await,
        Ok(Caller::NodeProxy {
            node: "node-a".into()
        })
    );
    // A token for another audience is refused, naming both audiences tried.
    let other = audience_token(&kube, "vault");
    let refused = auth.authenticate(other.trim()).await;
    assert!(
        matches!(&refused, Err(AuthError::Invalid(m))
            if m.contains("for audience istio-ca") && m.contains("for the API server's audience")),
        "{refused:?}"
    );
    // Without the API server's audience, only istio-ca tokens pass.
    let istio_only = TokenReview::new(
        client(&kube),
        TokenReviewConfig {
            api_audience: false,
            ..Default::default()
        },
    );
    assert!(
        matches!(
            istio_only.authenticate(token.trim()).await,
            Err(AuthError::Invalid(_))
        ),
        "a token for the API server is refused when only istio-ca is accepted"
    );
    assert!(istio_only.authenticate(istio_token.trim()).await.is_ok());

    // A pod not yet on a node when the token was made: no node claim, so
    // the authenticator reads the pod, which is scheduled by then.
    kube.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ztunnel-b, namespace: istio-system}\n\
         spec: {serviceAccountName: ztunnel, containers: [{name: c, image: registry.invalid/z}]}\n",
    )
    .expect("apply");
    let token_b = kube
        .bound_token("istio-system", "ztunnel", "ztunnel-b")
        .expect("token");
    let refused = auth.authenticate(token_b.trim()).await;
    assert!(
        matches!(&refused, Err(AuthError::Invalid(m)) if m.contains("not scheduled")),
        "{refused:?}"
    );
    kube.kubectl(
        &["create", "--raw", "/api/v1/namespaces/istio-system/pods/ztunnel-b/binding", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"ztunnel-b"},"target":{"apiVersion":"v1","kind":"Node","name":"node-b"}}"#),
    )
    .expect("binding");
    assert_eq!(
        auth.authenticate(token_b.trim()).await,
        Ok(Caller::NodeProxy {
            node: "node-b".into()
        })
    );

    // A node proxy token bound to nothing says no node: refused.
    let unbound = kube
        .kubectl(&["create", "token", "ztunnel", "-n", "istio-system"], None)
        .expect("token");
    let refused = auth.authenticate(unbound.trim()).await;
    assert!(
        matches!(&refused, Err(AuthError::Invalid(m)) if m.contains("not bound to a pod")),
        "{refused:?}"
    );

    // Any other service account is a waypoint identity.
    let wp = kube
        .kubectl(&["create", "token", "waypoint", "-n", "shop"], None)
        .expect("token");
    assert_eq!(
        auth.authenticate(wp.trim()).await,
        Ok(Caller::Waypoint {
            spiffe_id: "spiffe://cluster.local/ns/shop/sa/waypoint".into()
        })
    );

    let garbage = auth.authenticate("not-a-token").await;
    match garbage {
        Err(AuthError::Invalid(m)) => assert!(!m.is_empty()),
        other => panic!("a garbage token must be refused as invalid: {other:?}"),
    }
}

/// `trellis-controller run` in Kubernetes mode, end to end on loopback:
/// pods from the API server reach a node proxy's real xDS client, which
/// authenticates with a pod-bound service account token (TokenReview).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_in_kubernetes_mode_serves_a_node_proxy_authenticated_by_token_review() {
    use clap::Parser;
    use trellis_controller::cli::{Cli, Command as CliCommand};
    use trellis_core::source::{self, SourceSpec, XdsSpec};

    let Some(kube) = start_kube() else { return };
    kube.apply(&namespace_yaml("mesh")).expect("apply");
    web_pods(&kube, true);
    kube.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: ztunnel, namespace: istio-system}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: ztunnel-a, namespace: istio-system}\n\
         spec: {nodeName: node-a, serviceAccountName: ztunnel, containers: [{name: c, image: registry.invalid/z}]}\n",
    )
    .expect("apply");
    let token = kube
        .bound_token("istio-system", "ztunnel", "ztunnel-a")
        .expect("token");

    // The CA comes from Istio's cacerts Secret, read through the API: the
    // controller never sees the files.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = trellis_controller::ca::init(dir.path(), "cluster.local", false).expect("ca init");
    let mut create = vec![
        "create",
        "secret",
        "generic",
        "cacerts",
        "-n",
        "istio-system",
    ];
    let from: Vec<String> = [
        "root-cert.pem",
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
    ]
    .iter()
    .map(|f| format!("--from-file={}", dir.path().join(f).display()))
    .collect();
    create.extend(from.iter().map(String::as_str));
    kube.kubectl(&create, None).expect("cacerts secret created");
    drop(dir);
    let kubeconfig = kube.kubeconfig().to_str().expect("utf-8 path").to_owned();
    let cli = Cli::try_parse_from([
        "trellis-controller",
        "run",
        "--kubeconfig",
        &kubeconfig,
        "--ca-secret",
        "istio-system/cacerts",
        "--listen",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--istio-labels",
    ])
    .expect("flags parse");
    let CliCommand::Run(args) = cli.command else {
        panic!("run")
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = trellis_controller::run::start(&args, async move {
        let _ = stopped.await;
    })
    .await
    .expect("controller starts");
    let addr = running.addrs().grpc;
    let serving = tokio::spawn(running.wait());

    let spec = SourceSpec::Xds(XdsSpec {
        address: addr.to_string(),
        server_name: "istiod.istio-system.svc".into(),
        root_pem: ca.roots_pem(),
        token: token.trim().into(),
        node_id: "trellis~node-a".into(),
        types: vec![
            trellis_api::xds::ADDRESS_TYPE,
            trellis_api::xds::AUTHORIZATION_TYPE,
        ],
        socket_mark: None,
    });
    let store = Arc::new(source::initial_store(&spec).expect("store"));
    let client = source::spawn(&spec, store.clone(), None, None);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let names: Vec<String> = store
            .load()
            .config()
            .workloads
            .iter()
            .map(|w| w.name.clone())
            .collect();
        if store.is_synced() && names == ["web-1"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node-a's proxy did not get exactly its pod (has {names:?}, synced {})",
            store.is_synced()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.abort();

    // A certificate for node-a's pod, signed with the Secret's intermediate.
    let issuer = trellis_core::certs::ca_client::CaIssuer::start(
        trellis_core::certs::ca_client::CaClientConfig {
            address: addr.to_string(),
            server_name: "istiod.istio-system.svc".into(),
            root_pem: ca.roots_pem(),
            token: token.trim().into(),
            impersonate: true,
            socket_mark: None,
        },
    )
    .expect("ca client");
    let certs = trellis_core::certs::CertManager::new(Box::new(issuer), None);
    let web = hbone::Identity::new("cluster.local", "mesh", "default");
    let cert = tokio::time::timeout(DEADLINE, certs.server_config_ready(&web))
        .await
        .expect("in time");
    assert!(
        cert.is_ok(),
        "certificate from the secret's CA: {:?}",
        cert.err()
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(DEADLINE, serving).await;
}
