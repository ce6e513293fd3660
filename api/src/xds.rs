//! The config model on the wire: conversions between [`crate::config`] and
//! the xDS resources of Istio's workload API (`istio.workload.Address`,
//! `istio.security.Authorization`) and Trellis's own `ConfigObject` (a
//! waypoint's routes, L7 policies and settings, as JSON).
//!
//! The controller encodes its whole mesh with [`encode_config`]; a proxy
//! decodes each received resource with [`decode`]. A resource that cannot be
//! decoded is refused on its own, with a [`ConvertError`] that names it, so
//! the proxy can NACK it and keep the rest.
//!
//! Two shapes differ between the file model and the wire, as in Istio:
//! - service membership: a file lists a service's `endpoints`; the wire
//!   lists, on each workload, the services it belongs to (`services`);
//! - names: a workload is named by its uid, a service by
//!   `namespace/hostname`, an authorization by `namespace/name`, a config
//!   object by `kind/namespace/name`.

use std::net::IpAddr;

use prost::Message;
use prost_types::Any;

use crate::config::l7::{GrpcRoute, HttpRoute, L7Policy, WaypointSettings};
use crate::config::{LocalConfig, Service, Workload};
use crate::pb::istio::workload as wpb;
use crate::pb::trellis::config::v1::ConfigObject;
use crate::update::{Kind, Resource};

mod authorization;
mod workload;

pub use authorization::{authorization_from_pb, authorization_to_pb};
pub use workload::{service_from_pb, service_to_pb, workload_from_pb, workload_to_pb};

/// Workloads and services: Istio's `Address` (one of the two).
pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
/// L4 authorization policies, as Istio sends them to ztunnel.
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";
/// Trellis's waypoint config: routes, L7 policies, waypoint settings.
pub const CONFIG_OBJECT_TYPE: &str = "type.googleapis.com/trellis.config.v1.ConfigObject";

/// The type URLs a Trellis proxy subscribes to, in the order it should.
pub const TYPES: [&str; 3] = [ADDRESS_TYPE, AUTHORIZATION_TYPE, CONFIG_OBJECT_TYPE];

/// Why a received resource was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("{type_url} is not a type Trellis serves or understands")]
    UnknownType { type_url: String },
    #[error("resource {name:?} does not decode as {type_url}: {reason}")]
    Decode {
        type_url: String,
        name: String,
        reason: String,
    },
    #[error("resource {name:?}: {field}: {reason}")]
    Field {
        name: String,
        field: String,
        reason: String,
    },
    #[error("resource {name:?}: {what} is not supported by Trellis; {hint}")]
    Unsupported {
        name: String,
        what: String,
        hint: String,
    },
}

