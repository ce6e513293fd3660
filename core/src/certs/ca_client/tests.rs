use super::*;

#[test]
fn backoff_doubles_caps_and_jitters() {
    let cases = [
        (0, 1.0, Duration::from_millis(200)),
        (1, 1.0, Duration::from_millis(400)),
        (3, 1.0, Duration::from_millis(1600)),
        (3, 0.5, Duration::from_millis(800)),
        (20, 1.0, MAX_BACKOFF),
        (u32::MAX, 1.0, MAX_BACKOFF),
        (u32::MAX, 0.0, MAX_BACKOFF / 2),
    ];
    for (failures, jitter, want) in cases {
        assert_eq!(
            backoff(failures, jitter),
            want,
            "failures={failures} jitter={jitter}"
        );
    }
}

#[test]
fn renewal_at_half_life() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    assert_eq!(
        renew_in(now, now + Duration::from_secs(60)),
        Duration::from_secs(30)
    );
    assert_eq!(renew_in(now, now - Duration::from_secs(1)), Duration::ZERO);
}

fn config(address: &str) -> CaClientConfig {
    let ca = hbone::DevCa::generate("cluster.local").expect("ca");
    CaClientConfig {
        address: address.into(),
        server_name: "istiod.istio-system.svc".into(),
        root_pem: ca.root_cert_pem().into(),
        token: "t".into(),
        impersonate: true,
        socket_mark: None,
    }
}

#[test]
fn start_checks_its_config() {
    let mut bad_root = config("127.0.0.1:1");
    bad_root.root_pem = "nope".into();
    assert!(matches!(
        CaIssuer::start(bad_root),
        Err(CaClientError::Roots(_))
    ));
    let mut bad_name = config("127.0.0.1:1");
    bad_name.server_name = "not a name".into();
    assert!(matches!(
        CaIssuer::start(bad_name),
        Err(CaClientError::Channel(
            crate::control::ChannelError::ServerName(_)
        ))
    ));
}

#[test]
fn issue_never_blocks_and_returns_not_yet_issued_while_the_ca_is_unreachable() {
    // Port 1 on loopback: nothing listens, the connect is refused.
    let issuer = CaIssuer::start(config("127.0.0.1:1")).expect("start");
    let id = Identity::new("cluster.local", "default", "web");
    for _ in 0..3 {
        assert!(matches!(
            issuer.issue(&id, DEFAULT_VALIDITY),
            Err(IssueError::NotYetIssued)
        ));
    }
    assert_eq!(issuer.trust_bundle().roots().len(), 1);
}

#[test]
fn metrics_count_requests_and_identities_failing() {
    let registry = Registry::new();
    let m = CaMetrics::new(&registry);
    // (ok, was failing before) -> identities failing after
    let steps = [
        (false, false, 1), // a first failure: one identity failing
        (false, true, 1),  // its retry fails again: still one
        (false, false, 2), // another identity fails
        (true, true, 1),   // the first one recovers
        (true, false, 1),  // a routine renewal changes nothing
        (true, true, 0),
    ];
    for (i, (ok, was, want)) in steps.into_iter().enumerate() {
        m.record(ok, was);
        assert_eq!(m.identities_failing(), want, "step {i}");
    }
    assert_eq!((m.successes(), m.failures()), (3, 3));
    let names: Vec<String> = registry
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    assert!(
        names.contains(&"trellis_ca_requests_total".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"trellis_ca_identities_failing".to_string()),
        "{names:?}"
    );
}
