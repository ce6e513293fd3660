//! Mutual TLS for HBONE: the crypto provider, client/server configs and peer identities.
//!
//! HBONE authenticates peers by SPIFFE identity (the certificate's URI SAN), not
//! by DNS name, and clients send no SNI. `rustls` still needs a `ServerName` to
//! start a client handshake: [`tls_connect`](crate::client::tls_connect) passes
//! the peer's IP as a placeholder. It is never put on the wire
//! (`enable_sni = false`) and never checked (our verifier ignores it).

mod certs;
mod verifier;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, CommonState, ServerConfig};

use crate::identity::{Identity, IdentityError};

pub(crate) use certs::{identity_from_cert, parse_certs_pem};
pub use certs::{TrustBundle, WorkloadCert};

/// The ALPN protocol HBONE speaks inside TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// Why certificates, keys or TLS configuration could not be used.
#[derive(Clone, Debug, thiserror::Error)]
pub enum TlsError {
    /// PEM text could not be read.
    #[error("cannot parse {what} PEM: {detail}")]
    Pem {
        /// Which input: "certificate chain", "private key", "trust bundle".
        what: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The PEM input held no certificate.
    #[error("{what} PEM contains no CERTIFICATE block; check the file is not empty or a key")]
    NoCertificates {
        /// Which input.
        what: &'static str,
    },
    /// The key PEM held no private key.
    #[error("private key PEM contains no PRIVATE KEY block (PKCS#8, SEC1 or PKCS#1 expected)")]
    NoPrivateKey,
    /// The key is unusable or does not belong to the leaf certificate.
    #[error("private key cannot be used with the certificate: {0}; check the key file matches the certificate file")]
    KeyMismatch(String),
    /// A certificate could not be parsed as X.509.
    #[error("certificate is not valid X.509 DER: {0}")]
    BadCertificate(String),
    /// A trust-bundle certificate cannot act as a trust anchor.
    #[error("trust bundle certificate #{index} is not a usable CA certificate: {detail}")]
    BadRoot {
        /// Position in the bundle, from 0.
        index: usize,
        /// What went wrong.
        detail: String,
    },
    /// The trust bundle is empty, so nothing could be verified.
    #[error("trust bundle is empty; configure at least one root CA certificate")]
    EmptyBundle,
    /// The certificate carries no `spiffe://` URI SAN.
    #[error("certificate has no spiffe:// uri san; hbone identifies workloads by spiffe id")]
    NoSpiffeId,
    /// The certificate carries more than one `spiffe://` URI SAN.
    #[error("certificate has {0} spiffe:// uri sans; exactly one is required")]
    MultipleSpiffeIds(usize),
    /// The SPIFFE URI SAN is not an Istio-style workload identity.
    #[error("certificate uri san is not a workload identity: {0}")]
    BadSpiffeId(#[from] IdentityError),
    /// The peer did not present a certificate.
    #[error("peer presented no certificate; hbone requires mutual tls")]
    NoPeerCertificate,
    /// The server's identity is not one the client expected.
    #[error("peer presented identity {presented} but expected one of {expected:?}")]
    IdentityMismatch {
        /// Identities accepted by the caller.
        expected: Vec<Identity>,
        /// Identity found in the certificate.
        presented: Identity,
    },
    /// `client_config` was given no expected identities, so no server could pass.
    #[error("no expected server identities given; the caller must name who it is connecting to")]
    NoExpectedIdentities,
    /// rustls refused the configuration.
    #[error("tls configuration rejected: {0}")]
    Config(String),
}

/// The crypto provider HBONE uses: ring, TLS 1.3 AES-GCM suites only.
///
/// Limiting suites to what ztunnel negotiates keeps the handshake predictable
/// and avoids ChaCha20 (slower than AES-GCM on servers with AES-NI).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            use rustls::crypto::ring::{cipher_suite, default_provider};
            Arc::new(CryptoProvider {
                cipher_suites: vec![
                    cipher_suite::TLS13_AES_128_GCM_SHA256,
                    cipher_suite::TLS13_AES_256_GCM_SHA384,
                ],
                ..default_provider()
            })
        })
        .clone()
}

/// Client config presenting `cert` and accepting only servers whose identity is in `expected`.
pub fn client_config(
    cert: &WorkloadCert,
    bundle: &TrustBundle,
    expected: &[Identity],
) -> Result<Arc<ClientConfig>, TlsError> {
    if expected.is_empty() {
        return Err(TlsError::NoExpectedIdentities);
    }
    let roots = bundle.root_store()?;
    let provider = crypto_provider();
    let verifier = verifier::IdentityVerifier::new(roots, expected.to_vec(), &provider);
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(cert.chain().to_vec(), cert.private_key())
        .map_err(|e| TlsError::KeyMismatch(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.enable_sni = false;
    // Resumed sessions skip certificate verification, and the session cache is
    // keyed by the placeholder server name rather than by expected identity, so
    // resumption could let a different peer skip the identity check.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Server config presenting `cert` and requiring a client certificate issued by `bundle`.
pub fn server_config(
    cert: &WorkloadCert,
    bundle: &TrustBundle,
) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = Arc::new(bundle.root_store()?);
    let provider = crypto_provider();
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(cert.chain().to_vec(), cert.private_key())
        .map_err(|e| TlsError::KeyMismatch(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Clients never resume (see client_config), so tickets and a session cache
    // would only cost memory.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// The peer's identity: the single `spiffe://` URI SAN of its leaf certificate.
pub fn peer_identity(conn: &CommonState) -> Result<Identity, TlsError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    identity_from_cert(leaf)
}
