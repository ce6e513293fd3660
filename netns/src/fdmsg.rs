//! Small JSON messages, each with at most one fd, over a [`SeqpacketConn`]:
//! the wire of the proxies' hand-over of their listening sockets to a new
//! process (node proxy and waypoint each define their own messages).
//!
//! JSON because the messages are few and small (one per listener) and a
//! person can read them in a trace; one message per packet, so there is no
//! framing; an fd arrives with exactly the message it belongs to, and every
//! fd received is either returned with its message or closed here, never
//! leaked.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::seqpacket::SeqpacketConn;

/// Largest message; the hand-over's are far smaller.
pub const MAX_PACKET: usize = 16 * 1024;

/// A message type of one conversation.
pub trait FdMessage: Serialize + DeserializeOwned {
    /// The message's name, for errors.
    fn name(&self) -> &'static str;
    /// Whether the message carries exactly one fd (else none).
    fn carries_fd(&self) -> bool;
}

#[derive(Debug, thiserror::Error)]
pub enum FdMsgError {
    #[error("hand-over message longer than {MAX_PACKET} bytes (cut short)")]
    Truncated,
    #[error("hand-over message came with more fds than it may carry (the extra ones were closed)")]
    FdsTruncated,
    #[error("malformed hand-over message: {0}")]
    Malformed(String),
    #[error("hand-over message {msg} came with {got} fd(s), expected {want}")]
    FdCount {
        msg: &'static str,
        want: usize,
        got: usize,
    },
    #[error("the other side closed the hand-over socket {when}")]
    Closed { when: &'static str },
    #[error("no hand-over message within {secs}s {when}")]
    Timeout { secs: u64, when: &'static str },
    #[error("hand-over socket i/o: {0}")]
    Io(#[from] io::Error),
}

/// Parses one packet.
pub fn decode<M: FdMessage>(
    data: &[u8],
    mut fds: Vec<OwnedFd>,
    truncated: bool,
    fds_truncated: bool,
) -> Result<(M, Option<OwnedFd>), FdMsgError> {
    if truncated {
        return Err(FdMsgError::Truncated);
    }
    if fds_truncated {
        return Err(FdMsgError::FdsTruncated);
    }
    let msg: M = serde_json::from_slice(data).map_err(|e| FdMsgError::Malformed(e.to_string()))?;
    let want = usize::from(msg.carries_fd());
    if fds.len() != want {
        return Err(FdMsgError::FdCount {
            msg: msg.name(),
            want,
            got: fds.len(),
        });
    }
    Ok((msg, fds.pop()))
}

/// Sends `msg`, with `fd` attached when given. A peer that went away is
/// [`FdMsgError::Closed`].
pub async fn send<M: FdMessage>(
    conn: &SeqpacketConn,
    msg: &M,
    fd: Option<&OwnedFd>,
) -> Result<(), FdMsgError> {
    use std::io::ErrorKind as K;
    // Serializing these plain message types cannot fail.
    let data = serde_json::to_vec(msg).unwrap_or_default();
    match conn.send(&data, fd.map(|f| f.as_fd())).await {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind(), K::BrokenPipe | K::ConnectionReset) => {
            Err(FdMsgError::Closed {
                when: "while we were sending",
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Receives one message within `timeout`; `when` says where in the
/// conversation, for errors.
pub async fn recv<M: FdMessage>(
    conn: &SeqpacketConn,
    timeout: Duration,
    when: &'static str,
) -> Result<(M, Option<OwnedFd>), FdMsgError> {
    let packet = tokio::time::timeout(timeout, conn.recv(MAX_PACKET))
        .await
        .map_err(|_| FdMsgError::Timeout {
            secs: timeout.as_secs(),
            when,
        })?
        .map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionReset => FdMsgError::Closed { when },
            _ => e.into(),
        })?
        .ok_or(FdMsgError::Closed { when })?;
    decode(
        &packet.data,
        packet.fds,
        packet.truncated,
        packet.fds_truncated,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    enum M {
        Plain { n: u32 },
        WithFd,
    }

    impl FdMessage for M {
        fn name(&self) -> &'static str {
            match self {
                M::Plain { .. } => "plain",
                M::WithFd => "with_fd",
            }
        }
        fn carries_fd(&self) -> bool {
            matches!(self, M::WithFd)
        }
    }

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn packets_decode_only_with_the_fds_they_may_carry() {
        // (data, fds attached, truncated, fds truncated, expected)
        type Case = (
            &'static [u8],
            usize,
            bool,
            bool,
            Result<&'static str, &'static str>,
        );
        let cases: [Case; 8] = [
            (br#"{"type":"plain","n":1}"#, 0, false, false, Ok("plain")),
            (br#"{"type":"with_fd"}"#, 1, false, false, Ok("with_fd")),
            (
                br#"{"type":"with_fd"}"#,
                0,
                false,
                false,
                Err("with 0 fd(s), expected 1"),
            ),
            (
                br#"{"type":"plain","n":1}"#,
                1,
                false,
                false,
                Err("with 1 fd(s), expected 0"),
            ),
            (
                br#"{"type":"plain","n":1,"x":2}"#,
                0,
                false,
                false,
                Err("unknown field"),
            ),
            (b"{not json", 0, false, false, Err("malformed")),
            (
                br#"{"type":"plain","n":1}"#,
                0,
                true,
                false,
                Err("cut short"),
            ),
            (
                br#"{"type":"with_fd"}"#,
                1,
                false,
                true,
                Err("extra ones were closed"),
            ),
        ];
        for (data, nfds, trunc, fdtrunc, want) in cases {
            let fds = (0..nfds).map(|_| fd()).collect();
            let got = decode::<M>(data, fds, trunc, fdtrunc);
            match (got, want) {
                (Ok((m, f)), Ok(name)) => {
                    assert_eq!(m.name(), name);
                    assert_eq!(f.is_some(), m.carries_fd());
                }
                (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{e} !~ {text}"),
                (got, want) => panic!(
                    "{}: got {got:?}, want {want:?}",
                    String::from_utf8_lossy(data)
                ),
            }
        }
    }

    #[tokio::test]
    async fn a_message_and_its_fd_cross_and_a_closed_peer_is_named() {
        let (a, b) = SeqpacketConn::pair().unwrap();
        send(&a, &M::WithFd, Some(&fd())).await.unwrap();
        let (m, f) = recv::<M>(&b, Duration::from_secs(5), "in the test")
            .await
            .unwrap();
        assert_eq!((m, f.is_some()), (M::WithFd, true));
        let e = recv::<M>(&b, Duration::from_millis(10), "waiting")
            .await
            .unwrap_err();
        assert!(matches!(e, FdMsgError::Timeout { .. }), "{e}");
        drop(a);
        let e = recv::<M>(&b, Duration::from_secs(5), "after the close")
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the other side closed the hand-over socket after the close"
        );
    }
}
