//! The hand-over's decisions, apart from the socket: the new process's
//! state machine that checks and collects what it is sent (the framing,
//! hello and verdict, is `trellis_netns::handover`'s). Tested as tables in
//! `session/tests.rs`.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use super::proto::{AdminServer, FdMessage, Msg, ProtoError, VERSION};
use crate::context::ListenerKind;
use crate::pods::Origin;
use trellis_netns::handover::{ConvError, Step, Take};

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The wire and the framing: a malformed message, a timeout, a closed
    /// socket, a refusal, an unexpected message.
    #[error(transparent)]
    Conv(#[from] ConvError),
    #[error("the running node proxy speaks hand-over version {theirs}, this one {VERSION}; upgrade through a version that speaks both")]
    Version { theirs: u32 },
    #[error("hand-over sent {what} twice")]
    Duplicate { what: String },
    #[error("hand-over sent a listener of pod {0} before the pod itself")]
    UnknownPod(String),
    #[error("hand-over incomplete: {0}")]
    Incomplete(String),
    #[error("hand-over socket i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot hand over: {0}")]
    Local(String),
}

impl From<ProtoError> for HandoverError {
    fn from(e: ProtoError) -> Self {
        HandoverError::Conv(e.into())
    }
}

impl HandoverError {
    fn unexpected(got: &Msg, when: &'static str) -> HandoverError {
        HandoverError::Conv(ConvError::Unexpected {
            got: got.name(),
            when,
        })
    }
}

/// A pod as received: its netns and its listeners' fds.
#[derive(Debug)]
pub struct PodBundle {
    pub uid: String,
    pub workload: String,
    pub origin: Origin,
    pub netns_label: String,
    pub capture_rules: bool,
    pub netns: OwnedFd,
    pub listeners: Vec<(ListenerKind, SocketAddr, OwnedFd)>,
}

/// Everything the old process handed over.
#[derive(Debug)]
pub struct Bundle {
    pub old_pid: u32,
    pub lock: OwnedFd,
    /// Admin, metrics, readiness.
    pub admin: [OwnedFd; 3],
    pub pods: Vec<PodBundle>,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    AwaitOffer,
    Receiving,
    Complete,
}

/// The new process's side: feed it each received message with its fd.
#[derive(Debug, Default)]
pub struct Taker {
    state: State,
    old_pid: u32,
    want_pods: u32,
    want_listeners: u32,
    listeners: u32,
    lock: Option<OwnedFd>,
    admin: [Option<OwnedFd>; 3],
    pods: Vec<PodBundle>,
}

impl Take for Taker {
    type Msg = Msg;
    type Bundle = Bundle;
    type Error = HandoverError;

    fn on(&mut self, msg: Msg, fd: Option<OwnedFd>) -> Result<Step<Bundle>, HandoverError> {
        match (&self.state, msg) {
            (State::AwaitOffer, Msg::Offer { version, .. }) if version != VERSION => {
                Err(HandoverError::Version { theirs: version })
            }
            (
                State::AwaitOffer,
                Msg::Offer {
                    pid,
                    pods,
                    listeners,
                    ..
                },
            ) => {
                self.old_pid = pid;
                self.want_pods = pods;
                self.want_listeners = listeners;
                self.state = State::Receiving;
                Ok(Step::More)
            }
            (State::AwaitOffer, Msg::Refuse { reason }) => Err(ConvError::Refused(reason).into()),
            (State::Receiving, Msg::Lock) => {
                put_once(&mut self.lock, fd, "the lock")?;
                Ok(Step::More)
            }
            (State::Receiving, Msg::Admin { server }) => {
                let i = match server {
                    AdminServer::Admin => 0,
                    AdminServer::Metrics => 1,
                    AdminServer::Readiness => 2,
                };
                put_once(&mut self.admin[i], fd, &format!("the {server:?} listener"))?;
                Ok(Step::More)
            }
            (
                State::Receiving,
                Msg::Pod {
                    uid,
                    workload,
                    origin,
                    netns,
                    capture_rules,
                },
            ) => {
                if self.pods.iter().any(|p| p.uid == uid) {
                    return Err(HandoverError::Duplicate {
                        what: format!("pod {uid}"),
                    });
                }
                if self.pods.len() as u32 >= self.want_pods {
                    return Err(HandoverError::Incomplete(format!(
                        "more pods than the {} offered",
                        self.want_pods
                    )));
                }
                let netns_fd = fd.ok_or(ProtoError::FdCount {
                    msg: "pod",
                    want: 1,
                    got: 0,
                })?;
                self.pods.push(PodBundle {
                    uid,
                    workload,
                    origin,
                    netns_label: netns,
                    capture_rules,
                    netns: netns_fd,
                    listeners: Vec::new(),
                });
                Ok(Step::More)
            }
            (State::Receiving, Msg::Listener { pod, kind, addr }) => {
                let Some(p) = self.pods.iter_mut().find(|p| p.uid == pod) else {
                    return Err(HandoverError::UnknownPod(pod));
                };
                if self.listeners >= self.want_listeners {
                    return Err(HandoverError::Incomplete(format!(
                        "more listeners than the {} offered",
                        self.want_listeners
                    )));
                }
                let l = fd.ok_or(ProtoError::FdCount {
                    msg: "listener",
                    want: 1,
                    got: 0,
                })?;
                p.listeners.push((kind.into(), addr, l));
                self.listeners += 1;
                Ok(Step::More)
            }
            (State::Receiving, Msg::Done) => self.complete(),
            (state, other) => Err(HandoverError::unexpected(
                &other,
                match state {
                    State::AwaitOffer => "before the offer",
                    State::Receiving => "while receiving listeners",
                    State::Complete => "after done",
                },
            )),
        }
    }
}

impl Taker {
    fn complete(&mut self) -> Result<Step<Bundle>, HandoverError> {
        let mut missing = Vec::new();
        if self.pods.len() as u32 != self.want_pods {
            missing.push(format!("{} of {} pods", self.pods.len(), self.want_pods));
        }
        if self.listeners != self.want_listeners {
            missing.push(format!(
                "{} of {} listeners",
                self.listeners, self.want_listeners
            ));
        }
        if self.lock.is_none() {
            missing.push("no lock".into());
        }
        for (slot, name) in self.admin.iter().zip(["admin", "metrics", "readiness"]) {
            if slot.is_none() {
                missing.push(format!("no {name} listener"));
            }
        }
        if !missing.is_empty() {
            return Err(HandoverError::Incomplete(missing.join(", ")));
        }
        self.state = State::Complete;
        let [a, m, r] = std::mem::take(&mut self.admin);
        match (self.lock.take(), a, m, r) {
            (Some(lock), Some(a), Some(m), Some(r)) => Ok(Step::Complete(Bundle {
                old_pid: self.old_pid,
                lock,
                admin: [a, m, r],
                pods: std::mem::take(&mut self.pods),
            })),
            _ => Err(HandoverError::Incomplete("checked above".into())),
        }
    }
}

fn put_once(
    slot: &mut Option<OwnedFd>,
    fd: Option<OwnedFd>,
    what: &str,
) -> Result<(), HandoverError> {
    if slot.is_some() {
        return Err(HandoverError::Duplicate { what: what.into() });
    }
    *slot = Some(fd.ok_or(ProtoError::FdCount {
        msg: "lock/admin",
        want: 1,
        got: 0,
    })?);
    Ok(())
}

#[cfg(test)]
mod tests;
