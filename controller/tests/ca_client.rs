//! The controller's CA served over TLS gRPC on 127.0.0.1, called by a raw
//! tonic client (to see status codes) and by the proxies' `CaIssuer`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hbone::{Identity, WorkloadCert};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Code;
use trellis_api::config::LocalConfig;
use trellis_api::pb::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use trellis_api::pb::istio::v1::auth::IstioCertificateRequest;
use trellis_controller::auth::TokenFile;
use trellis_controller::ca::{self, CaService};
use trellis_core::certs::ca_client::{CaClientConfig, CaIssuer};
use trellis_core::certs::{IssueError, Issuer};

const X: &str = "spiffe://cluster.local/ns/a/sa/x";
const Y: &str = "spiffe://cluster.local/ns/a/sa/y";
const WP: &str = "spiffe://cluster.local/ns/default/sa/waypoint";
const SERVER_NAME: &str = "istiod.istio-system.svc";

const TOKENS: &str = r#"
tokens:
- token: "tok-a"
  nodeProxy: { node: node-a }
- token: "tok-b"
  nodeProxy: { node: node-b }
- token: "tok-w"
  waypoint: { spiffeId: "spiffe://cluster.local/ns/default/sa/waypoint" }
"#;

const MESH: &str = r#"
workloads:
- { uid: x1, name: x1, namespace: a, serviceAccount: x, node: node-a }
- { uid: y1, name: y1, namespace: a, serviceAccount: y, node: node-b }
"#;

struct Controller {
    addr: SocketAddr,
    root_pem: String,
    _dir: tempfile::TempDir,
    _mesh: watch::Sender<Arc<LocalConfig>>,
}

async fn controller(max_validity: Duration) -> Controller {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Arc::new(ca::init(dir.path(), "cluster.local", false).expect("ca init"));
    let auth = Arc::new(TokenFile::parse(TOKENS, Path::new("tokens.yaml")).expect("tokens"));
    let mesh: LocalConfig = serde_yaml_ng::from_str(MESH).expect("mesh");
    let (mesh_tx, mesh_rx) = watch::channel(Arc::new(mesh));
    let tls = ca
        .serving_config(&[SERVER_NAME.to_owned()])
        .expect("serving config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let svc = CaService::new(ca.clone(), auth, mesh_rx, max_validity).into_server();
    let router = tonic::transport::Server::builder().add_service(svc);
    tokio::spawn(trellis_controller::serve::serve(
        listener,
        tls,
        router,
        std::future::pending(),
    ));
    Controller {
        addr,
        root_pem: ca.roots_pem(),
        _dir: dir,
        _mesh: mesh_tx,
    }
}

#[derive(Clone)]
struct Connector {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(this.addr).await?;
            let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("name");
            Ok(TokioIo::new(this.tls.connect(name, tcp).await?))
        })
    }
}

async fn raw_client(c: &Controller) -> IstioCertificateServiceClient<Channel> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut c.root_pem.as_bytes()) {
        roots.add(cert.expect("root")).expect("add root");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(hbone::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = Connector {
        addr: c.addr,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
    };
    let channel = Endpoint::from_static("http://ca.test")
        .connect_with_connector(connector)
        .await
        .expect("connect over tls");
    IstioCertificateServiceClient::new(channel)
}

fn csr(id: &str) -> (String, KeyPair) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id.try_into().expect("ia5"))];
    let pem = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (pem, key)
}

fn request(
    csr: String,
    token: Option<&str>,
    impersonate: Option<&str>,
) -> tonic::Request<IstioCertificateRequest> {
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: [(
            "ImpersonatedIdentity".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(id.to_owned())),
            },
        )]
        .into_iter()
        .collect(),
    });
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata,
    });
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    req
}

