//! The README's first command runs this demo; these tests run the same code
//! and check what it claims to show.

use trellis_e2e::demo::{label, Mesh};
use trellis_e2e::demo_waypoint::{L7, WAYPOINT_PRINCIPAL};

const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";

fn check(mesh: &Mesh) {
    let reply = mesh.request(8080, "ping").expect("allowed request");
    assert!(reply.contains("got \"ping\""), "unexpected reply {reply:?}");
    // Denied: the mesh closes or resets without a reply.
    let denied = mesh.request(9090, "nope");
    assert!(
        matches!(&denied, Ok(r) if r.is_empty()) || denied.is_err(),
        "port 9090 must be denied, got {denied:?}"
    );
    mesh.wait_for_closed_connections(2)
        .expect("connections recorded");
    let hops = mesh.hop_lines().unwrap();
    let dest = hops
        .iter()
        .find(|l| l.starts_with("node2 reporter=destination"))
        .expect("destination-side metrics");
    assert!(
        dest.contains("spiffe://cluster.local/ns/demo/sa/client")
            && dest.contains("spiffe://cluster.local/ns/demo/sa/server")
            && dest.contains("security=mutual_tls"),
        "{dest}"
    );
    let counters = mesh.counter_lines().unwrap();
    let denied_line = counters
        .iter()
        .find(|l| l.starts_with("node2 ") && l.contains("reason=\"policy_denied\""))
        .expect("policy_denied counter on the server node");
    assert!(denied_line.ends_with(" 1"), "{denied_line}");
    assert_eq!(label("x{a=\"b\"} 1", "a").as_deref(), Some("b"));
    check_control_plane(mesh, mesh.waypoint().is_some());
}

/// Every proxy (and the waypoint) holds a stream to the controller, and
/// the certificates came from its CA: one per identity at least, none refused.
fn check_control_plane(mesh: &Mesh, waypoint: bool) {
    let text = mesh.controller_metrics().expect("controller metrics");
    let get = |name| trellis_e2e::demo::sum_metric(&text, name);
    let streams = mesh.proxy_count() + usize::from(waypoint);
    assert_eq!(
        get("pilot_xds"),
        streams as f64,
        "one xDS stream per proxy:\n{text}"
    );
    // Identities: client and server, plus reviews, ratings and the waypoint.
    let identities = if waypoint { 5.0 } else { 2.0 };
    assert!(
        get("citadel_server_success_cert_issuance_count") >= identities,
        "certificates from the controller's CA:\n{text}"
    );
    assert_eq!(get("trellis_controller_cert_refused_total"), 0.0, "{text}");
    assert_eq!(get("pilot_total_xds_rejects"), 0.0, "no NACKs:\n{text}");
}

/// The waypoint steps: canary split, L7 deny, rate limit, retries, L7 metrics.
fn check_waypoint(mesh: &Mesh, l7: &L7) {
    let n = 100;
    let counts = l7.canary(n).expect("canary requests");
    let v1 = counts.get("reviews-v1").copied().unwrap_or(0);
    let v2 = counts.get("reviews-v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, n, "every request answered by v1 or v2: {counts:?}");
    // v1 ~ Binomial(100, 0.8): mean 80, sd 4; outside [60, 97] is under 1e-6.
    assert!((60..=97).contains(&v1), "80/20 split off: {counts:?}");

    let deny = l7.deny().expect("deny requests");
    let statuses: Vec<_> = deny.iter().map(|(p, r)| (*p, r.status)).collect();
    assert_eq!(statuses, [("/admin", 403), ("/", 200)], "{deny:?}");
    assert!(
        deny[0].1.server.is_none(),
        "the waypoint answers the 403 itself"
    );

    // Burst 2 at 2/s: the first request passes, a quick burst of 5 runs into 429.
    let limited = l7.rate_limit(5).expect("rate-limited requests");
    assert_eq!(limited[0].status, 200, "{limited:?}");
    assert!(
        limited.iter().all(|r| matches!(r.status, 200 | 429)),
        "{limited:?}"
    );
    let rejected = limited.iter().find(|r| r.status == 429).expect("a 429");
    assert!(
        rejected.retry_after.is_some(),
        "429 without retry-after: {rejected:?}"
    );

    let out = l7.retry(n).expect("retried requests");
    assert_eq!(
        out.statuses.get(&200),
        Some(&n),
        "all retried requests 200: {out:?}"
    );
    let failing = out.hits.iter().find(|h| h.2).expect("the failing endpoint");
    assert!(
        failing.1 > 0,
        "the failing endpoint got no request: {out:?}"
    );
    // Each 503 is retried once, on the healthy endpoint.
    assert_eq!(out.retries, failing.1 as f64, "{out:?}");

    let sent = n + deny.len() + limited.len() + n;
    l7.wait_for_requests(sent as u64)
        .expect("waypoint recorded the requests");
    let lines = l7.request_lines().unwrap();
    for code in ["code=200", "code=403", "code=429"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(CLIENT) && l.contains(code)),
            "no {code} from the client's identity in {lines:#?}"
        );
    }
    // Waypoint -> endpoint: the endpoint's proxy sees the waypoint's identity.
    let hops = mesh.hop_lines().unwrap();
    for ep in ["reviews-v1", "reviews-v2", "ratings-1", "ratings-2"] {
        let hop = hops
            .iter()
            .find(|l| l.starts_with(&format!("{ep} reporter=destination")))
            .unwrap_or_else(|| panic!("no inbound metrics on {ep}: {hops:#?}"));
        assert!(
            hop.contains(&format!("({WAYPOINT_PRINCIPAL})")) && hop.contains("mutual_tls"),
            "{hop}"
        );
    }
    // Client -> waypoint: the client's proxy tunnels with the client's identity.
    assert!(
        hops.iter().any(|l| l.starts_with("node1 reporter=source")
            && l.contains(&format!("({CLIENT}) -> waypoint ({WAYPOINT_PRINCIPAL})"))),
        "{hops:#?}"
    );
}

#[test]
fn loopback_demo_allows_one_connection_and_denies_the_other() {
    let mesh = Mesh::start_loopback().expect("loopback demo starts");
    check(&mesh);
    check_waypoint(
        &mesh,
        mesh.waypoint().expect("loopback demo has a waypoint"),
    );
    mesh.stop();
}

#[test]
fn netns_demo_allows_one_connection_and_denies_the_other() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mesh = Mesh::start_netns().expect("netns demo starts");
    check(&mesh);
    mesh.stop();
}
