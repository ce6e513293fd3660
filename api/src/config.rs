//! The config model, shaped after Istio's ambient workload discovery API
//! (Workload, Service, Authorization) so that a file and an xDS client feed
//! the same types.
//!
//! [`parse`] is the only way in: it rejects unknown fields with the YAML
//! location, then runs every semantic check and reports all problems at once,
//! so an operator fixes a broken file in one pass.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod l7;
mod validate;
mod validate_l7;

pub use l7::{Dur, WaypointAddress};

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML is malformed or does not fit the schema (wrong type, unknown
    /// or missing field). `message` names the field path and the location.
    #[error(
        "config does not fit the schema: {message}; check the field name and indentation there"
    )]
    Syntax {
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    #[error("config is empty; write `{{}}` to run with no workloads on purpose")]
    Empty,
    /// Semantic problems, each prefixed with its path (`workloads[2].addresses: ...`).
    #[error("config has {} problem(s): {}", .0.len(), .0.join("; "))]
    Invalid(Vec<String>),
    #[error("cannot read config file {}: {source}; check the path and its permissions", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything a proxy knows about the mesh.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalConfig {
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub services: Vec<Service>,
    /// L4 policies, enforced by node proxies (Istio's workload API shape).
    #[serde(default)]
    pub policies: Vec<Authorization>,
    /// L7 policies (Istio AuthorizationPolicy), enforced by waypoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_policies: Vec<l7::L7Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_routes: Vec<l7::HttpRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_routes: Vec<l7::GrpcRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waypoints: Vec<l7::WaypointSettings>,
}

/// One pod (or VM) in the mesh.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub status: HealthStatus,
    /// `namespace/name` of the WORKLOAD_SELECTOR policies that select this workload.
    #[serde(default)]
    pub authorization_policies: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Traffic addressed to this workload goes through this waypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<WaypointAddress>,
    /// Services this workload is an endpoint of, as `namespace/hostname`.
    /// This is how xDS carries membership (Istio's workload API); a file may
    /// list a service's `endpoints` instead, or both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

fn default_service_account() -> String {
    "default".to_string()
}

fn default_trust_domain() -> String {
    "cluster.local".to_string()
}

impl Workload {
    /// The SPIFFE ID the workload's certificate carries, as a URI. The data
    /// path uses the typed form, `trellis_core::identity::WorkloadIdentity`.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// Istio's canonical service: the explicit value, else the workload name.
    pub fn canonical_name(&self) -> &str {
        self.canonical_name.as_deref().unwrap_or(&self.name)
    }

    /// Istio's canonical revision: the explicit value, else "latest".
    pub fn canonical_revision(&self) -> &str {
        self.canonical_revision.as_deref().unwrap_or("latest")
    }
}

/// How traffic to a workload is carried. TCP is the default, as in Istio:
/// a workload must opt in to HBONE (be captured by a node proxy).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    #[serde(rename = "HBONE")]
    Hbone,
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    #[default]
    #[serde(rename = "Healthy", alias = "HEALTHY")]
    Healthy,
    #[serde(rename = "Unhealthy", alias = "UNHEALTHY")]
    Unhealthy,
}

/// A Kubernetes service: VIPs, port mapping and the workloads behind it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    #[serde(default)]
    pub vips: Vec<IpAddr>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Workload uids.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Traffic to the service's VIPs goes through this waypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<WaypointAddress>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    pub port: u16,
    pub target_port: u16,
}

/// An L4 authorization policy, as Istio sends it to ztunnel.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Authorization {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    #[serde(default)]
    pub groups: Vec<Group>,
}

impl Authorization {
    /// The `namespace/name` key workloads use to refer to the policy.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Scope {
    /// Applies to every workload (Istio's root-namespace policies).
    Global,
    /// Applies to every workload in the policy's namespace.
    Namespace,
    /// Applies to the workloads that list it in `authorizationPolicies`.
    WorkloadSelector,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Allow,
    Deny,
}

/// A group matches when all of its rules match; an empty group matches everything.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Group {
    #[serde(default)]
    pub rules: Vec<Rules>,
}

/// Rules match when any of their matches matches.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rules {
    #[serde(default)]
    pub matches: Vec<Match>,
}

/// A match holds when every non-empty field holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Match {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<StringMatch>,
    #[serde(
        default,
        deserialize_with = "nets",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub source_ips: Vec<IpNet>,
    #[serde(
        default,
        deserialize_with = "nets",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_source_ips: Vec<IpNet>,
    #[serde(
        default,
        deserialize_with = "nets",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub destination_ips: Vec<IpNet>,
    #[serde(
        default,
        deserialize_with = "nets",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_destination_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ports: Vec<u16>,
}

/// Accepts CIDRs and, like Istio's ipBlocks, bare addresses (as /32 or /128).
fn nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{s:?} is neither an IP address nor a CIDR like 10.0.0.0/8"
                    ))
                })
        })
        .collect()
}

/// An AuthorizationPolicy-style string match: `*` (any value present),
/// `prefix*`, `*suffix`, or an exact value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("empty string match; use \"*\" to match any value")]
pub struct EmptyStringMatch;

impl FromStr for StringMatch {
    type Err = EmptyStringMatch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(EmptyStringMatch);
        }
        Ok(if s == "*" {
            StringMatch::Presence
        } else if let Some(p) = s.strip_suffix('*') {
            StringMatch::Prefix(p.to_string())
        } else if let Some(x) = s.strip_prefix('*') {
            StringMatch::Suffix(x.to_string())
        } else {
            StringMatch::Exact(s.to_string())
        })
    }
}

impl fmt::Display for StringMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StringMatch::Exact(s) => f.write_str(s),
            StringMatch::Prefix(p) => write!(f, "{p}*"),
            StringMatch::Suffix(s) => write!(f, "*{s}"),
            StringMatch::Presence => f.write_str("*"),
        }
    }
}

impl Serialize for StringMatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses and validates a config. All semantic problems are reported together.
pub fn parse(yaml: &str) -> Result<LocalConfig, ConfigError> {
    // A file with nothing but comments is almost always a half-written or
    // truncated file; treating it as "no workloads" would wipe the mesh.
    let has_content = yaml.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && t != "---"
    });
    if !has_content {
        return Err(ConfigError::Empty);
    }
    let cfg: LocalConfig = serde_yaml_ng::from_str(yaml).map_err(|e| {
        let loc = e.location();
        ConfigError::Syntax {
            message: e.to_string(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
        }
    })?;
    validate(&cfg)?;
    Ok(cfg)
}

/// Runs the semantic checks on a config that did not come from [`parse`]
/// (for example one built in code). References between objects must
/// resolve: the config is meant to be the whole mesh.
pub fn validate(cfg: &LocalConfig) -> Result<(), ConfigError> {
    check(cfg, validate::Refs::MustResolve)
}

/// The checks for a partial view of the mesh, as a proxy holds over xDS:
/// each object must be valid on its own, but a reference to an object the
/// proxy has not received (a policy, a service, a waypoint workload) is
/// not an error, because on-demand state is partial by design.
pub fn validate_partial(cfg: &LocalConfig) -> Result<(), ConfigError> {
    check(cfg, validate::Refs::MayDangle)
}

fn check(cfg: &LocalConfig, refs: validate::Refs) -> Result<(), ConfigError> {
    let problems = validate::problems(cfg, refs);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

#[cfg(test)]
mod tests;
