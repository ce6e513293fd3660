//! What a delta xDS client holds and what it asks for, without I/O: the
//! decisions of [`super::XdsSource`], tested as tables.
//!
//! Per type URL the tracker keeps the resources held (xDS name -> the
//! config key it became, and its version), so that a removal by xDS name
//! removes the right object and a reconnect can send
//! `initial_resource_versions`. On-demand names (`network/ip` aliases,
//! `namespace/hostname`) are remembered too: re-subscribed on reconnect, and
//! answered at once when asked again after the server has answered them.

use std::collections::{BTreeMap, HashMap};

use trellis_api::pb::envoy::config::core::v3::Node;
use trellis_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use trellis_api::pb::google::rpc::Status as RpcStatus;
use trellis_api::{Resource, ResourceKey, Update};

/// The type URL whose names are fetched on demand.
pub const ON_DEMAND_TYPE: &str = trellis_api::xds::ADDRESS_TYPE;

/// gRPC's INVALID_ARGUMENT, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    key: ResourceKey,
    version: String,
}

/// Where an on-demand name stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Sent, no answer yet: wait for it.
    Pending,
    /// The server has answered (found or not); the state says which.
    Answered,
}

/// A response, decided: what to apply, and what to answer the server once
/// it is applied.
#[derive(Debug, Default, PartialEq)]
pub struct Handled {
    /// The change to the config, if any (applied by the caller; if the
    /// store refuses it, call [`Tracker::refused`] and NACK).
    pub update: Option<Update>,
    /// Resources that did not decode, as `name: reason`; they make the
    /// response a NACK, but the ones that decoded are still applied (as
    /// Istio's ztunnel does: one bad object must not stall the others).
    pub errors: Vec<String>,
    /// On-demand names this response answered (found or removed).
    pub answered: Vec<String>,
    pub type_url: String,
    pub nonce: String,
}

/// The client side of one delta ADS session, across reconnects.
#[derive(Debug)]
pub struct Tracker {
    node: Node,
    /// The wildcard types, in subscription order.
    types: Vec<String>,
    held: HashMap<String, BTreeMap<String, Held>>,
    on_demand: BTreeMap<String, Lookup>,
    /// Types that have had their first response since the tracker started.
    synced: Vec<String>,
    /// What the last response changed in `held` (type, name, before), so
    /// [`Tracker::refused`] can put it back.
    undo: Vec<(String, String, Option<Held>)>,
}

impl Tracker {
    pub fn new(node: Node, types: &[&str]) -> Tracker {
        Tracker {
            node,
            types: types.iter().map(|t| t.to_string()).collect(),
            held: HashMap::new(),
            on_demand: BTreeMap::new(),
            synced: Vec::new(),
            undo: Vec::new(),
        }
    }

    /// Whether every subscribed type has had its first response.
    pub fn synced(&self) -> bool {
        self.types.iter().all(|t| self.synced.contains(t))
    }

    /// The first request per type on a new stream: a wildcard subscription,
    /// the on-demand names still wanted, and the versions already held (so
    /// the server sends only what changed while disconnected). The node is
    /// sent on the first request only, as the protocol allows.
    pub fn initial_requests(&self) -> Vec<DeltaDiscoveryRequest> {
        self.types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut subscribe = vec!["*".to_owned()];
                if t == ON_DEMAND_TYPE {
                    subscribe.extend(self.on_demand.keys().cloned());
                }
                DeltaDiscoveryRequest {
                    node: (i == 0).then(|| self.node.clone()),
                    type_url: t.clone(),
                    resource_names_subscribe: subscribe,
                    initial_resource_versions: self
                        .held
                        .get(t)
                        .map(|m| {
                            m.iter()
                                .map(|(n, h)| (n.clone(), h.version.clone()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    ..Default::default()
                }
            })
            .collect()
    }

    /// Asks for `name` on demand. Returns the request to send, or None if
    /// the name was asked for already (then [`Tracker::lookup`] says
    /// whether to wait).
    pub fn subscribe(&mut self, name: &str) -> Option<DeltaDiscoveryRequest> {
        if self.on_demand.contains_key(name) {
            return None;
        }
        self.on_demand.insert(name.to_owned(), Lookup::Pending);
        Some(DeltaDiscoveryRequest {
            type_url: ON_DEMAND_TYPE.to_owned(),
            resource_names_subscribe: vec![name.to_owned()],
            ..Default::default()
        })
    }

    pub fn lookup(&self, name: &str) -> Option<Lookup> {
        self.on_demand.get(name).copied()
    }

    /// Decodes `resp` against what is held. `decode` turns one xDS resource
    /// into a config object (trellis_api::xds::decode in production).
    pub fn on_response(
        &mut self,
        resp: &DeltaDiscoveryResponse,
        decode: impl Fn(&str, &str, &prost_types::Any) -> Result<Resource, String>,
    ) -> Handled {
        let t = resp.type_url.clone();
        let mut out = Handled {
            type_url: t.clone(),
            nonce: resp.nonce.clone(),
            ..Default::default()
        };
        if !self.synced.contains(&t) {
            self.synced.push(t.clone());
        }
        self.undo.clear();
        let held = self.held.entry(t.clone()).or_default();
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        for r in &resp.resources {
            let Some(any) = r.resource.as_ref() else {
                out.errors.push(format!("{}: no resource body", r.name));
                continue;
            };
            match decode(&t, &r.name, any) {
                Ok(res) => {
                    let key = res.key();
                    // The same xDS name may now map to another key (a
                    // workload whose uid changed is a new object).
                    if let Some(old) = held.get(&r.name).filter(|h| h.key != key) {
                        removals.push(old.key.clone());
                    }
                    let before = held.insert(
                        r.name.clone(),
                        Held {
                            key,
                            version: r.version.clone(),
                        },
                    );
                    self.undo.push((t.clone(), r.name.clone(), before));
                    upserts.push(res);
                }
                Err(e) => out.errors.push(format!("{}: {e}", r.name)),
            }
            for n in std::iter::once(&r.name).chain(&r.aliases) {
                if self.on_demand.contains_key(n) {
                    self.on_demand.insert(n.clone(), Lookup::Answered);
                    out.answered.push(n.clone());
                }
            }
        }
        for name in &resp.removed_resources {
            if let Some(h) = held.remove(name) {
                removals.push(h.key.clone());
                self.undo.push((t.clone(), name.clone(), Some(h)));
            }
            if self.on_demand.contains_key(name) {
                self.on_demand.insert(name.clone(), Lookup::Answered);
                out.answered.push(name.clone());
            }
        }
        if !upserts.is_empty() || !removals.is_empty() {
            out.update = Some(Update::Delta { upserts, removals });
        }
        out
    }

    /// The store refused the last response's update whole: put back what
    /// it changed in the held versions, so a reconnect claims only what the
    /// store really has.
    pub fn refused(&mut self) {
        for (t, name, before) in self.undo.drain(..).rev() {
            let held = self.held.entry(t).or_default();
            match before {
                Some(h) => held.insert(name, h),
                None => held.remove(&name),
            };
        }
    }

    /// The ACK (no error) or NACK for a response.
    pub fn answer(type_url: &str, nonce: &str, error: Option<String>) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            response_nonce: nonce.to_owned(),
            error_detail: error.map(|message| RpcStatus {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }

    /// How many resources of `type_url` are held (for logs and metrics).
    pub fn held(&self, type_url: &str) -> usize {
        self.held.get(type_url).map_or(0, BTreeMap::len)
    }
}

#[cfg(test)]
mod tests;
