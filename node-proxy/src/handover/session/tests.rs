use std::os::fd::OwnedFd;

use super::*;
use crate::handover::proto::{FdMessage, WireKind};
use trellis_netns::fdmsg::decode;

fn fd() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

fn offer(pods: u32, listeners: u32) -> Msg {
    Msg::Offer {
        version: VERSION,
        pid: 42,
        pods,
        listeners,
    }
}

fn pod(uid: &str) -> Msg {
    Msg::Pod {
        uid: uid.into(),
        workload: uid.into(),
        origin: Origin::Admin,
        netns: format!("/var/run/netns/{uid}"),
        capture_rules: true,
    }
}

fn listener(pod: &str, kind: WireKind) -> Msg {
    Msg::Listener {
        pod: pod.into(),
        kind,
        addr: "0.0.0.0:15001".parse().unwrap(),
    }
}

fn admin_msgs() -> Vec<Msg> {
    vec![
        Msg::Lock,
        Msg::Admin {
            server: AdminServer::Admin,
        },
        Msg::Admin {
            server: AdminServer::Metrics,
        },
        Msg::Admin {
            server: AdminServer::Readiness,
        },
    ]
}

/// Runs `msgs` (each with an fd when it carries one) through a taker.
fn run(msgs: Vec<Msg>) -> Result<Bundle, String> {
    let mut t = Taker::default();
    for m in msgs {
        let f = m.carries_fd().then(fd);
        match t.on(m, f).map_err(|e| e.to_string())? {
            Step::More => {}
            Step::Complete(b) => return Ok(b),
        }
    }
    Err("no complete step".into())
}

