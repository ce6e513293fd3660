//! Semantic checks on the L7 part of the config: routes here, their filters
//! in `filters`, traffic policies, L7 authorization policies and waypoints in
//! `policies`. Same contract as the L4 checks: every check runs, and each
//! message starts with the path of the offending field.
//!
//! The waypoint compiles what passes here without checking again, so anything
//! it could not honour exactly (a header value hyper would refuse, a prefix
//! rewrite on a rule without a prefix to replace) is refused here, in the
//! operator's terms, instead of being skipped at run time.

mod filters;
mod policies;

use std::fmt::Write as _;

use ahash::AHashMap;

use super::l7::{
    BackendRef, GrpcRouteMatch, HttpRouteMatch, ParentRef, PathMatchType, Timeouts, TrafficPolicy,
    ValueMatch,
};
use super::validate::non_empty;
use super::{LocalConfig, Service};
use filters::filters;
use policies::{l7_policies, traffic_policy, waypoint_addresses, waypoint_settings};

// Bounds against abuse: a decision walks every match of every rule attached to
// a service, so these keep its cost small and predictable.
const MAX_RULES: usize = 64;
const MAX_MATCHES: usize = 16;
const MAX_BACKENDS: usize = 16;
const MAX_VALUE_MATCHES: usize = 16;
/// Gateway API's own bound; it also keeps the sum of 16 weights far from overflow.
const MAX_WEIGHT: u32 = 1_000_000;
pub(super) fn problems(cfg: &LocalConfig, refs: super::validate::Refs, out: &mut Vec<String>) {
    let services = Services::index(cfg);
    // One name space for both kinds: waypoint rule keys (metrics, rate-limit
    // state) are <namespace>/<route>/<rule>, whatever the kind.
    let mut route_keys = RouteKeys::new();
    http_routes(cfg, &services, &mut route_keys, out);
    grpc_routes(cfg, &services, &mut route_keys, out);
    l7_policies(cfg, &services, out);
    waypoint_addresses(cfg, refs, out);
    waypoint_settings(cfg, out);
}

/// Services by (namespace, name), to resolve parentRefs, backendRefs and targetRefs.
struct Services<'a>(AHashMap<(&'a str, &'a str), &'a Service>);

impl<'a> Services<'a> {
    fn index(cfg: &'a LocalConfig) -> Self {
        Services(
            cfg.services
                .iter()
                .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
                .collect(),
        )
    }

    /// Checks that `ns/name` exists and, if given, has service port `port`.
    /// `path` is the reference itself (`...backendRefs[0]`).
    fn check(&self, out: &mut Vec<String>, path: &str, ns: &str, name: &str, port: Option<u16>) {
        if ns.trim().is_empty() {
            // Reported where the empty namespace is written; a second
            // "no service" line per reference would only bury it.
            return;
        }
        let Some(svc) = self.0.get(&(ns, name)) else {
            out.push(format!(
                "{path}.name: no service {name:?} in namespace {ns:?}; check the name, and the namespace (it defaults to the referring resource's)"
            ));
            return;
        };
        if let Some(port) = port {
            if !svc.ports.iter().any(|p| p.port == port) {
                let mut ports = String::new();
                for (i, p) in svc.ports.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    let _ = write!(ports, "{sep}{}", p.port);
                }
                if ports.is_empty() {
                    ports.push_str("none");
                }
                out.push(format!(
                    "{path}.port: service {ns}/{name} has no port {port}; its ports are: {ports}"
                ));
            }
        }
    }
}

/// Where each route namespace/name was first defined: (kind, index).
type RouteKeys<'a> = AHashMap<(&'a str, &'a str), (&'static str, usize)>;

/// The parts of HTTPRoute and GRPCRoute checked alike.
struct Head<'a> {
    kind: &'static str,
    name: &'a str,
    namespace: &'a str,
    parent_refs: &'a [ParentRef],
    hostnames: &'a [String],
    rule_names: Vec<Option<&'a String>>,
}

/// The parts of HTTPRoute and GRPCRoute rules checked alike.
struct RuleCommon<'a> {
    backend_refs: &'a [BackendRef],
    timeouts: Option<&'a Timeouts>,
    policy: Option<&'a TrafficPolicy>,
}

