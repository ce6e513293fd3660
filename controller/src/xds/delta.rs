//! The delta xDS decisions for one stream, pure (no I/O, no runtime): what
//! to send a client for a request or a new snapshot.
//!
//! Per type URL a stream keeps: whether it is a wildcard subscription, the
//! names asked for explicitly, what the client holds (canonical name ->
//! version, assumed from what was sent), and the nonce in flight.
//!
//! Decisions, with why:
//! - Wildcard scope depends on the caller: a node proxy gets the Addresses
//!   on its own node and every Authorization (nothing of ConfigObject); a
//!   waypoint gets everything of the three types. Anything else only by name.
//! - A node proxy gets its own node's workloads even without the wildcard:
//!   an on-demand client (ztunnel with `XDS_ON_DEMAND`, which subscribes and
//!   unsubscribes "*" at once) waits for the pods it serves and never asks
//!   for them by name (istiod pushes node-local pods to it too).
//! - A name asked for explicitly brings its members (a service, its
//!   endpoint workloads), as istiod answers an on-demand service lookup.
//! - A name may be an alias (e.g. `network/ip`). Like istiod, the resource is
//!   sent under its canonical name, with the aliases the client asked for in
//!   `Resource.aliases`. The response that answers an alias also lists it in
//!   `removed_resources`: ztunnel reads no aliases and waits on an on-demand
//!   lookup until a response names it (nothing is ever held under an alias,
//!   so this removes nothing). A name that resolves to nothing is answered
//!   once in `removed_resources`, so the client stops waiting.
//! - On a non-wildcard stream, the names in the first request's
//!   `initial_resource_versions` stay subscribed (ztunnel's on-demand
//!   reconnect; istiod does the same).
//! - A newly subscribed name that resolves is always sent, even if the client
//!   holds that version: it is waiting for an answer to that name.
//! - After a NACK the sent versions stay recorded as held, so the same
//!   versions are not sent again; the next change of those resources is.
//! - A request with a stale nonce is neither an ACK nor a NACK; its
//!   subscription changes still apply (the client sent them with the last
//!   nonce it had), but it never causes a resend.
//! - Unknown type URLs are ignored (as istiod does: no generator, no
//!   response); the caller logs the event.
//! - A snapshot patched from the one a type's state is in line with is
//!   reconciled over the names it changed, plus the explicit names and
//!   their members then and now (a member list can move without its
//!   members changing); any other snapshot takes the whole path. Both give
//!   the same answer (tests/incremental.rs), the first without visiting
//!   the node's (or, for a waypoint, the mesh's) every resource.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use trellis_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::snapshot::{Entry, Snapshot, Table, ADDRESS, AUTHORIZATION, CONFIG_OBJECT, TYPE_URLS};
use crate::auth::Caller;

/// Bound on the names one stream may subscribe to per type: protects the
/// controller's memory from a broken or hostile client.
pub const MAX_NAMES_PER_TYPE: usize = 100_000;

/// A request that breaks the protocol; the stream is ended with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("delta xds request without type_url; every DeltaDiscoveryRequest must name its type")]
    NoTypeUrl,
    #[error("delta xds request subscribes more than {max} names of {type_url}; subscribe with \"*\" or fewer names")]
    TooManyNames { type_url: String, max: usize },
}

/// What happened, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Ack {
        type_url: String,
    },
    Nack {
        type_url: String,
        message: String,
    },
    StaleNonce {
        type_url: String,
        nonce: String,
    },
    UnknownType {
        type_url: String,
    },
    /// `initial_resource_versions` on a request that is not the first of its
    /// type; ignored.
    LateInitialVersions {
        type_url: String,
    },
}

/// What to send and what to record.
#[derive(Debug, Default, PartialEq)]
pub struct Output {
    pub responses: Vec<DeltaDiscoveryResponse>,
    pub events: Vec<Event>,
}

#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    /// Names asked for explicitly, as asked (canonical or alias).
    names: BTreeSet<String>,
    /// Canonical name -> version the client holds.
    held: HashMap<String, String>,
    /// Explicit names already answered as missing, so a miss is sent once.
    missing_sent: BTreeSet<String>,
    nonce: Option<String>,
    /// The version of the snapshot `held` was last brought in line with.
    seen: Option<String>,
    /// Canonical names wanted through `names` (with their members) then.
    explicit: BTreeSet<String>,
}

/// The delta state of one stream.
#[derive(Debug)]
pub struct Stream {
    caller: Caller,
    nonce_prefix: String,
    next_nonce: u64,
    types: BTreeMap<String, TypeState>,
}

