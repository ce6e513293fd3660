//! Compiled route matches and the request predicates they test. Everything a
//! match compares against is parsed at build time (header names, methods,
//! normalised prefixes), so testing a request allocates nothing.

use std::cmp::Reverse;
use std::sync::Arc;

use http::header::{HeaderName, CONTENT_TYPE};
use http::{HeaderMap, Method};
use trellis_api::config::l7::{GrpcRouteMatch, HttpRouteMatch, PathMatchType, ValueMatch};

use super::RequestView;

static BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// A route hostname: exact, or `*.example.com` (any name ending in `.example.com`).
#[derive(Debug)]
pub(super) enum HostMatch {
    Exact(Box<str>),
    /// The suffix with its leading dot.
    Suffix(Box<str>),
}

impl HostMatch {
    pub(super) fn compile(h: &str) -> HostMatch {
        match h.strip_prefix('*') {
            Some(suffix) => HostMatch::Suffix(suffix.into()),
            None => HostMatch::Exact(h.into()),
        }
    }

    fn matches(&self, host: &str) -> bool {
        // A fully qualified name with its root dot is the same name.
        let host = host.strip_suffix('.').unwrap_or(host).as_bytes();
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h.as_bytes()),
            HostMatch::Suffix(s) => {
                host.len() > s.len()
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }
}

/// Whether `host` is one of `hosts`; no hostnames means any host.
pub(super) fn host_matches(hosts: &[HostMatch], host: &str) -> bool {
    hosts.is_empty() || hosts.iter().any(|h| h.matches(host))
}

#[derive(Debug, Clone)]
pub(super) enum PathCond {
    Exact(Box<str>),
    /// Without its trailing '/', so the root prefix is "".
    Prefix(Arc<str>),
}

/// A header (or baggage entry) name and the exact value it must have.
type ValueCond = (Box<str>, Box<str>);

#[derive(Debug, Clone)]
pub(super) struct HttpMatch {
    pub(super) path: PathCond,
    headers: Vec<(HeaderName, Box<[u8]>)>,
    query: Vec<ValueCond>,
    method: Option<Method>,
    baggage: Vec<ValueCond>,
}

/// Gateway API precedence, most specific first; config order breaks ties
/// (the candidates are sorted stably).
pub(super) type HttpPrecedence = (u8, Reverse<usize>, Reverse<usize>, Reverse<usize>, u8);

impl HttpMatch {
    /// The match of a rule without matches: path prefix "/".
    pub(super) fn any() -> HttpMatch {
        HttpMatch {
            path: PathCond::Prefix("".into()),
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
            baggage: Vec::new(),
        }
    }

    /// None (with a warning) if a part does not compile; validation keeps that from happening.
    pub(super) fn compile(m: &HttpRouteMatch) -> Option<HttpMatch> {
        let path = match &m.path {
            None => PathCond::Prefix("".into()),
            Some(p) => match p.kind {
                PathMatchType::Exact => PathCond::Exact(p.value.as_str().into()),
                PathMatchType::PathPrefix => PathCond::Prefix(p.value.trim_end_matches('/').into()),
            },
        };
        let method = match &m.method {
            None => None,
            Some(s) => match Method::from_bytes(s.as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    tracing::warn!(method = %s, "route match skipped: invalid method");
                    return None;
                }
            },
        };
        Some(HttpMatch {
            path,
            headers: header_conds(&m.headers)?,
            query: value_conds(&m.query_params),
            method,
            baggage: value_conds(&m.baggage),
        })
    }

    pub(super) fn precedence(&self) -> HttpPrecedence {
        let (kind, len) = match &self.path {
            PathCond::Exact(p) => (0, p.len()),
            PathCond::Prefix(p) => (1, p.len()),
        };
        // Baggage entries are header content, so they count as header matches.
        (
            kind,
            Reverse(len),
            Reverse(self.headers.len() + self.baggage.len()),
            Reverse(self.query.len()),
            u8::from(self.method.is_none()),
        )
    }

    /// The prefix to hand to ReplacePrefixMatch when this match selects its rule.
    pub(super) fn prefix(&self) -> Option<Arc<str>> {
        match &self.path {
            PathCond::Prefix(p) => Some(p.clone()),
            PathCond::Exact(_) => None,
        }
    }

    pub(super) fn matches(&self, req: &RequestView<'_>) -> bool {
        let path = req.uri.path();
        let path_ok = match &self.path {
            PathCond::Exact(p) => path == &**p,
            // Element-wise: "/api" matches "/api" and "/api/x", not "/apix".
            PathCond::Prefix(p) => {
                path.starts_with(&**p) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == req.method)
            && headers_match(&self.headers, req.headers)
            && self
                .query
                .iter()
                .all(|(n, v)| query_has(req.uri.query(), n, v))
            && self
                .baggage
                .iter()
                .all(|(n, v)| baggage_has(req.headers, n, v))
    }
}

#[derive(Debug, Clone)]
pub(super) struct GrpcMatch {
    service: Option<Box<str>>,
    method: Option<Box<str>>,
    headers: Vec<(HeaderName, Box<[u8]>)>,
    baggage: Vec<ValueCond>,
}

