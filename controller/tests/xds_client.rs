//! The proxies' xDS client (trellis_core::source::xds) against the
//! controller's real delta ADS service, over TLS on 127.0.0.1: first sync
//! scoped to the node, on-demand hit and miss (a service brings its
//! endpoints), changes and removals, a NACKed object that keeps the last
//! good state, and a controller restart that the client rides out.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use trellis_api::config::{parse, LocalConfig};
use trellis_api::xds::{encode_config, ADDRESS_TYPE, AUTHORIZATION_TYPE};
use trellis_controller::auth::TokenFile;
use trellis_controller::ca;
use trellis_controller::xds::{Snapshot, XdsService};
use trellis_core::source::{self, OnDemand, SourceSpec, XdsSpec};
use trellis_core::state::StateStore;

const SERVER_NAME: &str = "istiod.istio-system.svc";
/// A hang guard for each wait, not a performance bound.
const STEP: Duration = Duration::from_secs(20);

const TOKENS: &str = r#"
tokens:
- token: "tok-a"
  nodeProxy: { node: node-a }
"#;

const MESH: &str = r#"
workloads:
- { uid: a1, name: a1, namespace: demo, serviceAccount: a, node: node-a, addresses: [198.18.1.1] }
- { uid: b1, name: b1, namespace: demo, serviceAccount: b, node: node-b, addresses: [198.18.2.1] }
- { uid: b2, name: b2, namespace: demo, serviceAccount: b, node: node-b, addresses: [198.18.2.2] }
services:
- name: web
  namespace: demo
  hostname: web.demo.svc.cluster.local
  vips: [198.19.0.1]
  ports: [{port: 80, targetPort: 8080}]
  endpoints: [b1, b2]
policies:
- { name: allow-all, namespace: demo, scope: NAMESPACE, action: ALLOW }
"#;

fn snapshot(cfg: &LocalConfig) -> Arc<Snapshot> {
    let mut b = Snapshot::builder();
    b.add_all(encode_config(cfg, "")).expect("valid snapshot");
    Arc::new(b.build())
}

struct Controller {
    snapshots: watch::Sender<Arc<Snapshot>>,
    _stop: oneshot::Sender<()>,
}

/// Serves the ADS service on `addr` (port 0 for any) with the CA in `dir`.
async fn controller(dir: &Path, addr: SocketAddr, cfg: &LocalConfig) -> (Controller, SocketAddr) {
    let ca = ca::Ca::load(dir).expect("ca loads");
    let tls = ca
        .serving_config(&[SERVER_NAME.to_owned()])
        .expect("serving config");
    let auth = Arc::new(TokenFile::parse(TOKENS, Path::new("tokens.yaml")).expect("tokens"));
    // Rebinding the port of a controller that just stopped: retry briefly.
    let listener = {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        }
    };
    let bound = listener.local_addr().expect("addr");
    let (snapshots, rx) = watch::channel(snapshot(cfg));
    let router =
        tonic::transport::Server::builder().add_service(XdsService::new(auth, rx).into_server());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(trellis_controller::serve::serve(
        listener,
        tls,
        router,
        async move {
            let _ = stopped.await;
        },
    ));
    (
        Controller {
            snapshots,
            _stop: stop,
        },
        bound,
    )
}

