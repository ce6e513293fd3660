//! Workload certificates and the TLS configs built from them.
//!
//! In the file-based mode each proxy holds the dev CA and issues each
//! local workload's SVID itself; the controller will replace the issuer with
//! CreateCertificate calls. TLS configs are cached because building one
//! parses keys and roots, and a new HBONE connection should not pay that.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ahash::AHashMap;
use hbone::{DevCa, Identity, TrustBundle, WorkloadCert};
use rustls::{ClientConfig, ServerConfig};

/// How long issued workload certificates live; renewed at half-life.
const CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot issue a certificate for {identity}: {source}")]
    Issue {
        identity: Identity,
        #[source]
        source: Box<hbone::CaError>,
    },
    #[error("cannot build a tls config for {identity}: {source}")]
    Tls {
        identity: Identity,
        #[source]
        source: Box<hbone::TlsError>,
    },
}

struct Issued {
    cert: WorkloadCert,
    server: Option<Arc<ServerConfig>>,
    clients: AHashMap<Identity, Arc<ClientConfig>>,
}

/// Issues and caches workload certificates and TLS configs.
pub struct CertManager {
    ca: DevCa,
    bundle: TrustBundle,
    issued: Mutex<AHashMap<Identity, Issued>>,
}

impl CertManager {
    pub fn new(ca: DevCa, extra_roots: Option<TrustBundle>) -> Self {
        let mut bundle = ca.trust_bundle();
        if let Some(extra) = extra_roots {
            bundle.merge(extra);
        }
        CertManager {
            ca,
            bundle,
            issued: Mutex::new(AHashMap::new()),
        }
    }

    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    fn with_issued<T>(
        &self,
        id: &Identity,
        f: impl FnOnce(&mut Issued, &TrustBundle) -> Result<T, CertError>,
    ) -> Result<T, CertError> {
        let mut map = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = |i: &Issued| {
            i.cert
                .not_after()
                .duration_since(SystemTime::now())
                .map(|left| left > CERT_LIFETIME / 2)
                .unwrap_or(false)
        };
        if !map.get(id).is_some_and(fresh) {
            let cert = self
                .ca
                .issue(id, CERT_LIFETIME)
                .map_err(|source| CertError::Issue {
                    identity: id.clone(),
                    source: Box::new(source),
                })?;
            tracing::info!(identity = %id, "issued workload certificate");
            map.insert(
                id.clone(),
                Issued {
                    cert,
                    server: None,
                    clients: AHashMap::new(),
                },
            );
        }
        let issued = map.get_mut(id).expect("inserted above");
        f(issued, &self.bundle)
    }

    /// The certificate for `id`, issuing or renewing it when needed.
    pub fn cert(&self, id: &Identity) -> Result<WorkloadCert, CertError> {
        self.with_issued(id, |i, _| Ok(i.cert.clone()))
    }

    /// Server config presenting `id`'s certificate and requiring a client certificate.
    pub fn server_config(&self, id: &Identity) -> Result<Arc<ServerConfig>, CertError> {
        self.with_issued(id, |i, bundle| {
            if let Some(c) = &i.server {
                return Ok(c.clone());
            }
            let c = hbone::server_config(&i.cert, bundle).map_err(|source| CertError::Tls {
                identity: id.clone(),
                source: Box::new(source),
            })?;
            i.server = Some(c.clone());
            Ok(c)
        })
    }

    /// Client config presenting `src`'s certificate and accepting only `expected` as the server.
    pub fn client_config(
        &self,
        src: &Identity,
        expected: &Identity,
    ) -> Result<Arc<ClientConfig>, CertError> {
        self.with_issued(src, |i, bundle| {
            if let Some(c) = i.clients.get(expected) {
                return Ok(c.clone());
            }
            let c = hbone::client_config(&i.cert, bundle, std::slice::from_ref(expected)).map_err(
                |source| CertError::Tls {
                    identity: src.clone(),
                    source: Box::new(source),
                },
            )?;
            i.clients.insert(expected.clone(), c.clone());
            Ok(c)
        })
    }

    /// Identities and expiry of the certificates held, for /config_dump.
    pub fn dump(&self) -> Vec<(String, SystemTime)> {
        let map = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|(id, i)| (id.to_string(), i.cert.not_after()))
            .collect();
        v.sort();
        v
    }
}
