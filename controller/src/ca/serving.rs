//! The controller's own server certificate, for its TLS gRPC port (15012).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::keys::{offset, Ca};

/// How long the controller's serving certificate lives; it is made anew at
/// every start, so a restart within this time renews it.
const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why the serving certificate or config could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("no dns names given for the controller's serving certificate (e.g. istiod.istio-system.svc)")]
    NoNames,
    #[error("dns name {0:?} is not valid in a certificate")]
    BadName(String),
    #[error("cannot make the serving certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("tls configuration rejected: {0}")]
    Tls(#[from] rustls::Error),
}

impl Ca {
    /// A TLS server config (ALPN h2, no client certificate: callers prove
    /// who they are with their bearer token) presenting a fresh certificate
    /// for `dns_names`, signed by the intermediate, chained to the root.
    pub fn serving_config(
        &self,
        dns_names: &[String],
    ) -> Result<Arc<rustls::ServerConfig>, ServingError> {
        if dns_names.is_empty() {
            return Err(ServingError::NoNames);
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = dns_names
            .iter()
            .map(|n| {
                rcgen::string::Ia5String::try_from(n.as_str())
                    .map(SanType::DnsName)
                    .map_err(|_| ServingError::BadName(n.clone()))
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = offset(now.checked_sub(Duration::from_secs(60)))?;
        params.not_after = offset(now.checked_add(SERVING_VALIDITY))?;
        let leaf = params.signed_by(&key, &self.issuer()?)?;

        let mut chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone()];
        for pem in self.chain_pem() {
            chain.extend(rustls_pemfile::certs(&mut pem.as_bytes()).flatten());
        }
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(hbone::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }
}
