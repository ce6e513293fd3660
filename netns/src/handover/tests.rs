use super::*;
use std::sync::Mutex;

crate::conversation! {
    /// A protocol with one fd message, as a proxy's would be.
    enum M, version 3;
    offer { listeners: u32 }
    with_fd {
        /// One listener.
        Listener { port: u16 } => "listener",
    }
}

fn fd() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

#[test]
fn the_declared_messages_name_themselves_and_say_which_carry_an_fd() {
    // (message, its name, whether it carries an fd, its JSON)
    let cases = [
        (
            M::hello(1),
            "hello",
            false,
            r#"{"type":"hello","version":3,"pid":1}"#,
        ),
        (
            M::Offer {
                version: 3,
                pid: 1,
                listeners: 2,
            },
            "offer",
            false,
            r#"{"type":"offer","version":3,"pid":1,"listeners":2}"#,
        ),
        (
            M::refuse("r".into()),
            "refuse",
            false,
            r#"{"type":"refuse","reason":"r"}"#,
        ),
        (
            M::Listener { port: 80 },
            "listener",
            true,
            r#"{"type":"listener","port":80}"#,
        ),
        (M::done(), "done", false, r#"{"type":"done"}"#),
        (M::ready(), "ready", false, r#"{"type":"ready"}"#),
        (
            M::abort("a".into()),
            "abort",
            false,
            r#"{"type":"abort","reason":"a"}"#,
        ),
        (M::released(), "released", false, r#"{"type":"released"}"#),
    ];
    for (msg, name, with_fd, json) in cases {
        assert_eq!((msg.name(), msg.carries_fd()), (name, with_fd), "{msg:?}");
        assert_eq!(serde_json::to_string(&msg).unwrap(), json);
        let fds = if with_fd { vec![fd()] } else { vec![] };
        let (back, f) = fdmsg::decode::<M>(json.as_bytes(), fds, false, false).unwrap();
        assert_eq!((back, f.is_some()), (msg, with_fd));
    }
    let e = fdmsg::decode::<M>(
        br#"{"type":"listener","port":1,"x":1}"#,
        vec![fd()],
        false,
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `x`"), "{e}");
}

#[test]
fn hello_and_verdict_decisions() {
    let hello = |version| M::Hello { version, pid: 9 };
    // (message, draining, refusal text or None to offer)
    let cases = [
        (hello(3), false, None),
        (hello(3), true, Some("already draining")),
        (
            hello(4),
            false,
            Some("hand-over version 4 is not spoken here (this process speaks 3)"),
        ),
        (M::Done, false, Some("expected hello, got done")),
    ];
    for (msg, draining, want) in cases {
        match (on_hello(&msg, draining), want) {
            (Ok(()), None) => {}
            (Err(r), Some(w)) => assert!(r.contains(w), "{msg:?}: {r}"),
            (got, want) => panic!("{msg:?}: got {got:?}, want {want:?}"),
        }
    }
    // (verdict, error text or None)
    let cases = [
        (M::Ready, None),
        (
            M::Abort {
                reason: "no config".into(),
            },
            Some("the new process gave up: no config"),
        ),
        (
            M::hello(1),
            Some("unexpected hand-over message hello while waiting for ready"),
        ),
    ];
    for (msg, want) in cases {
        match (on_verdict(&msg), want) {
            (Ok(()), None) => {}
            (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{msg:?}: {e}"),
            (got, want) => panic!("{msg:?}: got {got:?}, want {want:?}"),
        }
    }
}

/// The old side in these tests: offers `listeners` listeners and sends
/// them; records each failed attempt.
#[derive(Default)]
struct Giver {
    listeners: u16,
    failures: Arc<Mutex<Vec<String>>>,
}

impl Give for Giver {
    type Msg = M;
    type Error = ConvError;
    const PROXY: &'static str = "test proxy";
    fn draining(&self) -> bool {
        false
    }
    async fn hand(&self, conn: &SeqpacketConn) -> Result<(), ConvError> {
        let offer = M::Offer {
            version: 3,
            pid: std::process::id(),
            listeners: self.listeners.into(),
        };
        send(conn, &offer, None).await?;
        for port in 0..self.listeners {
            send(conn, &M::Listener { port }, Some(&fd())).await?;
        }
        Ok(())
    }
    fn failed(&self, e: &ConvError) {
        self.failures.lock().unwrap().push(e.to_string());
    }
}

/// The new side in these tests: the ports of the listeners offered.
#[derive(Default)]
struct Taker {
    offered: Option<(u32, u32)>,
    ports: Vec<u16>,
}

impl Take for Taker {
    type Msg = M;
    type Bundle = (u32, Vec<u16>);
    type Error = ConvError;
    fn on(&mut self, msg: M, fd: Option<OwnedFd>) -> Result<Step<Self::Bundle>, ConvError> {
        match (self.offered, msg) {
            (None, M::Offer { pid, listeners, .. }) => self.offered = Some((pid, listeners)),
            (None, M::Refuse { reason }) => return Err(ConvError::Refused(reason)),
            (Some(_), M::Listener { port }) if fd.is_some() => self.ports.push(port),
            (Some((pid, n)), M::Done) if self.ports.len() as u32 == n => {
                return Ok(Step::Complete((pid, std::mem::take(&mut self.ports))))
            }
            (_, other) => {
                return Err(ConvError::Unexpected {
                    got: other.name(),
                    when: "in the test",
                })
            }
        }
        Ok(Step::More)
    }
}

/// The new side: takes everything, then says `ready` or `abort`.
async fn taker(path: &Path, give_up: Option<&str>) -> Result<(u32, Vec<u16>), ConvError> {
    let (bundle, conn) = take::<Taker>(path).await?;
    match give_up {
        Some(reason) => abort::<M>(&conn, reason).await,
        None => confirm::<M>(&conn).await?,
    }
    Ok(bundle)
}

#[tokio::test]
async fn the_old_side_serves_on_after_failed_attempts_and_hands_over_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.sock");
    let listener = SeqpacketListener::bind(&path).unwrap();
    let handed = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let giver = Giver {
        listeners: 2,
        failures: failures.clone(),
    };
    let stop = CancellationToken::new();
    let old = serve(listener, giver, stop.clone(), handed.clone());
    let new = async {
        // A peer that speaks something else, one that gives up, then one
        // that takes over.
        let garbage = SeqpacketConn::connect(&path).unwrap();
        garbage.send(br#"{"type":"launch"}"#, None).await.unwrap();
        match recv::<M>(&garbage, MSG_TIMEOUT, "after garbage").await {
            Ok((M::Refuse { reason }, _)) => {
                assert!(reason.contains("unknown variant `launch`"), "{reason}")
            }
            other => panic!("garbage got {other:?}"),
        }
        taker(&path, Some("no certificate")).await.unwrap();
        let (pid, ports) = taker(&path, None).await.unwrap();
        assert_eq!((pid, ports), (std::process::id(), vec![0, 1]));
    };
    let (pid, ()) = tokio::join!(old, new);
    assert_eq!(pid, Some(std::process::id()));
    assert!(handed.load(Ordering::Acquire));
    assert!(stop.is_cancelled(), "the hand-over starts the drain");
    let failures = failures.lock().unwrap().clone();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(
        failures[0].contains("unknown variant `launch`"),
        "{failures:?}"
    );
    assert!(
        failures[1].contains("gave up: no certificate"),
        "{failures:?}"
    );
    // Nobody at the path any more: a clear error naming it.
    drop(dir);
    let e = open::<M>(&path).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("is the running process's --handover-socket this path?"),
        "{e}"
    );
}

#[tokio::test]
async fn a_stop_ends_the_serving_loop_without_a_hand_over() {
    let dir = tempfile::tempdir().unwrap();
    let listener = SeqpacketListener::bind(&dir.path().join("h.sock")).unwrap();
    let handed = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    stop.cancel();
    let got = serve(listener, Giver::default(), stop, handed.clone()).await;
    assert_eq!(got, None);
    assert!(!handed.load(Ordering::Acquire));
}
