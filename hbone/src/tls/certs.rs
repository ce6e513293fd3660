//! Trust bundles, workload certificates and the X.509 parsing they need.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use super::{crypto_provider, TlsError};
use crate::identity::Identity;

/// Root CA certificates that peer certificates must chain to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// Parses every CERTIFICATE block in `pem`; each must be usable as a trust anchor.
    pub fn from_pem(pem: &str) -> Result<TrustBundle, TlsError> {
        let bundle = TrustBundle::from_ders(parse_certs_pem(pem, "trust bundle")?);
        bundle.root_store()?;
        Ok(bundle)
    }

    /// Wraps DER roots as-is; they are validated when a TLS config is built.
    pub fn from_ders(roots: Vec<CertificateDer<'static>>) -> TrustBundle {
        let mut bundle = TrustBundle::default();
        bundle.merge(TrustBundle { roots });
        bundle
    }

    /// Adds `other`'s roots, skipping ones already present (e.g. during a root rotation).
    pub fn merge(&mut self, other: TrustBundle) {
        for root in other.roots {
            if !self.roots.contains(&root) {
                self.roots.push(root);
            }
        }
    }

    /// The root certificates, in the order they were added.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Builds the rustls store, naming the first root that is not a usable anchor.
    pub(crate) fn root_store(&self) -> Result<RootCertStore, TlsError> {
        if self.roots.is_empty() {
            return Err(TlsError::EmptyBundle);
        }
        let mut store = RootCertStore::empty();
        for (index, root) in self.roots.iter().enumerate() {
            store.add(root.clone()).map_err(|e| TlsError::BadRoot {
                index,
                detail: e.to_string(),
            })?;
        }
        Ok(store)
    }
}

/// A workload's certificate chain and private key, with its identity and expiry.
#[derive(Clone)]
pub struct WorkloadCert {
    inner: Arc<Inner>,
}

struct Inner {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: Identity,
    not_after: SystemTime,
    chain_pem: String,
    key_pem: String,
}

impl WorkloadCert {
    /// Parses a chain (leaf first) and its private key, checking they match.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<WorkloadCert, TlsError> {
        let chain = parse_certs_pem(chain_pem, "certificate chain")?;
        let key = parse_key_pem(key_pem)?;
        // Catch a key that does not belong to the leaf now, not at the first handshake.
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &crypto_provider())
            .map_err(|e| TlsError::KeyMismatch(e.to_string()))?;
        let leaf = &chain[0];
        let identity = identity_from_cert(leaf)?;
        let not_after = not_after_of(leaf)?;
        Ok(WorkloadCert {
            inner: Arc::new(Inner {
                chain,
                key,
                identity,
                not_after,
                chain_pem: chain_pem.to_owned(),
                key_pem: key_pem.to_owned(),
            }),
        })
    }

    /// The identity in the leaf certificate's URI SAN.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The chain as PEM, exactly as given.
    pub fn chain_pem(&self) -> &str {
        &self.inner.chain_pem
    }

    /// The private key as PEM, exactly as given.
    pub fn key_pem(&self) -> &str {
        &self.inner.key_pem
    }

    /// When the leaf certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.inner.not_after
    }

    /// The chain as DER, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.inner.chain
    }

    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        self.inner.key.clone_key()
    }
}

impl fmt::Debug for WorkloadCert {
    // Never print the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.inner.identity.to_string())
            .field("not_after", &self.inner.not_after)
            .field("chain_len", &self.inner.chain.len())
            .finish_non_exhaustive()
    }
}

/// Parses all CERTIFICATE blocks of `pem`; at least one is required.
pub(crate) fn parse_certs_pem(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates { what });
    }
    Ok(certs)
}

/// Parses the first private key in `pem`.
pub(crate) fn parse_key_pem(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| TlsError::Pem {
            what: "private key",
            detail: e.to_string(),
        })?
        .ok_or(TlsError::NoPrivateKey)
}

/// The identity from the certificate's single `spiffe://` URI SAN.
///
/// Non-SPIFFE URI SANs are ignored; zero or several SPIFFE ones are an error
/// because then "who is this" has no single answer.
pub(crate) fn identity_from_cert(der: &CertificateDer<'_>) -> Result<Identity, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate(format!("subject alternative name: {e}")))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(TlsError::NoSpiffeId),
        [uri] => Ok(uri.parse()?),
        many => Err(TlsError::MultipleSpiffeIds(many.len())),
    }
}

/// The certificate's notAfter as a `SystemTime`.
pub(crate) fn not_after_of(der: &CertificateDer<'_>) -> Result<SystemTime, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let secs = cert.validity().not_after.timestamp();
    // Certificates expiring before 1970 are meaningless; clamp instead of failing.
    Ok(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}
