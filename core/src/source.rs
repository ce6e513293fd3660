//! Where a proxy's config comes from, and the one way it reaches the store.
//!
//! Every source (a file, or the controller over delta xDS) implements
//! [`Source`] and hands its [`Update`]s to an [`UpdateSink`], which applies
//! them with [`StateStore::apply`] and counts the result. [`spawn`] is the
//! one function that starts a source, and [`initial_store`] the one that
//! gives a proxy its state at start, so no mode has a second code path.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use trellis_api::config::ConfigError;
use trellis_api::Update;

use crate::state::{ProxyState, StateStore};

pub mod file;
pub mod xds;

pub use xds::{OnDemand, XdsSpec};

/// Which source a proxy runs, as its flags say.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    /// A local YAML file, polled every `poll`.
    File { path: PathBuf, poll: Duration },
    /// The controller, over delta xDS.
    Xds(XdsSpec),
}

/// Why a proxy could not get its first config.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("config file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: ConfigError,
    },
}

/// The store a proxy starts with. A file must load and validate, or the
/// proxy does not start: there is no last good config yet to keep. From
/// xDS the store starts empty and not synced (the proxy is not ready)
/// until the controller's first answer per type is applied.
pub fn initial_store(spec: &SourceSpec) -> Result<StateStore, SourceError> {
    match spec {
        SourceSpec::Xds(_) => {
            let empty = ProxyState::new(Default::default()).expect("an empty config is valid");
            Ok(StateStore::unsynced(empty))
        }
        SourceSpec::File { path, .. } => {
            let err = |source| SourceError::File {
                path: path.display().to_string(),
                source,
            };
            let cfg = file::load_file(path).map_err(err)?;
            Ok(StateStore::new(ProxyState::new(cfg).map_err(err)?))
        }
    }
}

/// A running source of config updates.
pub trait Source: Send + 'static {
    /// Produces updates into `sink` until the task is dropped. A source
    /// that fails keeps retrying; the store keeps its last good state.
    fn run(self: Box<Self>, sink: UpdateSink) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Starts the source `spec` names, feeding `store`. Call from inside a tokio
/// runtime (the proxies use their admin thread's).
/// `on_demand` is the handle the data path asks through (xDS only).
pub fn spawn(
    spec: &SourceSpec,
    store: Arc<StateStore>,
    metrics: Option<Arc<ConfigMetrics>>,
    on_demand: Option<OnDemand>,
) -> tokio::task::JoinHandle<()> {
    let source: Box<dyn Source> = match spec {
        SourceSpec::File { path, poll } => Box::new(file::FileSource {
            path: path.clone(),
            interval: *poll,
        }),
        SourceSpec::Xds(spec) => Box::new(xds::XdsSource {
            spec: spec.clone(),
            on_demand,
        }),
    };
    tokio::spawn(source.run(UpdateSink { store, metrics }))
}

/// Where sources deliver updates: the store, and the counters of results.
#[derive(Clone, Debug)]
pub struct UpdateSink {
    store: Arc<StateStore>,
    metrics: Option<Arc<ConfigMetrics>>,
}

impl UpdateSink {
    pub fn new(store: Arc<StateStore>, metrics: Option<Arc<ConfigMetrics>>) -> UpdateSink {
        UpdateSink { store, metrics }
    }

    /// Applies `update`; on error the store keeps its state. Returns the new
    /// version, or the current one when nothing changed (not counted: a
    /// source repeating itself is not a reload).
    pub fn apply(&self, update: Update) -> Result<u64, ConfigError> {
        let before = self.store.version();
        let result = self.store.apply(update);
        match (&result, &self.metrics) {
            (Ok(v), Some(m)) if *v != before => m.success.inc(),
            (Err(_), Some(m)) => m.failure.inc(),
            _ => {}
        }
        result
    }

    /// Counts an update the source could not even produce (an unreadable
    /// or unparsable file, a message that does not decode).
    pub fn rejected(&self) {
        if let Some(m) = &self.metrics {
            m.failure.inc();
        }
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }
}

/// `trellis_config_reloads_total{result="success"|"failure"}`.
#[derive(Debug)]
pub struct ConfigMetrics {
    success: IntCounter,
    failure: IntCounter,
}

impl ConfigMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn new(registry: &Registry) -> ConfigMetrics {
        let vec = IntCounterVec::new(
            Opts::new(
                "trellis_config_reloads_total",
                "Config updates from the config source, by result; a failure keeps the last good config",
            ),
            &["result"],
        )
        .expect("static metric definition is valid");
        crate::metrics::register(registry, &vec);
        ConfigMetrics {
            success: vec.with_label_values(&["success"]),
            failure: vec.with_label_values(&["failure"]),
        }
    }

    pub fn successes(&self) -> u64 {
        self.success.get()
    }

    pub fn failures(&self) -> u64 {
        self.failure.get()
    }
}
