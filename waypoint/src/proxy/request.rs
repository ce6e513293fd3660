//! Facts read off a request (host, gRPC, upgrade, caller principal) and the
//! splice that joins the two halves of an upgraded connection.

use hbone::Identity;
use http::header::{CONTENT_TYPE, HOST, UPGRADE};
use http::{Method, Request, Version};
use hyper_util::rt::TokioIo;

/// `cluster.local/ns/x/sa/y`: how Istio policies write principals.
pub fn principal_of(id: &Identity) -> String {
    let s = id.to_string();
    s.strip_prefix("spiffe://").unwrap_or(&s).to_string()
}

/// The request's host without a port: Host header (HTTP/1) or :authority (HTTP/2).
pub fn host_of<B>(req: &Request<B>) -> String {
    let raw = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    strip_port(raw).to_ascii_lowercase()
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.split_once(']').map(|(a, _)| &a[1..]).unwrap_or(h);
    }
    match h.rsplit_once(':') {
        Some((a, p)) if p.bytes().all(|b| b.is_ascii_digit()) => a,
        _ => h,
    }
}

pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// The client may expect trailers after the body: it said so (`te:
/// trailers`, RFC 9110 §10.1.4), or it speaks gRPC.
pub fn wants_trailers<B>(req: &Request<B>, grpc: bool) -> bool {
    grpc || crate::headers::te_trailers(req.headers())
}

pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11 && req.headers().contains_key(UPGRADE)
        || req.method() == Method::CONNECT && req.version() == Version::HTTP_11
}

/// Connects the two upgraded halves (e.g. WebSocket) once both are ready.
pub fn splice_upgrade(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(down, up) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut down = TokioIo::new(down);
        let mut up = TokioIo::new(up);
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::TE;

    #[test]
    fn hosts_lose_their_port_and_case() {
        let cases = [
            ("Example.COM:8080", "example.com"),
            ("example.com", "example.com"),
            ("[::1]:80", "::1"),
            ("10.0.0.1:80", "10.0.0.1"),
            ("", ""),
        ];
        for (raw, want) in cases {
            let req = Request::builder().header(HOST, raw).body(()).unwrap();
            assert_eq!(host_of(&req), want, "{raw}");
        }
    }

    #[test]
    fn trailers_are_wanted_when_asked_for_or_grpc() {
        let cases: [(&[&str], bool, bool); 7] = [
            (&[], false, false),
            (&[], true, true),
            (&["trailers"], false, true),
            (&["Trailers"], false, true),
            (&["gzip, trailers;q=1"], false, true),
            (&["gzip", "trailers"], false, true),
            (&["gzip, trailersx"], false, false),
        ];
        for (te, grpc, want) in cases {
            let mut b = Request::builder();
            for v in te {
                b = b.header(TE, *v);
            }
            let req = b.body(()).unwrap();
            assert_eq!(wants_trailers(&req, grpc), want, "{te:?} grpc={grpc}");
        }
    }
}
