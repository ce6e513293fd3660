//! L4 authorization with Istio AuthorizationPolicy semantics, as ztunnel
//! applies them: DENY first, then ALLOW if any exists, else allow.
//!
//! Pure and synchronous so the data path can call it under a state snapshot
//! and tests can drive it as a table.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::identity::Identity;
use trellis_api::config::{Action, Authorization, Match, StringMatch};

const SPIFFE: &str = "spiffe://";

/// What is known about a connection when it is authorized.
#[derive(Clone, Copy, Debug)]
pub struct ConnContext<'a> {
    /// The peer's verified identity; `None` for plaintext.
    pub src_identity: Option<&'a Identity>,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(DenyReason),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// A DENY policy matched.
    Policy { namespace: String, name: String },
    /// ALLOW policies apply to the workload and none matched.
    NoAllowMatched,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::Policy { namespace, name } => {
                write!(f, "DENY policy {namespace}/{name} matched")
            }
            DenyReason::NoAllowMatched => f.write_str("no ALLOW policy matched"),
        }
    }
}

/// Decides a connection against the policies that apply to its destination.
pub fn evaluate<'a>(
    policies: impl IntoIterator<Item = &'a Authorization>,
    ctx: &ConnContext,
) -> Decision {
    let conn = Conn::new(ctx);
    let mut any_allow = false;
    let mut allowed = false;
    for p in policies {
        match p.action {
            // Any matching DENY wins whatever comes later, so stop here.
            Action::Deny if policy_matches(p, &conn) => {
                return Decision::Deny(DenyReason::Policy {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                });
            }
            Action::Deny => {}
            Action::Allow => {
                any_allow = true;
                // Once one ALLOW matched, the rest only cost time.
                if !allowed && policy_matches(p, &conn) {
                    allowed = true;
                }
            }
        }
    }
    if any_allow && !allowed {
        Decision::Deny(DenyReason::NoAllowMatched)
    } else {
        Decision::Allow
    }
}

/// The connection with addresses normalised and the principal precomputed
/// once, rather than per match.
struct Conn<'a> {
    identity: Option<&'a Identity>,
    /// The identity as Istio writes principals: without "spiffe://".
    principal: Option<String>,
    src_ip: IpAddr,
    dst_ip: IpAddr,
    dst_port: u16,
}

impl<'a> Conn<'a> {
    fn new(ctx: &ConnContext<'a>) -> Self {
        let principal = ctx.src_identity.map(|id| {
            let s = id.to_string();
            match s.strip_prefix(SPIFFE) {
                Some(bare) => bare.to_string(),
                None => s,
            }
        });
        Conn {
            identity: ctx.src_identity,
            principal,
            // Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d.
            src_ip: ctx.src_ip.to_canonical(),
            dst_ip: ctx.dst_ip.to_canonical(),
            dst_port: ctx.dst_port,
        }
    }
}

fn policy_matches(p: &Authorization, conn: &Conn) -> bool {
    p.groups.iter().any(|g| {
        g.rules
            .iter()
            .all(|r| r.matches.iter().any(|m| match_holds(m, p.action, conn)))
    })
}

fn match_holds(m: &Match, action: Action, conn: &Conn) -> bool {
    // Without an identity, identity-based fields cannot be checked: an ALLOW
    // must not be granted on them and a DENY must not be escaped by them.
    let unknown_identity = action == Action::Deny;

    let principal = |pats: &[StringMatch]| match &conn.principal {
        Some(p) => pats.iter().any(|pat| principal_matches(pat, p)),
        None => unknown_identity,
    };
    let namespace = |pats: &[StringMatch]| match conn.identity {
        Some(id) => pats.iter().any(|pat| pat.matches(id.namespace())),
        None => unknown_identity,
    };
    let not_principal = |pats: &[StringMatch]| match &conn.principal {
        Some(p) => !pats.iter().any(|pat| principal_matches(pat, p)),
        None => unknown_identity,
    };
    let not_namespace = |pats: &[StringMatch]| match conn.identity {
        Some(id) => !pats.iter().any(|pat| pat.matches(id.namespace())),
        None => unknown_identity,
    };
    let in_nets = |nets: &[IpNet], ip: IpAddr| nets.iter().any(|n| n.contains(&ip));

    (m.principals.is_empty() || principal(&m.principals))
        && (m.not_principals.is_empty() || not_principal(&m.not_principals))
        && (m.namespaces.is_empty() || namespace(&m.namespaces))
        && (m.not_namespaces.is_empty() || not_namespace(&m.not_namespaces))
        && (m.source_ips.is_empty() || in_nets(&m.source_ips, conn.src_ip))
        && (m.not_source_ips.is_empty() || !in_nets(&m.not_source_ips, conn.src_ip))
        && (m.destination_ips.is_empty() || in_nets(&m.destination_ips, conn.dst_ip))
        && (m.not_destination_ips.is_empty() || !in_nets(&m.not_destination_ips, conn.dst_ip))
        && (m.destination_ports.is_empty() || m.destination_ports.contains(&conn.dst_port))
        && (m.not_destination_ports.is_empty() || !m.not_destination_ports.contains(&conn.dst_port))
}

/// Principals may be written as full SPIFFE URIs or Istio-style without the
/// scheme; both are compared against the identity without the scheme.
fn principal_matches(pat: &StringMatch, principal: &str) -> bool {
    fn strip(s: &str) -> &str {
        s.strip_prefix(SPIFFE).unwrap_or(s)
    }
    match pat {
        StringMatch::Exact(s) => strip(s) == principal,
        StringMatch::Prefix(s) => principal.starts_with(strip(s)),
        StringMatch::Suffix(_) | StringMatch::Presence => pat.matches(principal),
    }
}

#[cfg(test)]
mod tests;