/// Gateway API GRPCRoute precedence: characters of a matching service, then
/// of a matching method, then the number of header matches.
pub(super) type GrpcPrecedence = (Reverse<usize>, Reverse<usize>, Reverse<usize>);

impl GrpcMatch {
    pub(super) fn any() -> GrpcMatch {
        GrpcMatch {
            service: None,
            method: None,
            headers: Vec::new(),
            baggage: Vec::new(),
        }
    }

    pub(super) fn compile(m: &GrpcRouteMatch) -> Option<GrpcMatch> {
        let (service, method) = match &m.method {
            Some(mm) => (
                mm.service.as_deref().map(Into::into),
                mm.method.as_deref().map(Into::into),
            ),
            None => (None, None),
        };
        Some(GrpcMatch {
            service,
            method,
            headers: header_conds(&m.headers)?,
            baggage: value_conds(&m.baggage),
        })
    }

    pub(super) fn precedence(&self) -> GrpcPrecedence {
        let len = |s: &Option<Box<str>>| s.as_ref().map_or(0, |s| s.len());
        (
            Reverse(len(&self.service)),
            Reverse(len(&self.method)),
            Reverse(self.headers.len() + self.baggage.len()),
        )
    }

    /// The caller has checked that the request is gRPC.
    pub(super) fn matches(&self, req: &RequestView<'_>) -> bool {
        if self.service.is_some() || self.method.is_some() {
            let Some((svc, method)) = req
                .uri
                .path()
                .strip_prefix('/')
                .and_then(|p| p.split_once('/'))
            else {
                return false;
            };
            if self.service.as_deref().is_some_and(|s| s != svc)
                || self.method.as_deref().is_some_and(|m| m != method)
            {
                return false;
            }
        }
        headers_match(&self.headers, req.headers)
            && self
                .baggage
                .iter()
                .all(|(n, v)| baggage_has(req.headers, n, v))
    }
}

/// gRPC requests are told apart by content type (`application/grpc`, `+proto`, ...).
pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn header_conds(list: &[ValueMatch]) -> Option<Vec<(HeaderName, Box<[u8]>)>> {
    list.iter()
        .map(|h| match HeaderName::from_bytes(h.name.as_bytes()) {
            Ok(n) => Some((n, h.value.as_bytes().into())),
            Err(_) => {
                tracing::warn!(header = %h.name, "route match skipped: invalid header name");
                None
            }
        })
        .collect()
}

fn value_conds(list: &[ValueMatch]) -> Vec<ValueCond> {
    list.iter()
        .map(|v| (v.name.as_str().into(), v.value.as_str().into()))
        .collect()
}

/// Names are case-insensitive (HeaderName is lowercase); a repeated header
/// matches if any of its lines has the exact value.
fn headers_match(conds: &[(HeaderName, Box<[u8]>)], headers: &HeaderMap) -> bool {
    conds
        .iter()
        .all(|(n, v)| headers.get_all(n).iter().any(|h| h.as_bytes() == &**v))
}

/// Whether `a=b&c=d` holds `name=value`, compared without percent-decoding.
fn query_has(query: Option<&str>, name: &str, value: &str) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            k == name && v == value
        })
    })
}

/// Whether the W3C `baggage` header (possibly several lines) has entry
/// `key=value`; whitespace around key and value and properties after ';' are ignored.
fn baggage_has(headers: &HeaderMap, key: &str, value: &str) -> bool {
    headers
        .get_all(&BAGGAGE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(','))
        .any(|entry| {
            let kv = entry.split(';').next().unwrap_or("");
            kv.split_once('=')
                .is_some_and(|(k, v)| k.trim() == key && v.trim() == value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baggage_entries_are_found_across_lines_and_properties() {
        let mut h = HeaderMap::new();
        h.append("baggage", "a=1, colour = blue ;prop=x".parse().unwrap());
        h.append("baggage", "b=2".parse().unwrap());
        let cases = [
            ("colour", "blue", true),
            ("b", "2", true),
            ("a", "1", true),
            ("prop", "x", false),
            ("colour", "blue ;prop=x", false),
            ("a", "2", false),
        ];
        for (k, v, want) in cases {
            assert_eq!(baggage_has(&h, k, v), want, "{k}={v}");
        }
    }

    #[test]
    fn query_params_split_on_ampersand() {
        let cases = [
            ("a=b&c=d", "c", "d", true),
            ("a=b&c=d", "a", "d", false),
            ("flag&x=1", "flag", "", true),
            ("ab=c", "a", "c", false),
        ];
        for (q, n, v, want) in cases {
            assert_eq!(query_has(Some(q), n, v), want, "{q} {n}={v}");
        }
        assert!(!query_has(None, "a", ""));
    }

    #[test]
    fn hostnames_exact_and_wildcard() {
        let cases = [
            ("reviews.demo", "Reviews.Demo", true),
            ("reviews.demo", "reviews.demo.", true),
            ("reviews.demo", "ratings.demo", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "aexample.com", false),
        ];
        for (pattern, host, want) in cases {
            assert_eq!(
                host_matches(&[HostMatch::compile(pattern)], host),
                want,
                "{pattern} vs {host}"
            );
        }
        assert!(host_matches(&[], "anything"));
    }
}
