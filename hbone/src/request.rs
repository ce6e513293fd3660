//! The HBONE CONNECT request: what the client sends and how the server reads it.
//!
//! Wire format, as Istio ambient's ztunnel uses it:
//! `CONNECT` with `:authority` = `ip:port` of the target workload,
//! `forwarded: for="<ip:port>"` carrying the original client address
//! (RFC 7239; IPv6 written `for="[::1]:80"`), followed by `;host=<name>`
//! when the client was addressing a service, and optionally `traceparent`.
//! Other metadata (ztunnel sends `baggage`) travels in `extra_headers`: this
//! crate passes it through without reading it.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderName, HeaderValue, FORWARDED};
use http::{HeaderMap, Method, Request, StatusCode};

/// The W3C trace-context header name.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// One tunnel request: target, original client address and tracing metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Workload address the tunnel should reach (sent as `:authority`).
    pub target: SocketAddr,
    /// Original client address (sent as `forwarded: for="..."`).
    ///
    /// When the peer names only an IP (allowed by RFC 7239) the port is 0.
    pub forwarded_for: Option<SocketAddr>,
    /// The name the client addressed (sent as `;host=` in `forwarded`):
    /// ztunnel sends the destination service's hostname.
    pub forwarded_host: Option<String>,
    /// W3C `traceparent` value, passed through unchanged.
    pub traceparent: Option<String>,
    /// Any other headers; on the server side, every header except
    /// `forwarded` and `traceparent`.
    pub extra_headers: HeaderMap,
}

/// Why an incoming CONNECT request cannot be served; `status()` is the answer to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// HBONE only carries CONNECT; anything else is answered 405.
    #[error("method {0} is not allowed; hbone only accepts CONNECT")]
    MethodNotAllowed(Method),
    /// The request has no `:authority`, so there is no target.
    #[error("CONNECT request has no authority; the client must name the target as ip:port")]
    MissingAuthority,
    /// The authority is not a numeric `ip:port` with a non-zero port.
    #[error(
        "CONNECT authority {0:?} is not ip:port; hbone targets must be numeric socket addresses"
    )]
    BadAuthority(String),
    /// The `forwarded` header is present but cannot be parsed.
    #[error("forwarded header {0:?} is malformed; expected for=\"<ip>:<port>\" as in RFC 7239")]
    BadForwarded(String),
    /// A header value cannot be sent (client side: invalid characters).
    #[error("header {name} has a value that cannot be sent: {reason}")]
    BadHeader {
        /// Header name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

impl RequestError {
    /// The HTTP status the server should answer this error with.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl ConnectRequest {
    /// A request for `target` with no forwarding or tracing metadata.
    pub fn new(target: SocketAddr) -> ConnectRequest {
        ConnectRequest {
            target,
            forwarded_for: None,
            forwarded_host: None,
            traceparent: None,
            extra_headers: HeaderMap::new(),
        }
    }

    /// Builds the HTTP/2 request head the client sends.
    pub(crate) fn to_http(&self) -> Result<Request<()>, RequestError> {
        let mut req = Request::new(());
        *req.method_mut() = Method::CONNECT;
        // SocketAddr's Display already brackets IPv6, which is the authority form.
        *req.uri_mut() = self
            .target
            .to_string()
            .parse()
            .map_err(|e: http::uri::InvalidUri| RequestError::BadAuthority(e.to_string()))?;
        let headers = req.headers_mut();
        headers.extend(self.extra_headers.clone());
        if self.forwarded_for.is_some() || self.forwarded_host.is_some() {
            let value = forwarded_value(self.forwarded_for, self.forwarded_host.as_deref());
            let value = HeaderValue::try_from(value).map_err(|e| RequestError::BadHeader {
                name: FORWARDED.to_string(),
                reason: e.to_string(),
            })?;
            headers.insert(FORWARDED, value);
        }
        if let Some(tp) = &self.traceparent {
            let value =
                HeaderValue::try_from(tp.as_str()).map_err(|e| RequestError::BadHeader {
                    name: TRACEPARENT.to_string(),
                    reason: e.to_string(),
                })?;
            headers.insert(TRACEPARENT, value);
        }
        Ok(req)
    }

    /// Parses the head of an incoming request (server side).
    ///
    /// A malformed `forwarded` header rejects the request (400) rather than being
    /// ignored: the destination uses it to attribute traffic to the original
    /// client, and silently dropping it would attribute the connection to the
    /// sending proxy instead. Well-formed values that carry no address
    /// (`for=unknown`, obfuscated `for=_hidden`) give `forwarded_for = None`.
    /// A non-ASCII `traceparent` is ignored: it only affects tracing.
    /// Public for the fuzz target (fuzz/); the server is its only other caller.
    pub fn from_http(
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Result<ConnectRequest, RequestError> {
        if method != Method::CONNECT {
            return Err(RequestError::MethodNotAllowed(method.clone()));
        }
        let authority = uri.authority().ok_or(RequestError::MissingAuthority)?;
        let target: SocketAddr = authority
            .as_str()
            .parse()
            .map_err(|_| RequestError::BadAuthority(authority.to_string()))?;
        if target.port() == 0 {
            return Err(RequestError::BadAuthority(authority.to_string()));
        }
        let (forwarded_for, forwarded_host) = match headers.get(FORWARDED) {
            None => (None, None),
            Some(v) => (parse_forwarded_for(v)?, parse_forwarded_host(v)),
        };
        let traceparent = headers.get(TRACEPARENT).and_then(|v| match v.to_str() {
            Ok(s) => Some(s.to_owned()),
            Err(_) => {
                tracing::debug!("ignoring non-ascii traceparent header");
                None
            }
        });
        let mut extra_headers = headers.clone();
        extra_headers.remove(FORWARDED);
        extra_headers.remove(TRACEPARENT);
        Ok(ConnectRequest {
            target,
            forwarded_for,
            forwarded_host,
            traceparent,
            extra_headers,
        })
    }
}

/// The `forwarded` value: `for="<ip:port>"` (quoted: the port's colon and
/// IPv6 brackets are not token characters), then `;host=<name>`, quoted
/// when the name is not an RFC 7230 token (`host:port` is not). A name that
/// would need escaping, or would split the header (`;`, `,`), is left out
/// rather than risk the peer rejecting the whole request as malformed.
fn forwarded_value(addr: Option<SocketAddr>, host: Option<&str>) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(64);
    if let Some(addr) = addr {
        // Writing to a String cannot fail.
        let _ = write!(out, "for=\"{addr}\"");
    }
    let host = host.filter(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_graphic() && !b";,\"\\".contains(&b))
    });
    if let Some(host) = host {
        if !out.is_empty() {
            out.push(';');
        }
        out.push_str("host=");
        if host.bytes().all(is_tchar) {
            out.push_str(host);
        } else {
            out.push('"');
            out.push_str(host);
            out.push('"');
        }
    }
    out
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The `host=` of the first element of a `forwarded` header, if any.
///
/// Lenient, unlike `for=`: the host only informs (ztunnel uses it to name
/// the service the client addressed), so anything unreadable is `None`.
fn parse_forwarded_host(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let first = text.split(',').next()?;
    first.split(';').find_map(|pair| {
        let (key, val) = pair.trim().split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("host") {
            return None;
        }
        let val = val.trim();
        let host = match val.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(inner) => {
                // quoted-pair: a backslash takes the next character literally.
                let mut out = String::with_capacity(inner.len());
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    out.extend(if c == '\\' { chars.next() } else { Some(c) });
                }
                out
            }
            None => val.to_string(),
        };
        (!host.is_empty()).then_some(host)
    })
}

