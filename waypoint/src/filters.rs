//! Gateway API filters that change a request or a response on its way
//! through: header modifiers and URL rewrites. They are compiled once per
//! config (header names and values parsed up front), so applying them parses
//! nothing. RequestRedirect is not here: it answers the client instead of
//! changing the request, so `route` decides it.

use http::header::{HeaderName, HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Uri};
use trellis_api::config::l7::{
    FilterType, HeaderModifier, HttpFilter, PathModifier, PathModifierType,
};

/// The compiled filters of a rule or of one backend.
#[derive(Debug, Default, Clone)]
pub struct Filters {
    request_headers: Option<HeaderOps>,
    response_headers: Option<HeaderOps>,
    rewrite: Option<Rewrite>,
}

#[derive(Debug, Default, Clone)]
struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

#[derive(Debug, Clone)]
struct Rewrite {
    host: Option<(HeaderValue, Authority)>,
    path: Option<PathRewrite>,
}

/// A Gateway API path modifier, shared by URLRewrite and RequestRedirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    /// ReplaceFullPath: the whole path becomes this.
    Full(Box<str>),
    /// ReplacePrefixMatch: the matched prefix becomes this (no trailing '/').
    Prefix(Box<str>),
}

impl PathRewrite {
    pub fn compile(m: &PathModifier) -> Option<PathRewrite> {
        match m.kind {
            PathModifierType::ReplaceFullPath => m
                .replace_full_path
                .as_deref()
                .map(|p| PathRewrite::Full(p.into())),
            PathModifierType::ReplacePrefixMatch => m
                .replace_prefix_match
                .as_deref()
                .map(|p| PathRewrite::Prefix(p.trim_end_matches('/').into())),
        }
    }

    /// The rewritten path, or None when it does not apply (a prefix rewrite
    /// without a matched prefix, or a path that does not start with it).
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> Option<String> {
        match self {
            PathRewrite::Full(p) => Some(p.to_string()),
            PathRewrite::Prefix(replacement) => replace_prefix(path, matched_prefix?, replacement),
        }
    }
}

/// Gateway API's ReplacePrefixMatch, element-wise and trailing-'/'-insensitive:
/// `/foo/bar` with prefix `/foo` → `/xyz/bar` for `/xyz` or `/xyz/`, `/bar`
/// for `/` or ``; `/foo/` → `/xyz/`; `/foo` → `/xyz`, or `/` for `/`.
fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> Option<String> {
    let prefix = prefix.trim_end_matches('/');
    let rest = path.strip_prefix(prefix)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    // "/" under the root prefix has no elements left: it becomes the replacement itself.
    let rest = if prefix.is_empty() && rest == "/" {
        ""
    } else {
        rest
    };
    let replacement = replacement.trim_end_matches('/');
    let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
    out.push_str(replacement);
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

impl Filters {
    /// Compiles a validated filter list. RequestRedirect is skipped (route
    /// decides it); entries that do not compile are skipped with a warning.
    pub fn compile(filters: &[HttpFilter]) -> Filters {
        let mut out = Filters::default();
        for f in filters {
            match f.kind {
                FilterType::RequestHeaderModifier => {
                    if let Some(m) = &f.request_header_modifier {
                        out.request_headers
                            .get_or_insert_with(HeaderOps::default)
                            .extend(m);
                    }
                }
                FilterType::ResponseHeaderModifier => {
                    if let Some(m) = &f.response_header_modifier {
                        out.response_headers
                            .get_or_insert_with(HeaderOps::default)
                            .extend(m);
                    }
                }
                FilterType::UrlRewrite => {
                    if let Some(r) = &f.url_rewrite {
                        let host = r.hostname.as_deref().and_then(|h| {
                            match (HeaderValue::from_str(h), Authority::try_from(h)) {
                                (Ok(v), Ok(a)) => Some((v, a)),
                                _ => {
                                    tracing::warn!(
                                        hostname = h,
                                        "url rewrite hostname skipped: not a valid host"
                                    );
                                    None
                                }
                            }
                        });
                        let path = r.path.as_ref().and_then(PathRewrite::compile);
                        out.rewrite = Some(Rewrite { host, path });
                    }
                }
                FilterType::RequestRedirect => {}
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.request_headers.is_none() && self.response_headers.is_none() && self.rewrite.is_none()
    }

    /// Applies the request header modifier, then the URL rewrite: the
    /// hostname replaces the Host header and, in absolute (HTTP/2) URIs, the
    /// authority; the path is replaced (ReplacePrefixMatch replaces
    /// `matched_prefix`, the prefix of the match that selected the rule) and
    /// the query kept.
    pub fn apply_request(&self, parts: &mut http::request::Parts, matched_prefix: Option<&str>) {
        if let Some(ops) = &self.request_headers {
            ops.apply(&mut parts.headers);
        }
        let Some(rw) = &self.rewrite else { return };
        let mut authority = None;
        if let Some((value, auth)) = &rw.host {
            parts.headers.insert(HOST, value.clone());
            if parts.uri.authority().is_some() {
                authority = Some(auth.clone());
            }
        }
        let path_and_query = rw.path.as_ref().and_then(|p| {
            let path = p.apply(parts.uri.path(), matched_prefix)?;
            let pq = match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            PathAndQuery::try_from(pq)
                .inspect_err(|e| tracing::warn!(error = %e, "url rewrite skipped: the new path is not valid"))
                .ok()
        });
        if authority.is_none() && path_and_query.is_none() {
            return;
        }
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        if authority.is_some() {
            uri.authority = authority;
        }
        if path_and_query.is_some() {
            uri.path_and_query = path_and_query;
        }
        // Every part came from a valid URI or was parsed above, so this holds;
        // the fallback keeps a request rather than panicking on a surprise.
        parts.uri = Uri::from_parts(uri).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "url rewrite produced an invalid uri; sending /");
            Uri::from_static("/")
        });
    }

    pub fn apply_response(&self, headers: &mut HeaderMap) {
        if let Some(ops) = &self.response_headers {
            ops.apply(headers);
        }
    }
}

