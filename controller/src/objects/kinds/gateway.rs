//! Gateway API `HTTPRoute` and `GRPCRoute` (gateway.networking.k8s.io/v1),
//! as written: every field of the standard and experimental channels, so a
//! field Trellis cannot honour is named as unsupported rather than as
//! unknown, and a typo is refused. Where Gateway API's set of values is the
//! waypoint model's (header modifiers, redirects, rewrites, timeouts) the
//! model's own types are used; where Gateway API has more (match and filter
//! types) the value is kept as text and [`super::routes`] says what is not
//! supported. A struct whose fields are all optional says so once
//! (`#[serde(default)]` on the struct).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;
use trellis_api::config::l7::{HeaderModifier, RequestRedirect, Timeouts, UrlRewrite};

/// The Gateway API group, the default group of a parentRef.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// A route document of either kind: what differs is the spec.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    bound(deserialize = "S: Deserialize<'de> + Default")
)]
pub struct RouteDoc<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: S,
    #[serde(default)]
    pub status: Option<Value>,
}

pub type HttpRouteDoc = RouteDoc<HttpRouteSpec>;
pub type GrpcRouteDoc = RouteDoc<GrpcRouteSpec>;

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ParentReference>,
    pub hostnames: Vec<String>,
    /// Absent means Gateway API's default: one rule matching every path.
    pub rules: Option<Vec<HttpRule>>,
    /// Experimental: attach to the default gateways (not a mesh concept).
    pub use_default_gateways: Option<Value>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRule {
    pub name: Option<String>,
    pub matches: Option<Vec<HttpMatch>>,
    pub filters: Vec<HttpFilterDoc>,
    pub backend_refs: Vec<BackendDoc<HttpFilterDoc>>,
    pub timeouts: Option<Timeouts>,
    /// Experimental; Trellis takes retries from a TrafficPolicy instead.
    pub retry: Option<Value>,
    pub session_persistence: Option<Value>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    pub path: Option<PathMatchDoc>,
    pub headers: Vec<ValueMatchDoc>,
    pub query_params: Vec<ValueMatchDoc>,
    pub method: Option<String>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatchDoc {
    /// Exact, PathPrefix (the default) or RegularExpression.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: Option<String>,
}

/// A header, query parameter or gRPC header match.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ValueMatchDoc {
    /// Exact (the default) or RegularExpression.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpFilterDoc {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(default)]
    pub url_rewrite: Option<UrlRewrite>,
    #[serde(default)]
    pub request_mirror: Option<Value>,
    #[serde(default)]
    pub extension_ref: Option<Value>,
    #[serde(default)]
    pub cors: Option<Value>,
    #[serde(default)]
    pub external_auth: Option<Value>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    pub parent_refs: Vec<ParentReference>,
    pub hostnames: Vec<String>,
    pub rules: Vec<GrpcRule>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRule {
    pub name: Option<String>,
    pub matches: Vec<GrpcMatch>,
    pub filters: Vec<GrpcFilterDoc>,
    pub backend_refs: Vec<BackendDoc<GrpcFilterDoc>>,
    pub session_persistence: Option<Value>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcMatch {
    pub method: Option<GrpcMethodDoc>,
    pub headers: Vec<ValueMatchDoc>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcMethodDoc {
    /// Exact (the default) or RegularExpression.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub service: Option<String>,
    pub method: Option<String>,
}

/// A GRPCRoute filter: an HTTPRoute filter with fewer fields, kept apart
/// so the others are refused as unknown.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcFilterDoc {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub request_mirror: Option<Value>,
    #[serde(default)]
    pub extension_ref: Option<Value>,
}

/// Gateway API `ParentReference`. Group and kind default to a Gateway, as
/// the API server defaults them: a mesh route says `group: ""` and
/// `kind: Service`.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentReference {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default)]
    pub section_name: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

impl ParentReference {
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or(GROUP)
    }

    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("Gateway")
    }

    /// A Service in the core group: what a mesh route attaches to (GAMMA).
    pub fn is_service(&self) -> bool {
        matches!(self.group(), "" | "core") && self.kind() == "Service"
    }
}

/// Gateway API `HTTPBackendRef` / `GRPCBackendRef`; group and kind default
/// to a core Service.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendDoc<F> {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default = "Vec::new")]
    pub filters: Vec<F>,
}

impl From<&GrpcFilterDoc> for HttpFilterDoc {
    /// The HTTPRoute filter with the same fields set, so one conversion
    /// serves both kinds (with the kinds' own set of supported types).
    fn from(f: &GrpcFilterDoc) -> Self {
        HttpFilterDoc {
            kind: f.kind.clone(),
            request_header_modifier: f.request_header_modifier.clone(),
            response_header_modifier: f.response_header_modifier.clone(),
            request_redirect: None,
            url_rewrite: None,
            request_mirror: f.request_mirror.clone(),
            extension_ref: f.extension_ref.clone(),
            cors: None,
            external_auth: None,
        }
    }
}
