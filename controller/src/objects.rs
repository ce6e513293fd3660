//! Kubernetes objects, the manifests folder, and their translation into the
//! mesh's config model.
//!
//! The flow is one way: documents are parsed into typed [`Object`]s
//! ([`kinds`]), kept per source file with last-good semantics in an
//! [`ObjectStore`] ([`store`]), fed by a folder of manifests
//! ([`manifests`]) now and by a Kubernetes watch later, and turned into a
//! [`trellis_api::config::LocalConfig`] by the pure [`translate()`].

mod error;
pub mod kinds;
pub mod manifests;
pub mod store;
pub mod translate;
mod unknown;

pub use error::{DocRef, ObjectError};
pub use kinds::{Kind, Object, ObjectKey};
pub use manifests::{DirError, ManifestsDir, ScanResult};
pub use store::ObjectStore;
pub use translate::{translate, TranslateOptions, Translation};
