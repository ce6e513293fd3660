use super::*;
use trellis_api::pb::istio::workload::zds::{AddWorkload, DelWorkload, KeepWorkload, SnapshotSent};

fn fd() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

fn enc(p: Payload) -> Vec<u8> {
    WorkloadRequest { payload: Some(p) }.encode_to_vec()
}

fn add(uid: &str, ns: &str, name: &str) -> Vec<u8> {
    enc(Payload::Add(AddWorkload {
        uid: uid.into(),
        workload_info: Some(WorkloadInfo {
            name: name.into(),
            namespace: ns.into(),
            service_account: String::new(),
        }),
    }))
}

fn keep(uid: &str) -> Vec<u8> {
    enc(Payload::Keep(KeepWorkload { uid: uid.into() }))
}

fn del(uid: &str) -> Vec<u8> {
    enc(Payload::Del(DelWorkload { uid: uid.into() }))
}

fn snap() -> Vec<u8> {
    enc(Payload::SnapshotSent(SnapshotSent {}))
}

#[test]
fn parse_table() {
    // (case, bytes, fds sent, truncated, Ok(kind) or Err(fragment of the message))
    type Case<'a> = (&'a str, Vec<u8>, usize, bool, Result<&'a str, &'a str>);
    let cases: Vec<Case> = vec![
        (
            "add with its fd",
            add("u1", "demo", "web"),
            1,
            false,
            Ok("add"),
        ),
        (
            "add without fd",
            add("u1", "demo", "web"),
            0,
            false,
            Err("without its netns fd"),
        ),
        (
            "add with two fds",
            add("u1", "demo", "web"),
            2,
            false,
            Err("2 fd(s)"),
        ),
        (
            "add with empty uid",
            add("", "demo", "web"),
            1,
            false,
            Err("empty uid"),
        ),
        ("keep", keep("u1"), 0, false, Ok("keep")),
        (
            "keep with an fd",
            keep("u1"),
            1,
            false,
            Err("KeepWorkload came with 1 fd"),
        ),
        ("del", del("u1"), 0, false, Ok("del")),
        (
            "del with an fd",
            del("u1"),
            1,
            false,
            Err("DelWorkload came with 1 fd"),
        ),
        (
            "del with empty uid",
            del(""),
            0,
            false,
            Err("DelWorkload with an empty uid"),
        ),
        ("snapshot sent", snap(), 0, false, Ok("snapshot")),
        ("no payload", vec![], 0, false, Err("no payload")),
        (
            "garbage",
            vec![0xff; 7],
            0,
            false,
            Err("not a ZDS WorkloadRequest"),
        ),
        (
            "truncated",
            add("u1", "demo", "web"),
            1,
            true,
            Err("was cut"),
        ),
    ];
    for (name, data, nfds, truncated, want) in cases {
        let fds = (0..nfds).map(|_| fd()).collect();
        match (parse(&data, fds, truncated), want) {
            (Ok(r), Ok(kind)) => {
                let got = match r {
                    Request::Add { .. } => "add",
                    Request::Keep { .. } => "keep",
                    Request::Del { .. } => "del",
                    Request::SnapshotSent => "snapshot",
                };
                assert_eq!(got, kind, "{name}");
            }
            (Err(e), Err(frag)) => {
                assert!(e.to_string().contains(frag), "{name}: {e} lacks {frag:?}")
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

fn req(data: Vec<u8>, fds: usize) -> Result<Request, ZdsError> {
    parse(&data, (0..fds).map(|_| fd()).collect(), false)
}

fn set(uids: &[&str]) -> BTreeSet<String> {
    uids.iter().map(|u| u.to_string()).collect()
}

#[test]
fn session_table() {
    let added = |uid: &str, workload: &str| Action::Add {
        uid: uid.into(),
        workload: workload.into(),
    };
    // Each case is a whole connection: the requests in order and the
    // action each must lead to.
    type Step = (Result<Request, ZdsError>, Action);
    let cases: Vec<(&str, Vec<Step>)> = vec![
        (
            "snapshot of two, then live add and del",
            vec![
                (
                    req(add("u1", "demo", "a"), 1),
                    added("u1", "Kubernetes//Pod/demo/a"),
                ),
                (
                    req(add("u2", "demo", "b"), 1),
                    added("u2", "Kubernetes//Pod/demo/b"),
                ),
                (
                    req(snap(), 0),
                    Action::Reconcile {
                        keep: set(&["u1", "u2"]),
                    },
                ),
                (
                    req(add("u3", "demo", "c"), 1),
                    added("u3", "Kubernetes//Pod/demo/c"),
                ),
                (req(del("u1"), 0), Action::Del { uid: "u1".into() }),
            ],
        ),
        (
            "empty snapshot drops everything",
            vec![(req(snap(), 0), Action::Reconcile { keep: set(&[]) })],
        ),
        (
            "keep counts as named",
            vec![
                (req(keep("u9"), 0), Action::Keep { uid: "u9".into() }),
                (
                    req(add("u1", "demo", "a"), 1),
                    added("u1", "Kubernetes//Pod/demo/a"),
                ),
                (
                    req(snap(), 0),
                    Action::Reconcile {
                        keep: set(&["u1", "u9"]),
                    },
                ),
            ],
        ),
        (
            "deleted during the snapshot is not kept",
            vec![
                (
                    req(add("u1", "demo", "a"), 1),
                    added("u1", "Kubernetes//Pod/demo/a"),
                ),
                (req(del("u1"), 0), Action::Del { uid: "u1".into() }),
                (req(snap(), 0), Action::Reconcile { keep: set(&[]) }),
            ],
        ),
        (
            "keep after the snapshot is refused",
            vec![
                (req(snap(), 0), Action::Reconcile { keep: set(&[]) }),
                (
                    req(keep("u1"), 0),
                    Action::Reject(
                        "KeepWorkload for u1 after SnapshotSent; keep is only part of a snapshot"
                            .into(),
                    ),
                ),
            ],
        ),
        (
            "a second SnapshotSent is refused",
            vec![
                (req(snap(), 0), Action::Reconcile { keep: set(&[]) }),
                (
                    req(snap(), 0),
                    Action::Reject("a second SnapshotSent on one connection".into()),
                ),
            ],
        ),
        (
            "garbage is answered, and the connection goes on",
            vec![
                (
                    req(vec![], 0),
                    Action::Reject("WorkloadRequest has no payload".into()),
                ),
                (
                    req(add("u1", "demo", "a"), 1),
                    added("u1", "Kubernetes//Pod/demo/a"),
                ),
            ],
        ),
        (
            "no workload info: the ZDS uid names the workload",
            vec![(
                req(
                    enc(Payload::Add(AddWorkload {
                        uid: "vm-1".into(),
                        workload_info: None,
                    })),
                    1,
                ),
                added("vm-1", "vm-1"),
            )],
        ),
    ];
    for (name, steps) in cases {
        let mut s = Session::default();
        for (i, (r, want)) in steps.into_iter().enumerate() {
            assert_eq!(s.on(r.as_ref(), "Kubernetes"), want, "{name}, step {i}");
        }
    }
}

#[test]
fn workload_uid_uses_the_cluster_id() {
    let info = WorkloadInfo {
        name: "web-0".into(),
        namespace: "shop".into(),
        service_account: "web".into(),
    };
    assert_eq!(
        workload_uid("east", "k8s-uid", Some(&info)),
        "east//Pod/shop/web-0"
    );
    let nameless = WorkloadInfo {
        namespace: "shop".into(),
        ..Default::default()
    };
    assert_eq!(workload_uid("east", "k8s-uid", Some(&nameless)), "k8s-uid");
}

#[test]
fn mutated_and_random_packets_never_panic() {
    let mut rng = fastrand::Rng::with_seed(14);
    let valid = [add("u1", "demo", "a"), keep("u1"), del("u1"), snap()];
    let mut s = Session::default();
    for i in 0..3000 {
        let mut b = valid[i % valid.len()].clone();
        for _ in 0..rng.usize(0..4) {
            if b.is_empty() {
                b.push(rng.u8(..));
                continue;
            }
            let at = rng.usize(..b.len());
            match rng.u8(..3) {
                0 => b[at] = rng.u8(..),
                1 => b.insert(at, rng.u8(..)),
                _ => b.truncate(at),
            }
        }
        let fds = (0..rng.usize(..3)).map(|_| fd()).collect();
        let parsed = parse(&b, fds, rng.bool());
        // Whatever arrives leads to one action; a parse error to a Reject
        // that says what was wrong.
        if let Action::Reject(why) = s.on(parsed.as_ref(), "Kubernetes") {
            assert!(!why.is_empty(), "packet {i}: {b:?}");
        }
    }
}
