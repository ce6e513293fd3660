//! Gateway → the objects its waypoint needs, as the JSON bodies of a
//! server-side apply. Pure: the same Gateway and options always give the
//! same bodies, so that every controller replica applies the same thing.
//!
//! Each Gateway `ns/gw` of a waypoint class gets, all named after it and
//! owned by it:
//! - ServiceAccount `gw`: the waypoint's identity is
//!   `spiffe://<td>/ns/<ns>/sa/<gw>` (the controller's TokenReview maps the
//!   account to it);
//! - ConfigMap `gw-ca-root`: the mesh root the waypoint checks the
//!   controller's certificate against (the controller holds it; a pod can
//!   only mount a ConfigMap of its own namespace);
//! - Deployment `gw`: the `trellis-waypoint` binary fed by the controller's
//!   xDS and CA, authenticated by a projected token for the controller's
//!   audience;
//! - Service `gw`: the HBONE port, selecting the Deployment's pods.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde_json::{json, Value};

use super::template::{overlay, WaypointTemplate};
use super::{FIELD_MANAGER, GATEWAY_API_VERSION, MANAGED_BY};
use crate::objects::kinds::istio::Gateway;
use crate::objects::translate::labels::GATEWAY_NAME;
use crate::objects::translate::waypoints::{hbone_port, is_waypoint_class};
use crate::objects::{Kind, Object, ObjectStore};
use trellis_kube::labels::{DATAPLANE_MODE, ISTIO_DATAPLANE_MODE};

/// Where the projected service account token is mounted, and its file.
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
pub const TOKEN_FILE: &str = "istio-token";
/// Where the root ConfigMap is mounted, and its key (Istio's file name).
pub const ROOT_DIR: &str = "/var/run/secrets/trellis";
pub const ROOT_FILE: &str = "root-cert.pem";
/// The token's life; the kubelet refreshes it before it ends (Istio's value).
const TOKEN_EXPIRATION_SECS: u32 = 43_200;
/// The waypoint's metrics and readiness ports (its defaults, made explicit
/// because the probe and the scrape annotation name them).
pub const METRICS_PORT: u16 = 15020;
pub const READINESS_PORT: u16 = 15021;
/// The waypoint's container in the Deployment.
pub const CONTAINER: &str = "waypoint";
/// The Service's port name for HBONE (Istio's).
const MESH_PORT_NAME: &str = "mesh";
const ROOT_CONFIGMAP_SUFFIX: &str = "-ca-root";

/// What every waypoint's objects share, from the controller's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaypointOptions {
    /// The waypoint container image.
    pub image: String,
    /// The controller's xDS and CA address as the waypoint dials it,
    /// `host:port`; a DNS host is also the name its certificate is checked
    /// against.
    pub xds_address: String,
    pub trust_domain: String,
    /// Also make waypoints for Istio's `istio-waypoint` class.
    pub istio_labels: bool,
    /// The audience of the waypoint's projected token: one the controller
    /// accepts (its first `--token-audience`).
    pub token_audience: String,
    /// The mesh root certificates, PEM.
    pub root_pem: String,
    /// The operator's base of the Deployment and Service.
    pub template: std::sync::Arc<WaypointTemplate>,
}

/// A Gateway, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GatewayRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for GatewayRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The kinds the manager makes, in the order it applies them: the account
/// and the root before the pods that need them, the Service last so its
/// ClusterIP is read from the last answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ManagedKind {
    ServiceAccount,
    ConfigMap,
    Deployment,
    Service,
}

impl ManagedKind {
    pub const ALL: [ManagedKind; 4] = [
        ManagedKind::ServiceAccount,
        ManagedKind::ConfigMap,
        ManagedKind::Deployment,
        ManagedKind::Service,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ManagedKind::ServiceAccount => "ServiceAccount",
            ManagedKind::ConfigMap => "ConfigMap",
            ManagedKind::Deployment => "Deployment",
            ManagedKind::Service => "Service",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            ManagedKind::Deployment => "apps/v1",
            _ => "v1",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            ManagedKind::ServiceAccount => "serviceaccounts",
            ManagedKind::ConfigMap => "configmaps",
            ManagedKind::Deployment => "deployments",
            ManagedKind::Service => "services",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            ManagedKind::Deployment => "/apis/apps/v1",
            _ => "/api/v1",
        }
    }

    /// The collection across all namespaces.
    pub fn collection_path(self) -> String {
        format!("{}/{}", self.prefix(), self.plural())
    }

    /// One object.
    pub fn path(self, namespace: &str, name: &str) -> String {
        format!(
            "{}/namespaces/{namespace}/{}/{name}",
            self.prefix(),
            self.plural()
        )
    }
}

