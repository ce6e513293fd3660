//! HTTPRoute and GRPCRoute documents → the waypoint model's routes, checked
//! on their own when they are read, so a route Trellis cannot honour is
//! rejected there and its last good version stays (as for any document).
//!
//! What is decided here is what the route says by itself: match, filter
//! and backend kinds the waypoint supports, same-namespace backends, and
//! whatever the model's validator says of the rules. What depends on other
//! objects (the parent and backend Services, their ports) is decided at
//! translation, where those objects are known.

use trellis_api::config::l7::{
    BackendRef, ExactOnly, FilterType, GrpcMethodMatch, GrpcRoute, GrpcRouteMatch, GrpcRouteRule,
    HttpFilter, HttpRoute, HttpRouteMatch, HttpRouteRule, ParentRef, PathMatch, PathMatchType,
    ValueMatch,
};
use trellis_api::config::{validate, ConfigError, LocalConfig, Service, ServicePort};

use super::gateway::{
    BackendDoc, GrpcFilterDoc, GrpcMatch, GrpcRouteSpec, GrpcRule, HttpFilterDoc, HttpMatch,
    HttpRouteSpec, HttpRule, ParentReference, ValueMatchDoc,
};

/// A route as stored: its parentRefs as written, resolved against the
/// Services at translation, and everything else in the model's form (with
/// no parentRefs yet).
#[derive(Clone, Debug, PartialEq)]
pub struct Route<R> {
    pub parent_refs: Vec<ParentReference>,
    pub route: R,
}

/// The filter types one route kind supports, and how messages name them.
struct FilterSupport {
    /// `filters` or `gRPC filters`.
    noun: &'static str,
    /// The supported types as a sentence.
    list: &'static str,
    types: &'static [(&'static str, FilterType)],
}

const HTTP_FILTERS: FilterSupport = FilterSupport {
    noun: "filters",
    list: "RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect and URLRewrite",
    types: &[
        ("RequestHeaderModifier", FilterType::RequestHeaderModifier),
        ("ResponseHeaderModifier", FilterType::ResponseHeaderModifier),
        ("RequestRedirect", FilterType::RequestRedirect),
        ("URLRewrite", FilterType::UrlRewrite),
    ],
};

const GRPC_FILTERS: FilterSupport = FilterSupport {
    noun: "gRPC filters",
    list: "RequestHeaderModifier and ResponseHeaderModifier",
    types: &[
        ("RequestHeaderModifier", FilterType::RequestHeaderModifier),
        ("ResponseHeaderModifier", FilterType::ResponseHeaderModifier),
    ],
};

/// Every problem of an HTTPRoute's spec, each starting with its field's path.
pub(crate) fn http(
    name: &str,
    ns: &str,
    spec: &HttpRouteSpec,
) -> Result<Route<HttpRoute>, Vec<String>> {
    let mut out = Vec::new();
    if spec.use_default_gateways.is_some() {
        out.push(
            "spec.useDefaultGateways: not supported; a mesh route attaches to Services through parentRefs"
                .to_string(),
        );
    }
    let rules = match &spec.rules {
        // Gateway API's default (the API server fills it in): every path,
        // no backends.
        None => vec![HttpRouteRule::default()],
        Some(rules) => rules
            .iter()
            .enumerate()
            .map(|(i, r)| http_rule(&format!("spec.rules[{i}]"), ns, r, &mut out))
            .collect(),
    };
    let route = HttpRoute {
        name: name.into(),
        namespace: ns.into(),
        parent_refs: Vec::new(),
        hostnames: spec.hostnames.clone(),
        rules,
    };
    stored(
        name,
        ns,
        &spec.parent_refs,
        route,
        |c| &mut c.http_routes,
        out,
    )
}

