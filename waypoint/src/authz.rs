//! L7 authorization with Istio `AuthorizationPolicy` semantics, evaluated per
//! request: any matching DENY denies; otherwise, if ALLOW policies apply to
//! the service, one of them must match; with none, the request is allowed.
//!
//! [`PolicySet::build`] compiles the config once per update (header names
//! parsed, CIDRs parsed, host patterns lowercased, policies indexed per
//! service) so that [`PolicySet::evaluate`] allocates nothing on the allow
//! path and can run under a state snapshot.
//!
//! Unauthenticated callers: a positive identity match (`principals`,
//! `namespaces`, `source.principal`, `source.namespace` values) fails and a
//! negative one (`notPrincipals`, ...) holds, as in Istio, where a plaintext
//! peer has an empty principal. So `DENY from notPrincipals: ["*"]` denies
//! plaintext callers, and an ALLOW on a principal never admits them.

use std::net::IpAddr;

use ahash::AHashMap;
use http::HeaderMap;
use trellis_api::config::l7::{L7Action, L7Policy};
use trellis_api::config::LocalConfig;

use compiled::{compile, Ctx, Http, Policy};

mod compiled;

/// The deny reason when ALLOW policies apply and none matched.
pub const DEFAULT_DENY: &str = "default-deny: ALLOW policies exist but none matched";

const SPIFFE: &str = "spiffe://";

/// What is known about a stream from its connection alone: all there is
/// for a stream that is not HTTP (sniffed as TCP), and the base of every
/// HTTP request on it.
#[derive(Clone, Copy, Debug)]
pub struct TcpAuthzRequest<'a> {
    /// SPIFFE identity without the scheme, e.g. "cluster.local/ns/demo/sa/client";
    /// `None` when the caller is unknown.
    pub source_principal: Option<&'a str>,
    pub source_namespace: Option<&'a str>,
    pub source_ip: IpAddr,
    /// The destination (service) port.
    pub port: u16,
}

/// What is known about an HTTP request when it is authorized.
#[derive(Clone, Copy, Debug)]
pub struct AuthzRequest<'a> {
    pub conn: TcpAuthzRequest<'a>,
    /// Host / :authority without the port.
    pub host: &'a str,
    pub method: &'a str,
    /// The path without the query string.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthzDecision {
    Allow,
    /// `policy` is the matching DENY policy as "<ns>/<name>", or [`DEFAULT_DENY`].
    Deny {
        policy: String,
    },
}

impl AuthzDecision {
    pub fn is_allow(&self) -> bool {
        matches!(self, AuthzDecision::Allow)
    }
}

/// A part of a policy the waypoint cannot enforce as written. The policy is
/// still applied, failing closed: an ALLOW rule with the part never matches,
/// a DENY rule treats the part as matching (so it denies more, never less).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyProblem {
    #[error(
        "authorization policy {policy}: condition key {key:?} is not supported; use \
         request.headers[<name>], source.principal, source.namespace or source.ip \
         (until fixed, ALLOW rules with it never match and DENY rules ignore it)"
    )]
    UnsupportedKey { policy: String, key: String },
    #[error(
        "authorization policy {policy}: {key:?} does not name a valid HTTP header; \
         header names are tokens such as x-user-id (until fixed, ALLOW rules with it \
         never match and DENY rules ignore it)"
    )]
    BadHeaderName { policy: String, key: String },
    #[error(
        "authorization policy {policy}: source.ip value {value:?} is neither an IP \
         address nor a CIDR like 10.0.0.0/8 (until fixed, ALLOW rules with it never \
         match and DENY rules ignore it)"
    )]
    BadIp { policy: String, value: String },
    #[error(
        "authorization policy {policy}: targetRef {kind} {name:?} is not a Service, so \
         the waypoint does not apply the policy through it; target kind: Service"
    )]
    NotAService {
        policy: String,
        kind: String,
        name: String,
    },
}

/// Every L7 policy of the config, compiled and indexed per service.
#[derive(Debug, Default)]
pub struct PolicySet {
    policies: Vec<Policy>,
    namespaces: AHashMap<String, NsIndex>,
    problems: Vec<PolicyProblem>,
}

