//! The kinds of Kubernetes object Trellis reads, and how one document
//! becomes a typed [`Object`].
//!
//! Core kinds use k8s-openapi's types; Gateway, WorkloadEntry and
//! AuthorizationPolicy use the small structs in [`istio`], holding only
//! what the translation needs and refusing unknown spec fields. HTTPRoute
//! and GRPCRoute are read with Gateway API's shapes ([`gateway`]) and
//! turned into the waypoint model's routes ([`routes`]); TrafficPolicy is
//! Trellis's own CRD ([`traffic_policy`]). Errors name the field's path.

pub mod gateway;
pub mod istio;
pub mod routes;
pub mod traffic_policy;

use std::fmt;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use trellis_api::config::l7::{GrpcRoute, HttpRoute};

use super::error::{DocRef, ObjectError};
use super::unknown::unknown_fields;

/// A kind Trellis reads, with the API group it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Service,
    ServiceAccount,
    EndpointSlice,
    Gateway,
    WorkloadEntry,
    AuthorizationPolicy,
    HttpRoute,
    GrpcRoute,
    TrafficPolicy,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::ServiceAccount,
        Kind::EndpointSlice,
        Kind::Gateway,
        Kind::WorkloadEntry,
        Kind::AuthorizationPolicy,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::TrafficPolicy,
    ];

    /// The `kind:` field's value.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Gateway => "Gateway",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::TrafficPolicy => "TrafficPolicy",
        }
    }

    /// The accepted `apiVersion` values.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::Namespace | Kind::Node | Kind::Pod | Kind::Service | Kind::ServiceAccount => {
                &["v1"]
            }
            Kind::EndpointSlice => &["discovery.k8s.io/v1"],
            Kind::Gateway | Kind::HttpRoute | Kind::GrpcRoute => &["gateway.networking.k8s.io/v1"],
            Kind::WorkloadEntry => &["networking.istio.io/v1", "networking.istio.io/v1beta1"],
            Kind::AuthorizationPolicy => &["security.istio.io/v1", "security.istio.io/v1beta1"],
            Kind::TrafficPolicy => &["trellis.dev/v1alpha1"],
        }
    }

    /// Cluster-scoped kinds have no namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }

    fn find(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == kind && k.api_versions().contains(&api_version))
    }

    /// "v1/Pod, ..." for error messages.
    pub(crate) fn supported_list() -> String {
        let mut out = Vec::new();
        for k in Kind::ALL {
            for v in k.api_versions() {
                out.push(format!("{v}/{}", k.name()));
            }
        }
        out.join(", ")
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What identifies an object: kind, namespace ("" for cluster-scoped kinds), name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One typed object.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Box<core::Namespace>),
    Node(Box<core::Node>),
    Pod(Box<core::Pod>),
    Service(Box<core::Service>),
    ServiceAccount(Box<core::ServiceAccount>),
    EndpointSlice(Box<discovery::EndpointSlice>),
    Gateway(Box<istio::Gateway>),
    WorkloadEntry(Box<istio::WorkloadEntry>),
    AuthorizationPolicy(Box<istio::AuthorizationPolicy>),
    HttpRoute(Box<routes::Route<HttpRoute>>),
    GrpcRoute(Box<routes::Route<GrpcRoute>>),
    TrafficPolicy(Box<traffic_policy::TrafficPolicyObject>),
}

/// A document that was rejected, with its key when that much was readable
/// (so the store can keep the last good version of that object).
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    pub key: Option<ObjectKey>,
    pub error: ObjectError,
}

/// What one document of a source became.
pub type DocResult = Result<(DocRef, ObjectKey, Object), (DocRef, Rejected)>;

/// Splits a YAML (or JSON) text into documents and parses each on its own,
/// so one broken document does not hide the others. Documents are numbered
/// from 1; empty ones (comments only, a trailing `---`) are skipped.
pub fn parse_text(source: &str, text: &str, json: bool) -> Vec<DocResult> {
    let chunks: Vec<String> = if json {
        vec![text.to_string()]
    } else {
        split_yaml(text)
    };
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let doc = DocRef {
            source: source.to_string(),
            index: i + 1,
        };
        let value: Result<Value, String> = if json {
            serde_json::from_str(chunk).map_err(|e| e.to_string())
        } else {
            serde_yaml_ng::from_str(chunk).map_err(|e| e.to_string())
        };
        let value = match value {
            Ok(v) => v,
            Err(message) => {
                let error = ObjectError::Malformed {
                    doc: doc.clone(),
                    message,
                };
                out.push(Err((doc, Rejected { key: None, error })));
                continue;
            }
        };
        let key = key_of(&value);
        match parse_document(&doc, value) {
            Ok(Some((k, o))) => out.push(Ok((doc, k, o))),
            Ok(None) => {}
            Err(error) => out.push(Err((doc, Rejected { key, error }))),
        }
    }
    out
}

/// Splits on `---` lines. A leading separator does not count as a document.
fn split_yaml(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    let blank = |d: &String| {
        d.lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    };
    if docs.len() > 1 && docs.first().is_some_and(blank) {
        docs.remove(0);
    }
    docs
}

/// The key a document would have, read without its schema.
fn key_of(value: &Value) -> Option<ObjectKey> {
    let kind = Kind::find(
        value.get("apiVersion")?.as_str()?,
        value.get("kind")?.as_str()?,
    )?;
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str()?.to_string();
    let namespace = if kind.namespaced() {
        meta.get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string()
    } else {
        String::new()
    };
    Some(ObjectKey {
        kind,
        namespace,
        name,
    })
}

