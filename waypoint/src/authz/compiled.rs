//! Policies compiled for evaluation: header names and CIDRs parsed, host
//! patterns lowercased, principals without "spiffe://", and the rule
//! matching itself. Nothing here allocates per request.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use trellis_api::config::l7::{L7Action, L7Condition, L7Operation, L7Policy, L7Rule, L7Source};
use trellis_api::config::StringMatch;

use super::{key, strip_spiffe, PolicyProblem, TcpAuthzRequest};

// ---------------------------------------------------------------- request view

pub(super) struct Ctx<'a> {
    /// Without "spiffe://".
    pub(super) principal: Option<&'a str>,
    pub(super) namespace: Option<&'a str>,
    /// Canonical: dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d.
    pub(super) ip: IpAddr,
    pub(super) port: u16,
    /// `None` for TCP streams.
    pub(super) http: Option<Http<'a>>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(conn: &TcpAuthzRequest<'a>, http: Option<Http<'a>>) -> Ctx<'a> {
        Ctx {
            principal: conn.source_principal.map(strip_spiffe),
            namespace: conn.source_namespace,
            ip: conn.source_ip.to_canonical(),
            port: conn.port,
            http,
        }
    }
}

pub(super) struct Http<'a> {
    pub(super) host: &'a str,
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    pub(super) headers: &'a HeaderMap,
}

// ---------------------------------------------------------------- compiled policy

#[derive(Debug)]
pub(super) struct Policy {
    /// "<ns>/<name>", reported on deny.
    pub(super) key: String,
    pub(super) action: L7Action,
    /// No rules matches nothing: an ALLOW without rules denies everything.
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
    when: Vec<Condition>,
    /// The rule names hosts, methods, paths or request headers.
    uses_http: bool,
}

#[derive(Debug)]
struct Source {
    principals: Vec<StringMatch>,
    not_principals: Vec<StringMatch>,
    namespaces: Vec<StringMatch>,
    not_namespaces: Vec<StringMatch>,
}

#[derive(Debug)]
struct Operation {
    /// Lowercased: hosts compare case-insensitively.
    hosts: Vec<StringMatch>,
    not_hosts: Vec<StringMatch>,
    methods: Vec<StringMatch>,
    not_methods: Vec<StringMatch>,
    paths: Vec<StringMatch>,
    not_paths: Vec<StringMatch>,
    ports: Vec<u16>,
    not_ports: Vec<u16>,
}

#[derive(Debug)]
enum Condition {
    Header {
        name: HeaderName,
        values: Vec<StringMatch>,
        not_values: Vec<StringMatch>,
    },
    Principal {
        values: Vec<StringMatch>,
        not_values: Vec<StringMatch>,
    },
    Namespace {
        values: Vec<StringMatch>,
        not_values: Vec<StringMatch>,
    },
    Ip {
        values: Vec<IpNet>,
        not_values: Vec<IpNet>,
    },
    /// A condition that could not be compiled: its fail-closed outcome.
    Fixed(bool),
}

pub(super) fn compile(p: &L7Policy, problems: &mut Vec<PolicyProblem>) -> Policy {
    let key = key(p);
    let rules = p
        .rules
        .iter()
        .map(|r| compile_rule(r, &key, p.action, problems))
        .collect();
    Policy {
        key,
        action: p.action,
        rules,
    }
}

fn compile_rule(
    r: &L7Rule,
    policy: &str,
    action: L7Action,
    problems: &mut Vec<PolicyProblem>,
) -> Rule {
    let to: Vec<Operation> =
        r.to.iter()
            .map(|t| compile_operation(&t.operation))
            .collect();
    let when: Vec<Condition> = r
        .when
        .iter()
        .map(|c| compile_condition(c, policy, action, problems))
        .collect();
    let uses_http = to.iter().any(Operation::uses_http)
        || when.iter().any(|c| matches!(c, Condition::Header { .. }));
    Rule {
        from: r.from.iter().map(|f| compile_source(&f.source)).collect(),
        to,
        when,
        uses_http,
    }
}