/// What a filter list may hold where it appears.
#[derive(Clone, Copy)]
struct FilterScope {
    redirect: bool,
    rewrite: bool,
    /// Whether every match of the rule is a path prefix (ReplacePrefixMatch needs one).
    prefix_ok: bool,
    grpc: bool,
}

/// Bounds a rule's match list and checks each match with `check`.
fn matches<T>(
    out: &mut Vec<String>,
    path: &str,
    list: &[T],
    check: fn(&mut Vec<String>, &str, &T),
) {
    if list.len() > MAX_MATCHES {
        out.push(format!(
            "{path}.matches: {} matches, at most {MAX_MATCHES} are allowed; split the rule",
            list.len()
        ));
    }
    for (k, m) in list.iter().enumerate() {
        check(out, &format!("{path}.matches[{k}]"), m);
    }
}

fn http_routes<'a>(
    cfg: &'a LocalConfig,
    svcs: &Services<'_>,
    keys: &mut RouteKeys<'a>,
    out: &mut Vec<String>,
) {
    for (i, r) in cfg.http_routes.iter().enumerate() {
        let path = format!("httpRoutes[{i}]");
        let head = Head {
            kind: "httpRoutes",
            name: &r.name,
            namespace: &r.namespace,
            parent_refs: &r.parent_refs,
            hostnames: &r.hostnames,
            rule_names: r.rules.iter().map(|r| r.name.as_ref()).collect(),
        };
        route_head(out, svcs, &path, &head, keys, i);
        for (j, rule) in r.rules.iter().enumerate() {
            let path = format!("{path}.rules[{j}]");
            matches(out, &path, &rule.matches, http_match);
            // No path in a match means PathPrefix "/", and so does no match at all.
            let prefix_ok = rule.matches.iter().all(|m| {
                m.path
                    .as_ref()
                    .is_none_or(|p| p.kind == PathMatchType::PathPrefix)
            });
            let scope = FilterScope {
                redirect: true,
                rewrite: true,
                prefix_ok,
                grpc: false,
            };
            let redirect = filters(out, &format!("{path}.filters"), &rule.filters, scope);
            if redirect && !rule.backend_refs.is_empty() {
                out.push(format!(
                    "{path}: has both a RequestRedirect filter and backendRefs; a redirect answers the client itself, so remove the backendRefs or the redirect"
                ));
            }
            let common = RuleCommon {
                backend_refs: &rule.backend_refs,
                timeouts: rule.timeouts.as_ref(),
                policy: rule.policy.as_ref(),
            };
            rule_common(out, svcs, &path, &r.namespace, &common, scope);
        }
    }
}

fn grpc_routes<'a>(
    cfg: &'a LocalConfig,
    svcs: &Services<'_>,
    keys: &mut RouteKeys<'a>,
    out: &mut Vec<String>,
) {
    for (i, r) in cfg.grpc_routes.iter().enumerate() {
        let path = format!("grpcRoutes[{i}]");
        let head = Head {
            kind: "grpcRoutes",
            name: &r.name,
            namespace: &r.namespace,
            parent_refs: &r.parent_refs,
            hostnames: &r.hostnames,
            rule_names: r.rules.iter().map(|r| r.name.as_ref()).collect(),
        };
        route_head(out, svcs, &path, &head, keys, i);
        for (j, rule) in r.rules.iter().enumerate() {
            let path = format!("{path}.rules[{j}]");
            matches(out, &path, &rule.matches, grpc_match);
            let scope = FilterScope {
                redirect: false,
                rewrite: false,
                prefix_ok: false,
                grpc: true,
            };
            filters(out, &format!("{path}.filters"), &rule.filters, scope);
            let common = RuleCommon {
                backend_refs: &rule.backend_refs,
                timeouts: rule.timeouts.as_ref(),
                policy: rule.policy.as_ref(),
            };
            rule_common(out, svcs, &path, &r.namespace, &common, scope);
        }
    }
}