#[test]
fn taker_sequences() {
    let good = |pods: &[&str]| {
        let mut v = vec![offer(pods.len() as u32, 2 * pods.len() as u32)];
        v.extend(admin_msgs());
        for p in pods {
            v.push(pod(p));
            v.push(listener(p, WireKind::Outbound));
            v.push(listener(p, WireKind::Hbone));
        }
        v.push(Msg::Done);
        v
    };
    let without = |mut v: Vec<Msg>, name: &str| {
        let i = v.iter().position(|m| m.name() == name).unwrap();
        v.remove(i);
        v
    };
    let with_offer = |mut v: Vec<Msg>, o: Msg| {
        v[0] = o;
        v
    };
    // (case, messages, Ok(pods received) or Err(text in the error))
    let cases: Vec<(&str, Vec<Msg>, Result<usize, &str>)> = vec![
        ("two pods", good(&["a", "b"]), Ok(2)),
        ("no pods", good(&[]), Ok(0)),
        (
            "refused",
            vec![Msg::Refuse {
                reason: "draining".into(),
            }],
            Err("refused the hand-over: draining"),
        ),
        (
            "other version",
            vec![Msg::Offer {
                version: 9,
                pid: 1,
                pods: 0,
                listeners: 0,
            }],
            Err("version 9"),
        ),
        (
            "listener before its pod",
            {
                let mut v = vec![offer(1, 1), listener("a", WireKind::Hbone)];
                v.push(pod("a"));
                v
            },
            Err("before the pod itself"),
        ),
        (
            "done before offer",
            vec![Msg::Done],
            Err("before the offer"),
        ),
        ("no lock", without(good(&["a"]), "lock"), Err("no lock")),
        (
            "a pod missing",
            with_offer(good(&["a"]), offer(2, 2)),
            Err("1 of 2 pods"),
        ),
        (
            "a listener missing",
            with_offer(good(&["a"]), offer(1, 3)),
            Err("2 of 3 listeners"),
        ),
        (
            "more pods than offered",
            with_offer(good(&["a", "b"]), offer(1, 4)),
            Err("more pods than the 1 offered"),
        ),
        (
            "more listeners than offered",
            with_offer(good(&["a"]), offer(1, 1)),
            Err("more listeners than the 1 offered"),
        ),
        (
            "the same pod twice",
            {
                let mut v = good(&["a"]);
                v.insert(6, pod("a"));
                v
            },
            Err("pod a twice"),
        ),
        (
            "two admin listeners",
            {
                let mut v = good(&[]);
                v.insert(
                    2,
                    Msg::Admin {
                        server: AdminServer::Admin,
                    },
                );
                v
            },
            Err("twice"),
        ),
        (
            "a hello to the taker",
            vec![Msg::Hello {
                version: VERSION,
                pid: 1,
            }],
            Err("unexpected hand-over message hello before the offer"),
        ),
    ];
    for (name, msgs, want) in cases {
        let got = run(msgs);
        match (&got, want) {
            (Ok(b), Ok(n)) => {
                assert_eq!(b.pods.len(), n, "{name}");
                assert!(b.pods.iter().all(|p| p.listeners.len() == 2), "{name}");
                assert_eq!(b.old_pid, 42, "{name}");
            }
            (Err(e), Err(w)) => assert!(e.contains(w), "{name}: {e:?} lacks {w:?}"),
            _ => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

/// The framing decisions are `trellis_netns::handover`'s, tested there;
/// this checks that they read this protocol's messages right.
#[test]
fn the_shared_framing_reads_these_messages() {
    use trellis_netns::handover::{on_hello, on_verdict};
    let hello = |version| Msg::Hello { version, pid: 7 };
    // (message, draining, refusal text or None for an offer)
    let cases: [(Msg, bool, Option<&str>); 4] = [
        (hello(VERSION), false, None),
        (hello(VERSION), true, Some("already draining")),
        (hello(VERSION + 1), false, Some("version 2 is not spoken")),
        (Msg::Lock, false, Some("expected hello, got lock")),
    ];
    for (msg, draining, want) in cases {
        match (on_hello(&msg, draining), want) {
            (Ok(()), None) => {}
            (Err(r), Some(w)) => assert!(r.contains(w), "{msg:?}: {r}"),
            (got, want) => panic!("{msg:?}: got {got:?}, want {want:?}"),
        }
    }
    // (verdict, error text or None)
    let cases: [(Msg, Option<&str>); 3] = [
        (Msg::Ready, None),
        (
            Msg::Abort {
                reason: "no config".into(),
            },
            Some("gave up: no config"),
        ),
        (Msg::Done, Some("unexpected hand-over message done")),
    ];
    for (msg, want) in cases {
        match (on_verdict(&msg), want) {
            (Ok(()), None) => {}
            (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{msg:?}: {e}"),
            (got, want) => panic!("{msg:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn decoding() {
    let enc = |m: &Msg| serde_json::to_vec(m).unwrap();
    // (bytes, fds, truncated, fds truncated, Ok(name) or Err(text))
    type Case = (
        Vec<u8>,
        usize,
        bool,
        bool,
        Result<&'static str, &'static str>,
    );
    let cases: Vec<Case> = vec![
        (enc(&Msg::Ready), 0, false, false, Ok("ready")),
        (enc(&Msg::Lock), 1, false, false, Ok("lock")),
        (
            enc(&listener(
                "a",
                WireKind::OutboundForward {
                    target: "10.0.0.1:80".parse().unwrap(),
                },
            )),
            1,
            false,
            false,
            Ok("listener"),
        ),
        (
            enc(&Msg::Lock),
            0,
            false,
            false,
            Err("lock came with 0 fd(s), expected 1"),
        ),
        (
            enc(&Msg::Ready),
            1,
            false,
            false,
            Err("ready came with 1 fd(s), expected 0"),
        ),
        (
            b"{".to_vec(),
            0,
            false,
            false,
            Err("malformed hand-over message"),
        ),
        (
            br#"{"type":"launch"}"#.to_vec(),
            0,
            false,
            false,
            Err("unknown variant `launch`"),
        ),
        (
            br#"{"type":"hello","version":1,"pid":1,"extra":1}"#.to_vec(),
            0,
            false,
            false,
            Err("unknown field `extra`"),
        ),
        (
            br#"{"type":"hello","version":"one","pid":1}"#.to_vec(),
            0,
            false,
            false,
            Err("malformed"),
        ),
        (enc(&Msg::Ready), 0, true, false, Err("cut short")),
        (enc(&Msg::Lock), 1, false, true, Err("more fds")),
    ];
    for (bytes, nfds, trunc, ftrunc, want) in cases {
        let fds = (0..nfds).map(|_| fd()).collect();
        let got = decode::<Msg>(&bytes, fds, trunc, ftrunc);
        let text = String::from_utf8_lossy(&bytes).to_string();
        match (got, want) {
            (Ok((m, f)), Ok(name)) => {
                assert_eq!(m.name(), name, "{text}");
                assert_eq!(f.is_some(), m.carries_fd(), "{text}");
            }
            (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{text}: {e}"),
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn every_message_round_trips() {
    let msgs = [
        Msg::Hello { version: 1, pid: 2 },
        offer(1, 3),
        Msg::Refuse { reason: "r".into() },
        Msg::Lock,
        Msg::Admin {
            server: AdminServer::Readiness,
        },
        pod("p"),
        listener("p", WireKind::InboundPlain),
        Msg::Done,
        Msg::Ready,
        Msg::Abort { reason: "a".into() },
        Msg::Released,
    ];
    for m in msgs {
        let fds = if m.carries_fd() { vec![fd()] } else { vec![] };
        let (back, _) = decode::<Msg>(&serde_json::to_vec(&m).unwrap(), fds, false, false).unwrap();
        assert_eq!(back, m);
    }
}
