//! The part of a proxy's hand-over to a new process that does not depend on
//! what is handed over: the opening (hello, then an offer or a refusal), the
//! close (the new side's `ready` or `abort`, the old side's `released`), and
//! the old side's loop that serves hand-over requests until one succeeds.
//! The node proxy and the waypoint each define their messages (what goes
//! between the offer and `done`) and implement [`Conversation`] for them.
//!
//! ```text
//! new -> old  hello {version, pid}
//! old -> new  offer {...}            or refuse {reason}
//! old -> new  ... the listeners, each with its fd ...
//! old -> new  done
//! new -> old  ready                  (new accepts on every listener now)
//!             or abort {reason}      (new gives up; old keeps serving)
//! old -> new  released               (old stops accepting now, and drains)
//! ```

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::fdmsg::{self, FdMessage, FdMsgError};
use crate::seqpacket::{SeqpacketConn, SeqpacketListener};

/// Any message other than the payload must come within this.
pub const MSG_TIMEOUT: Duration = Duration::from_secs(10);
/// The old process waits this long for `ready` after sending everything.
/// The new side gives up on its own start-up well before (it says so with
/// `abort`), so the new side always decides first.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The framing messages of one proxy's hand-over protocol.
pub trait Conversation: FdMessage {
    /// The protocol version both sides must speak.
    const VERSION: u32;
    fn hello(pid: u32) -> Self;
    fn refuse(reason: String) -> Self;
    fn abort(reason: String) -> Self;
    fn ready() -> Self;
    fn released() -> Self;
    /// `(version, pid)` if this is a hello.
    fn as_hello(&self) -> Option<(u32, u32)>;
    /// `Ok` for ready, `Err(reason)` for abort, `None` for anything else.
    fn as_verdict(&self) -> Option<Result<(), &str>>;
    fn is_released(&self) -> bool;
}

/// Implements [`Conversation`] for a message enum with the framing
/// variants `Hello { version, pid }`, `Refuse { reason }`, `Abort { reason }`,
/// `Ready` and `Released`, at protocol version `$version`.
#[macro_export]
macro_rules! impl_conversation {
    ($msg:ident, $version:expr) => {
        impl $crate::handover::Conversation for $msg {
            const VERSION: u32 = $version;
            fn hello(pid: u32) -> Self {
                $msg::Hello {
                    version: $version,
                    pid,
                }
            }
            fn refuse(reason: String) -> Self {
                $msg::Refuse { reason }
            }
            fn abort(reason: String) -> Self {
                $msg::Abort { reason }
            }
            fn ready() -> Self {
                $msg::Ready
            }
            fn released() -> Self {
                $msg::Released
            }
            fn as_hello(&self) -> Option<(u32, u32)> {
                match self {
                    $msg::Hello { version, pid } => Some((*version, *pid)),
                    _ => None,
                }
            }
            fn as_verdict(&self) -> Option<Result<(), &str>> {
                match self {
                    $msg::Ready => Some(Ok(())),
                    $msg::Abort { reason } => Some(Err(reason)),
                    _ => None,
                }
            }
            fn is_released(&self) -> bool {
                matches!(self, $msg::Released)
            }
        }
    };
}

#[derive(Debug, thiserror::Error)]
pub enum ConvError {
    /// A malformed message, a timeout, a closed socket.
    #[error(transparent)]
    Wire(#[from] FdMsgError),
    #[error("the running process refused the hand-over: {0}")]
    Refused(String),
    #[error("unexpected hand-over message {got} {when}")]
    Unexpected {
        got: &'static str,
        when: &'static str,
    },
    #[error("the new process gave up: {0}")]
    Aborted(String),
    #[error(
        "hand-over socket {path}: {source}; is the running process's --handover-socket this path?"
    )]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Receives a message of `M`.
pub async fn recv<M: FdMessage>(
    conn: &SeqpacketConn,
    timeout: Duration,
    when: &'static str,
) -> Result<(M, Option<OwnedFd>), ConvError> {
    Ok(fdmsg::recv(conn, timeout, when).await?)
}

