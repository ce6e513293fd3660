//! Kubernetes mode: the API server as the source of objects.
//!
//! - [`config`], [`client`]: the API server client (crate `trellis-kube`,
//!   shared with the CNI agent), re-exported here.
//! - [`source`]: list-then-watch of each [`resources::Resource`] into the
//!   same [`crate::objects::ObjectStore`] the manifests folder feeds, one
//!   store source per object (`kube:<Kind>/<ns>/<name>`).
//! - [`event`]: the pure decisions of the watch (what an event means, how
//!   an API object becomes a store document).
//!
//! Use:
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use trellis_controller::kube::{ApiConfig, Client, KubeSource};
//! use trellis_controller::objects::{translate, ObjectStore, TranslateOptions};
//! let client = Client::new(ApiConfig::from_kubeconfig("kubeconfig".as_ref())?);
//! KubeSource::new(client)
//!     .run(ObjectStore::new(), |store, changes| {
//!         let t = translate(store, &TranslateOptions::default());
//!         // publish t.config; log changes.errors and t.errors
//!         # let _ = (t, changes);
//!     })
//!     .await;
//! # Ok(()) }
//! ```

mod event;
pub mod resources;
pub mod source;

pub use event::source_name;
pub use resources::{Resource, DEFAULT_RESOURCES};
pub use source::{KubeChanges, KubeSource, SourceOptions};
pub use trellis_kube::{client, config, Backoff, Client, ClientError};
pub use trellis_kube::{ApiConfig, ConfigError};
