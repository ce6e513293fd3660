//! Waypoints: Gateways of the waypoint class, addressed by the IP of their
//! running pod and the port of their HBONE listener.

use std::collections::BTreeMap;
use std::net::IpAddr;

use trellis_api::config::l7::WaypointSettings;
use trellis_api::config::WaypointAddress;

use super::labels::{UseWaypoint, GATEWAY_NAME};
use super::workloads::{pod_ip, pod_running};
use super::TranslateOptions;
use crate::objects::kinds::istio::GatewaySpec;
use crate::objects::kinds::{Kind, Object};
use crate::objects::store::ObjectStore;

pub(crate) const CLASS: &str = "trellis-waypoint";
pub(crate) const ISTIO_CLASS: &str = "istio-waypoint";
/// Istio's waypoint port, used when a Gateway lists no listener.
pub(crate) const HBONE_PORT: u16 = 15008;
/// The listener protocol of a waypoint (Istio's name for it).
pub(crate) const HBONE_PROTOCOL: &str = "HBONE";

/// Waypoint gateways by (namespace, name), with their pod's address if one
/// runs, and their HBONE port.
#[derive(Debug, Default)]
pub(crate) struct Waypoints(BTreeMap<(String, String), (Option<IpAddr>, u16)>);

/// Whether a Gateway of this class is a waypoint Trellis runs (Istio's
/// class too when Istio's labels are honoured).
pub(crate) fn is_waypoint_class(class: &str, istio_labels: bool) -> bool {
    class == CLASS || (istio_labels && class == ISTIO_CLASS)
}

/// The one port a waypoint listens on for HBONE: its listeners must all be
/// HBONE, on one port (a waypoint process has one HBONE listener). `Err`
/// says what is wrong, for the Gateway's status.
pub(crate) fn hbone_port(spec: &GatewaySpec) -> Result<u16, String> {
    let mut port = None;
    for l in &spec.listeners {
        if l.protocol != HBONE_PROTOCOL {
            return Err(format!(
                "listener {:?} has protocol {}; a waypoint serves {HBONE_PROTOCOL} only",
                l.name, l.protocol
            ));
        }
        match port {
            Some(p) if p != l.port => {
                return Err(format!(
                    "listener {:?} is on port {}, another on {p}; a waypoint listens on one {HBONE_PROTOCOL} port",
                    l.name, l.port
                ))
            }
            _ => port = Some(l.port),
        }
    }
    Ok(port.unwrap_or(HBONE_PORT))
}

pub(crate) fn collect(store: &ObjectStore, opts: &TranslateOptions) -> Waypoints {
    let mut out = BTreeMap::new();
    for (key, obj) in store.of_kind(Kind::Gateway) {
        let Object::Gateway(gw) = obj else { continue };
        if !is_waypoint_class(&gw.spec.gateway_class_name, opts.istio_labels) {
            continue;
        }
        // A Gateway whose listeners are refused says so in its status (the
        // waypoint manager writes it); traffic keeps the default port.
        let port = hbone_port(&gw.spec).unwrap_or(HBONE_PORT);
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
        out.insert((key.namespace.clone(), key.name.clone()), (addr, port));
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
            Some((None, _)) => Err(format!(
                "label {label}={name}: waypoint {ns}/{name} has no running pod with an IP (label {GATEWAY_NAME}={name}); traffic goes without a waypoint until it runs"
            )),
            Some((Some(ip), port)) => Ok(Some(WaypointAddress { address: *ip, hbone_mtls_port: *port })),
        }
    }
}
