//! Config hot reload in a running proxy: a valid change applies to new
//! connections with a new config version; a broken file is logged and
//! counted, and traffic keeps following the last good config.

use trellis_api::config::{Action, LocalConfig, Scope};
use trellis_e2e::mesh_kit::{
    config_dump, errors, policy, principal, principals, wait_errors, workload_mut, Attempt, Mesh, T,
};
use trellis_e2e::wait_until;

const RELOADS: &str = "trellis_config_reloads_total";

fn version(m: &Mesh, node: &str) -> u64 {
    config_dump(m.proxy(node)).unwrap()["configVersion"]
        .as_u64()
        .expect("configVersion is a number")
}

fn reloads(m: &Mesh, node: &str, result: &str) -> f64 {
    m.proxy(node).metric(RELOADS, &[("result", result)])
}

/// Sends one connection client -> server:8080 and asserts whether it passed.
fn assert_passes(m: &Mesh, passes: bool, when: &str) {
    let p2 = m.proxy("node2");
    let denied = errors(p2, "policy_denied");
    let got = m
        .attempt_echo("client", m.addr("server", 8080), when.as_bytes())
        .unwrap_or_else(|e| panic!("{when}: {e}"));
    if passes {
        assert_eq!(got, Attempt::Echoed(when.as_bytes().to_vec()), "{when}");
    } else {
        assert_eq!(got, Attempt::Closed, "{when}: must be denied");
        wait_errors(p2, "policy_denied", denied + 1.0);
    }
}

/// Config texts the proxy must refuse. Each would, if (partly) applied,
/// drop the DENY policy and let the client through.
fn broken_configs(good_without_deny: &LocalConfig) -> Vec<(&'static str, String)> {
    let valid = serde_yaml_ng::to_string(good_without_deny).unwrap();
    let mut dangling = good_without_deny.clone();
    workload_mut(&mut dangling, "server").authorization_policies = vec!["demo/missing".into()];
    vec![
        (
            "truncated yaml",
            valid[..valid.len() / 2].to_string() + "\n  - {uid: [\n",
        ),
        (
            "unknown field",
            valid.replacen("workloads:", "colour: blue\nworkloads:", 1),
        ),
        (
            "reference to a missing policy",
            serde_yaml_ng::to_string(&dangling).unwrap(),
        ),
        ("empty file", String::new()),
    ]
}

#[test]
fn valid_reload_applies_and_broken_files_keep_the_last_good_config() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mut m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node2", "server", "demo", "server")
        .start()
        .unwrap();
    let echo = m.echo("server", 8080);
    assert_passes(&m, true, "before any change");
    let open = m.config().clone();
    let v0 = version(&m, "node2");

    // A valid change: deny sa/client.
    let deny = policy(
        "demo",
        "deny-client",
        Scope::Namespace,
        Action::Deny,
        vec![principals(&[&principal("demo", "client")])],
    );
    m.reload(|cfg| cfg.policies.push(deny.clone())).unwrap();
    assert_eq!(version(&m, "node2"), v0 + 1, "one new version");
    assert_eq!(reloads(&m, "node2", "success"), 1.0);
    assert_eq!(
        config_dump(m.proxy("node2")).unwrap()["config"]["policies"][0]["name"],
        "deny-client"
    );
    assert_passes(&m, false, "after the deny policy");

    // Broken files: refused, counted, logged; the deny stays in force.
    for (i, (name, text)) in broken_configs(&open).into_iter().enumerate() {
        assert!(
            trellis_api::config::parse(&text).is_err(),
            "{name}: the test's broken config parses"
        );
        m.write_raw_config("node2", &text).unwrap();
        let p2 = m.proxy("node2");
        wait_until(T, &format!("{name}: failure counted"), || {
            reloads(&m, "node2", "failure") == (i + 1) as f64
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", p2.log()));
        assert_eq!(version(&m, "node2"), v0 + 1, "{name}: version unchanged");
        assert_passes(&m, false, &format!("{name}: last good config still denies"));
    }
    let log = m.proxy("node2").log();
    assert_eq!(
        log.matches("config file rejected").count(),
        4,
        "each broken file is logged once:\n{log}"
    );

    // An unreadable file (gone; a directory in its place, as a botched
    // volume mount leaves it): refused, counted once, the deny stays.
    let path = m.config_path("node2");
    let broken = broken_configs(&open).len() as f64;
    let unreadable: [(&str, &dyn Fn()); 2] = [
        ("file removed", &|| std::fs::remove_file(&path).unwrap()),
        ("a directory in its place", &|| {
            std::fs::create_dir(&path).unwrap()
        }),
    ];
    for (i, (name, make)) in unreadable.into_iter().enumerate() {
        make();
        wait_until(T, &format!("{name}: failure counted"), || {
            reloads(&m, "node2", "failure") == broken + 1.0 + i as f64
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", m.proxy("node2").log()));
        assert_eq!(version(&m, "node2"), v0 + 1, "{name}: version unchanged");
        assert_passes(&m, false, &format!("{name}: last good config still denies"));
    }
    std::fs::remove_dir(&path).unwrap();
    let log = m.proxy("node2").log();
    assert_eq!(
        log.matches("cannot read config file").count(),
        2,
        "each unreadable state is logged once:\n{log}"
    );

    // Back to a valid config without the policy: allowed again.
    m.reload(|cfg| cfg.policies.clear()).unwrap();
    assert_eq!(version(&m, "node2"), v0 + 2);
    assert_eq!(reloads(&m, "node2", "success"), 2.0);
    assert_passes(&m, true, "after removing the policy");
    assert_eq!(
        echo.accepted(),
        2,
        "only the allowed connections reached the app"
    );
}