fn route_head<'a>(
    out: &mut Vec<String>,
    svcs: &Services<'_>,
    path: &str,
    r: &Head<'a>,
    keys: &mut RouteKeys<'a>,
    index: usize,
) {
    let name_ok = non_empty(out, path, "name", r.name);
    let ns_ok = non_empty(out, path, "namespace", r.namespace);
    if name_ok && ns_ok {
        if let Some((kind, j)) = keys.insert((r.namespace, r.name), (r.kind, index)) {
            out.push(format!(
                "{path}: \"{}/{}\" is already defined by {kind}[{j}]; namespace/name must be unique across httpRoutes and grpcRoutes",
                r.namespace, r.name
            ));
        }
    }
    if r.parent_refs.is_empty() {
        out.push(format!(
            "{path}.parentRefs: must not be empty; name the Service(s) this route applies to"
        ));
    }
    for (k, p) in r.parent_refs.iter().enumerate() {
        service_ref(
            out,
            svcs,
            &format!("{path}.parentRefs[{k}]"),
            p,
            r.namespace,
        );
    }
    for (k, h) in r.hostnames.iter().enumerate() {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        if !valid_hostname(bare) {
            out.push(format!(
                "{path}.hostnames[{k}]: {h:?} is not a hostname; write e.g. reviews.demo.svc.cluster.local or *.example.com"
            ));
        }
    }
    if r.rule_names.len() > MAX_RULES {
        out.push(format!(
            "{path}.rules: {} rules, at most {MAX_RULES} are allowed; split the route",
            r.rule_names.len()
        ));
    }
    let mut names: AHashMap<&str, usize> = AHashMap::new();
    for (j, n) in r.rule_names.iter().enumerate() {
        let Some(n) = n else { continue };
        if non_empty(out, &format!("{path}.rules[{j}]"), "name", n) {
            if let Some(first) = names.insert(n.as_str(), j) {
                out.push(format!(
                    "{path}.rules[{j}].name: {n:?} is already the name of rules[{first}]; rule names must be unique within a route (metrics and logs use them)"
                ));
            }
        }
    }
}

/// A parentRef or targetRef: a Service, in `default_ns` unless it says otherwise.
fn service_ref(
    out: &mut Vec<String>,
    svcs: &Services<'_>,
    path: &str,
    p: &ParentRef,
    default_ns: &str,
) {
    if p.kind != "Service" {
        out.push(format!(
            "{path}.kind: {:?} is not supported; a waypoint applies routes and policies to a Service (GAMMA)",
            p.kind
        ));
        return;
    }
    if p.group.as_deref().is_some_and(|g| !g.is_empty()) {
        out.push(format!(
            "{path}.group: a Service is in the core group; leave group out or empty"
        ));
    }
    if let Some(ns) = &p.namespace {
        non_empty(out, path, "namespace", ns);
    }
    let ns = p.namespace.as_deref().unwrap_or(default_ns);
    if non_empty(out, path, "name", &p.name) {
        svcs.check(out, path, ns, &p.name, p.port);
    }
}

fn rule_common(
    out: &mut Vec<String>,
    svcs: &Services<'_>,
    path: &str,
    route_ns: &str,
    r: &RuleCommon<'_>,
    scope: FilterScope,
) {
    if r.backend_refs.len() > MAX_BACKENDS {
        out.push(format!(
            "{path}.backendRefs: {} backends, at most {MAX_BACKENDS} are allowed",
            r.backend_refs.len()
        ));
    }
    for (k, b) in r.backend_refs.iter().enumerate() {
        let p = format!("{path}.backendRefs[{k}]");
        if let Some(ns) = &b.namespace {
            non_empty(out, &p, "namespace", ns);
        }
        let ns = b.namespace.as_deref().unwrap_or(route_ns);
        if non_empty(out, &p, "name", &b.name) {
            svcs.check(out, &p, ns, &b.name, b.port);
        }
        if b.weight > MAX_WEIGHT {
            out.push(format!(
                "{p}.weight: {} is above the maximum {MAX_WEIGHT}; weights are relative, scale them down",
                b.weight
            ));
        }
        // A redirect per backend would make the answer depend on the weight roll.
        let scope = FilterScope {
            redirect: false,
            ..scope
        };
        filters(out, &format!("{p}.filters"), &b.filters, scope);
    }
    if !r.backend_refs.is_empty() && r.backend_refs.iter().all(|b| b.weight == 0) {
        out.push(format!(
            "{path}.backendRefs: every weight is 0, so no request could be sent; give one backend a weight above 0, or remove the backendRefs to answer 500 on purpose"
        ));
    }
    if let Some(t) = r.timeouts {
        let nonzero = |d: Option<super::Dur>| d.filter(|d| !d.0.is_zero());
        if let (Some(req), Some(try_)) = (nonzero(t.request), nonzero(t.backend_request)) {
            if try_ > req {
                out.push(format!(
                    "{path}.timeouts.backendRequest: {try_} is longer than timeouts.request ({req}); one try cannot outlast the whole request"
                ));
            }
        }
    }
    if let Some(pol) = r.policy {
        traffic_policy(out, &format!("{path}.policy"), pol);
    }
}

