//! The mesh config as xDS resources, re-encoding only what changed.
//!
//! [`diff`] compares the config last published with the new one, item by
//! item, and encodes only the resources whose wire form can differ: a
//! changed workload, service or policy, and what depends on it. On the
//! wire, service membership lives on both sides (a workload carries the
//! services it is an endpoint of, with their ports; a service entry lists
//! its member workloads), so a changed service also re-encodes its old and
//! new endpoints, and a workload whose own `services` list changed
//! re-encodes the services it names. Everything else keeps the entry the
//! previous snapshot holds.
//!
//! Each resource is encoded as `trellis_api::xds::encode_config` encodes
//! it (the tests hold the two to the same output); members are listed in
//! name order.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};

use ahash::{AHashMap, AHashSet};
use trellis_api::config::{Authorization, LocalConfig, Service, Workload};
use trellis_api::update::Resource;
use trellis_api::xds::{
    authorization_object, config_object, pack, service_object, workload_object, XdsObject,
    ADDRESS_TYPE, AUTHORIZATION_TYPE, CONFIG_OBJECT_TYPE,
};

use super::snapshot::SnapshotPatch;

/// What to change in the served snapshot to go from one config to another.
#[derive(Debug, Default)]
pub struct Diff {
    /// Resources that are new or may have changed (the snapshot keeps the
    /// old entry of any whose bytes, node, aliases and members are equal).
    pub upserts: Vec<XdsObject>,
    /// (type URL, canonical name) of resources that are gone.
    pub removed: Vec<(&'static str, String)>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removed.is_empty()
    }

    /// Records the diff on `patch`.
    pub fn apply_to(self, patch: &mut SnapshotPatch) {
        for (type_url, name) in self.removed {
            patch.remove(type_url, name);
        }
        for o in self.upserts {
            patch.upsert(o);
        }
    }
}

fn service_key(s: &Service) -> String {
    format!("{}/{}", s.namespace, s.hostname)
}

