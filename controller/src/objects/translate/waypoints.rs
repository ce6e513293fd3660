//! Waypoints: Gateways of the waypoint class, addressed by the IP of their
//! running pod.

use std::collections::BTreeMap;
use std::net::IpAddr;

use trellis_api::config::l7::WaypointSettings;
use trellis_api::config::WaypointAddress;

use super::labels::{UseWaypoint, GATEWAY_NAME};
use super::workloads::{pod_ip, pod_running};
use super::TranslateOptions;
use crate::objects::kinds::{Kind, Object};
use crate::objects::store::ObjectStore;

pub(crate) const CLASS: &str = "trellis-waypoint";
pub(crate) const ISTIO_CLASS: &str = "istio-waypoint";
const HBONE_PORT: u16 = 15008;

/// Waypoint gateways by (namespace, name), with their pod's address if one runs.
#[derive(Debug, Default)]
pub(crate) struct Waypoints(BTreeMap<(String, String), Option<IpAddr>>);

pub(crate) fn collect(store: &ObjectStore, opts: &TranslateOptions) -> Waypoints {
    let mut out = BTreeMap::new();
    for (key, obj) in store.of_kind(Kind::Gateway) {
        let Object::Gateway(gw) = obj else { continue };
        let class = gw.spec.gateway_class_name.as_str();
        if class != CLASS && !(opts.istio_labels && class == ISTIO_CLASS) {
            continue;
        }
        // Pods come in name order from the store: the first running one wins.
        let addr = store.of_kind(Kind::Pod).find_map(|(pk, po)| {
            let Object::Pod(pod) = po else { return None };
            let named = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(GATEWAY_NAME))
                .is_some_and(|v| *v == key.name);
            (pk.namespace == key.namespace && named && pod_running(pod))
                .then(|| pod_ip(pod))
                .flatten()
        });
        out.insert((key.namespace.clone(), key.name.clone()), addr);
    }
    Waypoints(out)
}

impl Waypoints {
    /// One settings entry per waypoint, with defaults.
    pub(crate) fn settings(&self) -> Vec<WaypointSettings> {
        self.0
            .keys()
            .map(|(ns, name)| WaypointSettings {
                name: name.clone(),
                namespace: ns.clone(),
                total_rate_limit: None,
            })
            .collect()
    }

    /// The address for what the labels ask; `Err` names the problem
    /// (the caller adds which object and label).
    pub(crate) fn resolve(
        &self,
        ns: &str,
        want: &UseWaypoint,
    ) -> Result<Option<WaypointAddress>, String> {
        let UseWaypoint::Named { name, label } = want else {
            return Ok(None);
        };
        match self.0.get(&(ns.to_string(), name.clone())) {
            None => Err(format!(
                "label {label}={name} names no waypoint: there is no Gateway {ns}/{name} of class {CLASS}; create it or fix the label (traffic goes without a waypoint meanwhile)"
            )),
            Some(None) => Err(format!(
                "label {label}={name}: waypoint {ns}/{name} has no running pod with an IP (label {GATEWAY_NAME}={name}); traffic goes without a waypoint until it runs"
            )),
            Some(Some(ip)) => Ok(Some(WaypointAddress { address: *ip, hbone_mtls_port: HBONE_PORT })),
        }
    }
}
