//! Enrolment retried for a pod whose capture port is held only by the
//! TIME_WAIT sockets of an exited proxy ([`PodError::Lingering`]): a node
//! moving from Istio's ztunnel to this proxy meets it for every pod of its
//! first snapshot, and the kernel frees the ports within 60 s. The agent
//! gets the error in its Ack, and this proxy enrolls the pod itself once
//! the port is free, rather than leave the pod's captured traffic refused
//! until the agent happens to send it again.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::pods::{PodError, Pods};

/// How often a lingering port is tried again.
pub const EVERY: Duration = Duration::from_secs(2);

/// How long: TIME_WAIT lasts 60 s on Linux, plus a margin.
pub const FOR: Duration = Duration::from_secs(70);

/// What to do after an enrolment attempt failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Try again after [`EVERY`].
    Retry,
    /// Give up: the error is not one time cures, or time is up.
    Stop,
}

/// Decides whether a failed attempt, `elapsed` after the first, is tried
/// again.
pub fn after(error: &PodError, elapsed: Duration) -> Next {
    match error {
        PodError::Lingering { .. } if elapsed < FOR => Next::Retry,
        _ => Next::Stop,
    }
}

/// The pods being retried, by ZDS uid: a later Add, a Del, or a snapshot
/// without the pod cancels its retry.
#[derive(Default)]
pub struct Retries {
    /// Each retry's token, and a number that tells it from a later retry
    /// of the same uid.
    pending: Arc<Mutex<HashMap<String, (u64, CancellationToken)>>>,
    started: AtomicU64,
}

impl Retries {
    /// Stops the retry of `uid`, if any.
    pub fn cancel(&self, uid: &str) {
        if let Some((_, token)) = self.lock().remove(uid) {
            token.cancel();
        }
    }

    /// Stops every retry whose pod `keep` does not name.
    pub fn cancel_unless(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|uid, (_, token)| {
            let kept = keep(uid);
            if !kept {
                token.cancel();
            }
            kept
        });
    }

    /// Retries enrolling `uid` (its netns `netns`) every [`EVERY`] until it
    /// succeeds, fails otherwise, [`FOR`] has passed, or it is cancelled.
    pub fn start(&self, pods: Arc<Pods>, uid: String, workload: String, netns: OwnedFd) {
        let token = CancellationToken::new();
        let id = self.started.fetch_add(1, Ordering::Relaxed);
        if let Some((_, old)) = self.lock().insert(uid.clone(), (id, token.clone())) {
            old.cancel();
        }
        let pending = self.pending.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(EVERY) => {}
                }
                match pods.add_zds(&uid, &workload, netns.as_fd()) {
                    Ok(()) => break Ok(()),
                    Err(e) => {
                        if after(&e, started.elapsed()) == Next::Stop {
                            break Err(e.to_string());
                        }
                    }
                }
            };
            // Only the retry still registered under the uid removes it.
            let mut map = pending.lock().unwrap_or_else(PoisonError::into_inner);
            if map.get(&uid).is_some_and(|(i, _)| *i == id) {
                map.remove(&uid);
            }
            drop(map);
            match outcome {
                Ok(()) => {
                    info!(pod = %uid, after = ?started.elapsed(), "pod enrolled: its capture port was freed")
                }
                Err(error) => {
                    warn!(pod = %uid, %error, "gave up enrolling the pod; the agent must send it again")
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, CancellationToken)>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn only_a_lingering_port_is_retried_and_only_for_a_while() {
        let addr: SocketAddr = "198.18.0.1:15001".parse().unwrap();
        let lingering = PodError::Lingering {
            uid: "p".into(),
            kind: "outbound",
            addr,
            sockets: 3,
        };
        let in_use = PodError::InUse {
            uid: "p".into(),
            kind: "outbound",
            addr,
            holders: "pid 1".into(),
        };
        #[rustfmt::skip]
        let cases = [
            (&lingering, Duration::ZERO, Next::Retry),
            (&lingering, Duration::from_secs(59), Next::Retry),
            (&lingering, FOR, Next::Stop),
            (&in_use, Duration::ZERO, Next::Stop),
            (&PodError::Frozen, Duration::ZERO, Next::Stop),
        ];
        for (error, elapsed, want) in cases {
            assert_eq!(after(error, elapsed), want, "{error} after {elapsed:?}");
        }
    }
}