impl fmt::Display for ManagedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One object to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Managed {
    pub kind: ManagedKind,
    pub name: String,
    /// The whole apply body.
    pub body: Value,
}

/// Why a Gateway gets no waypoint: its `Accepted=False` reason (Gateway
/// API's) and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// One waypoint Gateway: what it is now and what it wants.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub gateway: GatewayRef,
    pub uid: String,
    pub generation: i64,
    /// The Gateway's status as last read (what a status write compares with).
    pub status: Value,
    /// The objects, in apply order, or why there are none.
    pub objects: Result<Vec<Managed>, Refusal>,
}

/// Every waypoint Gateway of the store.
pub type Plans = BTreeMap<GatewayRef, Plan>;

/// The plans of the store's Gateways of a waypoint class.
pub fn plans(store: &ObjectStore, opts: &WaypointOptions) -> Plans {
    store
        .of_kind(Kind::Gateway)
        .filter_map(|(key, obj)| match obj {
            Object::Gateway(gw)
                if is_waypoint_class(&gw.spec.gateway_class_name, opts.istio_labels) =>
            {
                let r = GatewayRef {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                };
                Some((r.clone(), plan(r, gw, opts)))
            }
            _ => None,
        })
        .collect()
}

/// One Gateway's plan.
pub fn plan(gateway: GatewayRef, gw: &Gateway, opts: &WaypointOptions) -> Plan {
    let uid = gw.metadata.uid.clone().unwrap_or_default();
    let objects = objects(&gateway, &uid, gw, opts);
    Plan {
        uid,
        generation: gw.metadata.generation.unwrap_or(0),
        status: gw.status.clone().unwrap_or(Value::Null),
        objects,
        gateway,
    }
}

fn objects(
    gw: &GatewayRef,
    uid: &str,
    gateway: &Gateway,
    opts: &WaypointOptions,
) -> Result<Vec<Managed>, Refusal> {
    if let Err(message) = dns_label(&gw.name) {
        return Err(Refusal {
            reason: "Invalid",
            message: format!(
                "the waypoint's Service and labels are named after the Gateway, so its name {message}"
            ),
        });
    }
    if !gateway.spec.addresses.is_empty() {
        return Err(Refusal {
            reason: "UnsupportedAddress",
            message: "spec.addresses is not supported: a waypoint's address is its Service's ClusterIP, which the API server assigns; remove spec.addresses".into(),
        });
    }
    let port = hbone_port(&gateway.spec).map_err(|message| Refusal {
        reason: "ListenersNotValid",
        message,
    })?;
    if uid.is_empty() {
        // The API server always sets one; only a hand-made object lacks it.
        return Err(Refusal {
            reason: "Invalid",
            message: "the Gateway has no metadata.uid, so nothing can be owned by it".into(),
        });
    }
    let meta = |name: &str| {
        json!({
            "name": name,
            "namespace": gw.namespace,
            "labels": {
                GATEWAY_NAME: gw.name,
                MANAGED_BY: FIELD_MANAGER,
            },
            "ownerReferences": [{
                "apiVersion": GATEWAY_API_VERSION,
                "kind": "Gateway",
                "name": gw.name,
                "uid": uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        })
    };
    let object = |kind: ManagedKind, name: &str, rest: Value| {
        let mut body = json!({
            "apiVersion": kind.api_version(),
            "kind": kind.name(),
            "metadata": meta(name),
        });
        if let (Some(b), Value::Object(r)) = (body.as_object_mut(), rest) {
            b.extend(r);
        }
        Managed {
            kind,
            name: name.to_string(),
            body,
        }
    };
    let root = root_configmap_name(&gw.name);
    Ok(vec![
        object(ManagedKind::ServiceAccount, &gw.name, json!({})),
        object(
            ManagedKind::ConfigMap,
            &root,
            json!({ "data": { ROOT_FILE: opts.root_pem } }),
        ),
        over(
            &opts.template.deployment,
            object(
                ManagedKind::Deployment,
                &gw.name,
                deployment_spec(gw, &root, port, opts),
            ),
        ),
        over(
            &opts.template.service,
            object(ManagedKind::Service, &gw.name, service_spec(gw, port)),
        ),
    ])
}

/// `m` laid over the template's base for its kind.
fn over(base: &Value, m: Managed) -> Managed {
    Managed {
        body: overlay(base, m.body),
        ..m
    }
}

/// The root ConfigMap of Gateway `name`.
pub fn root_configmap_name(name: &str) -> String {
    format!("{name}{ROOT_CONFIGMAP_SUFFIX}")
}

fn deployment_spec(gw: &GatewayRef, root: &str, port: u16, opts: &WaypointOptions) -> Value {
    let selector = json!({ GATEWAY_NAME: gw.name });
    let env = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    // Replicas, annotations, probe, resources and security context come
    // from the template (deploy/daemonset/base/controller/waypoint-template.yaml).
    json!({"spec": {
        "selector": {"matchLabels": selector},
        "template": {
            "metadata": {
                "labels": {
                    GATEWAY_NAME: gw.name,
                    // A waypoint terminates HBONE itself: a node proxy
                    // must never capture its pods. Istio's label too, so
                    // an Istio CNI on a node being migrated agrees.
                    DATAPLANE_MODE: "none",
                    ISTIO_DATAPLANE_MODE: "none",
                },
            },
            "spec": {
                "serviceAccountName": gw.name,
                // It talks to the controller only, with the projected
                // token below; it needs no API server credentials.
                "automountServiceAccountToken": false,
                "containers": [{
                    "name": CONTAINER,
                    "image": opts.image,
                    "args": waypoint_args(gw, port, opts),
                    "env": [
                        env("POD_NAME", "metadata.name"),
                        env("POD_NAMESPACE", "metadata.namespace"),
                        env("NODE_NAME", "spec.nodeName"),
                    ],
                    "ports": [
                        {"name": "hbone", "containerPort": port, "protocol": "TCP"},
                        {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                        {"name": "status-port", "containerPort": READINESS_PORT, "protocol": "TCP"},
                    ],
                    "volumeMounts": [
                        {"name": "istio-token", "mountPath": TOKEN_DIR, "readOnly": true},
                        {"name": "trellis-ca-root", "mountPath": ROOT_DIR, "readOnly": true},
                    ],
                }],
                "volumes": [
                    {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                        "audience": opts.token_audience,
                        "expirationSeconds": TOKEN_EXPIRATION_SECS,
                        "path": TOKEN_FILE,
                    }}]}},
                    {"name": "trellis-ca-root", "configMap": {"name": root}},
                ],
            },
        },
    }})
}

