//! Pods and WorkloadEntries → workloads.
//!
//! Health, for a pod: `Healthy` when its phase is Running and its Ready
//! condition is True. Hand-written manifests (the demo folder) often state
//! only `status.podIP`: a pod with no phase is taken as running, and a pod
//! with no conditions as ready, so a demo works without faking kubelet
//! status. Pending → Unhealthy; Succeeded/Failed pods are left out, as are
//! pods without an IP and host-network pods (a node proxy cannot capture
//! them, and their IP is the node's). A terminating pod (its
//! `metadata.deletionTimestamp` is set) is Unhealthy, as Istio drops it
//! from endpoints: new connections must not go there, while the ones it
//! has drain until the pod is gone.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use trellis_api::config::{HealthStatus, Protocol, Workload};

use super::labels::{self, Labels, UseWaypoint, GATEWAY_NAME};
use super::waypoints::Waypoints;
use super::{NsLabels, TranslateOptions};
use crate::objects::error::ObjectError;
use crate::objects::kinds::{Kind, Object, ObjectKey};
use crate::objects::store::ObjectStore;

/// A translated workload with what later steps need from its object.
pub(crate) struct Source<'a> {
    pub key: &'a ObjectKey,
    pub labels: Option<&'a Labels>,
    /// Named container ports, for services' named targetPorts.
    pub named_ports: Vec<(String, u16)>,
    pub workload: Workload,
}

pub(crate) fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod_ips(pod).into_iter().next()
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(st) = &pod.status else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = st
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if out.is_empty() {
        out.extend(st.pod_ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok()));
    }
    out
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// Running, or no phase stated (see the module comment).
pub(crate) fn pod_running(pod: &Pod) -> bool {
    matches!(phase(pod), None | Some("Running"))
}

fn pod_health(pod: &Pod) -> HealthStatus {
    if pod.metadata.deletion_timestamp.is_some() {
        return HealthStatus::Unhealthy;
    }
    let ready = match pod.status.as_ref().and_then(|s| s.conditions.as_ref()) {
        None => true,
        Some(c) if c.is_empty() => true,
        Some(c) => c.iter().any(|c| c.type_ == "Ready" && c.status == "True"),
    };
    if pod_running(pod) && ready {
        HealthStatus::Healthy
    } else {
        HealthStatus::Unhealthy
    }
}

/// Labels naming a workload's canonical service and revision, in Istio's
/// order of preference.
const CANONICAL_NAME: &[&str] = &[
    "service.istio.io/canonical-name",
    "app.kubernetes.io/name",
    "app",
];
const CANONICAL_REVISION: &[&str] = &[
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
];

fn first_label(labels: Option<&Labels>, keys: &[&str]) -> Option<String> {
    let l = labels?;
    keys.iter()
        .find_map(|k| l.get(*k).filter(|v| !v.is_empty()).cloned())
}

pub(crate) fn collect<'a>(
    store: &'a ObjectStore,
    opts: &TranslateOptions,
    ns_labels: &NsLabels,
    wps: &Waypoints,
    errors: &mut Vec<ObjectError>,
) -> Vec<Source<'a>> {
    let mut out = Vec::new();
    let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
    for (key, obj) in store.iter() {
        let src = match obj {
            Object::Pod(pod) => from_pod(key, pod, opts),
            Object::WorkloadEntry(we) => {
                let net = we.spec.network.as_deref().unwrap_or("");
                if net != opts.network {
                    errors.push(translate_err(key, format!(
                        "spec.network {net:?} is not this cluster's network {:?}; a workload on another network is not reachable directly and is left out",
                        opts.network
                    )));
                    continue;
                }
                from_entry(key, we, opts, errors)
            }
            _ => continue,
        };
        let Some(mut src) = src else { continue };
        let ns = ns_labels.get(key.namespace.as_str()).copied();
        src.workload.protocol = labels::protocol(ns, src.labels, opts);
        if let Some(ip) = src
            .workload
            .addresses
            .iter()
            .find(|ip| taken.contains(&ip.to_canonical()))
        {
            errors.push(translate_err(key, format!(
                "address {ip} is already the address of another workload; an IP belongs to one workload, so this one is left out (check for a stale pod or entry)"
            )));
            continue;
        }
        taken.extend(src.workload.addresses.iter().map(|ip| ip.to_canonical()));
        assign_waypoint(&mut src, ns, opts, wps, errors);
        out.push(src);
    }
    out
}

