//! The controller's Kubernetes source run in-process against a real API
//! server ([`crate::kube`]): each batch it applies is translated, and the
//! result lands in a watch channel that tests wait on. Used by the tests
//! of what the source and translation make of objects as the API server
//! serves them (tests/tests/controller_kube_*.rs).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::sync::watch;
use trellis_api::config::{LocalConfig, Workload};
use trellis_controller::kube::{ApiConfig, Client, KubeSource, SourceOptions, DEFAULT_RESOURCES};
use trellis_controller::objects::{translate, ObjectStore, TranslateOptions};

use crate::kube::{require_kube, KubeApiServer, KubeError, REQUIRE_ENV};
use crate::manifests::{self, PodDef, ISTIO_AMBIENT_LABEL};

/// A hang guard for each wait, not a performance bound.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// An API server on loopback for one test, or None (after saying why)
/// when the binaries are missing and [`REQUIRE_ENV`] does not demand them.
pub fn start_kube() -> Option<KubeApiServer> {
    if !require_kube() {
        return None;
    }
    Some(KubeApiServer::start(None, None).expect("the API server starts"))
}

/// Whether the CRDs `what` were installed (`result`). Those from a Go
/// module are optional: without the module, the test's part that needs
/// them is skipped with a message, except when [`REQUIRE_ENV`]`=1` (CI),
/// where that fails like any other error.
pub fn installed(what: &str, result: Result<(), KubeError>) -> bool {
    match result {
        Ok(()) => true,
        Err(e @ KubeError::Crd { .. }) if std::env::var(REQUIRE_ENV).as_deref() != Ok("1") => {
            eprintln!("skipping what needs {what}: {e}");
            false
        }
        Err(e) => panic!("installing {what}: {e}"),
    }
}

/// The controller's API client, with the server's admin kubeconfig.
pub fn client(kube: &KubeApiServer) -> Client {
    Client::new(ApiConfig::from_kubeconfig(kube.kubeconfig()).expect("the server's kubeconfig"))
}

/// What one translation of the store gave.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub config: LocalConfig,
    /// Every current store problem, as the operator reads it.
    pub errors: Vec<String>,
    /// What translation left out, and why.
    pub translation_errors: Vec<String>,
}

/// Short retries and batching, so a test sees a missing CRD appear or a
/// broken watch resume within its deadline.
pub fn fast() -> SourceOptions {
    SourceOptions {
        missing_crd_retry: Duration::from_millis(500),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        watch_timeout: Duration::from_secs(60),
        batch_window: Duration::from_millis(20),
    }
}

/// Runs the source (with Istio's labels honoured); each batch's
/// translation lands in the receiver.
pub fn run_source(client: Client) -> (watch::Receiver<Snapshot>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Snapshot::default());
    let source = KubeSource::with_resources(client, DEFAULT_RESOURCES.to_vec(), fast());
    let opts = TranslateOptions {
        istio_labels: true,
        ..Default::default()
    };
    let task = tokio::spawn(source.run(ObjectStore::new(), move |store, _changes| {
        let t = translate(store, &opts);
        tx.send_replace(Snapshot {
            config: t.config,
            errors: store.errors().iter().map(ToString::to_string).collect(),
            translation_errors: t.errors.iter().map(ToString::to_string).collect(),
        });
    }));
    (rx, task)
}

/// The first snapshot for which `ok` holds; panics with the last one
/// after [`DEADLINE`].
pub async fn wait_for(
    rx: &mut watch::Receiver<Snapshot>,
    what: &str,
    ok: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let waited = tokio::time::timeout(DEADLINE, rx.wait_for(|s| ok(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match waited {
        Ok(Ok(s)) => s,
        _ => panic!(
            "not within {DEADLINE:?}: {what}; last snapshot: {:#?}",
            *rx.borrow()
        ),
    }
}

/// The workload of pod `ns/name`, if the snapshot has it.
pub fn workload<'a>(s: &'a Snapshot, ns: &str, name: &str) -> Option<&'a Workload> {
    s.config
        .workloads
        .iter()
        .find(|w| w.namespace == ns && w.name == name)
}

/// Namespace `ns`, in the mesh by Istio's label, and its default
/// ServiceAccount (which the API server's admission wants before a pod).
pub fn namespace_yaml(ns: &str) -> String {
    manifests::stream(&[
        manifests::namespace(ns, Some(ISTIO_AMBIENT_LABEL)),
        manifests::service_account(ns, "default"),
    ])
}

/// Pod `ns/name` labelled `app`, on `node`, with the default service
/// account. No status: the API server ignores one sent on create, so tests
/// write it afterwards (`KubeApiServer::pod_status`).
pub fn pod_yaml(ns: &str, name: &str, app: &str, node: &str) -> String {
    manifests::pod(
        &PodDef {
            namespace: ns.into(),
            name: name.into(),
            service_account: "default".into(),
            node: node.into(),
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            app: app.into(),
            gateway: None,
            labels: Vec::new(),
        },
        false,
    )
}
