//! The loading steps every proxy runs at start: its first config (from the
//! source its flags name) and the dev CA. Their errors name what to fix.

use std::path::Path;

use crate::source::{self, SourceError, SourceSpec};
use crate::state::ProxyState;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("dev ca in {path}: {source}")]
    Ca {
        path: String,
        #[source]
        source: Box<hbone::CaError>,
    },
}

/// The first state, from the source `spec` names.
pub fn load_state(spec: &SourceSpec) -> Result<ProxyState, LoadError> {
    Ok(source::initial_state(spec)?)
}

/// Loads the dev CA that issues workload certificates.
pub fn load_ca(dir: &Path) -> Result<hbone::DevCa, LoadError> {
    hbone::DevCa::load_from_dir(dir).map_err(|source| LoadError::Ca {
        path: dir.display().to_string(),
        source: Box::new(source),
    })
}