/// Every problem of a GRPCRoute's spec, each starting with its field's path.
pub(crate) fn grpc(
    name: &str,
    ns: &str,
    spec: &GrpcRouteSpec,
) -> Result<Route<GrpcRoute>, Vec<String>> {
    let mut out = Vec::new();
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| grpc_rule(&format!("spec.rules[{i}]"), ns, r, &mut out))
        .collect();
    let route = GrpcRoute {
        name: name.into(),
        namespace: ns.into(),
        parent_refs: Vec::new(),
        hostnames: spec.hostnames.clone(),
        rules,
    };
    stored(
        name,
        ns,
        &spec.parent_refs,
        route,
        |c| &mut c.grpc_routes,
        out,
    )
}

/// The route as stored; or every problem of the conversion (`out`) or,
/// when there was none, of the model's validator on a config holding only
/// the route (in the list `place` picks), with Services standing in for
/// its parent and backends.
fn stored<R: Clone>(
    name: &str,
    ns: &str,
    parent_refs: &[ParentReference],
    route: R,
    place: fn(&mut LocalConfig) -> &mut Vec<R>,
    mut out: Vec<String>,
) -> Result<Route<R>, Vec<String>> {
    // Only when the conversion kept every index: the validator's paths
    // must point at the fields the operator wrote.
    if out.is_empty() {
        let mut cfg = LocalConfig::default();
        place(&mut cfg).push(route.clone());
        let parent = || vec![stand_in_parent(name)];
        cfg.http_routes
            .iter_mut()
            .for_each(|r| r.parent_refs = parent());
        cfg.grpc_routes
            .iter_mut()
            .for_each(|r| r.parent_refs = parent());
        let http = cfg.http_routes.iter().flat_map(|r| &r.rules);
        let grpc = cfg.grpc_routes.iter().flat_map(|r| &r.rules);
        let backends = http
            .flat_map(|r| &r.backend_refs)
            .chain(grpc.flat_map(|r| &r.backend_refs));
        cfg.services = stand_ins(ns, name, backends);
        // The one route is first in its list.
        let field = if cfg.http_routes.is_empty() {
            "grpcRoutes[0]"
        } else {
            "httpRoutes[0]"
        };
        validated(&cfg, field, &mut out);
    }
    if out.is_empty() {
        Ok(Route {
            parent_refs: parent_refs.to_vec(),
            route,
        })
    } else {
        Err(out)
    }
}

/// The parent the route is validated against, named like the route so it
/// cannot collide with anything but itself.
fn stand_in_parent(name: &str) -> ParentRef {
    ParentRef {
        kind: "Service".into(),
        group: None,
        name: name.into(),
        namespace: None,
        port: None,
    }
}

/// Services standing in for the ones the route names, with every port it
/// names: whether they exist is for translation to say.
pub(crate) fn stand_ins<'a>(
    ns: &str,
    parent: &str,
    backends: impl Iterator<Item = &'a BackendRef>,
) -> Vec<Service> {
    let mut out: Vec<Service> = vec![stand_in(ns, parent)];
    for b in backends {
        let i = match out.iter().position(|s| s.name == b.name) {
            Some(i) => i,
            None => {
                out.push(stand_in(ns, &b.name));
                out.len() - 1
            }
        };
        if let Some(port) = b.port {
            if !out[i].ports.iter().any(|p| p.port == port) {
                out[i].ports.push(ServicePort {
                    port,
                    target_port: port,
                });
            }
        }
    }
    out
}

fn stand_in(ns: &str, name: &str) -> Service {
    Service {
        name: name.into(),
        namespace: ns.into(),
        hostname: format!("{name}.{ns}.svc.cluster.local"),
        vips: Vec::new(),
        ports: Vec::new(),
        endpoints: Vec::new(),
        waypoint: None,
    }
}

/// The validator's problems under `prefix` (the object under test), with
/// the prefix written as the manifest's `spec`; problems of the stand-ins
/// are theirs, not the operator's.
pub(crate) fn validated(cfg: &LocalConfig, prefix: &str, out: &mut Vec<String>) {
    let problems = match validate(cfg) {
        Ok(()) => return,
        Err(ConfigError::Invalid(p)) => p,
        Err(other) => vec![format!("{prefix}: {other}")],
    };
    for p in problems {
        let Some(rest) = p.strip_prefix(prefix) else {
            continue;
        };
        let place = if rest.starts_with(".name:") || rest.starts_with(".namespace:") {
            "metadata"
        } else {
            "spec"
        };
        out.push(format!("{place}{rest}"));
    }
}