impl HeaderOps {
    fn extend(&mut self, m: &HeaderModifier) {
        let pair = |name: &str, value: &str| match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => Some((n, v)),
            _ => {
                tracing::warn!(
                    header = name,
                    "header modifier entry skipped: invalid name or value"
                );
                None
            }
        };
        self.set
            .extend(m.set.iter().filter_map(|h| pair(&h.name, &h.value)));
        self.add
            .extend(m.add.iter().filter_map(|h| pair(&h.name, &h.value)));
        self.remove.extend(
            m.remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()),
        );
    }

    /// Gateway API order: set (replaces every value), add (appends), remove.
    fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filters of the first rule of a one-route config.
    fn filters(yaml_filters: &str) -> Filters {
        let yaml = format!(
            "services: [{{name: s, namespace: d, hostname: s.d, ports: [{{port: 80, targetPort: 80}}]}}]\n\
             httpRoutes: [{{name: r, namespace: d, parentRefs: [{{name: s}}], rules: [{{filters: {yaml_filters}}}]}}]\n"
        );
        let cfg = trellis_api::config::parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
        Filters::compile(&cfg.http_routes[0].rules[0].filters)
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn header_modifier_sets_adds_then_removes() {
        let f = filters(
            "[{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-A, value: new}, {name: x-gone, value: v}], add: [{name: x-b, value: two}], remove: [x-gone, x-c]}},
              {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-r, value: r}]}}]",
        );
        assert!(!f.is_empty());
        let mut parts = request(
            "/",
            &[
                ("x-a", "old"),
                ("x-a", "old2"),
                ("x-b", "one"),
                ("x-c", "c"),
            ],
        );
        f.apply_request(&mut parts, None);
        let cases = [
            ("x-a", vec!["new"]),
            ("x-b", vec!["one", "two"]),
            ("x-c", vec![]),
            ("x-gone", vec![]),
        ];
        for (name, want) in cases {
            assert_eq!(values(&parts.headers, name), want, "{name}");
        }
        let mut resp = HeaderMap::new();
        f.apply_response(&mut resp);
        assert_eq!(values(&resp, "x-r"), ["r"]);
        assert!(Filters::compile(&[]).is_empty());
    }

    #[test]
    fn replace_prefix_follows_the_gateway_api_table() {
        // (request path, matched prefix, replacement, result)
        let cases = [
            ("/foo/bar", "/foo", "/xyz", Some("/xyz/bar")),
            ("/foo/bar", "/foo", "/xyz/", Some("/xyz/bar")),
            ("/foo/bar", "/foo/", "/xyz", Some("/xyz/bar")),
            ("/foo/bar", "/foo/", "/xyz/", Some("/xyz/bar")),
            ("/foo", "/foo", "/xyz", Some("/xyz")),
            ("/foo/", "/foo", "/xyz", Some("/xyz/")),
            ("/foo/bar", "/foo", "", Some("/bar")),
            ("/foo/bar", "/foo", "/", Some("/bar")),
            ("/foo/", "/foo", "", Some("/")),
            ("/foo", "/foo", "/", Some("/")),
            ("/a/b", "/", "/x", Some("/x/a/b")),
            ("/", "/", "/x", Some("/x")),
            ("/foobar", "/foo", "/x", None),
            ("/other", "/foo", "/x", None),
        ];
        for (path, prefix, repl, want) in cases {
            let got =
                PathRewrite::Prefix(repl.trim_end_matches('/').into()).apply(path, Some(prefix));
            assert_eq!(got.as_deref(), want, "{path} {prefix} -> {repl}");
        }
        assert_eq!(PathRewrite::Prefix("/x".into()).apply("/a", None), None);
    }

    #[test]
    fn url_rewrite_changes_path_host_and_authority_and_keeps_the_query() {
        // (filters, request uri, matched prefix, uri after, host header after)
        let cases = [
            (
                "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}",
                "/api/x?a=1",
                Some("/api"),
                "/v2/x?a=1",
                None,
            ),
            (
                "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}",
                "/api/x",
                None,
                "/api/x",
                None,
            ),
            (
                "{path: {type: ReplaceFullPath, replaceFullPath: /new}}",
                "/old/x?q",
                None,
                "/new?q",
                None,
            ),
            (
                "{hostname: internal.demo}",
                "/p",
                None,
                "/p",
                Some("internal.demo"),
            ),
            (
                "{hostname: internal.demo, path: {type: ReplaceFullPath, replaceFullPath: /n}}",
                "http://s.d:80/p?q",
                None,
                "http://internal.demo/n?q",
                Some("internal.demo"),
            ),
        ];
        for (rewrite, uri, prefix, want_uri, want_host) in cases {
            let f = filters(&format!("[{{type: URLRewrite, urlRewrite: {rewrite}}}]"));
            let mut parts = request(uri, &[("host", "s.d")]);
            f.apply_request(&mut parts, prefix);
            assert_eq!(parts.uri.to_string(), want_uri, "{rewrite} on {uri}");
            assert_eq!(
                parts.headers["host"],
                want_host.unwrap_or("s.d"),
                "{rewrite} on {uri}"
            );
        }
    }
}
