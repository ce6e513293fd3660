//! The waypoint hand-over's messages and decisions, apart from the socket:
//! the new process's state machine that checks and collects what it is
//! sent (the framing, hello and verdict, is `trellis_netns::handover`'s).
//! Tested as tables below.
//!
//! The conversation (new = the process taking over, old = the running one):
//!
//! ```text
//! new -> old  hello {version, pid}
//! old -> new  offer {version, pid, hbone}     or refuse {reason}
//! old -> new  listener {server}               + one listener fd, for each
//!             HBONE worker listener, and admin, metrics, readiness
//! old -> new  done
//! new -> old  ready                           (new accepts on every listener now)
//!             or abort {reason}               (new gives up; old keeps serving)
//! old -> new  released                        (old stops accepting now, and drains)
//! ```

use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};
use trellis_netns::fdmsg::{FdMessage, FdMsgError};
use trellis_netns::handover::{ConvError, Step, Take};

/// The protocol version both sides must speak.
pub const VERSION: u32 = 1;

/// Which of the waypoint's listeners an fd is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Listener {
    /// One worker's SO_REUSEPORT socket on `--listen`.
    Hbone,
    Admin,
    Metrics,
    Readiness,
}

trellis_netns::conversation! {
    /// One message.
    pub enum Msg, version VERSION;
    offer { hbone: u32 }
    with_fd {
        Listener { server: Listener } => "listener",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The wire and the framing: a malformed message, a timeout, a closed
    /// socket, a refusal, an unexpected message.
    #[error(transparent)]
    Conv(#[from] ConvError),
    #[error("the running waypoint speaks hand-over version {theirs}, this one {VERSION}; upgrade through a version that speaks both")]
    Version { theirs: u32 },
    #[error("hand-over sent the {0:?} listener twice")]
    Duplicate(Listener),
    #[error("hand-over incomplete: {0}")]
    Incomplete(String),
    #[error("cannot take over: {0}")]
    Local(String),
}

impl From<FdMsgError> for HandoverError {
    fn from(e: FdMsgError) -> Self {
        HandoverError::Conv(e.into())
    }
}

/// Everything the old process handed over.
#[derive(Debug)]
pub struct Bundle {
    pub old_pid: u32,
    /// One per old worker; the new process runs one worker on each.
    pub hbone: Vec<OwnedFd>,
    /// Admin, metrics, readiness.
    pub admin: [OwnedFd; 3],
}

/// The new process's side: feed it each received message with its fd.
#[derive(Debug, Default)]
pub struct Taker {
    offered: Option<(u32, u32)>,
    hbone: Vec<OwnedFd>,
    admin: [Option<OwnedFd>; 3],
}

impl Take for Taker {
    type Msg = Msg;
    type Bundle = Bundle;
    type Error = HandoverError;

    fn on(&mut self, msg: Msg, fd: Option<OwnedFd>) -> Result<Step<Bundle>, HandoverError> {
        match (self.offered, msg) {
            (None, Msg::Offer { version, .. }) if version != VERSION => {
                Err(HandoverError::Version { theirs: version })
            }
            (None, Msg::Offer { pid, hbone, .. }) => {
                self.offered = Some((pid, hbone));
                Ok(Step::More)
            }
            (None, Msg::Refuse { reason }) => Err(ConvError::Refused(reason).into()),
            (Some((_, want)), Msg::Listener { server }) => {
                let fd = fd.ok_or(FdMsgError::FdCount {
                    msg: "listener",
                    want: 1,
                    got: 0,
                })?;
                let slot = match server {
                    Listener::Hbone if self.hbone.len() as u32 >= want => {
                        return Err(HandoverError::Incomplete(format!(
                            "more HBONE listeners than the {want} offered"
                        )))
                    }
                    Listener::Hbone => {
                        self.hbone.push(fd);
                        return Ok(Step::More);
                    }
                    Listener::Admin => &mut self.admin[0],
                    Listener::Metrics => &mut self.admin[1],
                    Listener::Readiness => &mut self.admin[2],
                };
                if slot.is_some() {
                    return Err(HandoverError::Duplicate(server));
                }
                *slot = Some(fd);
                Ok(Step::More)
            }
            (Some((pid, want)), Msg::Done) => self.complete(pid, want),
            (offered, other) => Err(ConvError::Unexpected {
                got: other.name(),
                when: if offered.is_some() {
                    "while receiving listeners"
                } else {
                    "before the offer"
                },
            }
            .into()),
        }
    }
}

impl Taker {
    fn complete(&mut self, old_pid: u32, want: u32) -> Result<Step<Bundle>, HandoverError> {
        let mut missing = Vec::new();
        if want == 0 {
            missing.push("no HBONE listener offered".to_string());
        } else if self.hbone.len() as u32 != want {
            missing.push(format!("{} of {want} HBONE listeners", self.hbone.len()));
        }
        for (slot, name) in self.admin.iter().zip(["admin", "metrics", "readiness"]) {
            if slot.is_none() {
                missing.push(format!("no {name} listener"));
            }
        }
        if !missing.is_empty() {
            return Err(HandoverError::Incomplete(missing.join(", ")));
        }
        match std::mem::take(&mut self.admin) {
            [Some(a), Some(m), Some(r)] => Ok(Step::Complete(Bundle {
                old_pid,
                hbone: std::mem::take(&mut self.hbone),
                admin: [a, m, r],
            })),
            _ => Err(HandoverError::Incomplete("checked above".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_netns::fdmsg::decode;
    use trellis_netns::handover::Conversation;

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    fn offer(hbone: u32) -> Msg {
        Msg::Offer {
            version: VERSION,
            pid: 7,
            hbone,
        }
    }

    fn listener(server: Listener) -> Msg {
        Msg::Listener { server }
    }

    /// A whole conversation's messages, from the offer to `done`.
    fn full(hbone: u32) -> Vec<Msg> {
        let mut v = vec![offer(hbone)];
        v.extend((0..hbone).map(|_| listener(Listener::Hbone)));
        v.extend([Listener::Admin, Listener::Metrics, Listener::Readiness].map(listener));
        v.push(Msg::Done);
        v
    }

    /// Feeds `msgs` (each with an fd when it carries one); the outcome.
    fn run(msgs: Vec<Msg>) -> Result<Option<Bundle>, HandoverError> {
        let mut t = Taker::default();
        for m in msgs {
            let f = m.carries_fd().then(fd);
            if let Step::Complete(b) = t.on(m, f)? {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    #[test]
    fn the_taker_collects_a_whole_hand_over_and_refuses_anything_else() {
        let with = |mut v: Vec<Msg>, f: &dyn Fn(&mut Vec<Msg>)| {
            f(&mut v);
            v
        };
        // (case, messages, Ok(hbone listeners received) or Err(text))
        let cases: Vec<(&str, Vec<Msg>, Result<usize, &str>)> = vec![
            ("two workers", full(2), Ok(2)),
            ("one worker", full(1), Ok(1)),
            (
                "refused",
                vec![Msg::Refuse {
                    reason: "already draining".into(),
                }],
                Err("refused the hand-over: already draining"),
            ),
            (
                "another version",
                vec![Msg::Offer {
                    version: 9,
                    pid: 1,
                    hbone: 1,
                }],
                Err("speaks hand-over version 9"),
            ),
            (
                "a listener before the offer",
                vec![listener(Listener::Hbone)],
                Err("listener before the offer"),
            ),
            (
                "one HBONE listener short",
                with(full(2), &|v| {
                    v.remove(1);
                }),
                Err("1 of 2 HBONE listeners"),
            ),
            (
                "one HBONE listener too many",
                with(full(1), &|v| v.insert(1, listener(Listener::Hbone))),
                Err("more HBONE listeners than the 1 offered"),
            ),
            (
                "no readiness listener",
                with(full(1), &|v| {
                    v.retain(|m| *m != listener(Listener::Readiness));
                }),
                Err("no readiness listener"),
            ),
            (
                "admin twice",
                with(full(1), &|v| v.insert(1, listener(Listener::Admin))),
                Err("Admin listener twice"),
            ),
            (
                "nothing to serve",
                full(0),
                Err("no HBONE listener offered"),
            ),
            (
                "ready from the old side",
                with(full(1), &|v| v.insert(1, Msg::Ready)),
                Err("unexpected hand-over message ready while receiving listeners"),
            ),
        ];
        for (case, msgs, want) in cases {
            match (run(msgs), want) {
                (Ok(Some(b)), Ok(n)) => {
                    assert_eq!(b.hbone.len(), n, "{case}");
                    assert_eq!(b.old_pid, 7, "{case}");
                }
                (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{case}: {e}"),
                (Ok(None), want) => panic!("{case}: not complete, want {want:?}"),
                (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
            }
        }
        // A listener message without its fd is refused, not taken as done.
        let mut t = Taker::default();
        t.on(offer(1), None).unwrap();
        let e = t.on(listener(Listener::Hbone), None).unwrap_err();
        assert!(e.to_string().contains("listener came with 0 fd(s)"), "{e}");
    }

    /// The framing decisions are `trellis_netns::handover`'s, tested there;
    /// this checks that they read this protocol's messages right.
    #[test]
    fn the_shared_framing_reads_these_messages() {
        use trellis_netns::handover::{on_hello, on_verdict};
        assert_eq!(on_hello(&Msg::hello(3), false), Ok(()));
        let r = on_hello(&listener(Listener::Admin), false).unwrap_err();
        assert!(r.contains("expected hello, got listener"), "{r}");
        assert!(on_verdict(&Msg::ready()).is_ok());
        let e = on_verdict(&Msg::abort("no certificate".into())).unwrap_err();
        assert!(e.to_string().contains("gave up: no certificate"), "{e}");
        assert!(Msg::released().is_released() && !Msg::Done.is_released());
    }

    #[test]
    fn every_message_round_trips_and_unknown_ones_are_refused() {
        let msgs = [
            Msg::Hello { version: 1, pid: 2 },
            offer(2),
            Msg::Refuse { reason: "r".into() },
            listener(Listener::Readiness),
            Msg::Done,
            Msg::Ready,
            Msg::Abort { reason: "a".into() },
            Msg::Released,
        ];
        for m in msgs {
            let fds = if m.carries_fd() { vec![fd()] } else { vec![] };
            let bytes = serde_json::to_vec(&m).unwrap();
            let (back, f) = decode::<Msg>(&bytes, fds, false, false).unwrap();
            assert_eq!((back, f.is_some()), (m.clone(), m.carries_fd()));
        }
        // A node proxy's message is not a waypoint's.
        let e = decode::<Msg>(br#"{"type":"lock"}"#, vec![fd()], false, false).unwrap_err();
        assert!(e.to_string().contains("unknown variant `lock`"), "{e}");
    }
}