impl Stream {
    /// `nonce_prefix` makes nonces unique across streams (the service gives
    /// each stream a random one).
    pub fn new(caller: Caller, nonce_prefix: impl Into<String>) -> Self {
        Stream {
            caller,
            nonce_prefix: nonce_prefix.into(),
            next_nonce: 0,
            types: BTreeMap::new(),
        }
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Handles one request from the client against the current snapshot.
    pub fn on_request(
        &mut self,
        snap: &Snapshot,
        req: DeltaDiscoveryRequest,
    ) -> Result<Output, ProtocolError> {
        let mut out = Output::default();
        let type_url = req.type_url;
        if type_url.is_empty() {
            return Err(ProtocolError::NoTypeUrl);
        }
        if !TYPE_URLS.contains(&type_url.as_str()) {
            out.events.push(Event::UnknownType { type_url });
            return Ok(out);
        }
        let first = !self.types.contains_key(&type_url);
        let state = self.types.entry(type_url.clone()).or_default();

        if !req.response_nonce.is_empty() {
            if state.nonce.as_deref() == Some(req.response_nonce.as_str()) {
                state.nonce = None;
                match req.error_detail {
                    Some(status) => out.events.push(Event::Nack {
                        type_url: type_url.clone(),
                        message: status.message,
                    }),
                    None => out.events.push(Event::Ack {
                        type_url: type_url.clone(),
                    }),
                }
            } else {
                out.events.push(Event::StaleNonce {
                    type_url: type_url.clone(),
                    nonce: req.response_nonce,
                });
            }
        }

        if first {
            state.held = req.initial_resource_versions.into_iter().collect();
            // Legacy rule: a first request naming nothing is a wildcard.
            if req.resource_names_subscribe.is_empty() && req.resource_names_unsubscribe.is_empty()
            {
                state.wildcard = true;
            }
        } else if !req.initial_resource_versions.is_empty() {
            out.events.push(Event::LateInitialVersions {
                type_url: type_url.clone(),
            });
        }

        let touched_subscriptions =
            !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty();
        let mut fresh = BTreeSet::new();
        for name in req.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else if state.names.insert(name.clone()) {
                state.missing_sent.remove(&name);
                fresh.insert(name);
            }
        }
        let mut dropped = Vec::new();
        for name in req.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(&name);
                state.missing_sent.remove(&name);
                fresh.remove(&name);
                dropped.push(name);
            }
        }
        if first && !state.wildcard {
            // ztunnel in on-demand mode reconnects with what it holds in
            // initial_resource_versions and does not subscribe to those names
            // again; like istiod, take them as still subscribed, so it keeps
            // getting their updates instead of losing them at every reconnect.
            let held: Vec<String> = state.held.keys().cloned().collect();
            state.names.extend(held);
        }
        if state.names.len() > MAX_NAMES_PER_TYPE {
            return Err(ProtocolError::TooManyNames {
                type_url,
                max: MAX_NAMES_PER_TYPE,
            });
        }
        if !dropped.is_empty() {
            // An unsubscribed name that nothing else covers stops being
            // tracked; no removal is sent for it (the client dropped it).
            let wanted = wanted(&self.caller, &type_url, state, snap);
            let table = snap.table(&type_url);
            for name in dropped {
                let canonical = table
                    .resolve(&name)
                    .map(|(c, _)| c.to_string())
                    .unwrap_or(name);
                if !wanted.contains_key(canonical.as_str()) {
                    state.held.remove(&canonical);
                }
            }
        }

        // An ACK that changes no subscription, against the snapshot already
        // reconciled, cannot produce anything: skip the work (1,000 streams
        // ACK every push).
        let unchanged = !first
            && fresh.is_empty()
            && !touched_subscriptions
            && state.seen.as_deref() == Some(snap.version());
        if unchanged {
            return Ok(out);
        }
        let mut response = reconcile(&self.caller, &type_url, state, snap, &fresh);
        if first || !is_empty(&response) {
            let nonce = self.nonce();
            finish(&mut response, &type_url, snap, &nonce);
            if let Some(state) = self.types.get_mut(&type_url) {
                state.nonce = Some(nonce);
            }
            out.responses.push(response);
        }
        Ok(out)
    }

    /// A new snapshot: for each subscribed type, what changed for this client.
    pub fn on_snapshot(&mut self, snap: &Snapshot) -> Output {
        let mut out = Output::default();
        let type_urls: Vec<String> = self.types.keys().cloned().collect();
        for type_url in type_urls {
            let Some(state) = self.types.get_mut(&type_url) else {
                continue;
            };
            if state.seen.as_deref() == Some(snap.version()) {
                continue;
            }
            let mut response = match snap.changes() {
                // The state is in line with the snapshot this one was patched
                // from: only the changed names (and the explicit ones, whose
                // members may have moved) can differ.
                Some(c) if state.seen.as_deref() == Some(c.parent.as_str()) => {
                    let changed = c.names.get(&type_url).cloned().unwrap_or_default();
                    reconcile_changes(&self.caller, &type_url, state, snap, &changed)
                }
                _ => reconcile(&self.caller, &type_url, state, snap, &BTreeSet::new()),
            };
            if is_empty(&response) {
                continue;
            }
            let nonce = self.nonce();
            finish(&mut response, &type_url, snap, &nonce);
            if let Some(state) = self.types.get_mut(&type_url) {
                state.nonce = Some(nonce);
            }
            out.responses.push(response);
        }
        out
    }

    fn nonce(&mut self) -> String {
        self.next_nonce += 1;
        format!("{}-{}", self.nonce_prefix, self.next_nonce)
    }
}

