//! L4 authorization through real node proxies: for each case of a table the
//! policies are written into the config and hot-reloaded, then clients of
//! different identities (and one outside the mesh) connect to the server.
//! Allowed: the echo comes back. Denied: the connection closes without data,
//! the app never sees it, and `trellis_proxy_errors_total{reason="policy_denied"}`
//! moves on the destination node.

use std::collections::BTreeMap;

use trellis_api::config::{Action, Authorization, Scope};
use trellis_e2e::mesh_kit::{
    config_dump, errors, namespaces, policy, ports, principal, principals, wait_errors,
    workload_mut, Attempt, Mesh,
};
use trellis_e2e::TestServer;

use Action::{Allow, Deny};
use Scope::{Global, Namespace, WorkloadSelector};

/// alpha (ns demo) and beta (ns other) are mesh clients on node1; outsider
/// is a pod on node1 outside the mesh; server (ns demo) is on node2.
fn mesh(proxy_args: &[&str]) -> Mesh {
    Mesh::builder()
        .proxy_args(proxy_args)
        .member("node1", "alpha", "demo", "alpha")
        .member("node1", "beta", "other", "beta")
        .outsider("node1", "outsider")
        .member("node2", "server", "demo", "server")
        .start()
        .unwrap()
}

struct Case {
    name: &'static str,
    policies: Vec<Authorization>,
    /// `namespace/name` keys the server workload lists (WORKLOAD_SELECTOR).
    selected: &'static [&'static str],
    /// (client pod, server port, allowed)
    probes: &'static [(&'static str, u16, bool)],
}

fn case(
    name: &'static str,
    policies: Vec<Authorization>,
    probes: &'static [(&'static str, u16, bool)],
) -> Case {
    Case {
        name,
        policies,
        selected: &[],
        probes,
    }
}

fn cases() -> Vec<Case> {
    let alpha = principal("demo", "alpha");
    let beta = principal("other", "beta");
    let p = policy;
    vec![
        case(
            "no policy allows everyone",
            vec![],
            &[
                ("alpha", 8080, true),
                ("beta", 9090, true),
                ("outsider", 8080, true),
            ],
        ),
        case(
            "ALLOW by principal admits only that principal",
            vec![p(
                "demo",
                "allow-alpha",
                Namespace,
                Allow,
                vec![principals(&[&alpha])],
            )],
            &[
                ("alpha", 8080, true),
                ("beta", 8080, false),
                ("outsider", 8080, false),
            ],
        ),
        case(
            "DENY by principal refuses that principal and plaintext",
            vec![p(
                "demo",
                "deny-alpha",
                Namespace,
                Deny,
                vec![principals(&[&alpha])],
            )],
            &[
                ("alpha", 8080, false),
                ("beta", 8080, true),
                ("outsider", 8080, false),
            ],
        ),
        case(
            "ALLOW by principal prefix",
            vec![p(
                "demo",
                "allow-other-ns",
                Namespace,
                Allow,
                vec![principals(&["cluster.local/ns/other/*"])],
            )],
            &[("alpha", 8080, false), ("beta", 8080, true)],
        ),
        case(
            "ALLOW by namespace",
            vec![p(
                "demo",
                "allow-other",
                Namespace,
                Allow,
                vec![namespaces(&["other"])],
            )],
            &[("alpha", 9090, false), ("beta", 9090, true)],
        ),
        case(
            "DENY by namespace",
            vec![p(
                "demo",
                "deny-demo",
                Namespace,
                Deny,
                vec![namespaces(&["demo"])],
            )],
            &[("alpha", 8080, false), ("beta", 8080, true)],
        ),
        case(
            "ALLOW by port admits any client on that port only",
            vec![p(
                "demo",
                "allow-8080",
                Namespace,
                Allow,
                vec![ports(&[8080])],
            )],
            &[
                ("alpha", 8080, true),
                ("alpha", 9090, false),
                ("outsider", 8080, true),
                ("outsider", 9090, false),
            ],
        ),
        case(
            "DENY by port",
            vec![p(
                "demo",
                "deny-9090",
                Namespace,
                Deny,
                vec![ports(&[9090])],
            )],
            &[("beta", 8080, true), ("beta", 9090, false)],
        ),
        case(
            "ALLOW needs every rule: principal and port",
            vec![p(
                "demo",
                "allow-alpha-9090",
                Namespace,
                Allow,
                vec![principals(&[&alpha]), ports(&[9090])],
            )],
            &[
                ("alpha", 9090, true),
                ("alpha", 8080, false),
                ("beta", 9090, false),
            ],
        ),
        case(
            "DENY wins over a matching ALLOW",
            vec![
                p(
                    "demo",
                    "allow-both",
                    Namespace,
                    Allow,
                    vec![namespaces(&["demo", "other"])],
                ),
                p(
                    "demo",
                    "deny-beta",
                    Namespace,
                    Deny,
                    vec![principals(&[&beta])],
                ),
            ],
            &[("alpha", 8080, true), ("beta", 8080, false)],
        ),
        Case {
            selected: &["demo/sel-beta"],
            ..case(
                "WORKLOAD_SELECTOR policy applies to a workload that lists it",
                vec![p(
                    "demo",
                    "sel-beta",
                    WorkloadSelector,
                    Allow,
                    vec![principals(&[&beta])],
                )],
                &[("alpha", 8080, false), ("beta", 8080, true)],
            )
        },
        case(
            "WORKLOAD_SELECTOR policy does not apply to a workload that does not list it",
            vec![p(
                "demo",
                "sel-beta",
                WorkloadSelector,
                Allow,
                vec![principals(&[&beta])],
            )],
            &[("alpha", 8080, true), ("beta", 8080, true)],
        ),
        case(
            "NAMESPACE policy of another namespace does not apply",
            vec![p("other", "deny-all", Namespace, Deny, vec![])],
            &[("alpha", 8080, true), ("beta", 8080, true)],
        ),
        case(
            "GLOBAL policy applies in every namespace",
            vec![p(
                "istio-system",
                "deny-other",
                Global,
                Deny,
                vec![namespaces(&["other"])],
            )],
            &[("alpha", 8080, true), ("beta", 8080, false)],
        ),
    ]
}