/// The policies that apply in one namespace.
#[derive(Debug, Default)]
struct NsIndex {
    /// Policies without targetRefs: they apply to every service here.
    all: Vec<Applies>,
    /// Per service with targeted policies: those plus `all`, in config
    /// order, so one lookup yields the complete list.
    services: AHashMap<String, Vec<Applies>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Applies {
    policy: usize,
    /// A targetRef naming a port limits the policy to it.
    port: Option<u16>,
}

impl PolicySet {
    /// Compiles the config's `authorizationPolicies`. Parts that cannot be
    /// enforced as written are logged, kept in [`PolicySet::problems`] and
    /// fail closed.
    pub fn build(cfg: &LocalConfig) -> PolicySet {
        let mut set = PolicySet::default();
        let mut targeted: AHashMap<(String, String), Vec<Applies>> = AHashMap::new();
        for (i, p) in cfg.authorization_policies.iter().enumerate() {
            set.policies.push(compile(p, &mut set.problems));
            if p.target_refs.is_empty() {
                let ns = set.namespaces.entry(p.namespace.clone()).or_default();
                ns.all.push(Applies {
                    policy: i,
                    port: None,
                });
                continue;
            }
            for r in &p.target_refs {
                let core_group = matches!(r.group.as_deref(), None | Some("") | Some("core"));
                if r.kind != "Service" || !core_group {
                    set.problems.push(PolicyProblem::NotAService {
                        policy: key(p),
                        kind: r.kind.clone(),
                        name: r.name.clone(),
                    });
                    continue;
                }
                let ns = r.namespace.as_deref().unwrap_or(&p.namespace);
                targeted
                    .entry((ns.to_string(), r.name.clone()))
                    .or_default()
                    .push(Applies {
                        policy: i,
                        port: r.port,
                    });
            }
        }
        for ((ns, name), mut list) in targeted {
            let idx = set.namespaces.entry(ns).or_default();
            list.extend_from_slice(&idx.all);
            // Config order keeps the reported DENY policy deterministic.
            list.sort_unstable();
            list.dedup();
            idx.services.insert(name, list);
        }
        for problem in &set.problems {
            tracing::warn!(%problem, "authorization policy partly unenforceable");
        }
        set
    }

    /// Decides an HTTP request to the service `service_ns/service_name`.
    pub fn evaluate(
        &self,
        service_ns: &str,
        service_name: &str,
        req: &AuthzRequest<'_>,
    ) -> AuthzDecision {
        let http = Http {
            host: req.host,
            method: req.method,
            path: req.path,
            headers: req.headers,
        };
        self.decide(service_ns, service_name, &Ctx::new(&req.conn, Some(http)))
    }

    /// Decides a non-HTTP stream, as Istio does for TCP: ALLOW rules that
    /// need HTTP fields (hosts, methods, paths, request headers) never match,
    /// and DENY rules ignore those fields, so they deny more, never less.
    pub fn evaluate_tcp(
        &self,
        service_ns: &str,
        service_name: &str,
        req: &TcpAuthzRequest<'_>,
    ) -> AuthzDecision {
        self.decide(service_ns, service_name, &Ctx::new(req, None))
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The parts of policies that could not be enforced as written.
    pub fn problems(&self) -> &[PolicyProblem] {
        &self.problems
    }

    fn applicable(&self, ns: &str, name: &str) -> &[Applies] {
        let Some(idx) = self.namespaces.get(ns) else {
            return &[];
        };
        idx.services.get(name).unwrap_or(&idx.all)
    }

    fn decide(&self, ns: &str, name: &str, ctx: &Ctx<'_>) -> AuthzDecision {
        let mut any_allow = false;
        let mut allowed = false;
        let applicable = self
            .applicable(ns, name)
            .iter()
            .filter(|a| a.port.is_none_or(|p| p == ctx.port));
        for a in applicable {
            let p = &self.policies[a.policy];
            match p.action {
                // A matching DENY wins whatever comes later, so stop here.
                L7Action::Deny if p.matches(ctx) => {
                    return AuthzDecision::Deny {
                        policy: p.key.clone(),
                    }
                }
                L7Action::Deny => {}
                L7Action::Allow => {
                    any_allow = true;
                    // Once one ALLOW matched, the rest only cost time; DENYs
                    // still have to be checked.
                    if !allowed && p.matches(ctx) {
                        allowed = true;
                    }
                }
            }
        }
        if any_allow && !allowed {
            AuthzDecision::Deny {
                policy: DEFAULT_DENY.to_string(),
            }
        } else {
            AuthzDecision::Allow
        }
    }
}

fn key(p: &L7Policy) -> String {
    format!("{}/{}", p.namespace, p.name)
}

/// Principals may be written with or without "spiffe://"; both sides are
/// compared without it.
fn strip_spiffe(s: &str) -> &str {
    s.strip_prefix(SPIFFE).unwrap_or(s)
}

#[cfg(test)]
mod tests;