fn is_empty(r: &DeltaDiscoveryResponse) -> bool {
    r.resources.is_empty() && r.removed_resources.is_empty()
}

fn finish(r: &mut DeltaDiscoveryResponse, type_url: &str, snap: &Snapshot, nonce: &str) {
    r.type_url = type_url.to_string();
    r.system_version_info = snap.version().to_string();
    r.nonce = nonce.to_string();
}

/// Whether `caller` gets `entry` without naming it: a node proxy its own
/// node's workloads always, the rest of its scope with the wildcard.
fn in_scope(caller: &Caller, type_url: &str, wildcard: bool, entry: &Entry) -> bool {
    match (caller, type_url) {
        (Caller::NodeProxy { node }, ADDRESS) => entry.node.as_deref() == Some(node.as_str()),
        _ => wildcard && in_wildcard_scope(caller, type_url, entry),
    }
}

/// Whether a wildcard subscription of `caller` covers `entry`.
fn in_wildcard_scope(caller: &Caller, type_url: &str, entry: &Entry) -> bool {
    match caller {
        Caller::Waypoint { .. } => true,
        Caller::NodeProxy { node } => match type_url {
            ADDRESS => entry.node.as_deref() == Some(node.as_str()),
            AUTHORIZATION => true,
            CONFIG_OBJECT => false,
            _ => false,
        },
    }
}

/// Canonical name -> (entry, the explicit aliases that resolved to it).
type Wanted<'s> = BTreeMap<&'s str, (&'s Entry, Vec<String>)>;

/// What the explicit names bring: each name's entry (with the alias it was
/// asked by) and the entry's members.
fn explicit<'s>(type_url: &str, state: &TypeState, snap: &'s Snapshot) -> Wanted<'s> {
    let table = snap.table(type_url);
    let mut wanted = Wanted::new();
    for asked in &state.names {
        if let Some((canonical, entry)) = table.resolve(asked) {
            let slot = wanted.entry(canonical).or_insert((entry, Vec::new()));
            if asked != canonical {
                slot.1.push(asked.clone());
            }
            // A service asked for by name brings its endpoints: the client
            // cannot route to a VIP without them, and does not know their
            // names to ask. They stay while the service is subscribed.
            for member in &entry.members {
                if let Some((m, e)) = table.resolve(member) {
                    wanted.entry(m).or_insert((e, Vec::new()));
                }
            }
        }
    }
    wanted
}

/// Everything the client should hold: what it gets unasked ([`in_scope`])
/// and the explicit names.
fn wanted<'s>(
    caller: &Caller,
    type_url: &str,
    state: &TypeState,
    snap: &'s Snapshot,
) -> Wanted<'s> {
    let table = snap.table(type_url);
    let mut wanted = explicit(type_url, state, snap);
    match (caller, type_url) {
        // A node proxy's own node, wildcard or not, from the index.
        (Caller::NodeProxy { node }, ADDRESS) => {
            for (name, entry) in table.on_node(node) {
                wanted.entry(name).or_insert((entry, Vec::new()));
            }
        }
        _ if state.wildcard => {
            for (name, entry) in table.entries() {
                if in_wildcard_scope(caller, type_url, entry) {
                    wanted.entry(name).or_insert((entry, Vec::new()));
                }
            }
        }
        _ => {}
    }
    wanted
}