/// Parses one document (already read as JSON-compatible data). `Ok(None)`
/// for an empty document.
pub fn parse_document(
    doc: &DocRef,
    value: Value,
) -> Result<Option<(ObjectKey, Object)>, ObjectError> {
    if value.is_null() {
        return Ok(None);
    }
    let Value::Object(map) = &value else {
        return Err(ObjectError::Malformed {
            doc: doc.clone(),
            message: "the document is not a mapping with apiVersion, kind and metadata".into(),
        });
    };
    let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_string);
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let api_version = text("apiVersion").unwrap_or_default();
    let kind_str = text("kind").unwrap_or_default();
    let Some(kind) = Kind::find(&api_version, &kind_str) else {
        return Err(ObjectError::UnknownKind {
            doc: doc.clone(),
            api_version: if api_version.is_empty() {
                "<no apiVersion>".into()
            } else {
                api_version
            },
            kind: if kind_str.is_empty() {
                "<no kind>".into()
            } else {
                kind_str
            },
            name,
        });
    };
    let namespace = map
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let shown = match (&namespace, &name) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.clone(),
        (_, None) => "<no metadata.name>".into(),
    };
    let invalid = |message: String| ObjectError::Invalid {
        doc: doc.clone(),
        kind: kind.name().into(),
        name: shown.clone(),
        message,
    };
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err(invalid(
            "metadata.name is missing; every object needs a name".into(),
        ));
    };
    let namespace = if kind.namespaced() {
        // What kubectl does with a manifest that names no namespace.
        namespace.unwrap_or_else(|| "default".into())
    } else {
        String::new()
    };
    let object = match kind {
        Kind::Namespace => Object::Namespace(core_kind(&value, &invalid)?),
        Kind::Node => Object::Node(core_kind(&value, &invalid)?),
        Kind::Pod => Object::Pod(core_kind(&value, &invalid)?),
        Kind::Service => Object::Service(core_kind(&value, &invalid)?),
        Kind::ServiceAccount => Object::ServiceAccount(core_kind(&value, &invalid)?),
        Kind::EndpointSlice => Object::EndpointSlice(core_kind(&value, &invalid)?),
        Kind::Gateway => Object::Gateway(own_kind(&value, &invalid)?),
        Kind::WorkloadEntry => Object::WorkloadEntry(own_kind(&value, &invalid)?),
        Kind::AuthorizationPolicy => {
            let p: Box<istio::AuthorizationPolicy> = own_kind(&value, &invalid)?;
            p.spec.check().map_err(invalid)?;
            Object::AuthorizationPolicy(p)
        }
        Kind::HttpRoute => {
            let doc: Box<gateway::HttpRouteDoc> = own_kind(&value, &invalid)?;
            let route =
                routes::http(&name, &namespace, &doc.spec).map_err(|p| problems(&invalid, p))?;
            Object::HttpRoute(Box::new(route))
        }
        Kind::GrpcRoute => {
            let doc: Box<gateway::GrpcRouteDoc> = own_kind(&value, &invalid)?;
            let route =
                routes::grpc(&name, &namespace, &doc.spec).map_err(|p| problems(&invalid, p))?;
            Object::GrpcRoute(Box::new(route))
        }
        Kind::TrafficPolicy => {
            let doc: Box<traffic_policy::TrafficPolicyDoc> = own_kind(&value, &invalid)?;
            let policy =
                traffic_policy::check(*doc, &namespace).map_err(|p| problems(&invalid, p))?;
            Object::TrafficPolicy(Box::new(policy))
        }
    };
    Ok(Some((
        ObjectKey {
            kind,
            namespace,
            name,
        },
        object,
    )))
}

/// k8s-openapi's Deserialize skips unknown fields silently, so a typo like
/// `spec.nodeNmae` would vanish; the round trip in [`unknown_fields`] finds it.
fn core_kind<T: DeserializeOwned + Serialize>(
    value: &Value,
    invalid: &dyn Fn(String) -> ObjectError,
) -> Result<Box<T>, ObjectError> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| invalid(e.to_string()))?;
    let back = serde_json::to_value(&typed).map_err(|e| invalid(e.to_string()))?;
    check_unknown(value, &back, invalid)?;
    Ok(Box::new(typed))
}

/// Every problem of one object in one message, so a fix is not found one
/// reload at a time.
fn problems(invalid: &dyn Fn(String) -> ObjectError, list: Vec<String>) -> ObjectError {
    invalid(list.join("; "))
}

/// Own structs deny unknown spec fields themselves, and the error names the
/// field's path (`spec.rules[0].matches[0].path.type: unknown variant ...`);
/// `metadata` is k8s-openapi's ObjectMeta, so it gets the round-trip check.
fn own_kind<T: DeserializeOwned>(
    value: &Value,
    invalid: &dyn Fn(String) -> ObjectError,
) -> Result<Box<T>, ObjectError> {
    let typed: T = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            invalid(e.inner().to_string())
        } else {
            invalid(format!("{path}: {}", e.inner()))
        }
    })?;
    if let Some(meta) = value.get("metadata") {
        let parsed: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
            serde_json::from_value(meta.clone()).map_err(|e| invalid(format!("metadata: {e}")))?;
        let back = serde_json::to_value(&parsed).map_err(|e| invalid(e.to_string()))?;
        let mut raw = serde_json::Map::new();
        raw.insert("metadata".into(), meta.clone());
        let mut round = serde_json::Map::new();
        round.insert("metadata".into(), back);
        check_unknown(&Value::Object(raw), &Value::Object(round), invalid)?;
    }
    Ok(Box::new(typed))
}

fn check_unknown(
    raw: &Value,
    back: &Value,
    invalid: &dyn Fn(String) -> ObjectError,
) -> Result<(), ObjectError> {
    let unknown = unknown_fields(raw, back);
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(invalid(format!(
            "unknown field{} {}; check the spelling against the Kubernetes API reference",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", ")
        )))
    }
}
