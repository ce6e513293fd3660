//! The delta ADS service over the real TLS port: a tonic client over rustls
//! (trusting a test CA), plaintext garbage, and callers without a valid token.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prost::Message;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::{Channel, Endpoint};
use trellis_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use trellis_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
};
use trellis_api::pb::istio::workload::{address, Address, Workload};
use trellis_controller::auth::{AuthError, Authenticator, Caller};
use trellis_controller::serve::serve;
use trellis_controller::xds::{Snapshot, XdsService, ADDRESS};

/// How long any one step may take before the test fails (a hang guard, not
/// a performance bound).
const STEP: Duration = Duration::from_secs(20);

/// Tokens are node names: "node-<x>" is that node's proxy; anything else is refused.
struct TestAuth;

impl Authenticator for TestAuth {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Caller, AuthError>> + Send + 'a>> {
        Box::pin(async move {
            if token.starts_with("node-") {
                Ok(Caller::NodeProxy {
                    node: token.to_string(),
                })
            } else {
                Err(AuthError::Invalid(format!("unknown test token {token:?}")))
            }
        })
    }
}

fn snapshot(workloads: &[(&str, &str, &str)]) -> Arc<Snapshot> {
    let mut b = Snapshot::builder();
    for (uid, node, rev) in workloads {
        let w = Workload {
            uid: uid.to_string(),
            node: node.to_string(),
            canonical_revision: rev.to_string(),
            ..Default::default()
        };
        let any = prost_types::Any {
            type_url: ADDRESS.into(),
            value: Address {
                r#type: Some(address::Type::Workload(w)),
            }
            .encode_to_vec(),
        };
        b.add(ADDRESS, *uid, Some(node.to_string()), vec![], any)
            .unwrap();
    }
    Arc::new(b.build())
}

struct Pki {
    ca: CertificateDer<'static>,
    server: rustls::ServerConfig,
}

fn pki() -> anyhow::Result<Pki> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &issuer)?;
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )?;
    Ok(Pki {
        ca: ca.der().clone(),
        server,
    })
}

struct Server {
    addr: SocketAddr,
    snapshots: watch::Sender<Arc<Snapshot>>,
    metrics: Arc<trellis_controller::xds::XdsMetrics>,
    ca: CertificateDer<'static>,
    _stop: oneshot::Sender<()>,
}

async fn start(initial: Arc<Snapshot>) -> anyhow::Result<Server> {
    let pki = pki()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (snapshots, rx) = watch::channel(initial);
    let service = XdsService::new(Arc::new(TestAuth), rx);
    let metrics = service.metrics();
    let router = tonic::transport::Server::builder().add_service(service.into_server());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, Arc::new(pki.server), router, async move {
        let _ = stopped.await;
    }));
    Ok(Server {
        addr,
        snapshots,
        metrics,
        ca: pki.ca,
        _stop: stop,
    })
}

/// A tonic channel over rustls to `addr`, trusting `ca`, verifying "localhost".
async fn channel(addr: SocketAddr, ca: CertificateDer<'static>) -> anyhow::Result<Channel> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca)?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = connector
                    .connect(ServerName::try_from("localhost").expect("static name"), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await?;
    Ok(channel)
}

/// An open delta stream: the sender of requests and the response stream.
struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

async fn open(
    channel: Channel,
    token: Option<&str>,
    first: DeltaDiscoveryRequest,
) -> Result<Delta, tonic::Status> {
    let (tx, mut reqs) = mpsc::channel(8);
    tx.send(first).await.expect("fresh channel");
    let stream = futures_util::stream::poll_fn(move |cx| reqs.poll_recv(cx));
    let mut request = tonic::Request::new(stream);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
    }
    let rx = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(request)
        .await?
        .into_inner();
    Ok(Delta { tx, rx })
}

impl Delta {
    async fn next(&mut self) -> anyhow::Result<DeltaDiscoveryResponse> {
        tokio::time::timeout(STEP, self.rx.message())
            .await
            .context("no response in time")??
            .context("stream ended")
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) -> anyhow::Result<()> {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await?;
        Ok(())
    }
}

