//! HTTPRoutes and GRPCRoutes → the waypoint's routes: what depends on other
//! objects. The routes were converted and checked on their own when read
//! (kinds/routes.rs); here their parentRefs are resolved against the
//! Services (GAMMA: a mesh route attaches to a Service in its own
//! namespace, optionally one port of it), and their backends must exist.
//!
//! - A parentRef to a Gateway that is not a waypoint belongs to an ingress
//!   controller: ignored, noted at debug level. One to a waypoint Gateway,
//!   or of another kind, is ignored with an error saying what is supported.
//! - A parentRef to a missing Service, or to a port it does not have, is
//!   ignored with an error; a route left with no parent is not translated.
//! - A backend that does not exist leaves the whole route out, with an
//!   error: Gateway API answers 500 for that backend's share of requests,
//!   which the model cannot express, and dropping only that backend would
//!   send its share elsewhere.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Service as KService;
use trellis_api::config::l7::{BackendRef, GrpcRoute, HttpRoute, ParentRef};
use trellis_api::config::Service;

use super::waypoints::{CLASS, ISTIO_CLASS};
use super::workloads::translate_err;
use super::TranslateOptions;
use crate::objects::error::ObjectError;
use crate::objects::kinds::gateway::{ParentReference, GROUP};
use crate::objects::kinds::routes::Route;
use crate::objects::kinds::{Kind, Object, ObjectKey};
use crate::objects::store::ObjectStore;

/// What translation does alike to both kinds of route.
trait Model: Clone {
    fn set_parents(&mut self, parents: Vec<ParentRef>);
    /// (rule index, backend index, backend).
    fn backends(&self) -> Vec<(usize, usize, &BackendRef)>;
}

impl Model for HttpRoute {
    fn set_parents(&mut self, parents: Vec<ParentRef>) {
        self.parent_refs = parents;
    }

    fn backends(&self) -> Vec<(usize, usize, &BackendRef)> {
        let rules = self.rules.iter().map(|r| &r.backend_refs);
        indexed(rules)
    }
}

impl Model for GrpcRoute {
    fn set_parents(&mut self, parents: Vec<ParentRef>) {
        self.parent_refs = parents;
    }

    fn backends(&self) -> Vec<(usize, usize, &BackendRef)> {
        let rules = self.rules.iter().map(|r| &r.backend_refs);
        indexed(rules)
    }
}

fn indexed<'a>(
    rules: impl Iterator<Item = &'a Vec<BackendRef>>,
) -> Vec<(usize, usize, &'a BackendRef)> {
    rules
        .enumerate()
        .flat_map(|(i, list)| list.iter().enumerate().map(move |(j, b)| (i, j, b)))
        .collect()
}

/// The objects a route's references are resolved against.
struct Refs<'a> {
    store: &'a ObjectStore,
    opts: &'a TranslateOptions,
    /// The translated services (those left out cannot be routed to).
    services: HashMap<(&'a str, &'a str), &'a Service>,
}

pub(crate) fn translate_all(
    store: &ObjectStore,
    opts: &TranslateOptions,
    services: &[Service],
    errors: &mut Vec<ObjectError>,
) -> (Vec<HttpRoute>, Vec<GrpcRoute>) {
    let refs = Refs {
        store,
        opts,
        services: services
            .iter()
            .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
            .collect(),
    };
    let mut http = Vec::new();
    for (key, obj) in store.of_kind(Kind::HttpRoute) {
        let Object::HttpRoute(r) = obj else { continue };
        http.extend(one(&refs, key, r, errors));
    }
    // The waypoint keys rules (metrics, rate-limit state) by
    // namespace/route/rule whatever the kind, so one name cannot serve both.
    let taken: BTreeSet<(&str, &str)> = http
        .iter()
        .map(|r| (r.namespace.as_str(), r.name.as_str()))
        .collect();
    let mut grpc = Vec::new();
    for (key, obj) in store.of_kind(Kind::GrpcRoute) {
        let Object::GrpcRoute(r) = obj else { continue };
        if taken.contains(&(key.namespace.as_str(), key.name.as_str())) {
            errors.push(translate_err(key, format!(
                "an HTTPRoute {}/{} exists too; the waypoint names routes by namespace/name across both kinds (metrics, rate limits), so rename one; this GRPCRoute is left out",
                key.namespace, key.name
            )));
            continue;
        }
        grpc.extend(one(&refs, key, r, errors));
    }
    (http, grpc)
}

fn one<R: Model>(
    refs: &Refs,
    key: &ObjectKey,
    obj: &Route<R>,
    errors: &mut Vec<ObjectError>,
) -> Option<R> {
    let mut parents: Vec<ParentRef> = Vec::new();
    for (i, p) in obj.parent_refs.iter().enumerate() {
        match refs.parent(key, &format!("spec.parentRefs[{i}]"), p) {
            Ok(Some(parent)) if !parents.contains(&parent) => parents.push(parent),
            Ok(_) => {}
            Err(msg) => errors.push(translate_err(
                key,
                format!("{msg}; this parentRef is ignored"),
            )),
        }
    }
    if parents.is_empty() {
        tracing::debug!(route = %key, "no Service among the parentRefs: not a mesh route");
        return None;
    }
    let missing: Vec<String> = obj
        .route
        .backends()
        .into_iter()
        .filter_map(|(i, j, b)| {
            refs.backend(&key.namespace, b)
                .err()
                .map(|m| format!("spec.rules[{i}].backendRefs[{j}]{m}"))
        })
        .collect();
    if !missing.is_empty() {
        errors.push(translate_err(key, format!(
            "{}; the route is left out until its backends exist (Gateway API answers 500 for a missing backend's share of requests, which Trellis cannot express)",
            missing.join("; ")
        )));
        return None;
    }
    let mut route = obj.route.clone();
    route.set_parents(parents);
    Some(route)
}

