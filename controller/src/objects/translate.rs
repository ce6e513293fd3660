//! Objects → config model. Pure: the same store and options always give the
//! same config, and the result always passes `trellis_api::config::validate`
//! (an object that cannot be translated is left out, with an error).
//!
//! The steps run in dependency order: waypoints (their addresses are needed
//! by workloads and services), workloads, L4 policies (workloads list the
//! ones that select them), services (their endpoints are workload uids),
//! L7 policies, routes (their parents and backends are services), then
//! traffic policies (they attach to route rules). [`guard`] is the last
//! line: whatever still fails validation is dropped there.

mod authz;
mod authz_l7;
mod guard;
pub(crate) mod labels;
mod routes;
mod services;
mod traffic_policies;
pub(crate) mod waypoints;
mod workloads;

use std::collections::BTreeMap;

use trellis_api::config::LocalConfig;

use super::error::ObjectError;
use super::kinds::{Kind, Object};
use super::store::ObjectStore;

/// What the translation needs to know about the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslateOptions {
    pub trust_domain: String,
    /// Istio's cluster id; the first part of workload uids.
    pub cluster_id: String,
    /// Policies here without a selector apply to the whole mesh.
    pub root_namespace: String,
    /// Also honour Istio's labels (`istio.io/dataplane-mode`,
    /// `istio.io/use-waypoint`) and the `istio-waypoint` gateway class.
    pub istio_labels: bool,
    /// The network of this cluster; WorkloadEntries on another network are
    /// not reachable directly and are left out.
    pub network: String,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        TranslateOptions {
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
            root_namespace: "istio-system".into(),
            istio_labels: false,
            network: String::new(),
        }
    }
}

/// The config, and why some objects (or parts of them) were left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Translation {
    pub config: LocalConfig,
    pub errors: Vec<ObjectError>,
}

/// Labels of every namespace, by name (a namespace without a Namespace
/// object has none).
pub(crate) type NsLabels<'a> = BTreeMap<&'a str, &'a BTreeMap<String, String>>;

pub fn translate(store: &ObjectStore, opts: &TranslateOptions) -> Translation {
    let mut errors = Vec::new();
    let mut ns_labels: NsLabels = BTreeMap::new();
    for (key, obj) in store.of_kind(Kind::Namespace) {
        if let Object::Namespace(ns) = obj {
            if let Some(l) = &ns.metadata.labels {
                ns_labels.insert(key.name.as_str(), l);
            }
        }
    }
    let wps = waypoints::collect(store, opts);
    let mut sources = workloads::collect(store, opts, &ns_labels, &wps, &mut errors);
    let policies = authz::translate_all(store, opts, &mut sources, &mut errors);
    let services = services::translate_all(store, opts, &ns_labels, &wps, &sources, &mut errors);
    let l7 = authz_l7::translate_all(store, &mut errors);
    let (mut http_routes, mut grpc_routes) =
        routes::translate_all(store, opts, &services, &mut errors);
    traffic_policies::apply(store, &mut http_routes, &mut grpc_routes, &mut errors);
    let config = LocalConfig {
        workloads: sources.into_iter().map(|s| s.workload).collect(),
        services,
        policies,
        authorization_policies: l7,
        http_routes,
        grpc_routes,
        waypoints: wps.settings(),
    };
    let config = guard::valid(config, &mut errors);
    Translation { config, errors }
}

#[cfg(test)]
mod tests;
