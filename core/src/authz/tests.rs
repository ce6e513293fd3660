use super::*;

/// What a case expects.
#[derive(Debug, Clone, Copy)]
enum Want {
    Allow,
    /// Denied by the DENY policy `ns/name`.
    DenyBy(&'static str),
    NoAllow,
}

struct Case {
    name: &'static str,
    /// Policies, each in YAML.
    policies: Vec<String>,
    /// The peer identity; `None` is plaintext.
    id: Option<&'static str>,
    src: &'static str,
    dst: &'static str,
    port: u16,
    want: Want,
}

const CLIENT: Option<&str> = Some("spiffe://cluster.local/ns/demo/sa/client");
const OTHER: Option<&str> = Some("spiffe://cluster.local/ns/prod/sa/batch");
const PLAIN: Option<&str> = None;

/// An ALLOW policy demo/a with one group of the given rules (YAML).
fn a(rules: &str) -> String {
    format!("{{name: a, namespace: demo, scope: NAMESPACE, action: ALLOW, groups: [{{rules: {rules}}}]}}")
}

/// A DENY policy demo/d with one group of the given rules (YAML).
fn d(rules: &str) -> String {
    format!("{{name: d, namespace: demo, scope: NAMESPACE, action: DENY, groups: [{{rules: {rules}}}]}}")
}

fn case(
    name: &'static str,
    policies: Vec<String>,
    id: Option<&'static str>,
    src: &'static str,
    port: u16,
    want: Want,
) -> Case {
    Case {
        name,
        policies,
        id,
        src,
        dst: "10.0.2.1",
        port,
        want,
    }
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    vec![
        case("no policies allows", vec![], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("allow by full spiffe principal", vec![a("[{matches: [{principals: ['spiffe://cluster.local/ns/demo/sa/client']}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("allow by principal rejects other identity", vec![a("[{matches: [{principals: ['spiffe://cluster.local/ns/demo/sa/client']}]}]")], OTHER, "10.0.1.1", 8080, Want::NoAllow),
        case("istio-style principal without spiffe://", vec![a("[{matches: [{principals: ['cluster.local/ns/demo/sa/client']}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("allow by namespace", vec![a("[{matches: [{namespaces: [demo]}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("allow by namespace rejects other namespace", vec![a("[{matches: [{namespaces: [demo]}]}]")], OTHER, "10.0.1.1", 8080, Want::NoAllow),
        case("allow by port", vec![a("[{matches: [{destinationPorts: [8080]}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("allow by port rejects other port", vec![a("[{matches: [{destinationPorts: [8080]}]}]")], CLIENT, "10.0.1.1", 9090, Want::NoAllow),
        case("allow by source ip block", vec![a("[{matches: [{sourceIps: [10.0.0.0/8]}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("allow by source ip block rejects outsider", vec![a("[{matches: [{sourceIps: [10.0.0.0/8]}]}]")], CLIENT, "192.0.2.1", 8080, Want::NoAllow),
        case("ipv4-mapped source matches an ipv4 block", vec![a("[{matches: [{sourceIps: [10.0.0.0/8]}]}]")], CLIENT, "::ffff:10.0.1.1", 8080, Want::Allow),
        case("allow by destination ip", vec![a("[{matches: [{destinationIps: [10.0.2.1]}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("not_principals allow excludes that principal", vec![a("[{matches: [{notPrincipals: ['cluster.local/ns/demo/sa/client']}]}]")], CLIENT, "10.0.1.1", 8080, Want::NoAllow),
        case("not_principals allow admits others", vec![a("[{matches: [{notPrincipals: ['cluster.local/ns/demo/sa/client']}]}]")], OTHER, "10.0.1.1", 8080, Want::Allow),
        case("not_namespaces deny hits other namespaces", vec![d("[{matches: [{notNamespaces: [demo]}]}]")], OTHER, "10.0.1.1", 8080, Want::DenyBy("demo/d")),
        case("not_namespaces deny spares its namespace", vec![d("[{matches: [{notNamespaces: [demo]}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("not_source_ips deny hits outsiders", vec![d("[{matches: [{notSourceIps: [10.0.0.0/8]}]}]")], CLIENT, "192.0.2.1", 8080, Want::DenyBy("demo/d")),
        case("not_source_ips deny spares insiders", vec![d("[{matches: [{notSourceIps: [10.0.0.0/8]}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("not_destination_ports allow", vec![a("[{matches: [{notDestinationPorts: [22]}]}]")], CLIENT, "10.0.1.1", 22, Want::NoAllow),
        case("not_destination_ips deny spares listed ip", vec![d("[{matches: [{notDestinationIps: [10.0.2.0/24]}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("deny wins over a matching allow", vec![a("[{matches: [{namespaces: [demo]}]}]"), d("[{matches: [{destinationPorts: [8080]}]}]")], CLIENT, "10.0.1.1", 8080, Want::DenyBy("demo/d")),
        case("non-matching deny leaves the allow", vec![d("[{matches: [{destinationPorts: [22]}]}]"), a("[{matches: [{namespaces: [demo]}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("default deny when an allow exists but does not match", vec![a("[{matches: [{namespaces: [prod]}]}]")], CLIENT, "10.0.1.1", 8080, Want::NoAllow),
        case("any one of several allows is enough", vec![a("[{matches: [{namespaces: [prod]}]}]"), a("[{matches: [{destinationPorts: [8080]}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("plaintext with principal-based allow is denied", vec![a("[{matches: [{principals: ['*']}]}]")], PLAIN, "10.0.1.1", 8080, Want::NoAllow),
        case("plaintext with principal-based deny is denied", vec![d("[{matches: [{principals: ['cluster.local/ns/prod/sa/batch']}]}]")], PLAIN, "10.0.1.1", 8080, Want::DenyBy("demo/d")),
        case("plaintext with not_principals deny is denied", vec![d("[{matches: [{notPrincipals: ['cluster.local/ns/demo/sa/client']}]}]")], PLAIN, "10.0.1.1", 8080, Want::DenyBy("demo/d")),
        case("plaintext with namespace allow is denied", vec![a("[{matches: [{namespaces: [demo]}]}]")], PLAIN, "10.0.1.1", 8080, Want::NoAllow),
        case("plaintext with port-only allow is allowed", vec![a("[{matches: [{destinationPorts: [8080]}]}]")], PLAIN, "10.0.1.1", 8080, Want::Allow),
        case("principal prefix match", vec![a("[{matches: [{principals: ['cluster.local/ns/demo/*']}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("principal prefix written with spiffe://", vec![a("[{matches: [{principals: ['spiffe://cluster.local/ns/prod/*']}]}]")], CLIENT, "10.0.1.1", 8080, Want::NoAllow),
        case("principal prefix written with spiffe:// matches", vec![a("[{matches: [{principals: ['spiffe://cluster.local/ns/demo/*']}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("allow policy with no groups matches nothing", vec!["{name: a, namespace: demo, scope: GLOBAL, action: ALLOW}".into()], CLIENT, "10.0.1.1", 8080, Want::NoAllow),
        case("deny policy with no groups matches nothing", vec!["{name: d, namespace: demo, scope: GLOBAL, action: DENY}".into()], PLAIN, "10.0.1.1", 8080, Want::Allow),
        case("principal suffix match", vec![a("[{matches: [{principals: ['*/sa/client']}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("principal presence match", vec![a("[{matches: [{principals: ['*']}]}]")], OTHER, "10.0.1.1", 8080, Want::Allow),
        case("namespace prefix match", vec![a("[{matches: [{namespaces: ['de*']}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("namespace suffix does not match", vec![a("[{matches: [{namespaces: ['*od']}]}]")], CLIENT, "10.0.1.1", 8080, Want::NoAllow),
        case("all rules of a group must match", vec![a("[{matches: [{namespaces: [demo]}]}, {matches: [{destinationPorts: [8080]}]}]")], CLIENT, "10.0.1.1", 9090, Want::NoAllow),
        case("any match of a rule is enough", vec![a("[{matches: [{namespaces: [prod]}, {destinationPorts: [8080]}]}]")], CLIENT, "10.0.1.1", 8080, Want::Allow),
        case("every field of a match must hold", vec![a("[{matches: [{namespaces: [demo], destinationPorts: [9090]}]}]")], CLIENT, "10.0.1.1", 8080, Want::NoAllow),
        case("empty group allows everything", vec![a("[]")], PLAIN, "192.0.2.1", 1, Want::Allow),
        case("empty group denies everything", vec![d("[]")], CLIENT, "10.0.1.1", 8080, Want::DenyBy("demo/d")),
        case("rules with no matches never match", vec![a("[{matches: []}]")], CLIENT, "10.0.1.1", 8080, Want::NoAllow),
    ]
}

#[test]
fn decisions() {
    for c in cases() {
        let policies: Vec<Authorization> = c
            .policies
            .iter()
            .map(|y| {
                serde_yaml_ng::from_str(y)
                    .unwrap_or_else(|e| panic!("case {}: bad policy yaml {y}: {e}", c.name))
            })
            .collect();
        let id: Option<Identity> = c.id.map(|s| s.parse().expect("test identity"));
        let ctx = ConnContext {
            src_identity: id.as_ref(),
            src_ip: c.src.parse().expect("test ip"),
            dst_ip: c.dst.parse().expect("test ip"),
            dst_port: c.port,
        };
        let got = evaluate(&policies, &ctx);
        let want = match c.want {
            Want::Allow => Decision::Allow,
            Want::NoAllow => Decision::Deny(DenyReason::NoAllowMatched),
            Want::DenyBy(key) => {
                let (namespace, name) = key.split_once('/').expect("ns/name");
                Decision::Deny(DenyReason::Policy {
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
        };
        assert_eq!(got, want, "case: {}", c.name);
    }
}

#[test]
fn deny_reasons_read_well_in_logs() {
    let r = DenyReason::Policy {
        namespace: "demo".into(),
        name: "no-batch".into(),
    };
    assert_eq!(r.to_string(), "DENY policy demo/no-batch matched");
    assert_eq!(
        DenyReason::NoAllowMatched.to_string(),
        "no ALLOW policy matched"
    );
}
