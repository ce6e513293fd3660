//! What a proxy loads at start besides its config: where certificates
//! come from (a dev CA directory, or the controller's CA) and the files its
//! flags name. Errors name the file or flag to fix.
//! (The first config comes from `source::initial_store`.)

use std::path::{Path, PathBuf};

use crate::certs::ca_client::{CaClientConfig, CaClientError, CaIssuer};
use crate::certs::CertManager;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("dev ca in {path}: {source}")]
    Ca {
        path: String,
        #[source]
        source: Box<hbone::CaError>,
    },
    #[error("{what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Token(#[from] crate::control::TokenError),
    #[error("{0} is required to reach the controller")]
    Missing(&'static str),
    #[error("no config source: pass --config or --xds-address")]
    NoSource,
    #[error("no certificate source: pass --ca-dir, or --ca-address / --xds-address")]
    NoCa,
    #[error("ca client: {0}")]
    CaClient(#[from] CaClientError),
}

/// Where a proxy's workload certificates come from.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// A dev CA held in process (tests, the demo without a controller).
    DevCa(PathBuf),
    /// The controller's CA, over CreateCertificate.
    Remote(CaClientConfig),
}

/// The certificate manager for `source`. Node proxies ask on their pods'
/// behalf (`impersonate`); a waypoint asks for itself.
pub fn cert_manager(
    source: CertSource,
    impersonate: bool,
    extra_roots: Option<hbone::TrustBundle>,
    registry: &prometheus::Registry,
) -> Result<CertManager, LoadError> {
    match source {
        CertSource::DevCa(dir) => Ok(CertManager::dev(load_ca(&dir)?, extra_roots)),
        CertSource::Remote(mut config) => {
            config.impersonate = impersonate;
            let metrics = crate::certs::ca_client::CaMetrics::new(registry);
            let issuer = CaIssuer::start_with_metrics(config, metrics)?;
            Ok(CertManager::new(Box::new(issuer), extra_roots))
        }
    }
}

/// Loads the dev CA that issues workload certificates.
pub fn load_ca(dir: &Path) -> Result<hbone::DevCa, LoadError> {
    hbone::DevCa::load_from_dir(dir).map_err(|source| LoadError::Ca {
        path: dir.display().to_string(),
        source: Box::new(source),
    })
}
