//! Checks on Gateway API filters: each `type` with exactly its field, and
//! header names, values, hostnames and paths the waypoint can use as written.

use ahash::AHashSet;

use super::super::l7::{
    FilterType, HeaderModifier, HttpFilter, PathModifier, PathModifierType, RequestRedirect,
    UrlRewrite,
};
use super::{valid_header_name, valid_header_value, valid_hostname, valid_path, FilterScope};

/// Checks a filter list; returns whether it holds a redirect.
pub(super) fn filters(
    out: &mut Vec<String>,
    path: &str,
    list: &[HttpFilter],
    scope: FilterScope,
) -> bool {
    let mut seen: Vec<FilterType> = Vec::new();
    for (k, f) in list.iter().enumerate() {
        let p = format!("{path}[{k}]");
        if seen.contains(&f.kind) {
            out.push(format!(
                "{p}.type: a second {} filter in the same list; merge it into the first",
                type_name(f.kind)
            ));
        }
        seen.push(f.kind);
        let fields = [
            (
                FilterType::RequestHeaderModifier,
                "requestHeaderModifier",
                f.request_header_modifier.is_some(),
            ),
            (
                FilterType::ResponseHeaderModifier,
                "responseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            (
                FilterType::RequestRedirect,
                "requestRedirect",
                f.request_redirect.is_some(),
            ),
            (
                FilterType::UrlRewrite,
                "urlRewrite",
                f.url_rewrite.is_some(),
            ),
        ];
        for (kind, field, set) in fields {
            if kind == f.kind && !set {
                out.push(format!(
                    "{p}: type {} needs the {field} field",
                    type_name(kind)
                ));
            } else if kind != f.kind && set {
                out.push(format!(
                    "{p}.{field}: set, but type is {}; a filter carries only the field its type names",
                    type_name(f.kind)
                ));
            }
        }
        let allowed = match f.kind {
            FilterType::RequestRedirect => scope.redirect,
            FilterType::UrlRewrite => scope.rewrite,
            _ => true,
        };
        if !allowed {
            let where_ = if scope.grpc {
                "on a gRPC route only header modifiers apply"
            } else {
                "a redirect belongs in the rule's filters, not a backend's"
            };
            out.push(format!(
                "{p}.type: {} is not allowed here; {where_}",
                type_name(f.kind)
            ));
        }
        if let Some(m) = &f.request_header_modifier {
            header_modifier(out, &format!("{p}.requestHeaderModifier"), m);
        }
        if let Some(m) = &f.response_header_modifier {
            header_modifier(out, &format!("{p}.responseHeaderModifier"), m);
        }
        if let Some(r) = &f.request_redirect {
            redirect(out, &format!("{p}.requestRedirect"), r, scope);
        }
        if let Some(r) = &f.url_rewrite {
            rewrite(out, &format!("{p}.urlRewrite"), r, scope);
        }
    }
    let redirect = seen.contains(&FilterType::RequestRedirect);
    if redirect && seen.contains(&FilterType::UrlRewrite) {
        out.push(format!(
            "{path}: RequestRedirect and URLRewrite cannot be combined; a redirect is answered before anything is forwarded"
        ));
    }
    redirect
}

fn type_name(kind: FilterType) -> &'static str {
    match kind {
        FilterType::RequestHeaderModifier => "RequestHeaderModifier",
        FilterType::ResponseHeaderModifier => "ResponseHeaderModifier",
        FilterType::RequestRedirect => "RequestRedirect",
        FilterType::UrlRewrite => "URLRewrite",
    }
}