/// The resources to change to serve `new` where `old` was served.
/// `diff(&LocalConfig::default(), cfg, network)` encodes all of `cfg`.
pub fn diff(old: &LocalConfig, new: &LocalConfig, network: &str) -> Diff {
    let mut out = Diff::default();
    let old_svc: AHashMap<String, &Service> =
        old.services.iter().map(|s| (service_key(s), s)).collect();
    let mut new_svc: AHashMap<String, &Service> = AHashMap::with_capacity(new.services.len());
    // Services whose own fields changed, or that are gone. A name twice
    // counts as changed, so every copy is passed on and the snapshot
    // refuses it, as a whole build would.
    let mut changed_svc: BTreeSet<String> = BTreeSet::new();
    for s in &new.services {
        let k = service_key(s);
        if new_svc.contains_key(&k) || old_svc.get(&k) != Some(&s) {
            changed_svc.insert(k.clone());
        }
        new_svc.insert(k, s);
    }
    for k in old_svc.keys() {
        if !new_svc.contains_key(k) {
            changed_svc.insert(k.clone());
            out.removed.push((ADDRESS_TYPE, k.clone()));
        }
    }

    // Workloads to encode: changed ones, and the endpoints (old and new)
    // of changed services, whose port lists they carry.
    let mut dirty_wl: AHashSet<&str> = AHashSet::new();
    // Services to encode: changed ones, and those a changed workload's
    // own `services` list names (their member lists change).
    let mut dirty_svc: BTreeSet<String> = changed_svc.clone();
    // Two translations of one store list workloads in the same order: while
    // the uids line up, pairs are found by position, so a change that
    // leaves the workloads be costs no hashing of 100k uids.
    let aligned = old.workloads.len() == new.workloads.len()
        && old
            .workloads
            .iter()
            .zip(&new.workloads)
            .all(|(o, n)| o.uid == n.uid);
    if aligned {
        for (o, w) in old.workloads.iter().zip(&new.workloads) {
            if o != w {
                dirty_wl.insert(&w.uid);
                if o.services != w.services {
                    dirty_svc.extend(o.services.iter().chain(&w.services).cloned());
                }
            }
        }
    } else {
        let old_wl: AHashMap<&str, &Workload> =
            old.workloads.iter().map(|w| (w.uid.as_str(), w)).collect();
        let mut seen: AHashSet<&str> = AHashSet::with_capacity(new.workloads.len());
        for w in &new.workloads {
            let uid = w.uid.as_str();
            match old_wl.get(uid) {
                // A uid twice: every copy goes to the snapshot, which refuses it.
                _ if !seen.insert(uid) => {
                    dirty_wl.insert(uid);
                }
                Some(o) if *o == w => {}
                Some(o) => {
                    dirty_wl.insert(uid);
                    if o.services != w.services {
                        dirty_svc.extend(o.services.iter().chain(&w.services).cloned());
                    }
                }
                None => {
                    dirty_wl.insert(uid);
                    dirty_svc.extend(w.services.iter().cloned());
                }
            }
        }
        for o in &old.workloads {
            if !seen.contains(o.uid.as_str()) {
                out.removed.push((ADDRESS_TYPE, o.uid.clone()));
                dirty_svc.extend(o.services.iter().cloned());
            }
        }
    }
    // The uids `new` has, for the (rarer) changes that need them.
    let new_uids: OnceCell<AHashSet<&str>> = OnceCell::new();
    let exists = |uid: &str| -> Option<&str> {
        new_uids
            .get_or_init(|| new.workloads.iter().map(|w| w.uid.as_str()).collect())
            .get(uid)
            .copied()
    };
    for k in &changed_svc {
        for s in [old_svc.get(k), new_svc.get(k)].into_iter().flatten() {
            dirty_wl.extend(s.endpoints.iter().filter_map(|u| exists(u)));
        }
    }
    if !changed_svc.is_empty() {
        for w in &new.workloads {
            if w.services.iter().any(|k| changed_svc.contains(k)) {
                dirty_wl.insert(w.uid.as_str());
            }
        }
    }

    // Which services list each dirty workload among their endpoints, in
    // config order (as the full encoder finds them).
    let mut member_of: AHashMap<&str, Vec<&Service>> = AHashMap::new();
    if !dirty_wl.is_empty() {
        for s in &new.services {
            for uid in &s.endpoints {
                if let Some(u) = dirty_wl.get(uid.as_str()) {
                    member_of.entry(u).or_default().push(s);
                }
            }
        }
    }
    for w in &new.workloads {
        if !dirty_wl.contains(w.uid.as_str()) {
            continue;
        }
        let mut services = member_of.get(w.uid.as_str()).cloned().unwrap_or_default();
        for key in &w.services {
            if let Some(s) = new_svc.get(key) {
                if !services.iter().any(|x| std::ptr::eq(*x, *s)) {
                    services.push(s);
                }
            }
        }
        out.upserts.push(workload_object(w, &services, network));
    }

    // Member lists of the dirty services: their endpoints that exist, and
    // the workloads naming them.
    let mut members: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for k in &dirty_svc {
        if let Some(s) = new_svc.get(k) {
            let m = members.entry(k.as_str()).or_default();
            m.extend(s.endpoints.iter().filter_map(|u| exists(u)));
        }
    }
    if !members.is_empty() {
        for w in &new.workloads {
            for k in &w.services {
                if let Some(m) = members.get_mut(k.as_str()) {
                    m.insert(w.uid.as_str());
                }
            }
        }
    }
    for s in new.services.iter().filter(|_| !members.is_empty()) {
        let key = service_key(s);
        if let Some(m) = members.get(key.as_str()) {
            let m = m.iter().map(|u| u.to_string()).collect();
            out.upserts.push(service_object(s, key, m, network));
        }
    }

    diff_small(
        &old.policies,
        &new.policies,
        Authorization::key,
        |p| Some(authorization_object(p)),
        AUTHORIZATION_TYPE,
        &mut out,
    );
    diff_small(
        &config_resources(old),
        &config_resources(new),
        config_name,
        config_resource_object,
        CONFIG_OBJECT_TYPE,
        &mut out,
    );
    out
}

/// Sections of a few hundred items: compared by name, changed ones encoded.
fn diff_small<T: PartialEq>(
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> String,
    encode: impl Fn(&T) -> Option<XdsObject>,
    type_url: &'static str,
    out: &mut Diff,
) {
    let before: AHashMap<String, &T> = old.iter().map(|x| (name(x), x)).collect();
    let mut now: AHashSet<String> = AHashSet::new();
    for x in new {
        let n = name(x);
        if before.get(&n) != Some(&x) || now.contains(&n) {
            out.upserts.extend(encode(x));
        }
        now.insert(n);
    }
    for n in before.keys() {
        if !now.contains(n) {
            out.removed.push((type_url, n.clone()));
        }
    }
}

/// The sections served as Trellis's `ConfigObject`.
fn config_resources(cfg: &LocalConfig) -> Vec<Resource> {
    cfg.authorization_policies
        .iter()
        .cloned()
        .map(Resource::L7Policy)
        .chain(cfg.http_routes.iter().cloned().map(Resource::HttpRoute))
        .chain(cfg.grpc_routes.iter().cloned().map(Resource::GrpcRoute))
        .chain(cfg.waypoints.iter().cloned().map(Resource::Waypoint))
        .collect()
}

/// The name `config_object` gives; computed without serializing.
fn config_name(r: &Resource) -> String {
    format!("{}/{}", r.kind().as_str(), r.key().name)
}

fn config_resource_object(r: &Resource) -> Option<XdsObject> {
    let (name, obj) = config_object(r)?;
    Some(XdsObject {
        type_url: CONFIG_OBJECT_TYPE,
        name,
        node: None,
        aliases: Vec::new(),
        members: Vec::new(),
        resource: pack(CONFIG_OBJECT_TYPE, &obj),
    })
}

#[cfg(test)]
mod tests;
