use super::*;

const X: &str = "spiffe://cluster.local/ns/a/sa/x";
const Y: &str = "spiffe://cluster.local/ns/a/sa/y";
const P: &str = "spiffe://cluster.local/ns/a/sa/pending";
const WP: &str = "spiffe://cluster.local/ns/default/sa/waypoint";
const VM: &str = "spiffe://cluster.local/ns/vms/sa/vm";

pub(crate) fn mesh() -> LocalConfig {
    serde_yaml_ng::from_str(
        r#"
workloads:
- { uid: x1, name: x1, namespace: a, serviceAccount: x, node: node-a }
- { uid: y1, name: y1, namespace: a, serviceAccount: y, node: node-a }
- { uid: y2, name: y2, namespace: a, serviceAccount: y, node: node-c }
- { uid: p1, name: p1, namespace: a, serviceAccount: pending }
"#,
    )
    .expect("mesh yaml")
}

fn node(n: &str) -> Caller {
    Caller::NodeProxy { node: n.into() }
}

#[test]
fn authorize_table() {
    let index = MeshIndex::new(&mesh());
    let waypoint = Caller::Waypoint {
        spiffe_id: WP.into(),
    };
    let vm = Caller::Waypoint {
        spiffe_id: VM.into(),
    };
    let other_sa = Caller::Waypoint {
        spiffe_id: X.into(),
    };
    let cases: Vec<(&str, Caller, &str, Result<(), &str>)> = vec![
        ("node gets its pod", node("node-a"), X, Ok(())),
        ("identity on two nodes, first", node("node-a"), Y, Ok(())),
        ("identity on two nodes, second", node("node-c"), Y, Ok(())),
        (
            "other node's pod",
            node("node-b"),
            X,
            Err("node-b asked for spiffe://cluster.local/ns/a/sa/x, but no workload with that identity is scheduled on node-b (it runs on node-a)"),
        ),
        ("unknown identity", node("node-a"), "spiffe://cluster.local/ns/z/sa/z", Err("no workload in the mesh has it")),
        ("unscheduled workload", node("node-a"), P, Err("not scheduled yet")),
        ("waypoint own identity", waypoint.clone(), WP, Ok(())),
        ("waypoint other identity", waypoint, X, Err("may have its own identity only")),
        // A VM's node proxy authenticates with its WorkloadEntry's account's token.
        ("vm own identity", vm.clone(), VM, Ok(())),
        ("vm with another account's token", other_sa, VM, Err("a caller with the token of spiffe://cluster.local/ns/a/sa/x asked for spiffe://cluster.local/ns/vms/sa/vm; a waypoint or a VM's node proxy may have its own identity only: give it a token of spiffe://cluster.local/ns/vms/sa/vm's service account")),
        ("vm asking for a pod's identity", vm, X, Err("may have its own identity only")),
    ];
    for (name, caller, id, want) in cases {
        match (authorize(&caller, id, &index), want) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{name}: {e}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn requested_identity_table() {
    assert_eq!(requested_identity(X, None), Ok(X.to_owned()));
    assert_eq!(requested_identity(X, Some(X)), Ok(X.to_owned()));
    let err = requested_identity(X, Some(Y)).unwrap_err();
    assert!(err.is_invalid_request());
    assert!(
        err.to_string().contains(Y) && err.to_string().contains(X),
        "{err}"
    );
}
