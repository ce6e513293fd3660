use super::*;
use crate::test_support::capture_logs;
use crate::WorkloadIdentity;
use std::collections::BTreeMap;
use trellis_api::config::parse;

const CONFIG: &str = r#"
workloads:
  - {uid: c, name: client-abc, namespace: demo, serviceAccount: client, addresses: [10.0.1.1],
     canonicalName: client, canonicalRevision: v1, clusterId: east}
  - {uid: s, name: server-xyz, namespace: prod, serviceAccount: server, addresses: [10.0.2.1]}
services:
  - {name: server, namespace: prod, hostname: server.prod.svc.cluster.local, vips: [10.96.0.1],
     ports: [{port: 80, targetPort: 8080}], endpoints: [s]}
"#;

/// The value of the single sample of `name` whose labels include all of `want`.
fn sample(m: &Metrics, name: &str, want: &[(&str, &str)]) -> Option<u64> {
    let families = m.registry().gather();
    let fam = families.iter().find(|f| f.name() == name)?;
    let hits: Vec<u64> = fam
        .get_metric()
        .iter()
        .filter(|s| {
            let labels: BTreeMap<&str, &str> = s
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            want.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .map(|s| s.get_counter().get_value() as u64)
        .collect();
    match hits.as_slice() {
        [v] => Some(*v),
        [] => None,
        _ => panic!("{name}: {} samples match {want:?}", hits.len()),
    }
}

fn outbound_labels() -> ConnectionLabels {
    let cfg = parse(CONFIG).expect("test config");
    let (c, s, svc) = (&cfg.workloads[0], &cfg.workloads[1], &cfg.services[0]);
    ConnectionLabels::new(
        Reporter::Source,
        Some(c),
        Some(c.identity()),
        Some(s),
        Some(s.identity()),
        Some(svc),
        SecurityPolicy::MutualTls,
    )
}

/// An outbound connection from 10.0.1.1:`port` to 10.0.2.1:8080.
fn outbound_conn(m: &Arc<Metrics>, port: u16) -> ConnectionGuard {
    m.connection_opened(
        outbound_labels(),
        addr(&format!("10.0.1.1:{port}")),
        addr("10.0.2.1:8080"),
        "outbound",
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn labels_follow_istio_names_and_fallbacks() {
    let l = outbound_labels();
    let got: BTreeMap<&str, &str> = LABEL_NAMES.iter().copied().zip(l.values()).collect();
    let want: BTreeMap<&str, &str> = [
        ("reporter", "source"),
        ("source_workload", "client-abc"),
        ("source_canonical_service", "client"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "demo"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/demo/sa/client",
        ),
        ("source_app", "client"),
        ("source_version", "v1"),
        ("source_cluster", "east"),
        ("destination_service", "server.prod.svc.cluster.local"),
        ("destination_service_namespace", "prod"),
        ("destination_service_name", "server"),
        ("destination_workload", "server-xyz"),
        ("destination_canonical_service", "server-xyz"),
        ("destination_canonical_revision", "latest"),
        ("destination_workload_namespace", "prod"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/prod/sa/server",
        ),
        ("destination_app", "server-xyz"),
        ("destination_version", "latest"),
        ("destination_cluster", "unknown"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
}

#[test]
fn unknown_peer_is_reported_as_unknown() {
    let id: crate::Identity = "spiffe://cluster.local/ns/far/sa/x".parse().unwrap();
    let l = ConnectionLabels::new(
        Reporter::Destination,
        None,
        Some(id),
        None,
        None,
        None,
        SecurityPolicy::Unknown,
    );
    assert_eq!(l.source_workload, UNKNOWN);
    assert_eq!(l.source_canonical_service, UNKNOWN);
    // The verified identity still names the namespace.
    assert_eq!(l.source_workload_namespace, "far");
    assert_eq!(l.source_principal, "spiffe://cluster.local/ns/far/sa/x");
    assert_eq!(l.destination_principal, UNKNOWN);
    assert_eq!(l.destination_service, UNKNOWN);
    assert_eq!(l.connection_security_policy.as_str(), "unknown");
    assert_eq!(l.reporter.as_str(), "destination");
}

#[test]
fn guard_records_open_close_and_bytes_once_with_labels() {
    let m = Metrics::new();
    let labels = [
        ("reporter", "source"),
        ("source_workload", "client-abc"),
        ("destination_workload", "server-xyz"),
    ];

    let mut g = outbound_conn(&m, 40000);
    assert_eq!(
        sample(&m, "istio_tcp_connections_opened_total", &labels),
        Some(1)
    );
    assert_eq!(
        sample(&m, "istio_tcp_connections_closed_total", &labels),
        Some(0),
        "open, not closed"
    );
    g.add_bytes(300, 100);
    drop(g);
    assert_eq!(
        sample(&m, "istio_tcp_connections_closed_total", &labels),
        Some(1)
    );
    assert_eq!(sample(&m, "istio_tcp_sent_bytes_total", &labels), Some(300));
    assert_eq!(
        sample(&m, "istio_tcp_received_bytes_total", &labels),
        Some(100)
    );

    // A second connection with the same labels adds to the same series.
    let mut g = outbound_conn(&m, 40001);
    g.add_bytes(1, 2);
    drop(g);
    assert_eq!(
        sample(&m, "istio_tcp_connections_opened_total", &labels),
        Some(2)
    );
    assert_eq!(
        sample(&m, "istio_tcp_connections_closed_total", &labels),
        Some(2)
    );
    assert_eq!(sample(&m, "istio_tcp_sent_bytes_total", &labels), Some(301));
    assert_eq!(
        sample(&m, "istio_tcp_received_bytes_total", &labels),
        Some(102)
    );
}

#[test]
fn response_flags_set_later_label_the_close() {
    let m = Metrics::new();
    let mut g = outbound_conn(&m, 40000);
    g.set_response_flags("UF");
    g.set_error("connection refused");
    drop(g);
    let flags = |f| [("reporter", "source"), ("response_flags", f)];
    assert_eq!(
        sample(&m, "istio_tcp_connections_opened_total", &flags("-")),
        Some(1)
    );
    assert_eq!(
        sample(&m, "istio_tcp_connections_closed_total", &flags("UF")),
        Some(1)
    );
    assert_eq!(
        sample(&m, "istio_tcp_connections_closed_total", &flags("-")),
        Some(0)
    );
    assert_eq!(
        sample(&m, "istio_tcp_sent_bytes_total", &flags("UF")),
        Some(0)
    );
}

#[test]
fn errors_are_counted_by_reason_and_exported_from_the_start() {
    let m = Metrics::new();
    for r in ErrorReason::ALL {
        assert_eq!(
            sample(&m, "trellis_proxy_errors_total", &[("reason", r.as_str())]),
            Some(0),
            "{r:?}"
        );
    }
    m.record_error(ErrorReason::PolicyDenied);
    m.record_error(ErrorReason::PolicyDenied);
    m.record_error(ErrorReason::NoHealthyEndpoint);
    assert_eq!(
        sample(
            &m,
            "trellis_proxy_errors_total",
            &[("reason", "policy_denied")]
        ),
        Some(2)
    );
    assert_eq!(
        sample(
            &m,
            "trellis_proxy_errors_total",
            &[("reason", "no_healthy_endpoint")]
        ),
        Some(1)
    );
    assert_eq!(
        sample(
            &m,
            "trellis_proxy_errors_total",
            &[("reason", "unknown_identity")]
        ),
        Some(0)
    );
    let text = m.encode_text();
    assert!(
        text.contains("trellis_proxy_errors_total{reason=\"policy_denied\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("trellis_config_reloads_total{result=\"failure\"} 0"),
        "{text}"
    );
}

#[test]
fn registries_are_independent() {
    let a = Metrics::new();
    let b = Metrics::new();
    a.record_error(ErrorReason::MalformedConnect);
    a.config_metrics();
    assert_eq!(
        sample(
            &b,
            "trellis_proxy_errors_total",
            &[("reason", "malformed_connect")]
        ),
        Some(0)
    );
    assert_eq!(
        sample(
            &a,
            "trellis_proxy_errors_total",
            &[("reason", "malformed_connect")]
        ),
        Some(1)
    );
}

#[test]
fn access_log_line_is_written_on_close_in_the_chosen_format() {
    let m = Metrics::new();
    assert_eq!(m.access_log_format(), AccessLogFormat::Text);
    let (_log, logs) = capture_logs();

    let mut g = outbound_conn(&m, 40000);
    g.add_bytes(7, 5);
    drop(g);
    let text: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains(" access: "))
        .collect();
    assert_eq!(text.len(), 1, "{text:#?}");
    assert!(
        text[0].starts_with(" INFO access: src.addr=10.0.1.1:40000 dst.addr=10.0.2.1:8080"),
        "{}",
        text[0]
    );
    assert!(
        text[0].contains("bytes_sent=7 bytes_received=5"),
        "{}",
        text[0]
    );

    m.set_access_log_format(AccessLogFormat::Json);
    let mut g = outbound_conn(&m, 40001);
    g.set_error("denied: DENY policy prod/x matched");
    drop(g);
    let lines: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains(" access: "))
        .collect();
    assert_eq!(lines.len(), 2);
    let json = lines[1]
        .split_once(" access: ")
        .map(|(_, j)| j)
        .expect("access line");
    let v: serde_json::Value = serde_json::from_str(json).expect("valid json");
    assert_eq!(v["src.addr"], "10.0.1.1:40001");
    assert_eq!(v["src.workload"], "client-abc");
    assert_eq!(
        v["dst.identity"],
        "spiffe://cluster.local/ns/prod/sa/server"
    );
    assert_eq!(v["direction"], "outbound");
    assert_eq!(v["error"], "denied: DENY policy prod/x matched");
}

#[test]
fn guard_is_one_pointer_and_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<ConnectionGuard>();
    assert_eq!(
        std::mem::size_of::<ConnectionGuard>(),
        std::mem::size_of::<usize>()
    );
}

#[test]
fn peer_labels_come_from_the_state_else_the_baggage() {
    use super::labels::Peer;
    use crate::baggage::Baggage;
    let cfg = parse(CONFIG).expect("test config");
    let known = &cfg.workloads[0];
    let id = |s: &str| -> Option<crate::Identity> { Some(s.parse().unwrap()) };
    let said = Baggage {
        cluster: Some("west".into()),
        namespace: Some("claimed".into()),
        workload: Some("remote-7".into()),
        canonical_service: Some("remote".into()),
        canonical_revision: Some("v9".into()),
        region: Some("r".into()),
        zone: None,
    };
    let partial = Baggage {
        workload: Some("remote-7".into()),
        ..Baggage::default()
    };
    // (case, workload, identity, baggage) -> workload, service, revision, namespace, principal, cluster
    use trellis_api::config::Workload;
    type Case<'a> = (
        &'a str,
        Option<&'a Workload>,
        Option<crate::Identity>,
        Option<&'a Baggage>,
        [&'a str; 6],
    );
    let cases: [Case; 6] = [
        (
            "known workload: the state wins over the baggage",
            Some(known),
            id("spiffe://cluster.local/ns/demo/sa/client"),
            Some(&said),
            [
                "client-abc",
                "client",
                "v1",
                "demo",
                "spiffe://cluster.local/ns/demo/sa/client",
                "east",
            ],
        ),
        (
            "unknown workload with baggage and identity: identity names the namespace",
            None,
            id("spiffe://cluster.local/ns/far/sa/x"),
            Some(&said),
            [
                "remote-7",
                "remote",
                "v9",
                "far",
                "spiffe://cluster.local/ns/far/sa/x",
                "west",
            ],
        ),
        (
            "unknown workload, baggage, no identity: baggage names the namespace",
            None,
            None,
            Some(&said),
            ["remote-7", "remote", "v9", "claimed", UNKNOWN, "west"],
        ),
        (
            "partial baggage: the rest is unknown",
            None,
            None,
            Some(&partial),
            ["remote-7", UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN],
        ),
        (
            "unknown workload, no baggage: identity only",
            None,
            id("spiffe://cluster.local/ns/far/sa/x"),
            None,
            [
                UNKNOWN,
                UNKNOWN,
                UNKNOWN,
                "far",
                "spiffe://cluster.local/ns/far/sa/x",
                UNKNOWN,
            ],
        ),
        ("nothing known", None, None, None, [UNKNOWN; 6]),
    ];
    for (case, workload, identity, baggage, want) in cases {
        let p = Peer::new(PeerFacts {
            workload,
            identity,
            baggage,
        });
        let got = [
            p.workload.as_str(),
            &p.canonical_service,
            &p.canonical_revision,
            &p.namespace,
            &p.principal,
            &p.cluster,
        ];
        assert_eq!(got, want, "{case}");
    }
}

#[test]
fn for_peers_fills_both_ends_from_baggage() {
    use crate::baggage::Baggage;
    let src = Baggage {
        workload: Some("a".into()),
        canonical_service: Some("svc-a".into()),
        canonical_revision: Some("v1".into()),
        namespace: Some("ns-a".into()),
        cluster: Some("c1".into()),
        ..Baggage::default()
    };
    let dst = Baggage {
        workload: Some("b".into()),
        canonical_service: Some("svc-b".into()),
        ..Baggage::default()
    };
    let l = ConnectionLabels::for_peers(
        Reporter::Destination,
        PeerFacts {
            baggage: Some(&src),
            ..PeerFacts::default()
        },
        PeerFacts {
            baggage: Some(&dst),
            ..PeerFacts::default()
        },
        None,
        SecurityPolicy::MutualTls,
    );
    assert_eq!(
        (
            l.source_workload.as_str(),
            l.source_canonical_service.as_str(),
            l.source_app.as_str(),
            l.source_version.as_str(),
            l.source_workload_namespace.as_str(),
            l.source_cluster.as_str(),
        ),
        ("a", "svc-a", "svc-a", "v1", "ns-a", "c1")
    );
    assert_eq!(
        (
            l.destination_workload.as_str(),
            l.destination_canonical_service.as_str(),
            l.destination_canonical_revision.as_str(),
        ),
        ("b", "svc-b", UNKNOWN)
    );
}

/// (sent bytes, received bytes, closed connections) for `outbound_labels()`.
fn bytes_and_closed(m: &Metrics) -> (Option<u64>, Option<u64>, Option<u64>) {
    let l = [("reporter", "source"), ("source_workload", "client-abc")];
    (
        sample(m, "istio_tcp_sent_bytes_total", &l),
        sample(m, "istio_tcp_received_bytes_total", &l),
        sample(m, "istio_tcp_connections_closed_total", &l),
    )
}

#[tokio::test]
async fn counted_bytes_show_while_open_and_survive_an_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // One table row per side: which end of the connection is wrapped, and
    // what 30 bytes in and 20 bytes out of it mean in Istio's terms.
    let cases = [
        // (side, expected (sent, received) after reading 30 and writing 20)
        (Side::Client, (20, 30)),
        (Side::Upstream, (30, 20)),
    ];
    trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Io for T {}
    // Each case twice: borrowing the guard (Counted), and owning the socket
    // for another task (CountedOwned, whose totals join the log at drop).
    let cases = cases.into_iter().flat_map(|c| [(c, false), (c, true)]);
    for ((side, (want_sent, want_received)), owned) in cases {
        let m = Metrics::new();
        let (_log, logs) = capture_logs();
        let mut g = outbound_conn(&m, 40000);
        let (ours, mut peer) = tokio::io::duplex(64);
        {
            let mut io: Box<dyn Io + '_> = if owned {
                Box::new(g.counted_owned(ours, side))
            } else {
                Box::new(g.counted(ours, side))
            };
            peer.write_all(&[1u8; 30]).await.unwrap();
            let mut buf = [0u8; 30];
            io.read_exact(&mut buf).await.unwrap();
            io.write_all(&[2u8; 20]).await.unwrap();
            // Visible on /metrics while the connection is still open.
            assert_eq!(
                bytes_and_closed(&m),
                (Some(want_sent), Some(want_received), Some(0)),
                "{side:?} owned={owned}: counted before the close"
            );
            // The peer goes away; the next write fails, as a reset would.
            drop(peer);
            assert!(io.write_all(&[3u8; 8]).await.is_err(), "{side:?}");
        }
        g.set_error("connection reset by peer");
        drop(g);
        assert_eq!(
            bytes_and_closed(&m),
            (Some(want_sent), Some(want_received), Some(1)),
            "{side:?} owned={owned}: an error keeps the bytes, and nothing counts twice on close"
        );
        let line = logs
            .lines()
            .into_iter()
            .find(|l| l.contains(" access: "))
            .expect("access line");
        assert!(
            line.contains(&format!(
                "bytes_sent={want_sent} bytes_received={want_received}"
            )),
            "{side:?} owned={owned}: {line}"
        );
    }
}