fn http_rule(path: &str, ns: &str, r: &HttpRule, out: &mut Vec<String>) -> HttpRouteRule {
    if r.retry.is_some() {
        out.push(format!(
            "{path}.retry: Gateway API's retry is not supported; set retries in a Trellis TrafficPolicy (spec.retry) that targets this route"
        ));
    }
    no_session_persistence(path, r.session_persistence.is_some(), out);
    let matches = r
        .matches
        .iter()
        .flatten()
        .enumerate()
        .map(|(k, m)| http_match(&format!("{path}.matches[{k}]"), m, out))
        .collect();
    HttpRouteRule {
        name: r.name.clone(),
        matches,
        filters: http_filters(&format!("{path}.filters"), &r.filters, out),
        backend_refs: backends(path, ns, &r.backend_refs, http_filters, out),
        timeouts: r.timeouts,
        policy: None,
    }
}

fn grpc_rule(path: &str, ns: &str, r: &GrpcRule, out: &mut Vec<String>) -> GrpcRouteRule {
    no_session_persistence(path, r.session_persistence.is_some(), out);
    let matches = r
        .matches
        .iter()
        .enumerate()
        .map(|(k, m)| grpc_match(&format!("{path}.matches[{k}]"), m, out))
        .collect();
    GrpcRouteRule {
        name: r.name.clone(),
        matches,
        filters: grpc_filters(&format!("{path}.filters"), &r.filters, out),
        backend_refs: backends(path, ns, &r.backend_refs, grpc_filters, out),
        timeouts: None,
        policy: None,
    }
}

fn no_session_persistence(path: &str, set: bool, out: &mut Vec<String>) {
    if set {
        out.push(format!(
            "{path}.sessionPersistence: not supported; the waypoint balances each request on its own"
        ));
    }
}

fn http_match(path: &str, m: &HttpMatch, out: &mut Vec<String>) -> HttpRouteMatch {
    let path_match = m.path.as_ref().and_then(|p| {
        let kind = match p.kind.as_deref() {
            None | Some("PathPrefix") => PathMatchType::PathPrefix,
            Some("Exact") => PathMatchType::Exact,
            Some("RegularExpression") => {
                out.push(format!(
                    "{path}.path.type: RegularExpression is not supported; Trellis matches paths with Exact and PathPrefix"
                ));
                return None;
            }
            Some(other) => {
                out.push(format!(
                    "{path}.path.type: {other:?} is not a path match type; use Exact or PathPrefix"
                ));
                return None;
            }
        };
        Some(PathMatch {
            kind,
            value: p.value.clone().unwrap_or_else(|| "/".into()),
        })
    });
    HttpRouteMatch {
        path: path_match,
        headers: value_matches(&format!("{path}.headers"), &m.headers, out),
        query_params: value_matches(&format!("{path}.queryParams"), &m.query_params, out),
        method: m.method.clone(),
        baggage: Vec::new(),
    }
}

fn grpc_match(path: &str, m: &GrpcMatch, out: &mut Vec<String>) -> GrpcRouteMatch {
    let method = m.method.as_ref().map(|mm| {
        exact_only(&format!("{path}.method.type"), mm.kind.as_deref(), out);
        GrpcMethodMatch {
            kind: ExactOnly::Exact,
            service: mm.service.clone(),
            method: mm.method.clone(),
        }
    });
    GrpcRouteMatch {
        method,
        headers: value_matches(&format!("{path}.headers"), &m.headers, out),
        baggage: Vec::new(),
    }
}

fn value_matches(path: &str, list: &[ValueMatchDoc], out: &mut Vec<String>) -> Vec<ValueMatch> {
    list.iter()
        .enumerate()
        .map(|(k, v)| {
            exact_only(&format!("{path}[{k}].type"), v.kind.as_deref(), out);
            ValueMatch {
                kind: ExactOnly::Exact,
                name: v.name.clone(),
                value: v.value.clone(),
            }
        })
        .collect()
}

