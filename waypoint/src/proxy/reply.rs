//! Answers the waypoint makes itself (403, 404, 429, 503, 504, redirects),
//! each with the Envoy response flag an operator looks for in metrics and
//! the access log.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::body::{self, header_size, RespBody};
use crate::metrics::RequestRecord;
use crate::resilience::fault;
use crate::upstream::UpstreamError;

/// Why a request ends with a local answer instead of an upstream one.
#[derive(Debug)]
pub struct Reject {
    pub status: StatusCode,
    pub flags: &'static str,
    pub msg: Cow<'static, str>,
    /// An extra response header (Location, Retry-After).
    pub header: Option<(HeaderName, HeaderValue)>,
    /// The route rule that decided, for metrics and the access log.
    pub route: Option<Arc<str>>,
    /// The policy that denied the request.
    pub denied_by: Option<String>,
    /// Answer as plain HTTP even to a gRPC caller (redirects).
    pub plain: bool,
}

impl Reject {
    /// Boxed: a rejection travels through `Result`s on the request path,
    /// whose Ok side should stay small.
    pub fn new(
        status: StatusCode,
        flags: &'static str,
        msg: impl Into<Cow<'static, str>>,
    ) -> Box<Reject> {
        Box::new(Reject {
            status,
            flags,
            msg: msg.into(),
            header: None,
            route: None,
            denied_by: None,
            plain: false,
        })
    }

    pub fn with_header(mut self: Box<Self>, name: HeaderName, value: HeaderValue) -> Box<Self> {
        self.header = Some((name, value));
        self
    }

    pub fn on_route(mut self: Box<Self>, key: &Arc<str>) -> Box<Self> {
        self.route = Some(key.clone());
        self
    }

    /// What an upstream failure looks like to the client.
    pub fn from_failure(f: &Failure, attempts: u32) -> Box<Reject> {
        let retried = attempts > 1;
        match f {
            Failure::Upstream(e) if e.is_connect_failure() => Reject::new(
                StatusCode::SERVICE_UNAVAILABLE,
                if retried { "URX" } else { "UF" },
                format!("upstream connect error: {e}"),
            ),
            Failure::Upstream(e) => Reject::new(
                StatusCode::SERVICE_UNAVAILABLE,
                if retried { "URX" } else { "UC" },
                format!("upstream reset: {e}"),
            ),
            Failure::Timeout | Failure::PerTryTimeout => Reject::new(
                StatusCode::GATEWAY_TIMEOUT,
                "UT",
                "upstream request timeout",
            ),
        }
    }

    /// The answer. gRPC callers get a trailers-only answer with the matching
    /// grpc-status, as gRPC clients cannot read an HTTP error page.
    pub fn reply(self, mut rec: RequestRecord, grpc: bool) -> Response<RespBody> {
        let this = self;
        rec.flags = this.flags;
        if let Some(r) = this.route {
            rec.route = r;
        }
        rec.denied_by = this.denied_by;
        let msg = this.msg;
        let mut resp = if grpc && !this.plain {
            let code = fault::grpc_status_for_http(this.status.as_u16());
            let mut r = Response::new(body::empty());
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            r.headers_mut().insert("grpc-status", code.into());
            if let Ok(v) = HeaderValue::from_str(&msg) {
                r.headers_mut().insert("grpc-message", v);
            }
            rec.grpc_status = Some(code);
            r
        } else {
            let mut r = Response::new(body::full(format!("{msg}\n")));
            *r.status_mut() = this.status;
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        };
        if let Some((k, v)) = this.header {
            resp.headers_mut().insert(k, v);
        }
        resp.headers_mut()
            .insert("server", HeaderValue::from_static("trellis-waypoint"));
        rec.status = resp.status().as_u16();
        rec.response_bytes = header_size(resp.headers()) + msg.len() as u64 + 1;
        resp
    }
}

/// Why no upstream response could be returned.
#[derive(Debug)]
pub enum Failure {
    Upstream(UpstreamError),
    /// The request timeout (all attempts) passed.
    Timeout,
    /// The last attempt's own timeout passed.
    PerTryTimeout,
}
