//! The README's first command runs this demo; these tests run the same code
//! and check what it claims to show.

use trellis_e2e::demo::{label, Mesh};

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
        .find(|l| l.contains("reporter=destination"))
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
}

#[test]
fn loopback_demo_allows_one_connection_and_denies_the_other() {
    let mesh = Mesh::start_loopback().expect("loopback demo starts");
    check(&mesh);
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