impl Refs<'_> {
    /// The model's parentRef for a Service parent; `Ok(None)` for one that
    /// is not the mesh's business; `Err` for one that cannot be honoured.
    fn parent(
        &self,
        key: &ObjectKey,
        path: &str,
        p: &ParentReference,
    ) -> Result<Option<ParentRef>, String> {
        let ns = key.namespace.as_str();
        if p.is_service() {
            if let Some(other) = p.namespace.as_deref().filter(|n| *n != ns) {
                return Err(format!(
                    "{path}.namespace: Service {other}/{}: a mesh route applies only to Services in its own namespace {ns:?} (consumer routes are not supported); put the route in {other:?}",
                    p.name
                ));
            }
            let Some(svc) = self.services.get(&(ns, p.name.as_str())) else {
                return Err(format!(
                    "{path}: no Service {ns}/{} (or it is left out of the config, see its own error)",
                    p.name
                ));
            };
            let port = self.parent_port(path, svc, p)?;
            return Ok(Some(ParentRef {
                kind: "Service".into(),
                group: None,
                name: p.name.clone(),
                namespace: None,
                port,
            }));
        }
        if p.group() == GROUP && p.kind() == "Gateway" {
            let gw_ns = p.namespace.as_deref().unwrap_or(ns);
            if self.is_waypoint(gw_ns, &p.name) {
                return Err(format!(
                    "{path}: Gateway {gw_ns}/{} is a waypoint; a mesh route attaches to the Service whose traffic it routes (parentRefs: [{{group: \"\", kind: Service, name: <service>}}]), and the waypoint serves it",
                    p.name
                ));
            }
            tracing::debug!(route = %key, gateway = %format!("{gw_ns}/{}", p.name), "parentRef to a Gateway that is not a waypoint: left to that gateway's controller");
            return Ok(None);
        }
        Err(format!(
            "{path}: kind {:?} in group {:?} is not supported; a mesh route attaches to a Service (group \"\" or core, kind Service)",
            p.kind(),
            p.group()
        ))
    }

    /// The one port a Service parent names (by `sectionName`, the port's
    /// name, or by `port`), or None for all of its ports.
    fn parent_port(
        &self,
        path: &str,
        svc: &Service,
        p: &ParentReference,
    ) -> Result<Option<u16>, String> {
        let named = match &p.section_name {
            None => None,
            Some(section) => {
                let port = self.port_named(&svc.namespace, &svc.name, section).ok_or_else(|| {
                    format!(
                        "{path}.sectionName: Service {}/{} has no port named {section:?}; for a Service, sectionName is the name of one of its ports",
                        svc.namespace, svc.name
                    )
                })?;
                if p.port.is_some_and(|n| n != port) {
                    return Err(format!(
                        "{path}: sectionName {section:?} is port {port} of Service {}/{}, but port says {}; they must name the same port",
                        svc.namespace, svc.name, p.port.unwrap_or_default()
                    ));
                }
                Some(port)
            }
        };
        let (port, field) = match named {
            Some(n) => (Some(n), "sectionName"),
            None => (p.port, "port"),
        };
        if let Some(port) = port {
            if !svc.ports.iter().any(|sp| sp.port == port) {
                return Err(format!(
                    "{path}.{field}: Service {}/{} has no TCP port {port}; its ports are: {}",
                    svc.namespace,
                    svc.name,
                    port_list(svc)
                ));
            }
        }
        Ok(port)
    }

    fn port_named(&self, ns: &str, name: &str, section: &str) -> Option<u16> {
        let key = ObjectKey {
            kind: Kind::Service,
            namespace: ns.into(),
            name: name.into(),
        };
        let Some(Object::Service(svc)) = self.store.get(&key) else {
            return None;
        };
        let svc: &KService = svc;
        svc.spec
            .as_ref()?
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(section))
            .and_then(|p| u16::try_from(p.port).ok())
    }

    fn is_waypoint(&self, ns: &str, name: &str) -> bool {
        let key = ObjectKey {
            kind: Kind::Gateway,
            namespace: ns.into(),
            name: name.into(),
        };
        let Some(Object::Gateway(gw)) = self.store.get(&key) else {
            return false;
        };
        let class = gw.spec.gateway_class_name.as_str();
        class == CLASS || (self.opts.istio_labels && class == ISTIO_CLASS)
    }

    /// `Err` is the rest of a message after the backend's path.
    fn backend(&self, ns: &str, b: &BackendRef) -> Result<(), String> {
        let Some(svc) = self.services.get(&(ns, b.name.as_str())) else {
            return Err(format!(
                ": no Service {ns}/{} (or it is left out of the config, see its own error)",
                b.name
            ));
        };
        match b.port {
            Some(port) if !svc.ports.iter().any(|p| p.port == port) => Err(format!(
                ".port: Service {ns}/{} has no TCP port {port}; its ports are: {}",
                b.name,
                port_list(svc)
            )),
            _ => Ok(()),
        }
    }
}

fn port_list(svc: &Service) -> String {
    if svc.ports.is_empty() {
        return "none".into();
    }
    svc.ports
        .iter()
        .map(|p| p.port.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
