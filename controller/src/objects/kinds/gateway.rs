//! Gateway API `HTTPRoute` and `GRPCRoute` (gateway.networking.k8s.io/v1),
//! as written: every field of the standard and experimental channels, so a
//! field Trellis cannot honour is named as unsupported rather than as
//! unknown, and a typo is refused. Where Gateway API's set of values is the
//! waypoint model's (header modifiers, redirects, rewrites, timeouts) the
//! model's own types are used; where Gateway API has more (match and filter
//! types) the value is kept as text and [`super::routes`] says what is not
//! supported.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;
use trellis_api::config::l7::{HeaderModifier, RequestRedirect, Timeouts, UrlRewrite};

/// The Gateway API group, the default group of a parentRef.
pub const GROUP: &str = "gateway.networking.k8s.io";

#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: HttpRouteSpec,
    #[serde(default)]
    pub status: Option<Value>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Absent means Gateway API's default: one rule matching every path.
    #[serde(default)]
    pub rules: Option<Vec<HttpRule>>,
    /// Experimental: attach to the default gateways (not a mesh concept).
    #[serde(default)]
    pub use_default_gateways: Option<Value>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Option<Vec<HttpMatch>>,
    #[serde(default)]
    pub filters: Vec<HttpFilterDoc>,
    #[serde(default)]
    pub backend_refs: Vec<BackendDoc<HttpFilterDoc>>,
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
    /// Experimental; Trellis takes retries from a TrafficPolicy instead.
    #[serde(default)]
    pub retry: Option<Value>,
    #[serde(default)]
    pub session_persistence: Option<Value>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    #[serde(default)]
    pub path: Option<PathMatchDoc>,
    #[serde(default)]
    pub headers: Vec<ValueMatchDoc>,
    #[serde(default)]
    pub query_params: Vec<ValueMatchDoc>,
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatchDoc {
    /// Exact, PathPrefix (the default) or RegularExpression.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
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

#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRouteDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: GrpcRouteSpec,
    #[serde(default)]
    pub status: Option<Value>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRule>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<GrpcMatch>,
    #[serde(default)]
    pub filters: Vec<GrpcFilterDoc>,
    #[serde(default)]
    pub backend_refs: Vec<BackendDoc<GrpcFilterDoc>>,
    #[serde(default)]
    pub session_persistence: Option<Value>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcMatch {
    #[serde(default)]
    pub method: Option<GrpcMethodDoc>,
    #[serde(default)]
    pub headers: Vec<ValueMatchDoc>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcMethodDoc {
    /// Exact (the default) or RegularExpression.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
}

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
