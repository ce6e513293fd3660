//! What a config source hands a proxy's state store: a whole [`LocalConfig`]
//! ([`Update::Snapshot`], from a file) or a change to some objects by key
//! ([`Update::Delta`], from delta xDS). Both end in one [`LocalConfig`], so
//! the store has one way to validate and index, whatever the source.
//!
//! [`Update::apply_to`] is a pure function so that its semantics (order
//! kept, upsert by key, removal of unknown keys allowed) are tested as a
//! table, apart from any I/O.

use std::collections::hash_map::Entry;
use std::fmt;

use ahash::{AHashMap, AHashSet};

use crate::config::l7::{GrpcRoute, HttpRoute, L7Policy, WaypointSettings};
use crate::config::{Authorization, LocalConfig, Service, Workload};

/// One change from a config source.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// Replaces everything the store holds.
    Snapshot(LocalConfig),
    /// Adds or replaces `upserts` and drops `removals`; everything else
    /// stays. Removals apply first, so an object both removed and upserted
    /// in one delta ends up present.
    Delta {
        upserts: Vec<Resource>,
        removals: Vec<ResourceKey>,
    },
}

/// One object of the config model.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Workload(Workload),
    Service(Service),
    Authorization(Authorization),
    L7Policy(L7Policy),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    Waypoint(WaypointSettings),
}

/// The kinds of [`Resource`], for keys, logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Workload,
    Service,
    Authorization,
    L7Policy,
    HttpRoute,
    GrpcRoute,
    Waypoint,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Workload => "workload",
            Kind::Service => "service",
            Kind::Authorization => "authorization",
            Kind::L7Policy => "l7-policy",
            Kind::HttpRoute => "http-route",
            Kind::GrpcRoute => "grpc-route",
            Kind::Waypoint => "waypoint",
        }
    }
}

/// Names one object: a workload by uid, a service by `namespace/hostname`
/// (as Istio's workload API keys them), everything else by
/// `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: Kind,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: Kind, name: impl Into<String>) -> ResourceKey {
        ResourceKey {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.name)
    }
}

fn ns_name(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Workload(_) => Kind::Workload,
            Resource::Service(_) => Kind::Service,
            Resource::Authorization(_) => Kind::Authorization,
            Resource::L7Policy(_) => Kind::L7Policy,
            Resource::HttpRoute(_) => Kind::HttpRoute,
            Resource::GrpcRoute(_) => Kind::GrpcRoute,
            Resource::Waypoint(_) => Kind::Waypoint,
        }
    }

    pub fn key(&self) -> ResourceKey {
        let name = match self {
            Resource::Workload(w) => w.uid.clone(),
            Resource::Service(s) => ns_name(&s.namespace, &s.hostname),
            Resource::Authorization(p) => ns_name(&p.namespace, &p.name),
            Resource::L7Policy(p) => ns_name(&p.namespace, &p.name),
            Resource::HttpRoute(r) => ns_name(&r.namespace, &r.name),
            Resource::GrpcRoute(r) => ns_name(&r.namespace, &r.name),
            Resource::Waypoint(w) => ns_name(&w.namespace, &w.name),
        };
        ResourceKey::new(self.kind(), name)
    }
}

/// Upserts of one kind, in arrival order, and the names removed.
struct Changes<T> {
    upserts: Vec<T>,
    removals: AHashSet<String>,
}

impl<T> Default for Changes<T> {
    fn default() -> Self {
        Changes {
            upserts: Vec::new(),
            removals: AHashSet::new(),
        }
    }
}

impl<T: Clone> Changes<T> {
    /// Applies to `list`: keeps the order of what stays, replaces in place,
    /// appends what is new. A later upsert of the same key wins.
    fn merge(self, list: &mut Vec<T>, key: impl Fn(&T) -> String) {
        if self.upserts.is_empty() && self.removals.is_empty() {
            return;
        }
        if !self.removals.is_empty() {
            list.retain(|t| !self.removals.contains(&key(t)));
        }
        let mut at: AHashMap<String, usize> =
            list.iter().enumerate().map(|(i, t)| (key(t), i)).collect();
        for t in self.upserts {
            match at.entry(key(&t)) {
                Entry::Occupied(e) => list[*e.get()] = t,
                Entry::Vacant(e) => {
                    e.insert(list.len());
                    list.push(t);
                }
            }
        }
    }
}

impl Update {
    /// The config after this update. Validation is the caller's (the store
    /// validates the result as a whole, whatever the kind of update).
    pub fn apply_to(self, current: &LocalConfig) -> LocalConfig {
        let (upserts, removals) = match self {
            Update::Snapshot(cfg) => return cfg,
            Update::Delta { upserts, removals } => (upserts, removals),
        };
        let mut workloads = Changes::default();
        let mut services = Changes::default();
        let mut policies = Changes::default();
        let mut l7 = Changes::default();
        let mut http = Changes::default();
        let mut grpc = Changes::default();
        let mut waypoints = Changes::default();
        for k in removals {
            let set = match k.kind {
                Kind::Workload => &mut workloads.removals,
                Kind::Service => &mut services.removals,
                Kind::Authorization => &mut policies.removals,
                Kind::L7Policy => &mut l7.removals,
                Kind::HttpRoute => &mut http.removals,
                Kind::GrpcRoute => &mut grpc.removals,
                Kind::Waypoint => &mut waypoints.removals,
            };
            set.insert(k.name);
        }
        for r in upserts {
            match r {
                Resource::Workload(x) => workloads.upserts.push(x),
                Resource::Service(x) => services.upserts.push(x),
                Resource::Authorization(x) => policies.upserts.push(x),
                Resource::L7Policy(x) => l7.upserts.push(x),
                Resource::HttpRoute(x) => http.upserts.push(x),
                Resource::GrpcRoute(x) => grpc.upserts.push(x),
                Resource::Waypoint(x) => waypoints.upserts.push(x),
            }
        }
        let mut next = current.clone();
        workloads.merge(&mut next.workloads, |w| w.uid.clone());
        services.merge(&mut next.services, |s| ns_name(&s.namespace, &s.hostname));
        policies.merge(&mut next.policies, |p| ns_name(&p.namespace, &p.name));
        l7.merge(&mut next.authorization_policies, |p| {
            ns_name(&p.namespace, &p.name)
        });
        http.merge(&mut next.http_routes, |r| ns_name(&r.namespace, &r.name));
        grpc.merge(&mut next.grpc_routes, |r| ns_name(&r.namespace, &r.name));
        waypoints.merge(&mut next.waypoints, |w| ns_name(&w.namespace, &w.name));
        next
    }

    /// A short description for logs: `snapshot` or `delta +3 -1`.
    pub fn summary(&self) -> String {
        match self {
            Update::Snapshot(_) => "snapshot".to_string(),
            Update::Delta { upserts, removals } => {
                format!("delta +{} -{}", upserts.len(), removals.len())
            }
        }
    }
}

#[cfg(test)]
mod tests;
