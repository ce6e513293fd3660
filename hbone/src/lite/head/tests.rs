use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

use super::super::conn::fields;
use super::*;

fn owned_to_fields(owned: &OwnedFields) -> Fields {
    owned
        .iter()
        .map(|(n, v)| (Bytes::from(n.clone()), Bytes::from(v.clone())))
        .collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn headers(list: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in list {
        h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
    }
    h
}

fn bad_pseudo(name: &str) -> HeadError {
    HeadError::BadPseudo(name.into())
}

type Want = Result<Result<ConnectRequest, RequestError>, HeadError>;
/// (name, fields, outcome)
type Case<W> = (&'static str, Vec<(&'static str, &'static str)>, W);

#[test]
fn request_heads() {
    let connect = [(":method", "CONNECT"), (":authority", "10.0.0.1:8080")];
    let with = |more: &[(&'static str, &'static str)]| {
        let mut f = connect.to_vec();
        f.extend_from_slice(more);
        f
    };
    let plain = ConnectRequest::new(addr("10.0.0.1:8080"));
    let cases: Vec<Case<Want>> = vec![
        ("bare CONNECT", connect.to_vec(), Ok(Ok(plain.clone()))),
        (
            "CONNECT with forwarded, traceparent and baggage",
            with(&[
                (
                    "forwarded",
                    "for=\"10.0.0.2:40000\";host=svc.ns.svc.cluster.local",
                ),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("baggage", "k8s.namespace.name=ns"),
            ]),
            Ok(Ok(ConnectRequest {
                forwarded_for: Some(addr("10.0.0.2:40000")),
                forwarded_host: Some("svc.ns.svc.cluster.local".into()),
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
                extra_headers: headers(&[("baggage", "k8s.namespace.name=ns")]),
                ..plain.clone()
            })),
        ),
        (
            "CONNECT to IPv6",
            vec![(":method", "CONNECT"), (":authority", "[fd00::1]:443")],
            Ok(Ok(ConnectRequest::new(addr("[fd00::1]:443")))),
        ),
        (
            "pseudo-headers in another order",
            vec![(":authority", "10.0.0.1:8080"), (":method", "CONNECT")],
            Ok(Ok(plain.clone())),
        ),
        (
            "te: trailers is allowed",
            with(&[("te", "trailers")]),
            Ok(Ok(ConnectRequest {
                extra_headers: headers(&[("te", "trailers")]),
                ..plain.clone()
            })),
        ),
        (
            "CONNECT without authority",
            vec![(":method", "CONNECT")],
            Ok(Err(RequestError::MissingAuthority)),
        ),
        (
            "CONNECT to a name",
            vec![(":method", "CONNECT"), (":authority", "example.com:80")],
            Ok(Err(RequestError::BadAuthority("example.com:80".into()))),
        ),
        (
            "CONNECT to port 0",
            vec![(":method", "CONNECT"), (":authority", "10.0.0.1:0")],
            Ok(Err(RequestError::BadAuthority("10.0.0.1:0".into()))),
        ),
        (
            "CONNECT to an authority that is no URI",
            vec![(":method", "CONNECT"), (":authority", "10.0.0.1 8080")],
            Ok(Err(RequestError::BadAuthority("10.0.0.1 8080".into()))),
        ),
        (
            "CONNECT to an absolute URI instead of an authority",
            vec![
                (":method", "CONNECT"),
                (":authority", "http://10.0.0.1:8080"),
            ],
            Ok(Err(RequestError::BadAuthority(
                "http://10.0.0.1:8080".into(),
            ))),
        ),
        (
            "CONNECT to an authority with a path",
            vec![(":method", "CONNECT"), (":authority", "10.0.0.1:8080/x")],
            Ok(Err(RequestError::BadAuthority("10.0.0.1:8080/x".into()))),
        ),
        (
            "bad forwarded",
            with(&[("forwarded", "for=not-an-ip")]),
            Ok(Err(RequestError::BadForwarded("for=not-an-ip".into()))),
        ),
        (
            "GET",
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "10.0.0.1:8080"),
                (":path", "/"),
            ],
            Ok(Err(RequestError::MethodNotAllowed(Method::GET))),
        ),
        (
            "POST without authority",
            vec![(":method", "POST"), (":scheme", "https"), (":path", "/")],
            Ok(Err(RequestError::MethodNotAllowed(Method::POST))),
        ),
        (
            "no method",
            vec![(":authority", "10.0.0.1:8080")],
            Err(HeadError::Missing(":method")),
        ),
        (
            "method that is no token",
            vec![(":method", "CON NECT"), (":authority", "10.0.0.1:8080")],
            Err(HeadError::BadValue(":method".into())),
        ),
        (
            "uppercase header name",
            with(&[("Forwarded", "for=\"10.0.0.2:1\"")]),
            Err(HeadError::BadName("Forwarded".into())),
        ),
        (
            "header name that is no token",
            with(&[("bad name", "x")]),
            Err(HeadError::BadName("bad name".into())),
        ),
        (
            "header value with a newline",
            with(&[("baggage", "a\nb")]),
            Err(HeadError::BadValue("baggage".into())),
        ),
        (
            "pseudo after regular",
            vec![
                (":method", "CONNECT"),
                ("baggage", "a=b"),
                (":authority", "10.0.0.1:8080"),
            ],
            Err(bad_pseudo(":authority")),
        ),
        (
            "duplicate :method",
            vec![
                (":method", "CONNECT"),
                (":method", "CONNECT"),
                (":authority", "10.0.0.1:8080"),
            ],
            Err(bad_pseudo(":method")),
        ),
        (
            "duplicate :authority",
            with(&[(":authority", "10.0.0.1:8080")]),
            Err(bad_pseudo(":authority")),
        ),
        (
            "unknown pseudo",
            with(&[(":foo", "bar")]),
            Err(bad_pseudo(":foo")),
        ),
        (
            "empty pseudo name",
            with(&[(":", "bar")]),
            Err(bad_pseudo(":")),
        ),
        (
            "status in a request",
            with(&[(":status", "200")]),
            Err(bad_pseudo(":status")),
        ),
        (
            "connection",
            with(&[("connection", "keep-alive")]),
            Err(HeadError::ConnectionHeader("connection".into())),
        ),
        (
            "keep-alive",
            with(&[("keep-alive", "timeout=5")]),
            Err(HeadError::ConnectionHeader("keep-alive".into())),
        ),
        (
            "proxy-connection",
            with(&[("proxy-connection", "close")]),
            Err(HeadError::ConnectionHeader("proxy-connection".into())),
        ),
        (
            "transfer-encoding",
            with(&[("transfer-encoding", "chunked")]),
            Err(HeadError::ConnectionHeader("transfer-encoding".into())),
        ),
        (
            "upgrade",
            with(&[("upgrade", "h2c")]),
            Err(HeadError::ConnectionHeader("upgrade".into())),
        ),
        (
            "te other than trailers",
            with(&[("te", "gzip")]),
            Err(HeadError::ConnectionHeader("te".into())),
        ),
    ];
    for (name, list, want) in cases {
        assert_eq!(request(&fields(&list)), want, "{name}");
    }
}

