//! Mutual TLS and identity checks on real loopback handshakes.

mod common;

use std::sync::Arc;

use common::*;
use hbone::{client_config, ClientConn, ErrorSide, H2Settings, HboneError, TlsError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens one tunnel on `conn`; with TLS 1.3 a server-side rejection of the
/// client only surfaces here, after the client finished its handshake.
async fn first_tunnel(conn: ClientConn) -> Result<hbone::H2Stream, HboneError> {
    conn.connect(&request("127.0.0.1:9")).await
}

#[tokio::test]
async fn mutual_tls_exchanges_identities() {
    let pki = Pki::new();
    let mut server = pki.serve(echo_handler()).await;
    let conn = pki
        .dial_expecting(server.addr, &[id("other"), id("server")])
        .await
        .expect("handshake with server in expected set");
    assert_eq!(server.expect_accepted().await, id("client"));
    assert!(!conn.is_closed());
}

#[tokio::test]
async fn wrong_trust_root_fails_with_shared_root_hint() {
    let pki = Pki::new();
    let other = Pki::new();
    let server = pki.serve(echo_handler()).await;
    let err = within(client_conn(
        server.addr,
        &pki.cert("client"),
        &other.bundle,
        &[id("server")],
    ))
    .await
    .expect_err("server cert is from an untrusted root");
    assert!(matches!(err, HboneError::TlsHandshake { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("tls handshake failed:"), "{msg}");
    assert!(msg.contains("check both nodes share a root CA"), "{msg}");
    // Dev roots have distinct names, so this is an unknown issuer rather
    // than a same-named root with a bad signature.
    assert!(msg.contains("not signed by the trust bundle"), "{msg}");
    assert_eq!(err.side(), ErrorSide::Upstream);
}

#[tokio::test]
async fn server_rejects_client_from_other_root() {
    let pki = Pki::new();
    let other = Pki::new();
    let mut server = pki.serve(echo_handler()).await;
    // The client trusts the server, but its own cert is from another CA.
    let mut bundle = pki.bundle.clone();
    bundle.merge(other.bundle.clone());
    let client = within(async {
        let conn =
            client_conn(server.addr, &other.cert("client"), &bundle, &[id("server")]).await?;
        first_tunnel(conn).await
    })
    .await;
    let err = client.expect_err("tunnel must not open");
    // The rejection arrives after the client's side of the TLS 1.3 handshake,
    // yet is still reported as a TLS failure with a hint, not as plain I/O.
    assert!(matches!(err, HboneError::TlsHandshake { .. }), "{err:?}");
    assert!(err.to_string().contains("share a root CA"), "{err}");
    let e = server.expect_tls_failure().await;
    assert!(e.to_string().contains("share a root CA"), "{e}");
}

#[tokio::test]
async fn identity_mismatch_names_expected_and_presented() {
    let pki = Pki::new();
    let server = pki.serve_as("impostor", echo_handler()).await;
    let err = pki
        .dial(server.addr)
        .await
        .expect_err("identity not in expected set");
    match &err {
        HboneError::IdentityMismatch {
            expected,
            presented,
        } => {
            assert_eq!(expected, &vec![id("server")]);
            assert_eq!(presented, &id("impostor"));
        }
        other => panic!("expected IdentityMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("spiffe://cluster.local/ns/default/sa/impostor"),
        "{msg}"
    );
    assert!(
        msg.contains("spiffe://cluster.local/ns/default/sa/server"),
        "{msg}"
    );
}

#[tokio::test]
async fn no_expected_identities_is_a_config_error() {
    let pki = Pki::new();
    let err = client_config(&pki.cert("client"), &pki.bundle, &[]).expect_err("must refuse");
    assert!(matches!(err, TlsError::NoExpectedIdentities), "{err:?}");
}

/// Accepts any server certificate: lets the test act as a client without a certificate.
#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        hbone::tls::crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn client_without_certificate_is_rejected() {
    let pki = Pki::new();
    let mut server = pki.serve(echo_handler()).await;
    let mut cfg = rustls::ClientConfig::builder_with_provider(hbone::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let result = within(async {
        // With TLS 1.3 the client may finish before the server checks it; the
        // rejection then arrives as an alert on the first read.
        let tls = tls_dial(server.addr, Arc::new(cfg)).await?;
        let conn = ClientConn::handshake(tls, &H2Settings::default()).await?;
        first_tunnel(conn).await
    })
    .await;
    let err = result.expect_err("server must refuse a client without certificate");
    assert!(matches!(err, HboneError::TlsHandshake { .. }), "{err:?}");
    assert!(
        err.to_string().contains("requires a client certificate"),
        "{err}"
    );
    assert!(
        matches!(
            err,
            HboneError::TlsHandshake { .. } | HboneError::ConnectionClosed | HboneError::Io(_)
        ),
        "{err:?}"
    );
    let e = server.expect_tls_failure().await;
    assert!(e.to_string().contains("presented no certificate"), "{e}");
}

#[tokio::test]
async fn plaintext_to_tls_server_is_an_error_not_a_panic() {
    let pki = Pki::new();
    let mut server = pki.serve(echo_handler()).await;
    let mut tcp = within(TcpStream::connect(server.addr))
        .await
        .expect("connect");
    tcp.write_all(b"CONNECT 10.0.0.1:80 HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n")
        .await
        .expect("write");
    // The server answers with an alert (or nothing) and closes; it must not hang.
    let mut sink = Vec::new();
    let _ = within(tcp.read_to_end(&mut sink)).await;
    let msg = server.expect_tls_failure().await.to_string();
    assert!(msg.starts_with("tls handshake failed:"), "{msg}");
    assert!(msg.contains("did not speak tls"), "{msg}");
    // The listener survives and still serves proper clients.
    pki.dial(server.addr).await.expect("server still works");
}

/// A client with a valid certificate offering `alpn` (empty: no ALPN extension).
fn client_offering(pki: &Pki, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*pki.client_tls()).clone();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

#[tokio::test]
async fn client_not_offering_alpn_h2_is_refused_in_the_handshake() {
    let pki = Pki::new();
    let mut server = pki.serve(echo_handler()).await;
    for (alpn, offered) in [(&[][..], "none"), (&[&b"http/1.1"[..]][..], "http/1.1")] {
        let err = within(tls_dial(server.addr, client_offering(&pki, alpn)))
            .await
            .expect_err("the handshake itself must fail, not a later http/2 exchange");
        let msg = err.to_string();
        assert!(matches!(err, HboneError::TlsHandshake { .. }), "{err:?}");
        assert!(
            msg.contains("alpn h2"),
            "client message names alpn h2: {msg}"
        );
        match server.expect_tls_failure().await {
            HboneError::AlpnNotH2 { offered: o } => assert_eq!(o, offered),
            other => panic!("expected AlpnNotH2, got {other:?}"),
        }
    }
    // A proper client still gets through.
    pki.dial(server.addr).await.expect("h2 client accepted");
    assert_eq!(server.expect_accepted().await, id("client"));
}

/// An independent TLS stack (Python's ssl, i.e. OpenSSL) offering no ALPN
/// hears the `no_application_protocol` alert in the handshake.
#[tokio::test]
async fn openssl_client_without_alpn_gets_no_application_protocol_alert() {
    let pki = Pki::new();
    let mut server = pki.serve(echo_handler()).await;
    let script = r#"
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
try:
    ctx.wrap_socket(s).do_handshake()
    print("handshake completed")
except ssl.SSLError as e:
    print("ssl error:", e)
"#;
    let out = within(
        tokio::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(server.addr.port().to_string())
            .output(),
    )
    .await
    .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .to_ascii_lowercase()
            .contains("no application protocol")
            || stdout.contains("NO_APPLICATION_PROTOCOL"),
        "stdout: {stdout} stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = server.expect_tls_failure().await;
    assert!(e.to_string().contains("alpn h2"), "{e}");
}