fn resource(name: &str, entry: &Entry, aliases: &[String]) -> Resource {
    Resource {
        name: name.to_string(),
        version: entry.version.clone(),
        resource: Some(entry.resource.clone()),
        aliases: aliases.to_vec(),
        ..Default::default()
    }
}

/// Brings what the client holds in line with what it wants; `fresh` are
/// names subscribed by this request (always answered). The response has no
/// nonce yet.
fn reconcile(
    caller: &Caller,
    type_url: &str,
    state: &mut TypeState,
    snap: &Snapshot,
    fresh: &BTreeSet<String>,
) -> DeltaDiscoveryResponse {
    let table = snap.table(type_url);
    let wanted = wanted(caller, type_url, state, snap);
    let fresh_canonical: BTreeSet<&str> = fresh
        .iter()
        .filter_map(|n| table.resolve(n).map(|(c, _)| c))
        .collect();
    let mut response = DeltaDiscoveryResponse::default();
    for (name, (entry, aliases)) in &wanted {
        let changed = state.held.get(*name) != Some(&entry.version);
        if changed || fresh_canonical.contains(name) {
            response.resources.push(resource(name, entry, aliases));
            state.held.insert(name.to_string(), entry.version.clone());
        }
    }
    let mut gone: Vec<String> = state
        .held
        .keys()
        .filter(|n| !wanted.contains_key(n.as_str()))
        .cloned()
        .collect();
    gone.sort();
    for name in &gone {
        state.held.remove(name);
    }
    response.removed_resources = gone;
    // A fresh name that resolved through an alias is also listed as removed:
    // ztunnel ignores `aliases` and releases an on-demand lookup only when a
    // response names it, as a resource or a removal. Nothing is held under
    // an alias, so the removal takes nothing from any client.
    for asked in fresh {
        if table
            .resolve(asked)
            .is_some_and(|(c, _)| c != asked.as_str())
        {
            response.removed_resources.push(asked.clone());
        }
    }
    state.explicit = explicit(type_url, state, snap)
        .into_keys()
        .map(str::to_string)
        .collect();
    answer_missing(state, snap.table(type_url), &mut response);
    state.seen = Some(snap.version().to_string());
    response
}

/// [`reconcile`] for a snapshot patched from the one the state is in line
/// with, looking only at what can differ: the `changed` names, and the
/// explicit names and members then and now. A name outside those keeps its
/// entry, so the [`in_scope`] verdict on it is the same as before.
fn reconcile_changes(
    caller: &Caller,
    type_url: &str,
    state: &mut TypeState,
    snap: &Snapshot,
    changed: &BTreeSet<String>,
) -> DeltaDiscoveryResponse {
    let table = snap.table(type_url);
    let now = explicit(type_url, state, snap);
    let mut check: BTreeSet<&str> = changed.iter().map(String::as_str).collect();
    check.extend(now.keys().copied());
    check.extend(state.explicit.iter().map(String::as_str));
    let mut response = DeltaDiscoveryResponse::default();
    let mut gone = Vec::new();
    for name in check {
        let want = match now.get(name) {
            Some((entry, aliases)) => Some((*entry, aliases.as_slice())),
            None => table
                .get(name)
                .filter(|e| in_scope(caller, type_url, state.wildcard, e))
                .map(|e| (&**e, &[][..])),
        };
        match want {
            Some((entry, aliases)) => {
                if state.held.get(name) != Some(&entry.version) {
                    response.resources.push(resource(name, entry, aliases));
                    state.held.insert(name.to_string(), entry.version.clone());
                }
            }
            None => {
                if state.held.remove(name).is_some() {
                    gone.push(name.to_string());
                }
            }
        }
    }
    response.removed_resources = gone;
    state.explicit = now.into_keys().map(str::to_string).collect();
    answer_missing(state, table, &mut response);
    state.seen = Some(snap.version().to_string());
    response
}

/// Explicit names that resolve to nothing are answered once in
/// `removed_resources`, so the client stops waiting; once one exists again
/// it is sent (as wanted) and forgotten here.
fn answer_missing(state: &mut TypeState, table: &Table, response: &mut DeltaDiscoveryResponse) {
    for asked in &state.names {
        if table.resolve(asked).is_none()
            && !state.missing_sent.contains(asked)
            && !response.removed_resources.contains(asked)
        {
            response.removed_resources.push(asked.clone());
        }
    }
    let names = &state.names;
    state
        .missing_sent
        .retain(|n| names.contains(n) && table.resolve(n).is_none());
    for asked in names {
        if table.resolve(asked).is_none() {
            state.missing_sent.insert(asked.clone());
        }
    }
}

#[cfg(test)]
mod tests;