/// The `trellis-waypoint` command line (see `waypoint/src/settings.rs`):
/// this Gateway's name and identity, config and certificates from the
/// controller.
pub fn waypoint_args(gw: &GatewayRef, port: u16, opts: &WaypointOptions) -> Vec<String> {
    let mut args = vec![
        format!("--name={}/{}", gw.namespace, gw.name),
        format!("--service-account={}", gw.name),
        format!("--trust-domain={}", opts.trust_domain),
        format!("--xds-address={}", opts.xds_address),
        format!("--control-plane-root={ROOT_DIR}/{ROOT_FILE}"),
        format!("--token-file={TOKEN_DIR}/{TOKEN_FILE}"),
    ];
    // An IP address cannot be in the controller's certificate (DNS names
    // only): the waypoint then checks the default name, which is.
    if let Some(host) = dns_host(&opts.xds_address) {
        args.push(format!("--control-plane-name={host}"));
    }
    args.extend([
        format!("--listen=0.0.0.0:{port}"),
        format!("--metrics-addr=0.0.0.0:{METRICS_PORT}"),
        format!("--readiness-addr=0.0.0.0:{READINESS_PORT}"),
    ]);
    args
}

fn service_spec(gw: &GatewayRef, port: u16) -> Value {
    json!({"spec": {
        "selector": { GATEWAY_NAME: gw.name },
        "ports": [{"name": MESH_PORT_NAME, "port": port, "targetPort": port, "protocol": "TCP"}],
    }})
}

/// The host of `host:port` when it is a DNS name, not an IP address.
pub fn dns_host(address: &str) -> Option<&str> {
    let (host, _) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && host.parse::<IpAddr>().is_err()).then_some(host)
}

/// A `host:port` flag value, with a port.
pub fn host_port(address: &str) -> Result<String, String> {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(address.to_string())
        }
        _ => Err(format!(
            "{address:?} is not host:port (e.g. trellis-controller.trellis-system.svc:15012)"
        )),
    }
}

/// A DNS-1035 label (what a Service name must be); `Err` ends a sentence
/// about the name.
fn dns_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be a DNS label: at most 63 lowercase letters, digits and '-', starting with a letter and not ending with '-'"
        ))
    }
}

#[cfg(test)]
mod tests;
