//! What a stock Istio ztunnel (1.28) sends, replayed over the real TLS port
//! of the `trellis-controller` binary, with what ztunnel needs back. The
//! requests are the ones ztunnel was seen sending against this controller
//! (README, "Istio ztunnel"): its node metadata and `clusterid` header, an
//! on-demand subscription (`*` subscribed and unsubscribed at once), lookups
//! by `<network>/<ip>`, `<namespace>/<hostname>` and uid, a reconnect that
//! names only `initial_resource_versions` with empty versions, and a
//! certificate request with `ImpersonatedIdentity`.
//!
//! ztunnel's rule that matters most: an on-demand lookup is released only
//! when a response names it, as a resource or in `removed_resources`
//! (it reads no `aliases`); [`releases`] is that rule.

mod cli_harness;

use std::collections::BTreeMap;

use prost_types::{value::Kind, Struct, Value};
use tokio::sync::mpsc;
use trellis_api::pb::envoy::config::core::v3::Node;
use trellis_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use trellis_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use trellis_api::pb::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use trellis_api::pb::istio::v1::auth::IstioCertificateRequest;
use trellis_controller::xds::{ADDRESS, AUTHORIZATION};

use cli_harness::*;

const CLIENT: &str = "Kubernetes//Pod/demo/client";
const SERVER_1: &str = "Kubernetes//Pod/demo/server-1";
const SERVICE: &str = "demo/server.demo.svc.cluster.local";
/// The service's VIP as ztunnel names it: `<network>/<ip>`, default network.
const SERVICE_VIP: &str = "/198.18.128.20";

/// Whether ztunnel would release a pending lookup of `name` on `r`.
fn releases(r: &DeltaDiscoveryResponse, name: &str) -> bool {
    r.resources.iter().any(|x| x.name == name) || r.removed_resources.iter().any(|x| x == name)
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    let mut n: Vec<&str> = r.resources.iter().map(|x| x.name.as_str()).collect();
    n.sort();
    n
}

fn strings(fields: &[(&str, &str)]) -> Struct {
    Struct {
        fields: fields
            .iter()
            .map(|(k, v)| {
                let v = Value {
                    kind: Some(Kind::StringValue(v.to_string())),
                };
                (k.to_string(), v)
            })
            .collect::<BTreeMap<_, _>>(),
    }
}

/// The node ztunnel describes itself with (`POD_NAME=ztunnel-a`,
/// `POD_NAMESPACE=istio-system`, `NODE_NAME=node-a`): the controller must
/// accept it, though it trusts the token, not this, for the node.
fn ztunnel_node() -> Node {
    Node {
        id: "ztunnel~127.0.0.1~ztunnel-a.istio-system~istio-system.svc.cluster.local".into(),
        metadata: Some(strings(&[
            ("NAME", "ztunnel-a"),
            ("NAMESPACE", "istio-system"),
            ("INSTANCE_IPS", "127.0.0.1"),
            ("NODE_NAME", "node-a"),
        ])),
        ..Default::default()
    }
}

/// ztunnel's first request of a type: with `XDS_ON_DEMAND=true` the
/// Address type subscribes and unsubscribes `*`; Authorization names
/// nothing (a wildcard). A reconnect lists what it holds, versions empty.
fn first(type_url: &str, on_demand: bool, held: &[&str]) -> DeltaDiscoveryRequest {
    let star = if on_demand {
        vec!["*".to_string()]
    } else {
        vec![]
    };
    DeltaDiscoveryRequest {
        node: Some(ztunnel_node()),
        type_url: type_url.into(),
        resource_names_subscribe: star.clone(),
        resource_names_unsubscribe: star,
        initial_resource_versions: held
            .iter()
            .map(|n| (n.to_string(), String::new()))
            .collect(),
        ..Default::default()
    }
}

/// One ztunnel ADS stream.
struct Ztunnel {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Ztunnel {
    /// Opens the stream as ztunnel does (bearer token and `clusterid`
    /// headers) and sends its two initial requests.
    async fn connect(c: &Controller, token: &str, held: &[&str]) -> anyhow::Result<Ztunnel> {
        let (tx, mut reqs) = mpsc::channel(8);
        let mut request =
            tonic::Request::new(futures_util::stream::poll_fn(move |cx| reqs.poll_recv(cx)));
        let md = request.metadata_mut();
        md.insert("authorization", format!("Bearer {token}").parse()?);
        md.insert("clusterid", "Kubernetes".parse()?);
        tx.send(first(ADDRESS, true, held)).await?;
        tx.send(first(AUTHORIZATION, false, &[])).await?;
        let rx = AggregatedDiscoveryServiceClient::new(c.channel().await?)
            .delta_aggregated_resources(request)
            .await?
            .into_inner();
        Ok(Ztunnel { tx, rx })
    }

