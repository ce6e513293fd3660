use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hbone::{Identity, TrustBundle, WorkloadCert};
use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};

use super::*;
use crate::ca::keys::init;

fn csr(sans: Vec<SanType>) -> (String, KeyPair) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    let pem = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (pem, key)
}

fn uri(s: &str) -> SanType {
    SanType::URI(rcgen::string::Ia5String::try_from(s).expect("ia5"))
}

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

#[test]
fn csr_parse_table() {
    let cases: Vec<(&str, Vec<SanType>, Result<&str, &str>)> = vec![
        ("one spiffe uri", vec![uri(WEB)], Ok(WEB)),
        ("no san", vec![], Err("no spiffe")),
        (
            "two uris",
            vec![uri(WEB), uri("spiffe://cluster.local/ns/a/sa/b")],
            Err("2 uri sans"),
        ),
        (
            "not spiffe",
            vec![uri("https://example.com/x")],
            Err("not a workload identity"),
        ),
    ];
    for (name, sans, want) in cases {
        let (pem, _) = csr(sans);
        match (Csr::parse(&pem), want) {
            (Ok(c), Ok(id)) => assert_eq!(c.identity().to_string(), id, "{name}"),
            (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{name}: {e}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
    let err = Csr::parse(
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    )
    .unwrap_err();
    assert!(matches!(err, SignError::BadCsr(_)), "{err}");
}

#[test]
fn tampered_csr_signature_is_refused() {
    let (pem, _) = csr(vec![uri(WEB)]);
    let der = rustls_pemfile::csr(&mut pem.as_bytes())
        .expect("read")
        .expect("one csr");
    let mut bytes = der.as_ref().to_vec();
    // Flip a byte inside the signature (the last bytes of the DER).
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    let b64 = crate::ca::keys::to_pem(&rustls_pki_types::CertificateDer::from(bytes))
        .replace("CERTIFICATE", "CERTIFICATE REQUEST");
    let err = Csr::parse(&b64).unwrap_err();
    assert!(matches!(err, SignError::BadCsr(_)), "{err}");
}

#[test]
fn leaf_has_only_the_spiffe_san_and_capped_validity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = init(dir.path(), "cluster.local", false).expect("init");
    let (pem, key) = csr(vec![
        uri(WEB),
        SanType::DnsName("evil.example".try_into().expect("dns")),
    ]);
    let c = Csr::parse(&pem).expect("parse");
    let max = Duration::from_secs(3600);
    let chain = sign(&ca, &c, Some(Duration::from_secs(100 * 3600)), max).expect("sign");
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    let cert = WorkloadCert::from_pem(&chain.concat(), &key.serialize_pem()).expect("leaf+key");
    assert_eq!(cert.identity().to_string(), WEB);
    let left = cert
        .not_after()
        .duration_since(SystemTime::now())
        .expect("future");
    assert!(
        left <= max && left > max - Duration::from_secs(60),
        "{left:?}"
    );

    let leaf_der = &cert.chain()[0];
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der).expect("x509");
    let san = leaf
        .subject_alternative_name()
        .expect("ext")
        .expect("san present");
    assert_eq!(san.value.general_names.len(), 1, "only the spiffe uri");
    assert!(!leaf.is_ca());

    let short = sign(&ca, &c, Some(Duration::from_secs(600)), max).expect("sign");
    let cert = WorkloadCert::from_pem(&short.concat(), &key.serialize_pem()).expect("leaf");
    let left = cert
        .not_after()
        .duration_since(SystemTime::now())
        .expect("future");
    assert!(left <= Duration::from_secs(600), "{left:?}");
}

/// A leaf signed by the intermediate, presented with the intermediate,
/// verifies against a bundle holding the root only, both ways.
#[tokio::test]
async fn issued_chain_passes_a_real_mtls_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = init(dir.path(), "cluster.local", false).expect("init");
    let bundle = TrustBundle::from_pem(&ca.roots_pem()).expect("bundle");
    let issue = |id: &str| {
        let (pem, key) = csr(vec![uri(id)]);
        let chain = sign(
            &ca,
            &Csr::parse(&pem).expect("csr"),
            None,
            Duration::from_secs(3600),
        )
        .expect("sign");
        // Leaf and intermediate only: the root is the peer's to have.
        WorkloadCert::from_pem(&chain[..2].concat(), &key.serialize_pem()).expect("cert")
    };
    let server_id = "spiffe://cluster.local/ns/default/sa/server";
    let server_cert = issue(server_id);
    let client_cert = issue(WEB);
    let server_cfg = hbone::server_config(&server_cert, &bundle).expect("server cfg");
    let expected: Identity = server_id.parse().expect("id");
    let client_cfg = hbone::client_config(&client_cert, &bundle, &[expected]).expect("client cfg");

    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&client_cfg));
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let (srv, cli) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
    let srv = srv.expect("server handshake");
    let cli = cli.expect("client handshake");
    assert_eq!(
        hbone::peer_identity(srv.get_ref().1)
            .expect("peer")
            .to_string(),
        WEB
    );
    assert_eq!(
        hbone::peer_identity(cli.get_ref().1)
            .expect("peer")
            .to_string(),
        server_id
    );

    // A bundle with another root refuses the same chain.
    let other = tempfile::tempdir().expect("tempdir");
    let other_ca = init(other.path(), "cluster.local", false).expect("init");
    let other_bundle = TrustBundle::from_pem(&other_ca.roots_pem()).expect("bundle");
    let server_cfg = hbone::server_config(&server_cert, &other_bundle).expect("server cfg");
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
    let connector = tokio_rustls::TlsConnector::from(client_cfg);
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let (srv, _cli) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
    assert!(srv.is_err(), "a foreign root must not verify the client");
}