async fn ask(
    c: &Controller,
    id: &str,
    token: Option<&str>,
    impersonate: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    let (pem, _) = csr(id);
    raw_client(c)
        .await
        .create_certificate(request(pem, token, impersonate))
        .await
        .map(|r| r.into_inner().cert_chain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_proxy_gets_its_pods_cert_and_not_another_nodes() {
    let c = controller(ca::DEFAULT_MAX_VALIDITY).await;
    let (pem, key) = csr(X);
    let chain = raw_client(&c)
        .await
        .create_certificate(request(pem, Some("tok-a"), Some(X)))
        .await
        .expect("node-a gets x")
        .into_inner()
        .cert_chain;
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    let cert = WorkloadCert::from_pem(&chain.concat(), &key.serialize_pem()).expect("cert");
    assert_eq!(cert.identity().to_string(), X);

    let err = ask(&c, Y, Some("tok-a"), Some(Y)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains(
            "node-a asked for spiffe://cluster.local/ns/a/sa/y, but no workload with that identity is scheduled on node-a (it runs on node-b)"
        ),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_token_is_unauthenticated() {
    let c = controller(ca::DEFAULT_MAX_VALIDITY).await;
    for token in [None, Some("tok-zzz"), Some("tok-")] {
        let err = ask(&c, X, token, None).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_gets_only_its_own_identity() {
    let c = controller(ca::DEFAULT_MAX_VALIDITY).await;
    let chain = ask(&c, WP, Some("tok-w"), None)
        .await
        .expect("own identity");
    assert_eq!(chain.len(), 3);
    let err = ask(&c, X, Some("tok-w"), None).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("its own identity only"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_invalid_argument() {
    let c = controller(ca::DEFAULT_MAX_VALIDITY).await;
    let mut client = raw_client(&c).await;
    let err = client
        .create_certificate(request("not a csr".into(), Some("tok-a"), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("csr"), "{}", err.message());

    // The CSR and the metadata must name the same identity.
    let err = ask(&c, X, Some("tok-a"), Some(Y)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("must agree"), "{}", err.message());
}

fn issuer(c: &Controller, token: &str) -> CaIssuer {
    CaIssuer::start(CaClientConfig {
        address: c.addr.to_string(),
        server_name: SERVER_NAME.into(),
        root_pem: c.root_pem.clone(),
        token: token.into(),
        impersonate: true,
        socket_mark: None,
    })
    .expect("start ca client")
}

/// Polls `issue` until a certificate comes (at most ~10 s).
async fn issued(issuer: &CaIssuer, id: &Identity) -> WorkloadCert {
    for _ in 0..200 {
        match issuer.issue(id, Duration::from_secs(3600)) {
            Ok(cert) => return cert,
            Err(IssueError::NotYetIssued) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("issue {id}: {e}"),
        }
    }
    panic!("no certificate for {id} from the ca");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_issuer_fetches_and_its_certs_pass_an_hbone_handshake() {
    let c = controller(ca::DEFAULT_MAX_VALIDITY).await;
    let x: Identity = X.parse().expect("id");
    let y: Identity = Y.parse().expect("id");
    let node_a = issuer(&c, "tok-a");
    let node_b = issuer(&c, "tok-b");

    assert!(matches!(
        node_a.issue(&x, Duration::from_secs(3600)),
        Err(IssueError::NotYetIssued)
    ));
    node_b.prefetch(std::slice::from_ref(&y));
    let cert_x = issued(&node_a, &x).await;
    let cert_y = issued(&node_b, &y).await;
    assert_eq!(cert_x.identity(), &x);
    assert_eq!(cert_y.identity(), &y);

    // node-a is refused y: it keeps answering NotYetIssued (and retries).
    for _ in 0..5 {
        assert!(matches!(
            node_a.issue(&y, Duration::from_secs(3600)),
            Err(IssueError::NotYetIssued)
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // x (server) and y (client) authenticate each other with the mesh root only.
    let bundle = node_a.trust_bundle();
    let server = hbone::server_config(&cert_x, &bundle).expect("server cfg");
    let client = hbone::client_config(&cert_y, &bundle, std::slice::from_ref(&x)).expect("client");
    let (a, b) = tokio::io::duplex(64 * 1024);
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let (srv, cli) = tokio::join!(
        tokio_rustls::TlsAcceptor::from(server).accept(a),
        tokio_rustls::TlsConnector::from(client).connect(name, b)
    );
    let srv = srv.expect("server handshake");
    cli.expect("client handshake");
    assert_eq!(hbone::peer_identity(srv.get_ref().1).expect("peer"), y);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_issuer_renews_before_expiry() {
    // 4 s certificates: renewed at about 2 s.
    let c = controller(Duration::from_secs(4)).await;
    let x: Identity = X.parse().expect("id");
    let node_a = issuer(&c, "tok-a");
    let first = issued(&node_a, &x).await;
    let mut renewed = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = node_a
            .issue(&x, Duration::from_secs(3600))
            .expect("still valid");
        if now.chain_pem() != first.chain_pem() {
            renewed = Some(now);
            break;
        }
    }
    let renewed = renewed.expect("the certificate was not renewed within 10 s");
    assert_eq!(renewed.identity(), &x);
    assert_ne!(renewed.key_pem(), first.key_pem(), "a new key per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_client_does_not_stop_the_tls_port() {
    use tokio::io::AsyncWriteExt;
    let c = controller(ca::DEFAULT_MAX_VALIDITY).await;
    // Plain text where a TLS ClientHello belongs, and a client that hangs up.
    let mut garbage = TcpStream::connect(c.addr).await.expect("connect");
    garbage
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    drop(TcpStream::connect(c.addr).await.expect("connect"));
    let chain = ask(&c, X, Some("tok-a"), None)
        .await
        .expect("served after bad clients");
    assert_eq!(chain.len(), 3);
}

/// The proxy's path through a renewal: an established TLS session goes on
/// (past the old certificate's expiry, even), and new handshakes present
/// the renewed certificate, as the issue asks ("without dropping anything").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_established_sessions_and_new_ones_use_the_new_cert() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use trellis_core::certs::CertManager;

    // 4 s certificates: renewed at about 2 s, expired at 4 s.
    let c = controller(Duration::from_secs(4)).await;
    let x: Identity = X.parse().expect("id");
    let y: Identity = Y.parse().expect("id");
    let server_certs = CertManager::new(Box::new(issuer(&c, "tok-a")), None);
    let node_b = issuer(&c, "tok-b");
    let cert_y = issued(&node_b, &y).await;
    let bundle = node_b.trust_bundle();
    let client_cfg =
        hbone::client_config(&cert_y, &bundle, std::slice::from_ref(&x)).expect("client");

    // One handshake with the server's current config; the server echoes.
    let handshake = |server: Arc<rustls::ServerConfig>| {
        let client_cfg = client_cfg.clone();
        async move {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
            let (srv, cli) = tokio::join!(
                tokio_rustls::TlsAcceptor::from(server).accept(a),
                tokio_rustls::TlsConnector::from(client_cfg).connect(name, b)
            );
            let mut srv = srv.expect("server handshake");
            let cli = cli.expect("client handshake");
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = srv.read(&mut buf).await {
                    if n == 0 || srv.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            cli
        }
    };
    let served_cert = |cli: &tokio_rustls::client::TlsStream<tokio::io::DuplexStream>| {
        cli.get_ref().1.peer_certificates().expect("peer certs")[0].clone()
    };
    async fn echo(cli: &mut tokio_rustls::client::TlsStream<tokio::io::DuplexStream>, n: u8) {
        cli.write_all(&[n]).await.expect("write on the old session");
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), cli.read_exact(&mut b))
            .await
            .expect("echo in time")
            .expect("read on the old session");
        assert_eq!(b[0], n);
    }

    let first_cfg = tokio::time::timeout(
        Duration::from_secs(10),
        server_certs.server_config_ready(&x),
    )
    .await
    .expect("in time")
    .expect("server config");
    let mut old = handshake(first_cfg.clone()).await;
    let first_cert = served_cert(&old);
    echo(&mut old, 1).await;

    // Until the renewal lands, the manager keeps handing out the same config.
    let mut renewed = None;
    for i in 0..100u8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        echo(&mut old, i).await;
        let now = server_certs.server_config(&x).expect("still held");
        if !Arc::ptr_eq(&now, &first_cfg) {
            renewed = Some(now);
            break;
        }
    }
    let renewed = renewed.expect("no renewal within 10 s");
    let new = handshake(renewed).await;
    assert_ne!(
        served_cert(&new),
        first_cert,
        "a new handshake presents the renewed cert"
    );

    // Past the first certificate's expiry, the old session still carries data.
    tokio::time::sleep(Duration::from_secs(3)).await;
    echo(&mut old, 200).await;
}

/// A projected token is rotated by the kubelet: the client reads its token
/// file for every request, so a retry after the rotation carries the new
/// token (here: refused with node-b's token for node-a's pod, then the
/// file is replaced with node-a's and the retry gets the certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_is_sent_on_the_next_request() {
    let c = controller(ca::DEFAULT_MAX_VALIDITY).await;
    let x: Identity = X.parse().expect("id");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("istio-token");
    std::fs::write(&path, "tok-b\n").expect("write");
    let node = CaIssuer::start(CaClientConfig {
        address: c.addr.to_string(),
        server_name: SERVER_NAME.into(),
        root_pem: c.root_pem.clone(),
        token: trellis_core::control::Token::file(&path).expect("token file"),
        impersonate: true,
        socket_mark: None,
    })
    .expect("start ca client");
    node.prefetch(std::slice::from_ref(&x));
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(
            node.issue(&x, Duration::from_secs(3600)),
            Err(IssueError::NotYetIssued)
        ));
    }
    // The kubelet's way: a new file renamed over the old one.
    let next = dir.path().join("..data-new");
    std::fs::write(&next, "tok-a\n").expect("write");
    std::fs::rename(&next, &path).expect("rename");
    let cert = issued(&node, &x).await;
    assert_eq!(cert.identity(), &x);
}
