//! The dev CA a proxy loads at start; its errors name the directory to fix.
//! (The first config comes from `source::initial_state`.)

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("dev ca in {path}: {source}")]
    Ca {
        path: String,
        #[source]
        source: Box<hbone::CaError>,
    },
}

/// Loads the dev CA that issues workload certificates.
pub fn load_ca(dir: &Path) -> Result<hbone::DevCa, LoadError> {
    hbone::DevCa::load_from_dir(dir).map_err(|source| LoadError::Ca {
        path: dir.display().to_string(),
        source: Box::new(source),
    })
}