impl ConvertError {
    pub(crate) fn field(name: &str, field: &str, reason: impl Into<String>) -> ConvertError {
        ConvertError::Field {
            name: name.to_string(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// One resource as the controller serves it.
#[derive(Clone, Debug, PartialEq)]
pub struct XdsObject {
    pub type_url: &'static str,
    /// The canonical name clients subscribe to and receive it under.
    pub name: String,
    /// The node a workload runs on (a node proxy gets its own node's
    /// workloads in full); `None` for everything else.
    pub node: Option<String>,
    /// Other names that find it on demand: `<network>/<ip>` for each address.
    pub aliases: Vec<String>,
    /// Names of the same type sent along when this one is asked for by name:
    /// a service's endpoint workloads (by uid), so that an on-demand lookup
    /// of a VIP gives a proxy something to route to.
    pub members: Vec<String>,
    pub resource: Any,
}

/// The name an on-demand lookup of `ip` uses: `<network>/<ip>`.
pub fn ip_alias(network: &str, ip: IpAddr) -> String {
    format!("{network}/{}", ip.to_canonical())
}

/// Every object of `cfg` as xDS resources. Service membership moves from
/// `Service.endpoints` onto the workloads, merged with what the workloads
/// already list.
pub fn encode_config(cfg: &LocalConfig, network: &str) -> Vec<XdsObject> {
    let mut member_of: ahash::AHashMap<&str, Vec<&Service>> = ahash::AHashMap::new();
    for s in &cfg.services {
        for uid in &s.endpoints {
            member_of.entry(uid.as_str()).or_default().push(s);
        }
    }
    let by_host: ahash::AHashMap<String, &Service> = cfg
        .services
        .iter()
        .map(|s| (format!("{}/{}", s.namespace, s.hostname), s))
        .collect();
    let mut out = Vec::with_capacity(
        cfg.workloads.len()
            + cfg.services.len()
            + cfg.policies.len()
            + cfg.authorization_policies.len()
            + cfg.http_routes.len()
            + cfg.grpc_routes.len()
            + cfg.waypoints.len(),
    );
    let mut service_members: ahash::AHashMap<String, Vec<String>> = ahash::AHashMap::new();
    for w in &cfg.workloads {
        let mut services: Vec<&Service> =
            member_of.get(w.uid.as_str()).cloned().unwrap_or_default();
        for key in &w.services {
            if let Some(s) = by_host.get(key) {
                if !services.iter().any(|x| std::ptr::eq(*x, *s)) {
                    services.push(s);
                }
            }
        }
        for s in &services {
            service_members
                .entry(format!("{}/{}", s.namespace, s.hostname))
                .or_default()
                .push(w.uid.clone());
        }
        out.push(workload_object(w, &services, network));
    }
    for s in &cfg.services {
        let key = format!("{}/{}", s.namespace, s.hostname);
        let members = service_members.remove(&key).unwrap_or_default();
        out.push(service_object(s, key, members, network));
    }
    for p in &cfg.policies {
        out.push(authorization_object(p));
    }
    let objects = cfg
        .authorization_policies
        .iter()
        .cloned()
        .map(Resource::L7Policy)
        .chain(cfg.http_routes.iter().cloned().map(Resource::HttpRoute))
        .chain(cfg.grpc_routes.iter().cloned().map(Resource::GrpcRoute))
        .chain(cfg.waypoints.iter().cloned().map(Resource::Waypoint));
    for r in objects {
        if let Some((name, obj)) = config_object(&r) {
            out.push(XdsObject {
                type_url: CONFIG_OBJECT_TYPE,
                name,
                node: None,
                aliases: Vec::new(),
                members: Vec::new(),
                resource: pack(CONFIG_OBJECT_TYPE, &obj),
            });
        }
    }
    out
}

/// A workload as an `Address` resource, named by its uid, aliased by its
/// `<network>/<ip>`s, tagged with its node; `services` are the ones it is in.
pub fn workload_object(w: &Workload, services: &[&Service], network: &str) -> XdsObject {
    XdsObject {
        type_url: ADDRESS_TYPE,
        name: w.uid.clone(),
        node: (!w.node.is_empty()).then(|| w.node.clone()),
        aliases: w
            .addresses
            .iter()
            .map(|ip| ip_alias(network, *ip))
            .collect(),
        members: Vec::new(),
        resource: pack_address(wpb::address::Type::Workload(workload_to_pb(
            w, services, network,
        ))),
    }
}

/// A service as an `Address` resource named `key` (`<ns>/<hostname>`),
/// aliased by its VIPs, bringing `members` (workload uids) when asked for.
pub fn service_object(s: &Service, key: String, members: Vec<String>, network: &str) -> XdsObject {
    XdsObject {
        type_url: ADDRESS_TYPE,
        name: key,
        node: None,
        aliases: s.vips.iter().map(|ip| ip_alias(network, *ip)).collect(),
        members,
        resource: pack_address(wpb::address::Type::Service(service_to_pb(s, network))),
    }
}

/// An L4 policy as an `Authorization` resource.
pub fn authorization_object(p: &crate::config::Authorization) -> XdsObject {
    XdsObject {
        type_url: AUTHORIZATION_TYPE,
        name: p.key(),
        node: None,
        aliases: Vec::new(),
        members: Vec::new(),
        resource: pack(AUTHORIZATION_TYPE, &authorization_to_pb(p)),
    }
}

/// `msg` as an `Any` of `type_url`.
pub fn pack(type_url: &str, msg: &impl Message) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: msg.encode_to_vec(),
    }
}

/// A workload or service as an `istio.workload.Address` `Any`.
pub fn pack_address(t: wpb::address::Type) -> Any {
    pack(ADDRESS_TYPE, &wpb::Address { r#type: Some(t) })
}

/// A waypoint-config object as Trellis's `ConfigObject`, and its name
/// `kind/namespace/name`. `None` for the kinds Istio's types carry.
pub fn config_object(r: &Resource) -> Option<(String, ConfigObject)> {
    let json = match r {
        Resource::L7Policy(x) => serde_json::to_string(x),
        Resource::HttpRoute(x) => serde_json::to_string(x),
        Resource::GrpcRoute(x) => serde_json::to_string(x),
        Resource::Waypoint(x) => serde_json::to_string(x),
        Resource::Workload(_) | Resource::Service(_) | Resource::Authorization(_) => return None,
    }
    // The config types serialize plain data only; a failure here would be a
    // bug in a Serialize impl, and dropping the object is the safe answer.
    .ok()?;
    let kind = r.kind().as_str();
    Some((
        format!("{kind}/{}", r.key().name),
        ConfigObject {
            kind: kind.to_string(),
            json,
        },
    ))
}

/// Decodes one received resource. `name` is the name it came under, for
/// error messages.
pub fn decode(type_url: &str, name: &str, any: &Any) -> Result<Resource, ConvertError> {
    let decode_err = |reason: String| ConvertError::Decode {
        type_url: type_url.to_string(),
        name: name.to_string(),
        reason,
    };
    if any.type_url != type_url {
        return Err(decode_err(format!(
            "it is packed as {:?}, in a response for {type_url}",
            any.type_url
        )));
    }
    match type_url {
        ADDRESS_TYPE => {
            let a = wpb::Address::decode(any.value.as_slice())
                .map_err(|e| decode_err(e.to_string()))?;
            match a.r#type {
                Some(wpb::address::Type::Workload(w)) => {
                    workload_from_pb(&w).map(Resource::Workload)
                }
                Some(wpb::address::Type::Service(s)) => service_from_pb(&s).map(Resource::Service),
                None => Err(decode_err(
                    "the Address holds neither a workload nor a service".into(),
                )),
            }
        }
        AUTHORIZATION_TYPE => {
            let p = crate::pb::istio::security::Authorization::decode(any.value.as_slice())
                .map_err(|e| decode_err(e.to_string()))?;
            authorization_from_pb(&p).map(Resource::Authorization)
        }
        CONFIG_OBJECT_TYPE => {
            let o = ConfigObject::decode(any.value.as_slice())
                .map_err(|e| decode_err(e.to_string()))?;
            decode_config_object(name, &o)
        }
        other => Err(ConvertError::UnknownType {
            type_url: other.to_string(),
        }),
    }
}

fn decode_config_object(name: &str, o: &ConfigObject) -> Result<Resource, ConvertError> {
    let bad = |e: serde_json::Error| ConvertError::field(name, &o.kind, e.to_string());
    let r = match o.kind.as_str() {
        k if k == Kind::L7Policy.as_str() => {
            Resource::L7Policy(serde_json::from_str::<L7Policy>(&o.json).map_err(bad)?)
        }
        k if k == Kind::HttpRoute.as_str() => {
            Resource::HttpRoute(serde_json::from_str::<HttpRoute>(&o.json).map_err(bad)?)
        }
        k if k == Kind::GrpcRoute.as_str() => {
            Resource::GrpcRoute(serde_json::from_str::<GrpcRoute>(&o.json).map_err(bad)?)
        }
        k if k == Kind::Waypoint.as_str() => {
            Resource::Waypoint(serde_json::from_str::<WaypointSettings>(&o.json).map_err(bad)?)
        }
        other => {
            return Err(ConvertError::field(
                name,
                "kind",
                format!(
                    "{other:?} is not a config object kind; expected l7-policy, http-route, grpc-route or waypoint"
                ),
            ))
        }
    };
    Ok(r)
}

/// The workloads of `cfg` that a config would list as members of a service,
/// whichever way membership is written. Used by the encoder's callers and
/// tests to compare file and wire shapes.
pub fn members<'a>(cfg: &'a LocalConfig, service: &Service) -> Vec<&'a Workload> {
    let key = format!("{}/{}", service.namespace, service.hostname);
    cfg.workloads
        .iter()
        .filter(|w| service.endpoints.contains(&w.uid) || w.services.contains(&key))
        .collect()
}

#[cfg(test)]
mod tests;