fn compile_source(s: &L7Source) -> Source {
    Source {
        principals: principals(&s.principals),
        not_principals: principals(&s.not_principals),
        namespaces: s.namespaces.clone(),
        not_namespaces: s.not_namespaces.clone(),
    }
}

fn principals(pats: &[StringMatch]) -> Vec<StringMatch> {
    pats.iter()
        .map(|p| match p {
            StringMatch::Exact(s) => StringMatch::Exact(strip_spiffe(s).to_string()),
            StringMatch::Prefix(s) => StringMatch::Prefix(strip_spiffe(s).to_string()),
            other => other.clone(),
        })
        .collect()
}

fn compile_operation(o: &L7Operation) -> Operation {
    let lower = |pats: &[StringMatch]| -> Vec<StringMatch> {
        pats.iter()
            .map(|p| match p {
                StringMatch::Exact(s) => StringMatch::Exact(s.to_ascii_lowercase()),
                StringMatch::Prefix(s) => StringMatch::Prefix(s.to_ascii_lowercase()),
                StringMatch::Suffix(s) => StringMatch::Suffix(s.to_ascii_lowercase()),
                StringMatch::Presence => StringMatch::Presence,
            })
            .collect()
    };
    Operation {
        hosts: lower(&o.hosts),
        not_hosts: lower(&o.not_hosts),
        methods: o.methods.clone(),
        not_methods: o.not_methods.clone(),
        paths: o.paths.clone(),
        not_paths: o.not_paths.clone(),
        ports: o.ports.clone(),
        not_ports: o.not_ports.clone(),
    }
}

fn compile_condition(
    c: &L7Condition,
    policy: &str,
    action: L7Action,
    problems: &mut Vec<PolicyProblem>,
) -> Condition {
    // What an uncompilable condition evaluates to: never for ALLOW, always
    // for DENY, so a mistake can only deny more.
    let fail_closed = Condition::Fixed(action == L7Action::Deny);
    let values = || c.values.clone();
    let not_values = || c.not_values.clone();
    match c.key.as_str() {
        "source.principal" => Condition::Principal {
            values: principals(&c.values),
            not_values: principals(&c.not_values),
        },
        "source.namespace" => Condition::Namespace {
            values: values(),
            not_values: not_values(),
        },
        "source.ip" => match (nets(&c.values), nets(&c.not_values)) {
            (Ok(values), Ok(not_values)) => Condition::Ip { values, not_values },
            (Err(value), _) | (_, Err(value)) => {
                problems.push(PolicyProblem::BadIp {
                    policy: policy.to_string(),
                    value,
                });
                fail_closed
            }
        },
        k => match k
            .strip_prefix("request.headers[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            Some(name) => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => Condition::Header {
                    name,
                    values: values(),
                    not_values: not_values(),
                },
                Err(_) => {
                    problems.push(PolicyProblem::BadHeaderName {
                        policy: policy.to_string(),
                        key: k.to_string(),
                    });
                    fail_closed
                }
            },
            None => {
                problems.push(PolicyProblem::UnsupportedKey {
                    policy: policy.to_string(),
                    key: k.to_string(),
                });
                fail_closed
            }
        },
    }
}

/// `source.ip` values: addresses (as /32 or /128), CIDRs, or `*` for any.
/// Returns the first value that is none of these.
fn nets(pats: &[StringMatch]) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::with_capacity(pats.len());
    for p in pats {
        match p {
            StringMatch::Presence => {
                out.push(IpNet::V4(Default::default()));
                out.push(IpNet::V6(Default::default()));
            }
            StringMatch::Exact(s) => {
                let s = s.trim();
                let net = s
                    .parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(|ip| IpNet::from(ip.to_canonical())))
                    .map_err(|_| s.to_string())?;
                out.push(net);
            }
            other => return Err(other.to_string()),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- matching

impl Policy {
    pub(super) fn matches(&self, ctx: &Ctx<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(self.action, ctx))
    }
}

