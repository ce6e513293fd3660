use super::*;

fn map(headers: &[(&str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in headers {
        m.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    m
}

fn values<'a>(m: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    m.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[test]
fn request_id() {
    let long = "a".repeat(129);
    let max = "a".repeat(128);
    #[rustfmt::skip]
    let cases: &[(&str, &[&str], Option<&str>)] = &[
        // (name, incoming x-request-id values, kept value or None for a new UUID)
        ("missing gets a uuid", &[], None),
        ("valid is kept", &["abc-123"], Some("abc-123")),
        ("128 bytes is kept", &[&max], Some(&max)),
        ("129 bytes is replaced", &[&long], None),
        ("space is replaced", &["a b"], None),
        ("empty is replaced", &[""], None),
        ("repeated collapse to the first", &["one", "two"], Some("one")),
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    for (name, incoming, kept) in cases {
        let mut h = HeaderMap::new();
        for v in *incoming {
            h.append(X_REQUEST_ID, HeaderValue::from_str(v).unwrap());
        }
        let ids = propagate(&mut h, &mut rng);
        let sent = values(&h, "x-request-id");
        assert_eq!(sent.len(), 1, "{name}: {sent:?}");
        assert_eq!(ids.request_id.to_str().unwrap(), sent[0], "{name}");
        for header in [X_REQUEST_ID, TRACEPARENT] {
            let v = h.get(&header).unwrap();
            assert!(v.is_sensitive(), "{name}: {header} is never indexed");
        }
        match kept {
            Some(v) => assert_eq!(sent[0], *v, "{name}"),
            None => assert!(is_uuid_v4(sent[0]), "{name}: {:?}", sent[0]),
        }
    }
}

#[test]
fn traceparent_parsing() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, bool)] = &[
        ("spec example", TP, true),
        ("unsampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", true),
        ("future version with extra field", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what", true),
        ("future version, same length", "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", true),
        ("version ff", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false),
        ("version 00 with extra field", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", false),
        ("future version, bad separator", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", false),
        ("upper-case hex", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false),
        ("zero trace id", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", false),
        ("zero parent id", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false),
        ("short trace id", "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", false),
        ("bad flags", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g", false),
        ("wrong separators", "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", false),
        ("empty", "", false),
        ("garbage", "hello", false),
    ];
    for (name, v, valid) in cases {
        assert_eq!(
            parse_traceparent(v.as_bytes()).is_some(),
            *valid,
            "{name}: {v}"
        );
    }
}

#[test]
fn trace_context_propagation() {
    struct Case {
        name: &'static str,
        incoming: &'static [(&'static str, &'static str)],
        /// The trace continued (with its flags), or None for a new trace.
        continued: Option<(&'static str, &'static str)>,
        tracestate_kept: bool,
    }
    #[rustfmt::skip]
    let cases = [
        Case { name: "valid continues", incoming: &[("traceparent", TP), ("tracestate", "congo=t61rcWkgMzE")], continued: Some((TRACE, "01")), tracestate_kept: true },
        Case { name: "unsampled keeps its flags", incoming: &[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"), ("tracestate", "a=b")], continued: Some((TRACE, "00")), tracestate_kept: true },
        Case { name: "missing starts sampled", incoming: &[], continued: None, tracestate_kept: false },
        Case { name: "invalid drops tracestate", incoming: &[("traceparent", "00-zz"), ("tracestate", "congo=t61rcWkgMzE")], continued: None, tracestate_kept: false },
        Case { name: "tracestate alone is dropped", incoming: &[("tracestate", "congo=t61rcWkgMzE")], continued: None, tracestate_kept: false },
        Case { name: "two traceparents start afresh", incoming: &[("traceparent", TP), ("traceparent", TP)], continued: None, tracestate_kept: false },
    ];
    let mut rng = fastrand::Rng::with_seed(42);
    for c in cases {
        let mut h = map(c.incoming);
        h.insert("baggage", HeaderValue::from_static("userId=alice"));
        let ids = propagate(&mut h, &mut rng);
        let sent = values(&h, "traceparent");
        assert_eq!(sent.len(), 1, "{}: {sent:?}", c.name);
        let tp = parse_traceparent(sent[0].as_bytes()).expect("we send a valid traceparent");
        let parts: Vec<&str> = sent[0].split('-').collect();
        assert_eq!(parts[0], "00", "{}", c.name);
        assert_eq!(tp.trace_id, ids.trace_id, "{}", c.name);
        assert_eq!(
            parts[2],
            ids.span_id_hex(),
            "{}: our span is the parent",
            c.name
        );
        assert_ne!(parts[2], "00f067aa0ba902b7", "{}: a new span id", c.name);
        match c.continued {
            Some((trace, flags)) => {
                assert_eq!(trace_id_hex(&ids), trace, "{}", c.name);
                assert_eq!(parts[3], flags, "{}", c.name);
            }
            None => {
                assert_ne!(trace_id_hex(&ids), TRACE, "{}", c.name);
                assert_eq!(parts[3], "01", "{}", c.name);
            }
        }
        assert_eq!(
            h.contains_key("tracestate"),
            c.tracestate_kept,
            "{}",
            c.name
        );
        assert_eq!(
            values(&h, "baggage"),
            ["userId=alice"],
            "{}: baggage untouched",
            c.name
        );
    }
}

#[test]
fn new_ids_differ_per_request() {
    let mut rng = fastrand::Rng::with_seed(1);
    let a = propagate(&mut HeaderMap::new(), &mut rng);
    let b = propagate(&mut HeaderMap::new(), &mut rng);
    assert_ne!(a.request_id, b.request_id);
    assert_ne!(a.trace_id, b.trace_id);
    assert_ne!(a.span_id, b.span_id);
    assert_eq!(a.trace_id_hex().len(), 32);
    assert_eq!(a.span_id_hex().len(), 16);
}

#[test]
fn hop_by_hop() {
    struct Case {
        name: &'static str,
        keep_upgrade: bool,
        incoming: &'static [(&'static str, &'static str)],
        /// Every header left afterwards, sorted as `name: value`.
        want: &'static [&'static str],
    }
    #[rustfmt::skip]
    let cases = [
        Case { name: "fixed set removed", keep_upgrade: false, incoming: &[("connection", "keep-alive"), ("keep-alive", "timeout=5"), ("proxy-connection", "keep-alive"), ("transfer-encoding", "chunked"), ("trailer", "grpc-status"), ("x-app", "1")], want: &["x-app: 1"] },
        Case { name: "connection-nominated headers removed", keep_upgrade: false, incoming: &[("connection", "close, X-Secret"), ("connection", "x-other"), ("x-secret", "s"), ("x-other", "o"), ("x-app", "1")], want: &["x-app: 1"] },
        Case { name: "host survives a nomination", keep_upgrade: false, incoming: &[("connection", "host"), ("host", "reviews")], want: &["host: reviews"] },
        Case { name: "te trailers kept", keep_upgrade: false, incoming: &[("te", "trailers")], want: &["te: trailers"] },
        Case { name: "te trailers among others reduced", keep_upgrade: false, incoming: &[("te", "gzip, Trailers")], want: &["te: trailers"] },
        Case { name: "te without trailers removed", keep_upgrade: false, incoming: &[("te", "gzip")], want: &[] },
        Case { name: "te in two fields, one trailers, becomes one", keep_upgrade: false, incoming: &[("te", "gzip"), ("te", "trailers"), ("x-app", "1")], want: &["te: trailers", "x-app: 1"] },
        Case { name: "te Trailers written in lower case", keep_upgrade: false, incoming: &[("te", "Trailers")], want: &["te: trailers"] },
        Case { name: "te trailers beside a fixed-set header", keep_upgrade: false, incoming: &[("te", "trailers"), ("keep-alive", "timeout=5"), ("x-app", "1")], want: &["te: trailers", "x-app: 1"] },
        Case { name: "te without trailers beside connection", keep_upgrade: false, incoming: &[("connection", "te"), ("te", "gzip")], want: &[] },
        Case { name: "upgrade removed when not upgrading", keep_upgrade: false, incoming: &[("connection", "upgrade"), ("upgrade", "websocket")], want: &[] },
        Case { name: "upgrade kept when upgrading", keep_upgrade: true, incoming: &[("connection", "Upgrade, x-secret"), ("upgrade", "websocket"), ("x-secret", "s")], want: &["connection: upgrade", "upgrade: websocket"] },
        Case { name: "keep_upgrade without upgrade header", keep_upgrade: true, incoming: &[("connection", "keep-alive")], want: &[] },
        Case { name: "a lone fixed-set header after end-to-end ones", keep_upgrade: false, incoming: &[("x-a", "1"), ("x-b", "2"), ("trailer", "grpc-status")], want: &["x-a: 1", "x-b: 2"] },
        Case { name: "nothing hop-by-hop, upgrading", keep_upgrade: true, incoming: &[("x-a", "1")], want: &["x-a: 1"] },
        Case { name: "end-to-end headers untouched", keep_upgrade: false, incoming: &[("content-length", "3"), ("authorization", "Bearer x")], want: &["authorization: Bearer x", "content-length: 3"] },
    ];
    for c in cases {
        let mut h = map(c.incoming);
        strip_hop_by_hop(&mut h, c.keep_upgrade);
        let mut got: Vec<String> = h
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        got.sort();
        assert_eq!(got, c.want, "{}", c.name);
    }
}