fn wildcard() -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: ADDRESS.into(),
        resource_names_subscribe: vec!["*".into()],
        ..Default::default()
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn delta_stream_end_to_end_over_tls() -> anyhow::Result<()> {
    let server = start(snapshot(&[("a1", "node-a", "v1"), ("b1", "node-b", "v1")])).await?;
    let mut delta = open(
        channel(server.addr, server.ca.clone()).await?,
        Some("node-a"),
        wildcard(),
    )
    .await?;

    let first = delta.next().await?;
    assert_eq!(first.type_url, ADDRESS);
    assert_eq!(names(&first), ["a1"], "node-a gets only its own workload");
    delta.ack(&first).await?;

    server.snapshots.send(snapshot(&[
        ("a1", "node-a", "v2"),
        ("a2", "node-a", "v1"),
        ("b1", "node-b", "v2"),
    ]))?;
    let pushed = delta.next().await?;
    assert_eq!(names(&pushed), ["a1", "a2"]);
    assert_ne!(pushed.nonce, first.nonce);
    assert_ne!(pushed.resources[0].version, first.resources[0].version);
    delta.ack(&pushed).await?;

    server.snapshots.send(snapshot(&[("a2", "node-a", "v1")]))?;
    let removed = delta.next().await?;
    assert!(removed.resources.is_empty());
    assert_eq!(removed.removed_resources, ["a1"]);

    let metrics = server.metrics.clone();
    eventually("three pushes on one stream", || {
        let m = metrics.read();
        m.pushes == 3 && m.connected == 1 && m.streams_total == 1
    })
    .await;
    drop(delta);
    eventually("the stream to close", || metrics.read().connected == 0).await;
    Ok(())
}

#[tokio::test]
async fn plaintext_garbage_is_dropped_and_the_server_keeps_serving() -> anyhow::Result<()> {
    let server = start(snapshot(&[("a1", "node-a", "v1")])).await?;

    let mut raw = tokio::net::TcpStream::connect(server.addr).await?;
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01garbage")
        .await?;
    let mut buf = Vec::new();
    // The server drops the connection: EOF (or a reset), possibly after a TLS alert.
    let read = tokio::time::timeout(STEP, raw.read_to_end(&mut buf))
        .await
        .context("connection not closed")?;
    if let Ok(n) = read {
        assert!(
            !buf.starts_with(b"HTTP/"),
            "plaintext must not be answered, got {n} bytes"
        );
    }

    let mut delta = open(
        channel(server.addr, server.ca.clone()).await?,
        Some("node-a"),
        wildcard(),
    )
    .await?;
    assert_eq!(names(&delta.next().await?), ["a1"]);
    Ok(())
}

#[tokio::test]
async fn callers_without_a_valid_token_are_unauthenticated() -> anyhow::Result<()> {
    let server = start(snapshot(&[("a1", "node-a", "v1")])).await?;
    // (token, words the message must contain)
    let cases: &[(Option<&str>, &str)] = &[(None, "bearer"), (Some("stranger"), "not valid")];
    for (token, words) in cases {
        let result = open(
            channel(server.addr, server.ca.clone()).await?,
            *token,
            wildcard(),
        )
        .await;
        let status = match result {
            Ok(mut delta) => match delta.next().await {
                Ok(r) => panic!("{token:?} got a response: {r:?}"),
                Err(e) => e.downcast::<tonic::Status>()?,
            },
            Err(status) => status,
        };
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{token:?}: {status:?}"
        );
        assert!(
            status.message().to_lowercase().contains(words),
            "{token:?}: {}",
            status.message()
        );
    }
    assert_eq!(server.metrics.read().refused, 2);
    assert_eq!(server.metrics.read().streams_total, 0);
    Ok(())
}

#[tokio::test]
async fn state_of_the_world_is_unimplemented() -> anyhow::Result<()> {
    let server = start(snapshot(&[])).await?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel(server.addr, server.ca.clone()).await?);
    let request = futures_util::stream::iter(vec![DiscoveryRequest {
        type_url: ADDRESS.into(),
        ..Default::default()
    }]);
    let status = client
        .stream_aggregated_resources(request)
        .await
        .expect_err("sotw must be refused");
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(status.message().contains("DeltaAggregatedResources"));
    Ok(())
}

#[tokio::test]
async fn unknown_types_are_ignored_and_a_request_without_type_ends_the_stream() -> anyhow::Result<()>
{
    let server = start(snapshot(&[("a1", "node-a", "v1")])).await?;
    let unknown = DeltaDiscoveryRequest {
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        resource_names_subscribe: vec!["*".into()],
        ..Default::default()
    };
    let mut delta = open(
        channel(server.addr, server.ca.clone()).await?,
        Some("node-a"),
        unknown,
    )
    .await?;
    delta.tx.send(wildcard()).await?;
    let first = delta.next().await?;
    assert_eq!(first.type_url, ADDRESS, "the unknown type got no response");
    assert_eq!(names(&first), ["a1"]);

    delta.tx.send(DeltaDiscoveryRequest::default()).await?;
    let status = match delta.next().await {
        Ok(r) => panic!("a request without type_url was answered: {r:?}"),
        Err(e) => e.downcast::<tonic::Status>()?,
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("type_url"),
        "{}",
        status.message()
    );
    Ok(())
}