    /// The next response, ACKed as ztunnel does.
    async fn next(&mut self) -> anyhow::Result<DeltaDiscoveryResponse> {
        next_acked(&self.tx, &mut self.rx).await
    }

    /// An on-demand lookup, as ztunnel's demander sends it, and its answer.
    async fn demand(&mut self, name: &str) -> anyhow::Result<DeltaDiscoveryResponse> {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: ADDRESS.into(),
                resource_names_subscribe: vec![name.into()],
                ..Default::default()
            })
            .await?;
        self.next().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_on_demand_session() -> anyhow::Result<()> {
    let setup = Setup::new()?;
    let c = setup.start()?;
    let mut zt = Ztunnel::connect(&c, "tok-a", &[]).await?;

    // One response per type right away (ztunnel is not ready before): the
    // node's own pod, though nothing was asked for by name, and the policy.
    let a = zt.next().await?;
    assert_eq!((a.type_url.as_str(), names(&a)), (ADDRESS, vec![CLIENT]));
    let p = zt.next().await?;
    assert_eq!(
        (p.type_url.as_str(), names(&p)),
        (AUTHORIZATION, vec!["demo/server-allow-client"])
    );

    // (lookup, resources the answer must carry)
    let lookups: &[(&str, &[&str])] = &[
        (SERVICE_VIP, &[SERVICE]),
        (SERVICE, &[SERVICE]),
        (SERVER_1, &[SERVER_1]),
        ("/198.18.9.9", &[]),
    ];
    for (name, carried) in lookups {
        let r = zt.demand(name).await?;
        assert!(releases(&r, name), "{name} not released by {r:?}");
        for want in *carried {
            assert!(names(&r).contains(want), "{name}: {want} missing: {r:?}");
        }
    }

    // A reconnect (ztunnel after a controller restart or failover) names
    // what it holds only in initial_resource_versions: it is sent again,
    // nothing is taken away, and it stays subscribed.
    drop(zt);
    let mut zt = Ztunnel::connect(&c, "tok-a", &[CLIENT, SERVICE, SERVER_1]).await?;
    let a = zt.next().await?;
    assert_eq!(a.type_url, ADDRESS);
    for held in [CLIENT, SERVICE, SERVER_1] {
        assert!(names(&a).contains(&held), "{held} not resent: {a:?}");
    }
    assert!(a.removed_resources.is_empty(), "{a:?}");
    zt.next().await?; // Authorization

    let server = setup.manifests().join("workloads/server.yaml");
    let text = std::fs::read_to_string(&server)?;
    let edited = text.replacen("podIP: 198.18.2.21", "podIP: 198.18.2.22", 1);
    anyhow::ensure!(edited != text, "server-1's address not found in {server:?}");
    write_manifest(&server, &edited)?;
    let pushed = zt.next().await?;
    assert!(names(&pushed).contains(&SERVER_1), "{pushed:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_certificate_requests() -> anyhow::Result<()> {
    let setup = Setup::new()?;
    let c = setup.start()?;
    let mut ca = IstioCertificateServiceClient::new(c.channel().await?);
    // (identity, granted): node-a runs the client pod, not the servers.
    let cases = [
        ("spiffe://cluster.local/ns/demo/sa/client", true),
        ("spiffe://cluster.local/ns/demo/sa/server", false),
    ];
    for (id, granted) in cases {
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: csr(id)?,
            validity_duration: 86400,
            metadata: Some(strings(&[("ImpersonatedIdentity", id)])),
        });
        req.metadata_mut()
            .insert("authorization", "Bearer tok-a".parse()?);
        req.metadata_mut()
            .insert("clusterid", "Kubernetes".parse()?);
        match (ca.create_certificate(req).await, granted) {
            // ztunnel takes the leaf first and the rest as its chain.
            (Ok(r), true) => assert!(r.into_inner().cert_chain.len() >= 2, "{id}"),
            (Err(e), false) => assert_eq!(e.code(), tonic::Code::PermissionDenied, "{id}"),
            (got, _) => panic!("{id}: granted={granted}, got {got:?}"),
        }
    }
    Ok(())
}
