//! The part of a proxy's hand-over to a new process that does not depend on
//! what is handed over: the opening (hello, then an offer or a refusal), the
//! close (the new side's `ready` or `abort`, the old side's `released`), and
//! the old side's loop that serves hand-over requests until one succeeds.
//! The node proxy and the waypoint each declare their messages (what goes
//! between the offer and `done`) with [`conversation!`](crate::conversation),
//! and implement [`Give`] (what the old side sends) and [`Take`] (how the
//! new side checks and collects it).
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
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::fdmsg::{self, FdMessage, FdMsgError};
use crate::seqpacket::{SeqpacketConn, SeqpacketListener};

/// Any message other than the payload must come within this.
pub const MSG_TIMEOUT: Duration = Duration::from_secs(10);
/// The old process waits this long for `ready` after sending everything.
/// The new side gives up on its own start-up well before (it says so with
/// `abort`), so the new side always decides first.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The framing messages of one proxy's hand-over protocol. Declare the
/// message enum with [`conversation!`](crate::conversation), which
/// implements this.
pub trait Conversation: FdMessage {
    /// The protocol version both sides must speak.
    const VERSION: u32;
    fn hello(pid: u32) -> Self;
    fn refuse(reason: String) -> Self;
    fn done() -> Self;
    fn abort(reason: String) -> Self;
    fn ready() -> Self;
    fn released() -> Self;
    /// `(version, pid)` if this is a hello.
    fn as_hello(&self) -> Option<(u32, u32)>;
    /// `Ok` for ready, `Err(reason)` for abort, `None` for anything else.
    fn as_verdict(&self) -> Option<Result<(), &str>>;
    fn is_released(&self) -> bool;
}

