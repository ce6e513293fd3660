//! Gateway API RequestRedirect: the `Location` a redirecting rule answers with.

use std::fmt::Write as _;

use http::StatusCode;
use trellis_api::config::l7::RequestRedirect;

use super::RequestView;
use crate::filters::PathRewrite;

#[derive(Debug)]
pub struct Redirect {
    pub status: StatusCode,
    scheme: Option<Box<str>>,
    hostname: Option<Box<str>>,
    port: Option<u16>,
    path: Option<PathRewrite>,
}

impl Redirect {
    pub(super) fn compile(r: &RequestRedirect) -> Redirect {
        let status = StatusCode::from_u16(r.status_code)
            .ok()
            .filter(StatusCode::is_redirection)
            .unwrap_or_else(|| {
                tracing::warn!(
                    status = r.status_code,
                    "redirect status is not 3xx; using 302"
                );
                StatusCode::FOUND
            });
        Redirect {
            status,
            scheme: r.scheme.as_deref().map(Into::into),
            hostname: r.hostname.as_deref().map(Into::into),
            port: r.port,
            path: r.path.as_ref().and_then(PathRewrite::compile),
        }
    }

    /// Each part defaults to the request's: scheme (http when the request
    /// does not say), host, and path with its query. The port follows Gateway
    /// API: the configured one; else the scheme's well-known port when the
    /// redirect changes the scheme; else the port the client dialled
    /// (`service_port`). A scheme's well-known port is left out.
    pub fn location(
        &self,
        req: &RequestView<'_>,
        service_port: u16,
        matched_prefix: Option<&str>,
    ) -> String {
        let scheme = match &self.scheme {
            Some(s) => &**s,
            None => req.uri.scheme_str().unwrap_or("http"),
        };
        let host = self.hostname.as_deref().unwrap_or(req.host);
        let port = match (self.port, &self.scheme) {
            (Some(p), _) => Some(p),
            (None, Some(_)) => None,
            (None, None) => Some(service_port),
        };
        let port = port.filter(|&p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
        let path = self
            .path
            .as_ref()
            .and_then(|p| p.apply(req.uri.path(), matched_prefix));
        let path = path.as_deref().unwrap_or(req.uri.path());

        let mut out = String::with_capacity(scheme.len() + host.len() + path.len() + 16);
        out.push_str(scheme);
        out.push_str("://");
        // An IPv6 literal needs its brackets back once a port may follow.
        if host.contains(':') && !host.starts_with('[') {
            let _ = write!(out, "[{host}]");
        } else {
            out.push_str(host);
        }
        if let Some(p) = port {
            let _ = write!(out, ":{p}");
        }
        out.push_str(path);
        if let Some(q) = req.uri.query() {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}