/// Sends a message of `M`.
pub async fn send<M: FdMessage>(
    conn: &SeqpacketConn,
    msg: &M,
    fd: Option<&OwnedFd>,
) -> Result<(), ConvError> {
    Ok(fdmsg::send(conn, msg, fd).await?)
}

/// The new process: connects to the running one's socket and says hello.
pub async fn open<M: Conversation>(path: &Path) -> Result<SeqpacketConn, ConvError> {
    let conn = SeqpacketConn::connect(path).map_err(|source| ConvError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    send(&conn, &M::hello(std::process::id()), None).await?;
    Ok(conn)
}

/// The new process: opens the conversation at `path` and feeds each
/// message with its fd to `on` until it says the hand-over is complete
/// (`Some`). The old process keeps serving until [`confirm`].
pub async fn take<M, B, E>(
    path: &Path,
    mut on: impl FnMut(M, Option<OwnedFd>) -> Result<Option<B>, E>,
) -> Result<(B, SeqpacketConn), E>
where
    M: Conversation,
    E: From<ConvError>,
{
    let conn = open::<M>(path).await?;
    loop {
        let (msg, fd) = recv::<M>(&conn, MSG_TIMEOUT, "while receiving the listeners").await?;
        if let Some(bundle) = on(msg, fd)? {
            return Ok((bundle, conn));
        }
    }
}

/// The new process gives up before serving: the old one keeps on. Best
/// effort: the old one serves on anyway once the socket closes.
pub async fn abort<M: Conversation>(conn: &SeqpacketConn, reason: &str) {
    if let Err(e) = send(conn, &M::abort(reason.into()), None).await {
        tracing::warn!(error = %e, "could not tell the old process that the hand-over is off (it keeps serving anyway once the socket closes)");
    }
}

/// The new process, accepting on every listener now: tells the old one to
/// stop accepting, and waits for it to say it has.
pub async fn confirm<M: Conversation>(conn: &SeqpacketConn) -> Result<(), ConvError> {
    send(conn, &M::ready(), None).await?;
    let (msg, _) = recv::<M>(conn, MSG_TIMEOUT, "while waiting for released").await?;
    if msg.is_released() {
        Ok(())
    } else {
        Err(ConvError::Unexpected {
            got: msg.name(),
            when: "while waiting for released",
        })
    }
}

/// The old process's answer to a new connection's first message: `Ok` to
/// send everything, `Err(reason)` to refuse and keep serving. `draining`:
/// this process is stopping already, so it has nothing to hand.
pub fn on_hello<M: Conversation>(msg: &M, draining: bool) -> Result<(), String> {
    match msg.as_hello() {
        Some((version, _)) if version != M::VERSION => Err(format!(
            "hand-over version {version} is not spoken here (this process speaks {})",
            M::VERSION
        )),
        Some(_) if draining => Err("this process is already draining".into()),
        Some(_) => Ok(()),
        None => Err(format!("expected hello, got {}", msg.name())),
    }
}

/// The old process's reading of the new one's verdict, after `done`.
pub fn on_verdict<M: Conversation>(msg: &M) -> Result<(), ConvError> {
    match msg.as_verdict() {
        Some(Ok(())) => Ok(()),
        Some(Err(reason)) => Err(ConvError::Aborted(reason.into())),
        None => Err(ConvError::Unexpected {
            got: msg.name(),
            when: "while waiting for ready",
        }),
    }
}

/// The old process: reads the hello and answers a refusal itself, with
/// the reason, when the hello is not one it can take (best effort: the
/// refusal stands whether or not it lands). Returns the new process's pid.
pub async fn greet<M: Conversation>(
    conn: &SeqpacketConn,
    draining: bool,
) -> Result<u32, ConvError> {
    let hello = match recv::<M>(conn, MSG_TIMEOUT, "while waiting for hello").await {
        Ok((hello, _)) => hello,
        Err(e) => {
            let _ = send(conn, &M::refuse(e.to_string()), None).await;
            return Err(e);
        }
    };
    if let Err(reason) = on_hello(&hello, draining) {
        let _ = send(conn, &M::refuse(reason.clone()), None).await;
        return Err(ConvError::Refused(reason));
    }
    Ok(hello.as_hello().map_or(0, |(_, pid)| pid))
}

/// The old process, after `done`: waits for the verdict and, on `ready`,
/// says `released` (best effort: the new process serves either way).
pub async fn finish<M: Conversation>(conn: &SeqpacketConn) -> Result<(), ConvError> {
    let (verdict, _) = recv::<M>(conn, READY_TIMEOUT, "while waiting for ready").await?;
    on_verdict(&verdict)?;
    let _ = send(conn, &M::released(), None).await;
    Ok(())
}

/// The old process: serves hand-over requests on `listener`, each with
/// `attempt` (which returns the new process's pid), until one succeeds —
/// then sets `handed_over` and returns the new pid, and the caller starts
/// its drain — or `stop` resolves (`None`). A failed attempt goes to
/// `failed` (to log it, and undo what the attempt did) and leaves this
/// process serving.
pub async fn serve<F, Fut, E>(
    listener: SeqpacketListener,
    stop: impl Future<Output = ()>,
    handed_over: &AtomicBool,
    mut attempt: F,
    mut failed: impl FnMut(E),
) -> Option<u32>
where
    F: FnMut(SeqpacketConn) -> Fut,
    Fut: Future<Output = Result<u32, E>>,
{
    let mut stop = std::pin::pin!(stop);
    loop {
        let conn = tokio::select! {
            _ = &mut stop => return None,
            c = listener.accept() => match c {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "hand-over socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let outcome = tokio::select! {
            _ = &mut stop => return None,
            r = attempt(conn) => r,
        };
        match outcome {
            Ok(new_pid) => {
                handed_over.store(true, Ordering::Release);
                return Some(new_pid);
            }
            Err(e) => failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    enum M {
        Hello { version: u32, pid: u32 },
        Refuse { reason: String },
        Done,
        Ready,
        Abort { reason: String },
        Released,
    }

    impl FdMessage for M {
        fn name(&self) -> &'static str {
            match self {
                M::Hello { .. } => "hello",
                M::Refuse { .. } => "refuse",
                M::Done => "done",
                M::Ready => "ready",
                M::Abort { .. } => "abort",
                M::Released => "released",
            }
        }
        fn carries_fd(&self) -> bool {
            false
        }
    }

    crate::impl_conversation!(M, 3);

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

    /// The old side's attempt in these tests: greet, `done`, the verdict.
    async fn attempt(conn: SeqpacketConn) -> Result<u32, ConvError> {
        let pid = greet::<M>(&conn, false).await?;
        send(&conn, &M::Done, None).await?;
        finish::<M>(&conn).await?;
        Ok(pid)
    }

    /// The new side: hello, wait for `done`, then `ready` or `abort`.
    async fn taker(path: &Path, give_up: Option<&str>) -> Result<(), ConvError> {
        let conn = open::<M>(path).await?;
        let (done, _) = recv::<M>(&conn, MSG_TIMEOUT, "waiting for done").await?;
        assert_eq!(done, M::Done);
        match give_up {
            Some(reason) => {
                abort::<M>(&conn, reason).await;
                Ok(())
            }
            None => confirm::<M>(&conn).await,
        }
    }

    #[tokio::test]
    async fn the_old_side_serves_on_after_failed_attempts_and_hands_over_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sock");
        let listener = SeqpacketListener::bind(&path).unwrap();
        let handed = AtomicBool::new(false);
        let failures = std::cell::RefCell::new(Vec::new());
        let old = serve(
            listener,
            std::future::pending(),
            &handed,
            attempt,
            |e: ConvError| failures.borrow_mut().push(e.to_string()),
        );
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
            taker(&path, None).await.unwrap();
        };
        let (pid, ()) = tokio::join!(old, new);
        assert_eq!(pid, Some(std::process::id()));
        assert!(handed.load(Ordering::Acquire));
        let failures = failures.into_inner();
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
        let handed = AtomicBool::new(false);
        let got = serve(listener, async {}, &handed, attempt, |_: ConvError| {}).await;
        assert_eq!(got, None);
        assert!(!handed.load(Ordering::Acquire));
    }
}