fn exact_only(path: &str, kind: Option<&str>, out: &mut Vec<String>) {
    match kind {
        None | Some("Exact") => {}
        Some("RegularExpression") => out.push(format!(
            "{path}: RegularExpression is not supported; Trellis matches values exactly (type Exact)"
        )),
        Some(other) => out.push(format!(
            "{path}: {other:?} is not a match type; use Exact"
        )),
    }
}

fn http_filters(path: &str, list: &[HttpFilterDoc], out: &mut Vec<String>) -> Vec<HttpFilter> {
    filters(path, list.iter().cloned(), &HTTP_FILTERS, out)
}

fn grpc_filters(path: &str, list: &[GrpcFilterDoc], out: &mut Vec<String>) -> Vec<HttpFilter> {
    filters(
        path,
        list.iter().map(HttpFilterDoc::from),
        &GRPC_FILTERS,
        out,
    )
}

/// The filters of `support`'s types, and a problem for each other one.
fn filters(
    path: &str,
    list: impl Iterator<Item = HttpFilterDoc>,
    support: &FilterSupport,
    out: &mut Vec<String>,
) -> Vec<HttpFilter> {
    let mut filters = Vec::new();
    for (k, f) in list.enumerate() {
        let p = format!("{path}[{k}]");
        // A field of an unsupported type, under a type that says so, is
        // reported once, by the type.
        for (field, ty, set) in [
            ("requestMirror", "RequestMirror", f.request_mirror.is_some()),
            ("extensionRef", "ExtensionRef", f.extension_ref.is_some()),
            ("cors", "CORS", f.cors.is_some()),
            ("externalAuth", "ExternalAuth", f.external_auth.is_some()),
        ] {
            if set && f.kind != ty {
                out.push(format!(
                    "{p}.{field}: not supported; Trellis supports the {} {}",
                    support.noun, support.list
                ));
            }
        }
        let Some(&(_, kind)) = support.types.iter().find(|(name, _)| *name == f.kind) else {
            out.push(unsupported_filter(&p, &f.kind, support.list));
            continue;
        };
        filters.push(HttpFilter {
            kind,
            request_header_modifier: f.request_header_modifier,
            response_header_modifier: f.response_header_modifier,
            request_redirect: f.request_redirect,
            url_rewrite: f.url_rewrite,
        });
    }
    filters
}

fn unsupported_filter(path: &str, kind: &str, supported: &str) -> String {
    match kind {
        "RequestMirror" | "ExtensionRef" | "CORS" | "ExternalAuth" => {
            format!("{path}.type: {kind} is not supported; Trellis supports {supported}")
        }
        other => format!("{path}.type: {other:?} is not a filter type; use one of {supported}"),
    }
}

fn backends<F>(
    path: &str,
    ns: &str,
    list: &[BackendDoc<F>],
    filters: fn(&str, &[F], &mut Vec<String>) -> Vec<HttpFilter>,
    out: &mut Vec<String>,
) -> Vec<BackendRef> {
    let mut refs = Vec::new();
    for (k, b) in list.iter().enumerate() {
        let p = format!("{path}.backendRefs[{k}]");
        let group = b.group.as_deref().unwrap_or("");
        let kind = b.kind.as_deref().unwrap_or("Service");
        if !(matches!(group, "" | "core") && kind == "Service") {
            out.push(format!(
                "{p}: kind {kind:?} in group {group:?} is not supported; Trellis sends to Services (group \"\", kind Service)"
            ));
        }
        if let Some(other) = b.namespace.as_deref().filter(|n| *n != ns) {
            out.push(format!(
                "{p}.namespace: {other:?} is not the route's namespace {ns:?}; a backend in another namespace needs a ReferenceGrant, which Trellis does not read: put the route in the backend's namespace"
            ));
        }
        refs.push(BackendRef {
            name: b.name.clone(),
            namespace: None,
            port: b.port,
            weight: b.weight.unwrap_or(1),
            filters: filters(&format!("{p}.filters"), &b.filters, out),
        });
    }
    refs
}

#[cfg(test)]
mod tests;