fn http_match(out: &mut Vec<String>, path: &str, m: &HttpRouteMatch) {
    if let Some(p) = &m.path {
        if !valid_path(&p.value) {
            out.push(format!(
                "{path}.path.value: {:?} is not a URL path; it must start with '/' and hold no spaces, '?' or '#'",
                p.value
            ));
        }
    }
    value_matches(out, path, "headers", &m.headers, MatchKind::Header);
    value_matches(out, path, "queryParams", &m.query_params, MatchKind::Query);
    value_matches(out, path, "baggage", &m.baggage, MatchKind::Baggage);
    if let Some(method) = &m.method {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            out.push(format!(
                "{path}.method: {method:?} is not an HTTP method; write it in upper case, e.g. GET or POST"
            ));
        }
    }
}

fn grpc_match(out: &mut Vec<String>, path: &str, m: &GrpcRouteMatch) {
    if let Some(mm) = &m.method {
        if mm.service.is_none() && mm.method.is_none() {
            out.push(format!(
                "{path}.method: needs service, method or both; leave method out to match any call"
            ));
        }
        for (field, v) in [("service", &mm.service), ("method", &mm.method)] {
            if let Some(v) = v {
                if v.is_empty() || v.contains('/') || v.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    out.push(format!(
                        "{path}.method.{field}: {v:?} is not a gRPC {field} name; write e.g. service helloworld.Greeter, method SayHello"
                    ));
                }
            }
        }
    }
    value_matches(out, path, "headers", &m.headers, MatchKind::Header);
    value_matches(out, path, "baggage", &m.baggage, MatchKind::Baggage);
}

#[derive(Clone, Copy, PartialEq)]
enum MatchKind {
    Header,
    Query,
    Baggage,
}

fn value_matches(
    out: &mut Vec<String>,
    path: &str,
    field: &str,
    list: &[ValueMatch],
    kind: MatchKind,
) {
    if list.len() > MAX_VALUE_MATCHES {
        out.push(format!(
            "{path}.{field}: {} entries, at most {MAX_VALUE_MATCHES} are allowed",
            list.len()
        ));
    }
    for (k, v) in list.iter().enumerate() {
        let p = format!("{path}.{field}[{k}]");
        let (name_ok, value_ok) = match kind {
            MatchKind::Header => (valid_header_name(&v.name), valid_header_value(&v.value)),
            // The query is split on '&' and '=' without decoding, so those
            // characters could never match.
            MatchKind::Query => (
                !v.name.is_empty() && !v.name.contains(['&', '=', '#']),
                !v.value.contains(['&', '#']) && valid_header_value(&v.value),
            ),
            // Baggage entries are split on ',' and ';', and values trimmed.
            MatchKind::Baggage => (
                valid_header_name(&v.name),
                !v.value.contains([',', ';'])
                    && v.value.trim() == v.value
                    && valid_header_value(&v.value),
            ),
        };
        if !name_ok {
            out.push(format!(
                "{p}.name: {:?} can never match; use letters, digits and !#$%&'*+-.^_`|~",
                v.name
            ));
        }
        if !value_ok {
            let why = match kind {
                MatchKind::Header => "it holds a control character (CR, LF, NUL...)",
                MatchKind::Query => "it holds '&', '#' or a control character",
                MatchKind::Baggage => {
                    "it holds ',', ';', surrounding spaces or a control character"
                }
            };
            out.push(format!("{p}.value: {:?} can never match: {why}", v.value));
        }
    }
}

/// RFC 9110 token characters, which header names (and baggage keys) are made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn valid_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// What hyper accepts in a header value: visible ASCII, space, tab and
/// obs-text; so no CR, LF, NUL or other control characters.
fn valid_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

/// DNS names (and IPv4 literals): dot-separated labels of letters, digits and '-'.
fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn valid_path(s: &str) -> bool {
    s.starts_with('/')
        && s.bytes()
            .all(|b| b > b' ' && b != 0x7f && b != b'?' && b != b'#')
}
