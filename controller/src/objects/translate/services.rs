//! Services → services: VIPs, ports (named target ports resolved through
//! the selected workloads), endpoints by selector, and the waypoint.
//! EndpointSlices are not read: selectors give the same set for the
//! objects the folder holds, and need no controller to keep them current.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ahash::AHashMap;
use k8s_openapi::api::core::v1::Service as KService;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use trellis_api::config::{Service, ServicePort};

use super::labels::{self, UseWaypoint};
use super::waypoints::Waypoints;
use super::workloads::{translate_err, Source};
use super::{NsLabels, TranslateOptions};
use crate::objects::error::ObjectError;
use crate::objects::kinds::{Kind, Object, ObjectKey};
use crate::objects::store::ObjectStore;

pub(crate) fn translate_all(
    store: &ObjectStore,
    opts: &TranslateOptions,
    ns_labels: &NsLabels,
    wps: &Waypoints,
    workloads: &[Source],
    errors: &mut Vec<ObjectError>,
) -> Vec<Service> {
    let mut out = Vec::new();
    let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
    // A selector only selects in its own namespace: index the workloads by
    // namespace once, so services x pods stays per namespace, not mesh-wide
    // (10k services x 100k pods would be 10^9 label checks).
    let mut by_ns: AHashMap<&str, Candidates> = AHashMap::new();
    for w in workloads {
        by_ns.entry(w.key.namespace.as_str()).or_default().push(w);
    }
    for (key, obj) in store.of_kind(Kind::Service) {
        let Object::Service(svc) = obj else { continue };
        let ns = ns_labels.get(key.namespace.as_str()).copied();
        let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref());
        let in_ns = by_ns
            .get(key.namespace.as_str())
            .map(|c| c.for_selector(selector))
            .unwrap_or_default();
        let Some(mut s) = one(key, svc, &in_ns, errors) else {
            continue;
        };
        if let Some(vip) = s.vips.iter().find(|v| taken.contains(&v.to_canonical())) {
            errors.push(translate_err(key, format!(
                "cluster IP {vip} is already the VIP of another service; the service is left out (check spec.clusterIP)"
            )));
            continue;
        }
        taken.extend(s.vips.iter().map(|v| v.to_canonical()));
        let want = labels::use_waypoint(ns, svc.metadata.labels.as_ref(), opts);
        if want != UseWaypoint::None {
            match wps.resolve(&key.namespace, &want) {
                Ok(wp) => s.waypoint = wp,
                Err(msg) => errors.push(translate_err(key, msg)),
            }
        }
        out.push(s);
    }
    out
}

/// The workloads of one namespace, and by each label (key and value)
/// those carrying it: a selector is checked only against the workloads
/// having its rarest label (a thousand pods per namespace and a hundred
/// services would be 10^7 checks at 100k pods otherwise).
#[derive(Default)]
struct Candidates<'w, 'a> {
    all: Vec<&'w Source<'a>>,
    by_label: AHashMap<(&'a str, &'a str), Vec<usize>>,
}

impl<'w, 'a> Candidates<'w, 'a> {
    fn push(&mut self, w: &'w Source<'a>) {
        for (k, v) in w.labels.into_iter().flatten() {
            self.by_label
                .entry((k.as_str(), v.as_str()))
                .or_default()
                .push(self.all.len());
        }
        self.all.push(w);
    }

    /// A superset of what `selector` selects, in key order; none for an
    /// empty selector (which selects nothing).
    fn for_selector(&self, selector: Option<&labels::Labels>) -> Vec<&'w Source<'a>> {
        let rarest = selector.into_iter().flatten().map(|(k, v)| {
            self.by_label
                .get(&(k.as_str(), v.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default()
        });
        match rarest.min_by_key(|l| l.len()) {
            Some(l) => l.iter().map(|&i| self.all[i]).collect(),
            None => Vec::new(),
        }
    }
}

/// `workloads`: those in the service's namespace that may match its
/// selector, in key order.
fn one(
    key: &ObjectKey,
    svc: &KService,
    workloads: &[&Source],
    errors: &mut Vec<ObjectError>,
) -> Option<Service> {
    let spec = svc.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return None;
    }
    let selector = spec.and_then(|s| s.selector.as_ref());
    // Workloads are in key order (kind, namespace, name): pods by name first.
    let selected: Vec<&Source> = match selector {
        Some(sel) if !sel.is_empty() => workloads
            .iter()
            .copied()
            .filter(|w| w.key.namespace == key.namespace && labels::selects(sel, w.labels))
            .collect(),
        _ => Vec::new(),
    };
    let mut vips = Vec::new();
    let ips = spec
        .and_then(|s| s.cluster_ips.clone())
        .filter(|v| !v.is_empty())
        .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
        .unwrap_or_default();
    for ip in ips {
        if ip == "None" || ip.is_empty() {
            continue;
        }
        match ip.parse::<IpAddr>() {
            Ok(a) if !vips.contains(&a) => vips.push(a),
            Ok(_) => {}
            Err(_) => errors.push(translate_err(
                key,
                format!("spec.clusterIPs: {ip:?} is not an IP address; the service is left out"),
            )),
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        if p.protocol.as_deref().is_some_and(|pr| pr != "TCP") {
            tracing::debug!(service = %key, port = p.port, "non-TCP service port skipped");
            continue;
        }
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        let target = match &p.target_port {
            None => Some(port),
            Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|n| *n != 0),
            Some(IntOrString::String(name)) => named_port(key, name, &selected),
        };
        match target {
            Some(t) if port != 0 && !ports.iter().any(|x: &ServicePort| x.port == port) => {
                ports.push(ServicePort { port, target_port: t })
            }
            Some(_) => errors.push(translate_err(key, format!(
                "spec.ports[{i}]: port {port} is 0 or listed twice; that port is left out"
            ))),
            None => errors.push(translate_err(key, format!(
                "spec.ports[{i}].targetPort {:?}: no selected pod has a container port of that name (or it is 0); that port is left out until a pod names it",
                p.target_port
            ))),
        }
    }
    Some(Service {
        name: key.name.clone(),
        namespace: key.namespace.clone(),
        hostname: format!("{}.{}.svc.cluster.local", key.name, key.namespace),
        vips,
        ports,
        endpoints: selected.iter().map(|w| w.workload.uid.clone()).collect(),
        waypoint: None,
    })
}

/// The first selected workload (by name) naming the port decides; a
/// disagreement is noted, not an error (Kubernetes allows it per pod).
fn named_port(key: &ObjectKey, name: &str, selected: &[&Source]) -> Option<u16> {
    let mut found = selected.iter().filter_map(|w| {
        w.named_ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
    });
    let first = found.next()?;
    if found.any(|p| p != first) {
        tracing::debug!(service = %key, port = name, chosen = first, "selected pods disagree on a named port; using the first pod's by name");
    }
    Some(first)
}
