//! The loading steps every proxy runs at start: the config file (validated
//! and indexed) and the dev CA. Their errors name the file to fix.

use std::path::Path;

use crate::state::ProxyState;
use crate::watch;
use trellis_api::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("config file {path}: {source}")]
    Config {
        path: String,
        #[source]
        source: ConfigError,
    },
    #[error("dev ca in {path}: {source}")]
    Ca {
        path: String,
        #[source]
        source: Box<hbone::CaError>,
    },
}

/// Reads, validates and indexes the config file.
pub fn load_state(path: &Path) -> Result<ProxyState, LoadError> {
    let err = |source| LoadError::Config {
        path: path.display().to_string(),
        source,
    };
    let cfg = watch::load_file(path).map_err(err)?;
    ProxyState::new(cfg).map_err(err)
}

/// Loads the dev CA that issues workload certificates.
pub fn load_ca(dir: &Path) -> Result<hbone::DevCa, LoadError> {
    hbone::DevCa::load_from_dir(dir).map_err(|source| LoadError::Ca {
        path: dir.display().to_string(),
        source: Box::new(source),
    })
}