impl Rule {
    fn matches(&self, action: L7Action, ctx: &Ctx<'_>) -> bool {
        // Istio drops ALLOW rules with HTTP fields from TCP filter chains.
        if ctx.http.is_none() && self.uses_http && action == L7Action::Allow {
            return false;
        }
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(ctx)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(ctx)))
            && self.when.iter().all(|c| c.holds(ctx))
    }
}

impl Source {
    fn matches(&self, ctx: &Ctx<'_>) -> bool {
        field(
            &self.principals,
            &self.not_principals,
            ctx.principal,
            str_match,
        ) && field(
            &self.namespaces,
            &self.not_namespaces,
            ctx.namespace,
            str_match,
        )
    }
}

impl Operation {
    fn uses_http(&self) -> bool {
        !(self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty())
    }

    fn matches(&self, ctx: &Ctx<'_>) -> bool {
        let ports = (self.ports.is_empty() || self.ports.contains(&ctx.port))
            && !self.not_ports.contains(&ctx.port);
        // Without HTTP only a DENY rule gets here; it ignores HTTP fields.
        ports
            && ctx.http.as_ref().is_none_or(|h| {
                field(&self.hosts, &self.not_hosts, Some(h.host), host_match)
                    && field(&self.methods, &self.not_methods, Some(h.method), str_match)
                    && field(&self.paths, &self.not_paths, Some(h.path), str_match)
            })
    }
}

impl Condition {
    fn holds(&self, ctx: &Ctx<'_>) -> bool {
        match self {
            Condition::Header {
                name,
                values,
                not_values,
            } => ctx.http.as_ref().is_none_or(|h| {
                let value = h.headers.get(name).map(|v| v.as_bytes());
                field(values, not_values, value, bytes_match)
            }),
            Condition::Principal { values, not_values } => {
                field(values, not_values, ctx.principal, str_match)
            }
            Condition::Namespace { values, not_values } => {
                field(values, not_values, ctx.namespace, str_match)
            }
            Condition::Ip { values, not_values } => {
                let any = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&ctx.ip));
                (values.is_empty() || any(values)) && !any(not_values)
            }
            Condition::Fixed(outcome) => *outcome,
        }
    }
}

/// One field and its negation. An absent value fails a positive match and
/// passes a negative one (see the module comment on unauthenticated callers).
fn field<T: ?Sized>(
    any_of: &[StringMatch],
    none_of: &[StringMatch],
    value: Option<&T>,
    m: fn(&StringMatch, &T) -> bool,
) -> bool {
    (any_of.is_empty() || value.is_some_and(|v| any_of.iter().any(|p| m(p, v))))
        && (none_of.is_empty() || value.is_none_or(|v| !none_of.iter().any(|p| m(p, v))))
}

fn str_match(p: &StringMatch, v: &str) -> bool {
    p.matches(v)
}

/// Header values are bytes, not necessarily UTF-8; compare them as such.
fn bytes_match(p: &StringMatch, v: &[u8]) -> bool {
    match p {
        StringMatch::Exact(s) => v == s.as_bytes(),
        StringMatch::Prefix(s) => v.starts_with(s.as_bytes()),
        StringMatch::Suffix(s) => v.ends_with(s.as_bytes()),
        StringMatch::Presence => !v.is_empty(),
    }
}

/// Patterns are lowercased at build; the request's host is compared
/// ignoring ASCII case without lowercasing it (no allocation).
fn host_match(p: &StringMatch, host: &str) -> bool {
    let h = host.as_bytes();
    match p {
        StringMatch::Exact(s) => h.eq_ignore_ascii_case(s.as_bytes()),
        StringMatch::Prefix(s) => {
            h.len() >= s.len() && h[..s.len()].eq_ignore_ascii_case(s.as_bytes())
        }
        StringMatch::Suffix(s) => {
            h.len() >= s.len() && h[h.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
        }
        StringMatch::Presence => !h.is_empty(),
    }
}