/// Runs every case on one mesh, reloading the config between cases: the
/// HBONE connections pooled by node1 outlive the config they were opened
/// under, so this also checks that each stream is judged by the current one.
#[test]
fn policies_allow_and_deny_by_principal_namespace_and_port() {
    run_cases(&[]);
}

/// The same table with `hbone::lite` carrying the tunnels on both nodes:
/// refusals travel as its responses, admissions as its tunnels.
#[test]
fn policies_hold_with_the_lite_hbone_engine() {
    run_cases(&["--hbone-engine", "lite"]);
}

fn run_cases(proxy_args: &[&str]) {
    if !trellis_e2e::require_root() {
        return;
    }
    let mut m = mesh(proxy_args);
    let servers: BTreeMap<u16, TestServer> = [8080, 9090]
        .into_iter()
        .map(|p| (p, m.echo("server", p)))
        .collect();
    for case in cases() {
        m.reload(|cfg| {
            cfg.policies = case.policies.clone();
            workload_mut(cfg, "server").authorization_policies =
                case.selected.iter().map(|s| s.to_string()).collect();
        })
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        for &(from, port, allowed) in case.probes {
            let what = format!("{}: {from} -> server:{port}", case.name);
            let p2 = m.proxy("node2");
            let config = || {
                config_dump(p2)
                    .map(|d| d["config"].to_string())
                    .unwrap_or_default()
            };
            let denied_before = errors(p2, "policy_denied");
            let accepted_before = servers[&port].accepted();
            let data = what.as_bytes();
            let got = m
                .attempt_echo(from, m.addr("server", port), data)
                .unwrap_or_else(|e| panic!("{what}: {e}\n{}", p2.log()));
            if allowed {
                let want = Attempt::Echoed(data.to_vec());
                assert_eq!(got, want, "{what}: should be allowed\n{}", config());
                assert_eq!(errors(p2, "policy_denied"), denied_before, "{what}");
            } else {
                assert_eq!(
                    got,
                    Attempt::Closed,
                    "{what}: should be denied\n{}",
                    config()
                );
                wait_errors(p2, "policy_denied", denied_before + 1.0);
                assert_eq!(
                    servers[&port].accepted(),
                    accepted_before,
                    "{what}: a denied connection reached the app"
                );
            }
        }
    }
}