/// CONNECT with `:scheme`/`:path` (or extended CONNECT's `:protocol`) is
/// well-formed HTTP/2 but not an HBONE tunnel: refused with 400.
#[test]
fn connect_with_request_target_pseudo_headers_is_refused() {
    let cases: [&[(&str, &str)]; 3] = [
        &[
            (":method", "CONNECT"),
            (":authority", "10.0.0.1:8080"),
            (":path", "/"),
        ],
        &[
            (":method", "CONNECT"),
            (":authority", "10.0.0.1:8080"),
            (":scheme", "https"),
        ],
        &[
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":authority", "10.0.0.1:8080"),
            (":path", "/chat"),
        ],
    ];
    for list in cases {
        match request(&fields(list)) {
            Ok(Err(e)) => assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{list:?}"),
            other => panic!("{list:?}: {other:?}"),
        }
    }
}

#[test]
fn response_heads() {
    type WantResponse = Result<(StatusCode, HeaderMap), HeadError>;
    let cases: Vec<Case<WantResponse>> = vec![
        (
            "200",
            vec![(":status", "200")],
            Ok((StatusCode::OK, HeaderMap::new())),
        ),
        (
            "200 with baggage",
            vec![(":status", "200"), ("baggage", "k8s.pod.name=p")],
            Ok((StatusCode::OK, headers(&[("baggage", "k8s.pod.name=p")]))),
        ),
        (
            "repeated header kept in order",
            vec![(":status", "403"), ("x-a", "1"), ("x-a", "2")],
            Ok((
                StatusCode::FORBIDDEN,
                headers(&[("x-a", "1"), ("x-a", "2")]),
            )),
        ),
        (
            "no status",
            vec![("baggage", "a=b")],
            Err(HeadError::Missing(":status")),
        ),
        ("empty", vec![], Err(HeadError::Missing(":status"))),
        (
            "status not a number",
            vec![(":status", "ok")],
            Err(HeadError::BadValue(":status".into())),
        ),
        (
            "status of four digits",
            vec![(":status", "2000")],
            Err(HeadError::BadValue(":status".into())),
        ),
        (
            "status below 100",
            vec![(":status", "099")],
            Err(HeadError::BadValue(":status".into())),
        ),
        (
            "duplicate status",
            vec![(":status", "200"), (":status", "200")],
            Err(bad_pseudo(":status")),
        ),
        (
            "status after regular",
            vec![("baggage", "a=b"), (":status", "200")],
            Err(bad_pseudo(":status")),
        ),
        (
            "request pseudo in a response",
            vec![(":status", "200"), (":method", "CONNECT")],
            Err(bad_pseudo("request pseudo-header in a response")),
        ),
        (
            "authority in a response",
            vec![(":status", "200"), (":authority", "10.0.0.1:80")],
            Err(bad_pseudo("request pseudo-header in a response")),
        ),
        (
            "unknown pseudo",
            vec![(":status", "200"), (":x", "1")],
            Err(bad_pseudo(":x")),
        ),
        (
            "uppercase name",
            vec![(":status", "200"), ("Baggage", "a=b")],
            Err(HeadError::BadName("Baggage".into())),
        ),
        (
            "connection-specific header",
            vec![(":status", "200"), ("connection", "close")],
            Err(HeadError::ConnectionHeader("connection".into())),
        ),
    ];
    for (name, list, want) in cases {
        assert_eq!(response(&fields(&list)), want, "{name}");
    }
}