/// Declares one proxy's hand-over message enum: the framing messages
/// (`hello {version, pid}`, `offer {version, pid, ...}`, `refuse {reason}`,
/// `done`, `ready`, `abort {reason}`, `released`) around the proxy's own,
/// each of which carries exactly one fd. Each message is one JSON object
/// tagged `type` with its snake_case name, unknown fields refused; the
/// variants are declared in conversation order (hello, offer, refuse, the
/// proxy's own, done, ...), which is also the order serde lists them in an
/// "unknown variant" error. Implements [`FdMessage`] and [`Conversation`];
/// the calling crate needs `serde`.
///
/// ```text
/// trellis_netns::conversation! {
///     /// One message.
///     pub enum Msg, version 1;
///     offer { listeners: u32 }
///     with_fd {
///         Listener { port: u16 } => "listener",
///     }
/// }
/// ```
#[macro_export]
macro_rules! conversation {
    (
        $(#[$meta:meta])*
        $vis:vis enum $msg:ident, version $version:expr;
        offer { $($(#[$ometa:meta])* $ofield:ident : $oty:ty),* $(,)? }
        with_fd {
            $(
                $(#[$vmeta:meta])*
                $variant:ident $({ $($(#[$fmeta:meta])* $field:ident : $fty:ty),* $(,)? })? => $name:literal
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "snake_case", tag = "type", deny_unknown_fields)]
        $vis enum $msg {
            Hello {
                version: u32,
                pid: u32,
            },
            Offer {
                version: u32,
                pid: u32,
                $($(#[$ometa])* $ofield: $oty,)*
            },
            Refuse {
                reason: String,
            },
            $(
                $(#[$vmeta])*
                $variant $({ $($(#[$fmeta])* $field: $fty,)* })?,
            )*
            Done,
            Ready,
            Abort {
                reason: String,
            },
            Released,
        }

        impl $crate::fdmsg::FdMessage for $msg {
            fn name(&self) -> &'static str {
                match self {
                    $msg::Hello { .. } => "hello",
                    $msg::Offer { .. } => "offer",
                    $msg::Refuse { .. } => "refuse",
                    $($msg::$variant { .. } => $name,)*
                    $msg::Done => "done",
                    $msg::Ready => "ready",
                    $msg::Abort { .. } => "abort",
                    $msg::Released => "released",
                }
            }

            fn carries_fd(&self) -> bool {
                !matches!(
                    self,
                    $msg::Hello { .. }
                        | $msg::Offer { .. }
                        | $msg::Refuse { .. }
                        | $msg::Done
                        | $msg::Ready
                        | $msg::Abort { .. }
                        | $msg::Released
                )
            }
        }

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
            fn done() -> Self {
                $msg::Done
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

/// What the new process's state machine says after a message.
#[derive(Debug)]
pub enum Step<B> {
    /// Read the next message.
    More,
    /// All received and checked.
    Complete(B),
}

/// The new process's side of one proxy's protocol: checks and collects
/// what it is sent, from the offer (or refusal) to `done`.
pub trait Take: Default {
    type Msg: Conversation;
    /// Everything handed over.
    type Bundle;
    type Error: From<ConvError>;
    /// Takes one received message with its fd.
    fn on(
        &mut self,
        msg: Self::Msg,
        fd: Option<OwnedFd>,
    ) -> Result<Step<Self::Bundle>, Self::Error>;
}

/// The old process's side of one proxy's protocol: what it sends after
/// the hello and before `done`.
pub trait Give: Sync {
    type Msg: Conversation;
    type Error: From<ConvError> + std::fmt::Display;
    /// The proxy, as the logs name it ("node proxy").
    const PROXY: &'static str;
    /// This process is stopping already, so it has nothing to hand.
    fn draining(&self) -> bool;
    /// Sends the offer and everything it announces, or a refusal (and
    /// returns the error).
    fn hand(&self, conn: &SeqpacketConn) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Undoes what a failed attempt did; this process serves on after.
    fn failed(&self, _error: &Self::Error) {}
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
/// message with its fd to a fresh `T` until it is complete. The old
/// process keeps serving until [`confirm`].
pub async fn take<T: Take>(path: &Path) -> Result<(T::Bundle, SeqpacketConn), T::Error> {
    let conn = open::<T::Msg>(path).await?;
    let mut taker = T::default();
    loop {
        let (msg, fd) = recv::<T::Msg>(&conn, MSG_TIMEOUT, "while receiving the listeners").await?;
        if let Step::Complete(bundle) = taker.on(msg, fd)? {
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

/// The old process: serves hand-over requests on `listener` until one
/// succeeds — then sets `handed_over`, cancels `stop` (which starts the
/// caller's drain) and returns the new pid — or `stop` is cancelled
/// otherwise (`None`). A failed attempt goes to [`Give::failed`], is
/// logged, and leaves this process serving.
pub async fn serve<G: Give>(
    listener: SeqpacketListener,
    giver: G,
    stop: CancellationToken,
    handed_over: Arc<AtomicBool>,
) -> Option<u32> {
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return None,
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
            _ = stop.cancelled() => return None,
            r = give(conn, &giver) => r,
        };
        match outcome {
            Ok(new_pid) => {
                handed_over.store(true, Ordering::Release);
                tracing::info!(
                    new_pid,
                    "handed over to the new {}; stopped accepting, draining",
                    G::PROXY
                );
                stop.cancel();
                return Some(new_pid);
            }
            Err(e) => {
                giver.failed(&e);
                tracing::warn!(error = %e, "hand-over failed; this {} serves on as before", G::PROXY);
            }
        }
    }
}

/// One hand-over attempt; returns the new process's pid.
async fn give<G: Give>(conn: SeqpacketConn, giver: &G) -> Result<u32, G::Error> {
    let new_pid = greet::<G::Msg>(&conn, giver.draining()).await?;
    tracing::info!(
        new_pid,
        "a new {} asks to take over; handing over the listeners",
        G::PROXY
    );
    giver.hand(&conn).await?;
    send(&conn, &G::Msg::done(), None).await?;
    finish::<G::Msg>(&conn).await?;
    Ok(new_pid)
}

#[cfg(test)]
mod tests;