/// Extracts the `for=` node of the first element of a `forwarded` header.
///
/// The first element is the one the original sender added; later elements
/// (appended by intermediaries) are not looked at.
fn parse_forwarded_for(value: &HeaderValue) -> Result<Option<SocketAddr>, RequestError> {
    let bad = || RequestError::BadForwarded(String::from_utf8_lossy(value.as_bytes()).into_owned());
    let text = value.to_str().map_err(|_| bad())?;
    let first = text.split(',').next().unwrap_or_default();
    let mut node = None;
    for pair in first.split(';') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let (key, val) = pair.split_once('=').ok_or_else(bad)?;
        if key.trim().eq_ignore_ascii_case("for") {
            if node.is_some() {
                return Err(bad());
            }
            node = Some(unquote(val.trim()).ok_or_else(bad)?);
        }
    }
    let Some(node) = node else {
        return Ok(None);
    };
    if node.eq_ignore_ascii_case("unknown") || node.starts_with('_') {
        return Ok(None);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    // RFC 7239 allows a node without a port; IPv6 is then bracketed.
    let ip_text = node
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(node);
    match ip_text.parse::<IpAddr>() {
        Ok(ip) => Ok(Some(SocketAddr::new(ip, 0))),
        Err(_) => Err(bad()),
    }
}

fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(inner) => inner.strip_suffix('"'),
        None if v.contains('"') => None,
        None => Some(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(s: &str) -> Result<Option<SocketAddr>, RequestError> {
        parse_forwarded_for(&HeaderValue::from_str(s).expect("header value"))
    }

    #[test]
    fn forwarded_forms() {
        let v4: SocketAddr = "10.0.0.1:8080".parse().expect("addr");
        let v6: SocketAddr = "[fd00::1]:80".parse().expect("addr");
        assert_eq!(fwd("for=\"10.0.0.1:8080\"").ok(), Some(Some(v4)));
        assert_eq!(
            fwd("for=\"10.0.0.1:8080\";host=svc.ns.svc.cluster.local").ok(),
            Some(Some(v4))
        );
        assert_eq!(
            fwd("For=\"[fd00::1]:80\", for=1.2.3.4").ok(),
            Some(Some(v6))
        );
        assert_eq!(
            fwd("for=10.0.0.1").ok(),
            Some(Some("10.0.0.1:0".parse().expect("addr")))
        );
        assert_eq!(
            fwd("for=\"[fd00::1]\"").ok(),
            Some(Some("[fd00::1]:0".parse().expect("addr")))
        );
        assert_eq!(fwd("for=unknown").ok(), Some(None));
        assert_eq!(fwd("proto=http").ok(), Some(None));
        for bad in [
            "for=\"10.0.0.1:80",
            "garbage",
            "for=not-an-ip",
            "for=1.2.3.4;for=5.6.7.8",
        ] {
            assert!(
                matches!(fwd(bad), Err(RequestError::BadForwarded(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn forwarded_value_forms() {
        let v4: SocketAddr = "10.0.0.1:8080".parse().expect("addr");
        let v6: SocketAddr = "[fd00::1]:80".parse().expect("addr");
        let svc = "web.demo.svc.cluster.local";
        for (addr, host, want) in [
            (Some(v4), None, r#"for="10.0.0.1:8080""#),
            (Some(v6), None, r#"for="[fd00::1]:80""#),
            (
                Some(v4),
                Some(svc),
                r#"for="10.0.0.1:8080";host=web.demo.svc.cluster.local"#,
            ),
            (
                Some(v4),
                Some("10.96.0.1:80"),
                r#"for="10.0.0.1:8080";host="10.96.0.1:80""#,
            ),
            (None, Some(svc), "host=web.demo.svc.cluster.local"),
            // Names that would split or need escaping are left out.
            (Some(v4), Some("a;b"), r#"for="10.0.0.1:8080""#),
            (Some(v4), Some("a b"), r#"for="10.0.0.1:8080""#),
            (Some(v4), Some("a\"b"), r#"for="10.0.0.1:8080""#),
            (Some(v4), Some(""), r#"for="10.0.0.1:8080""#),
        ] {
            assert_eq!(forwarded_value(addr, host), want, "{addr:?} {host:?}");
        }
    }

    #[test]
    fn forwarded_host_forms() {
        let host = |s: &str| parse_forwarded_host(&HeaderValue::from_str(s).expect("value"));
        for (value, want) in [
            (r#"for="10.0.0.1:80";host=web.demo"#, Some("web.demo")),
            (
                r#"for="10.0.0.1:80"; Host="10.96.0.1:80""#,
                Some("10.96.0.1:80"),
            ),
            (r#"host="a\"b""#, Some("a\"b")),
            (r#"for="10.0.0.1:80""#, None),
            (r#"for="10.0.0.1:80";host="#, None),
            (r#"for=x, host=second-element"#, None),
            ("garbage", None),
        ] {
            assert_eq!(host(value).as_deref(), want, "{value}");
        }
    }

    #[test]
    fn round_trip_through_http_head() {
        let mut req = ConnectRequest::new("[::1]:9080".parse().expect("addr"));
        req.forwarded_for = Some("[::1]:80".parse().expect("addr"));
        req.forwarded_host = Some("web.demo.svc.cluster.local".into());
        req.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        req.extra_headers
            .insert("baggage", HeaderValue::from_static("k=v"));
        let head = req.to_http().expect("build");
        assert_eq!(
            head.uri().authority().map(|a| a.as_str()),
            Some("[::1]:9080")
        );
        assert_eq!(
            head.headers()[FORWARDED],
            "for=\"[::1]:80\";host=web.demo.svc.cluster.local"
        );
        let back =
            ConnectRequest::from_http(head.method(), head.uri(), head.headers()).expect("parse");
        assert_eq!(back, req);
    }

    #[test]
    fn authority_must_be_ip_port() {
        let h = HeaderMap::new();
        for (uri, want) in [("example.com:80", 400), ("10.0.0.1:0", 400)] {
            let uri: http::Uri = uri.parse().expect("uri");
            let err = ConnectRequest::from_http(&Method::CONNECT, &uri, &h).unwrap_err();
            assert_eq!(err.status().as_u16(), want, "{err}");
        }
        let uri: http::Uri = "/path".parse().expect("uri");
        let err = ConnectRequest::from_http(&Method::CONNECT, &uri, &h).unwrap_err();
        assert_eq!(err, RequestError::MissingAuthority);
        let err = ConnectRequest::from_http(&Method::GET, &uri, &h).unwrap_err();
        assert_eq!(err.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
