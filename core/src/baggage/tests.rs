use super::*;

fn parse_one(s: &str) -> Baggage {
    Baggage::parse([s.as_bytes()])
}

fn wl(yaml: &str) -> Workload {
    let cfg = trellis_api::config::parse(&format!("workloads:\n  - {yaml}\n")).expect("config");
    cfg.workloads[0].clone()
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

#[test]
fn workload_encodes_with_ztunnel_keys() {
    let full = wl("{uid: u, name: web-1, namespace: demo, canonicalName: web, canonicalRevision: v2, clusterId: east}");
    let bare = wl("{uid: u, name: web-1, namespace: demo}");
    for (w, want) in [
        (
            &full,
            "k8s.cluster.name=east,k8s.namespace.name=demo,k8s.pod.name=web-1,service.name=web,service.version=v2",
        ),
        // No cluster: the key is left out; canonical fallbacks as in the metric labels.
        (
            &bare,
            "k8s.namespace.name=demo,k8s.pod.name=web-1,service.name=web-1,service.version=latest",
        ),
    ] {
        assert_eq!(encode(w), want);
    }
}

#[test]
fn round_trips() {
    let cases = [
        Baggage::default(),
        Baggage {
            cluster: some("east"),
            namespace: some("demo"),
            workload: some("web-1"),
            canonical_service: some("web"),
            canonical_revision: some("v2"),
            region: some("eu-west-1"),
            zone: some("eu-west-1a"),
        },
        // Every byte W3C does not allow in a value, and `%` itself, is escaped.
        Baggage {
            workload: some("a b,c;d\\e\"f%g=h"),
            canonical_service: some("ünïcode ✓"),
            ..Baggage::default()
        },
    ];
    for b in cases {
        let text = b.encode();
        assert!(
            text.bytes().all(|c| c.is_ascii_graphic()),
            "{text:?} must be a plain header value"
        );
        assert_eq!(parse_one(&text), b, "{text}");
    }
    let w = wl("{uid: u, name: web-1, namespace: demo, canonicalName: web, canonicalRevision: v2, clusterId: east}");
    assert_eq!(
        parse_one(&encode(&w)),
        Baggage {
            cluster: some("east"),
            namespace: some("demo"),
            workload: some("web-1"),
            canonical_service: some("web"),
            canonical_revision: some("v2"),
            ..Baggage::default()
        }
    );
}

#[test]
fn percent_encoding() {
    let mut out = String::new();
    percent_encode("a b,c%d=é", &mut out);
    assert_eq!(out, "a%20b%2Cc%25d=%C3%A9");
    for (raw, want) in [
        ("plain", Some("plain")),
        ("a%20b", Some("a b")),
        ("a%2cb", Some("a,b")),
        ("%C3%A9", Some("é")),
        ("", Some("")),
        ("100%", None),
        ("%4", None),
        ("%zz", None),
        ("%FF", None),
        ("a b", None),
        ("a\"b", None),
        ("a\\b", None),
    ] {
        assert_eq!(percent_decode(raw.as_bytes()).as_deref(), want, "{raw:?}");
    }
}

#[test]
fn parse_table() {
    let ns = |n: &str| Baggage {
        namespace: some(n),
        ..Baggage::default()
    };
    let wl_named = |n: &str| Baggage {
        workload: some(n),
        ..Baggage::default()
    };
    for (input, want) in [
        ("k8s.namespace.name=demo", ns("demo")),
        // Optional white space around members, keys and values.
        ("  k8s.namespace.name = demo ,", ns("demo")),
        // Properties are ignored.
        ("k8s.namespace.name=demo;prop=1;flag", ns("demo")),
        // Unknown keys are ignored.
        (
            "other=1,k8s.namespace.name=demo,k8s.node.name=n1",
            ns("demo"),
        ),
        // Any workload kind names the workload; the last one wins.
        ("k8s.deployment.name=web", wl_named("web")),
        ("k8s.job.name=a,k8s.statefulset.name=b", wl_named("b")),
        ("k8s.container.name=c", Baggage::default()),
        // Malformed members are skipped, the rest still read.
        ("garbage,k8s.namespace.name=demo", ns("demo")),
        (
            "k8s.namespace.name=bad value,k8s.pod.name=web",
            wl_named("web"),
        ),
        ("k8s.namespace.name=%G1", Baggage::default()),
        ("=,==,,;,k8s.namespace.name=demo", ns("demo")),
        // A later member overrides; an empty value clears.
        ("k8s.namespace.name=a,k8s.namespace.name=b", ns("b")),
        (
            "k8s.namespace.name=a,k8s.namespace.name=",
            Baggage::default(),
        ),
        // A malformed later member does not clear a good earlier one.
        ("k8s.namespace.name=a,k8s.namespace.name=%", ns("a")),
        ("", Baggage::default()),
    ] {
        assert_eq!(parse_one(input), want, "{input:?}");
    }
}

#[test]
fn non_ascii_and_binary_values_never_panic() {
    for input in [
        &b"k8s.namespace.name=\xff\xfe"[..],
        b"\x00\x01=\x02",
        b"k8s.namespace.name=%",
        b"k8s.namespace.name=%%%",
        b";;;===,,,",
    ] {
        assert_eq!(Baggage::parse([input]), Baggage::default(), "{input:?}");
    }
}

#[test]
fn several_header_values_are_read_in_order() {
    let got = Baggage::parse([&b"k8s.namespace.name=demo"[..], b"service.name=web"]);
    assert_eq!(
        got,
        Baggage {
            namespace: some("demo"),
            canonical_service: some("web"),
            ..Baggage::default()
        }
    );
}

#[test]
fn oversize_baggage_is_cut_at_the_value_that_overflows() {
    let first = "k8s.namespace.name=demo";
    let pad = format!("x={}", "y".repeat(MAX_LEN - first.len() - 2));
    // Exactly at the limit: everything is read.
    let at_limit = Baggage::parse([first.as_bytes(), pad.as_bytes()]);
    assert_eq!(at_limit.namespace.as_deref(), Some("demo"));
    // One value past the limit is dropped whole, with everything after it.
    let over = format!("{pad}y");
    let got = Baggage::parse([
        first.as_bytes(),
        over.as_bytes(),
        b"service.name=late".as_slice(),
    ]);
    assert_eq!(got.namespace.as_deref(), Some("demo"));
    assert_eq!(got.canonical_service, None);
    // A single value over the limit is ignored entirely.
    let huge = format!("k8s.namespace.name=demo,{}", "z".repeat(MAX_LEN));
    assert!(parse_one(&huge).is_empty());
}

#[test]
fn header_map_round_trip() {
    let w = wl("{uid: u, name: web-1, namespace: demo}");
    let map = headers(&w);
    assert_eq!(map.len(), 1);
    let got = Baggage::from_headers(&map);
    assert_eq!(got.workload.as_deref(), Some("web-1"));
    assert_eq!(got.namespace.as_deref(), Some("demo"));
    assert!(Baggage::from_headers(&HeaderMap::new()).is_empty());
}
