//! Which existing objects the controller made, and which of them are left
//! over from Gateways that are gone or no longer waypoints. Pure; the
//! manager lists and deletes.
//!
//! An object is the controller's only when it has both marks: the
//! `app.kubernetes.io/managed-by: trellis-controller` label and an
//! ownerReference to a Gateway. Anything else, however it is named, is
//! never applied over nor deleted. Garbage collection by ownerReference
//! would delete the objects of a deleted Gateway too, but only where a
//! kube-controller-manager runs; deleting them here does not depend on it.

use std::collections::BTreeMap;

use serde_json::Value;

use super::desired::{GatewayRef, ManagedKind, Plans};
use super::{FIELD_MANAGER, MANAGED_BY};
use crate::objects::translate::waypoints::is_waypoint_class;

/// An object the controller made for a Gateway, as the API server lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Made {
    pub kind: ManagedKind,
    pub name: String,
    /// Its own uid (a delete is conditional on it).
    pub uid: String,
    pub gateway: GatewayRef,
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// The Gateway `item` was made for, if the controller made it.
pub fn made_by_us(kind: ManagedKind, item: &Value) -> Option<Made> {
    let meta = item.get("metadata")?;
    let labels = meta.get("labels");
    if labels
        .and_then(|l| l.get(MANAGED_BY))
        .and_then(Value::as_str)
        != Some(FIELD_MANAGER)
    {
        return None;
    }
    let owner = meta.get("ownerReferences")?.as_array()?.iter().find(|o| {
        str_at(o, "/kind") == Some("Gateway")
            && str_at(o, "/apiVersion").is_some_and(|v| v.starts_with("gateway.networking.k8s.io/"))
    })?;
    Some(Made {
        kind,
        name: str_at(meta, "/name")?.to_string(),
        uid: str_at(meta, "/uid").unwrap_or_default().to_string(),
        gateway: GatewayRef {
            namespace: str_at(meta, "/namespace")?.to_string(),
            name: str_at(owner, "/name")?.to_string(),
        },
    })
}

/// Whether `item`, found where a plan of `gw` wants an object, is the
/// controller's own for that Gateway (so applying over it is safe).
pub fn ours_for(kind: ManagedKind, item: &Value, gw: &GatewayRef) -> bool {
    made_by_us(kind, item).is_some_and(|m| m.gateway == *gw)
}

/// The made objects whose Gateway has no plan, by Gateway. An object of a
/// Gateway that has one is kept even when the plan is refused: a bad edit
/// of a Gateway loses nothing already running.
pub fn leftovers(made: Vec<Made>, plans: &Plans) -> BTreeMap<GatewayRef, Vec<Made>> {
    let mut out: BTreeMap<GatewayRef, Vec<Made>> = BTreeMap::new();
    for m in made {
        if !plans.contains_key(&m.gateway) {
            out.entry(m.gateway.clone()).or_default().push(m);
        }
    }
    out
}

/// What to do with a Gateway's left-over objects, given a fresh read of
/// the Gateway (the store may be behind, or missing a kind it may not
/// read: nothing is deleted on the store's word alone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The Gateway is gone: delete its objects.
    Delete,
    /// It is no longer a waypoint: delete its objects and withdraw the
    /// status conditions the controller wrote.
    DeleteAndClearStatus,
    /// Keep them, for this reason.
    Keep(String),
}

/// `gateway`: the Gateway read from the API server, or the HTTP status of
/// the failed read (None: no answer).
pub fn verdict(gateway: Result<&Value, Option<u16>>, istio_labels: bool) -> Verdict {
    match gateway {
        Err(Some(404)) => Verdict::Delete,
        Err(code) => Verdict::Keep(format!(
            "the Gateway could not be read ({}); nothing is deleted until it can",
            code.map_or("no answer".to_string(), |c| format!("HTTP {c}"))
        )),
        Ok(gw) => {
            let class = str_at(gw, "/spec/gatewayClassName").unwrap_or("");
            if is_waypoint_class(class, istio_labels) {
                Verdict::Keep(
                    "the Gateway is a waypoint (the controller's view is behind); it is applied on the next pass".into(),
                )
            } else {
                Verdict::DeleteAndClearStatus
            }
        }
    }
}

#[cfg(test)]
mod tests;
