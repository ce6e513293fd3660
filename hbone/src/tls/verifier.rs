//! Server certificate verification by trust bundle and SPIFFE identity.
//!
//! The stock rustls verifier checks the certificate against the DNS name or IP
//! we dialed; HBONE certificates carry neither, only a SPIFFE URI SAN, so the
//! chain is verified with webpki directly and the identity is checked instead.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{identity_from_cert, TlsError};
use crate::identity::Identity;

/// Verifies the server chain against the bundle, then its identity against `expected`.
#[derive(Debug)]
pub(crate) struct IdentityVerifier {
    roots: RootCertStore,
    expected: Vec<Identity>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl IdentityVerifier {
    pub(crate) fn new(
        roots: RootCertStore,
        expected: Vec<Identity>,
        provider: &CryptoProvider,
    ) -> Self {
        IdentityVerifier {
            roots,
            expected,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

/// Wraps our error so it survives rustls and can be recognised after the handshake.
fn other(e: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Maps webpki's verdict onto the rustls error that produces the most useful hint.
fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let ce = match e {
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        // Server-auth usage, but no name check: HBONE uses no SNI and the
        // identity below is what authenticates the server.
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(pki_error)?;
        let presented = identity_from_cert(end_entity).map_err(other)?;
        if !self.expected.contains(&presented) {
            tracing::debug!(%presented, expected = ?self.expected, "server identity not expected");
            return Err(other(TlsError::IdentityMismatch {
                expected: self.expected.clone(),
                presented,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Unreachable in practice (TLS 1.3 only), but correct if ever enabled.
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