/// Waypoints serve captured workloads only; a waypoint's own pods never
/// send through a waypoint.
fn assign_waypoint(
    src: &mut Source,
    ns: Option<&Labels>,
    opts: &TranslateOptions,
    wps: &Waypoints,
    errors: &mut Vec<ObjectError>,
) {
    let is_waypoint = src.labels.is_some_and(|l| l.contains_key(GATEWAY_NAME));
    if is_waypoint || src.workload.protocol != Protocol::Hbone {
        return;
    }
    let want = labels::use_waypoint(ns, src.labels, opts);
    if want == UseWaypoint::None {
        return;
    }
    match wps.resolve(&src.key.namespace, &want) {
        Ok(wp) => src.workload.waypoint = wp,
        Err(msg) => errors.push(translate_err(src.key, msg)),
    }
}

pub(crate) fn translate_err(key: &ObjectKey, message: String) -> ObjectError {
    ObjectError::Translate {
        kind: key.kind.name().into(),
        name: format!("{}/{}", key.namespace, key.name),
        message,
    }
}

fn from_pod<'a>(key: &'a ObjectKey, pod: &'a Pod, opts: &TranslateOptions) -> Option<Source<'a>> {
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return None;
    }
    if matches!(phase(pod), Some("Succeeded" | "Failed")) {
        return None;
    }
    let addresses = pod_ips(pod);
    if addresses.is_empty() {
        return None;
    }
    let labels = pod.metadata.labels.as_ref();
    let named_ports = spec
        .into_iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
        .collect();
    Some(Source {
        key,
        labels,
        named_ports,
        workload: Workload {
            uid: format!("{}//Pod/{}/{}", opts.cluster_id, key.namespace, key.name),
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            trust_domain: opts.trust_domain.clone(),
            addresses,
            node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            protocol: Protocol::Tcp,
            status: pod_health(pod),
            authorization_policies: Vec::new(),
            // Membership is filled in on the services; xDS moves it here.
            services: Vec::new(),
            canonical_name: first_label(labels, CANONICAL_NAME),
            canonical_revision: first_label(labels, CANONICAL_REVISION),
            cluster_id: Some(opts.cluster_id.clone()),
            waypoint: None,
        },
    })
}

fn from_entry<'a>(
    key: &'a ObjectKey,
    we: &'a crate::objects::kinds::istio::WorkloadEntry,
    opts: &TranslateOptions,
    errors: &mut Vec<ObjectError>,
) -> Option<Source<'a>> {
    let addr: IpAddr = match we.spec.address.parse() {
        Ok(a) => a,
        Err(_) => {
            errors.push(translate_err(key, format!(
                "spec.address {:?} is not an IP address; Trellis does not resolve DNS names for workload entries, write the VM's IP",
                we.spec.address
            )));
            return None;
        }
    };
    // The entry's own spec.labels are what services select; metadata labels
    // are only a fallback, as in Istio.
    let labels = if we.spec.labels.is_empty() {
        we.metadata.labels.as_ref()
    } else {
        Some(&we.spec.labels)
    };
    debug_assert_eq!(key.kind, Kind::WorkloadEntry);
    Some(Source {
        key,
        labels,
        named_ports: we
            .spec
            .ports
            .iter()
            .filter_map(|(n, p)| Some((n.clone(), u16::try_from(*p).ok()?)))
            .collect(),
        workload: Workload {
            uid: format!(
                "{}//WorkloadEntry/{}/{}",
                opts.cluster_id, key.namespace, key.name
            ),
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            service_account: we
                .spec
                .service_account
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            trust_domain: opts.trust_domain.clone(),
            addresses: vec![addr],
            node: String::new(),
            protocol: Protocol::Tcp,
            status: HealthStatus::Healthy,
            authorization_policies: Vec::new(),
            // Membership is filled in on the services; xDS moves it here.
            services: Vec::new(),
            canonical_name: first_label(labels, CANONICAL_NAME),
            canonical_revision: first_label(labels, CANONICAL_REVISION),
            cluster_id: Some(opts.cluster_id.clone()),
            waypoint: None,
        },
    })
}