#[test]
fn request_fields_round_trip_through_request() {
    let with_extra = |list: &[(&'static str, &'static str)]| ConnectRequest {
        extra_headers: headers(list),
        ..ConnectRequest::new(addr("10.0.0.1:8080"))
    };
    let cases = [
        ("bare", ConnectRequest::new(addr("10.0.0.1:8080"))),
        ("ipv6 target", ConnectRequest::new(addr("[fd00::7]:15008"))),
        (
            "everything",
            ConnectRequest {
                target: addr("10.0.0.1:8080"),
                forwarded_for: Some(addr("[fd00::2]:40000")),
                forwarded_host: Some("svc.ns.svc.cluster.local".into()),
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
                extra_headers: headers(&[("baggage", "k8s.namespace.name=ns")]),
            },
        ),
        (
            "forwarded host only",
            ConnectRequest {
                forwarded_host: Some("svc:80".into()),
                ..ConnectRequest::new(addr("10.0.0.1:8080"))
            },
        ),
        (
            "repeated extra header",
            with_extra(&[("x-a", "1"), ("x-a", "2")]),
        ),
    ];
    for (name, req) in cases {
        let owned = request_fields(&req).expect("sendable");
        assert_eq!(
            owned[0],
            (b":method".to_vec(), b"CONNECT".to_vec()),
            "{name}"
        );
        assert_eq!(owned[1].0, b":authority".to_vec(), "{name}");
        assert_eq!(owned[1].1, req.target.to_string().into_bytes(), "{name}");
        assert!(
            owned[2..].iter().all(|(n, _)| !n.starts_with(b":")),
            "{name}: pseudo-headers come first"
        );
        assert_eq!(borrow(&owned).len(), owned.len(), "{name}");
        assert_eq!(request(&owned_to_fields(&owned)), Ok(Ok(req)), "{name}");
    }
}

#[test]
fn request_fields_refuses_what_cannot_be_sent() {
    let req = ConnectRequest {
        traceparent: Some("line\nbreak".into()),
        ..ConnectRequest::new(addr("10.0.0.1:8080"))
    };
    assert!(matches!(
        request_fields(&req),
        Err(RequestError::BadHeader { name, .. }) if name == "traceparent"
    ));
}

#[test]
fn response_fields_round_trip_through_response() {
    let cases = [
        (StatusCode::OK, HeaderMap::new()),
        (
            StatusCode::OK,
            headers(&[("baggage", "k8s.pod.name=p"), ("x-a", "1"), ("x-a", "2")]),
        ),
        (StatusCode::BAD_REQUEST, HeaderMap::new()),
        (StatusCode::METHOD_NOT_ALLOWED, HeaderMap::new()),
        (
            StatusCode::from_u16(599).expect("status"),
            headers(&[("x-b", "")]),
        ),
    ];
    for (status, h) in cases {
        let owned = response_fields(status, &h);
        assert_eq!(owned[0].0, b":status".to_vec());
        assert_eq!(owned.len(), 1 + h.len());
        assert_eq!(response(&owned_to_fields(&owned)), Ok((status, h)));
    }
}