fn header_modifier(out: &mut Vec<String>, path: &str, m: &HeaderModifier) {
    for (field, list) in [("set", &m.set), ("add", &m.add)] {
        let mut names: AHashSet<String> = AHashSet::new();
        for (k, h) in list.iter().enumerate() {
            let p = format!("{path}.{field}[{k}]");
            if !valid_header_name(&h.name) {
                out.push(format!(
                    "{p}.name: {:?} is not an HTTP header name; use letters, digits and !#$%&'*+-.^_`|~",
                    h.name
                ));
            } else if !names.insert(h.name.to_ascii_lowercase()) {
                out.push(format!(
                    "{p}.name: {:?} is listed twice (names are case-insensitive); keep one entry",
                    h.name
                ));
            }
            if !valid_header_value(&h.value) {
                out.push(format!(
                    "{p}.value: {:?} holds a control character (CR, LF, NUL...); header values cannot carry them",
                    h.value
                ));
            }
        }
    }
    for (k, n) in m.remove.iter().enumerate() {
        if !valid_header_name(n) {
            out.push(format!(
                "{path}.remove[{k}]: {n:?} is not an HTTP header name; use letters, digits and !#$%&'*+-.^_`|~"
            ));
        }
    }
}

fn redirect(out: &mut Vec<String>, path: &str, r: &RequestRedirect, scope: FilterScope) {
    if let Some(s) = &r.scheme {
        if s != "http" && s != "https" {
            out.push(format!(
                "{path}.scheme: {s:?} is not supported; use http or https"
            ));
        }
    }
    if let Some(h) = &r.hostname {
        if !valid_hostname(h) {
            out.push(format!(
                "{path}.hostname: {h:?} is not a hostname; write e.g. www.example.com"
            ));
        }
    }
    if r.port == Some(0) {
        out.push(format!(
            "{path}.port: 0 is not a usable port; leave it out to keep the scheme's port"
        ));
    }
    if !matches!(r.status_code, 301 | 302 | 303 | 307 | 308) {
        out.push(format!(
            "{path}.statusCode: {} is not a redirect status; use 301, 302, 303, 307 or 308",
            r.status_code
        ));
    }
    if let Some(m) = &r.path {
        path_modifier(out, &format!("{path}.path"), m, scope);
    }
}

fn rewrite(out: &mut Vec<String>, path: &str, r: &UrlRewrite, scope: FilterScope) {
    if let Some(h) = &r.hostname {
        if !valid_hostname(h) {
            out.push(format!(
                "{path}.hostname: {h:?} is not a hostname; write e.g. reviews.demo.svc.cluster.local"
            ));
        }
    }
    if let Some(m) = &r.path {
        path_modifier(out, &format!("{path}.path"), m, scope);
    }
}

fn path_modifier(out: &mut Vec<String>, path: &str, m: &PathModifier, scope: FilterScope) {
    let (wanted, other, value, other_set) = match m.kind {
        PathModifierType::ReplaceFullPath => (
            "replaceFullPath",
            "replacePrefixMatch",
            m.replace_full_path.as_deref(),
            m.replace_prefix_match.is_some(),
        ),
        PathModifierType::ReplacePrefixMatch => (
            "replacePrefixMatch",
            "replaceFullPath",
            m.replace_prefix_match.as_deref(),
            m.replace_full_path.is_some(),
        ),
    };
    if other_set {
        out.push(format!(
            "{path}.{other}: set, but type is {:?}; set only {wanted}",
            m.kind
        ));
    }
    match value {
        None => out.push(format!("{path}: type {:?} needs the {wanted} field", m.kind)),
        // An empty prefix replacement is Gateway API's way to strip the prefix.
        Some("") if m.kind == PathModifierType::ReplacePrefixMatch => {}
        Some(v) if !valid_path(v) => out.push(format!(
            "{path}.{wanted}: {v:?} is not a URL path; it must start with '/' and hold no spaces, '?' or '#'"
        )),
        Some(_) => {}
    }
    if m.kind == PathModifierType::ReplacePrefixMatch && !scope.prefix_ok {
        out.push(format!(
            "{path}: ReplacePrefixMatch needs every match of the rule to be a PathPrefix match, and one is Exact; use ReplaceFullPath or change the match"
        ));
    }
}