fn spec(addr: SocketAddr, root_pem: String, token: &str) -> SourceSpec {
    SourceSpec::Xds(XdsSpec {
        address: addr.to_string(),
        server_name: SERVER_NAME.into(),
        root_pem,
        token: token.into(),
        node_id: "trellis~node-a".into(),
        types: vec![ADDRESS_TYPE, AUTHORIZATION_TYPE],
        socket_mark: None,
    })
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn uids(store: &StateStore) -> Vec<String> {
    let mut u: Vec<String> = store
        .load()
        .config()
        .workloads
        .iter()
        .map(|w| w.uid.clone())
        .collect();
    u.sort();
    u
}

#[tokio::test]
async fn a_proxy_syncs_looks_up_on_demand_follows_changes_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root_pem = ca::init(dir.path(), "cluster.local", false)
        .expect("ca init")
        .roots_pem();
    let mut cfg = parse(MESH).expect("mesh parses");
    let (ctl, addr) = controller(dir.path(), "127.0.0.1:0".parse().unwrap(), &cfg).await;

    let spec = spec(addr, root_pem.clone(), "tok-a");
    let store = Arc::new(source::initial_store(&spec).expect("store"));
    assert!(
        !store.is_synced(),
        "not ready before the controller answers"
    );
    let on_demand = OnDemand::default();
    let task = source::spawn(&spec, store.clone(), None, Some(on_demand.clone()));

    // First sync: this node's workload and the policies, nothing of node-b.
    until("first sync", || store.is_synced()).await;
    assert_eq!(uids(&store), ["a1"]);
    assert_eq!(store.load().config().policies.len(), 1);
    assert!(store.load().config().services.is_empty());

    // On demand, hit: the VIP brings the service and both endpoints.
    assert!(on_demand.fetch("/198.19.0.1".into()).await, "answered");
    assert_eq!(uids(&store), ["a1", "b1", "b2"]);
    {
        let st = store.load();
        let web = st
            .service_by_vip("198.19.0.1".parse().unwrap())
            .expect("service held")
            .clone();
        let eps: Vec<_> = st
            .endpoints(&web, 80)
            .into_iter()
            .map(|(w, _)| w.uid.clone())
            .collect();
        assert_eq!(
            eps,
            ["b1", "b2"],
            "routable: membership came on the workloads"
        );
    }
    // On demand, miss: answered at once, nothing added; asked again, answered again.
    assert!(on_demand.fetch("/198.18.9.9".into()).await);
    assert!(on_demand.fetch("/198.18.9.9".into()).await);
    assert_eq!(uids(&store), ["a1", "b1", "b2"]);

    // A change: b2 is deleted, a new pod lands on node-a.
    cfg.workloads.retain(|w| w.uid != "b2");
    cfg.services[0].endpoints = vec!["b1".into()];
    let mut a2 = cfg.workloads[0].clone();
    a2.uid = "a2".into();
    a2.name = "a2".into();
    a2.addresses = vec!["198.18.1.2".parse().unwrap()];
    cfg.workloads.push(a2);
    ctl.snapshots.send_replace(snapshot(&cfg));
    until("b2 removed and a2 added", || {
        uids(&store) == ["a1", "a2", "b1"]
    })
    .await;

    // A resource the proxy cannot decode is NACKed; the good change that
    // came with it (a3) is applied, and nothing else is lost.
    let mut a3 = cfg.workloads[0].clone();
    a3.uid = "a3".into();
    a3.name = "a3".into();
    a3.addresses = vec!["198.18.1.3".parse().unwrap()];
    let mut with_a3 = cfg.clone();
    with_a3.workloads.push(a3);
    let mut b = Snapshot::builder();
    b.add_all(encode_config(&with_a3, "")).expect("snapshot");
    let empty_address = prost_types::Any {
        type_url: ADDRESS_TYPE.into(),
        value: prost::Message::encode_to_vec(&trellis_api::pb::istio::workload::Address {
            r#type: None,
        }),
    };
    b.add(
        ADDRESS_TYPE,
        "broken",
        Some("node-a".into()),
        vec![],
        empty_address,
    )
    .expect("snapshot");
    ctl.snapshots.send_replace(Arc::new(b.build()));
    until("a3 applied next to the broken one", || {
        uids(&store) == ["a1", "a2", "a3", "b1"]
    })
    .await;
    cfg = with_a3;

    // The controller goes away: the proxy keeps serving its last config...
    drop(ctl);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(uids(&store), ["a1", "a2", "a3", "b1"]);
    // ...and a restarted controller, with a change made meanwhile, brings it
    // up to date (the on-demand service stays subscribed across the restart).
    cfg.workloads.retain(|w| w.uid != "a1");
    cfg.services[0].ports[0].target_port = 9090;
    let (_ctl2, _) = controller(dir.path(), addr, &cfg).await;
    until("resync after restart", || {
        let st = store.load();
        uids(&store) == ["a2", "a3", "b1"]
            && st
                .service_by_vip("198.19.0.1".parse().unwrap())
                .is_some_and(|s| s.ports[0].target_port == 9090)
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn a_bad_token_or_wrong_root_never_syncs_and_keeps_trying() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root_pem = ca::init(dir.path(), "cluster.local", false)
        .expect("ca init")
        .roots_pem();
    let other = tempfile::tempdir().expect("tempdir");
    let other_root = ca::init(other.path(), "cluster.local", false)
        .expect("ca init")
        .roots_pem();
    let cfg = parse(MESH).expect("mesh parses");
    let (_ctl, addr) = controller(dir.path(), "127.0.0.1:0".parse().unwrap(), &cfg).await;
    for (what, spec) in [
        ("bad token", spec(addr, root_pem.clone(), "nope")),
        (
            "untrusted controller",
            spec(addr, other_root.clone(), "tok-a"),
        ),
    ] {
        let store = Arc::new(source::initial_store(&spec).expect("store"));
        let task = source::spawn(&spec, store.clone(), None, None);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!store.is_synced(), "{what}: must not become ready");
        assert!(uids(&store).is_empty(), "{what}");
        assert!(!task.is_finished(), "{what}: the source keeps retrying");
        task.abort();
    }
}
