//! The decisions of the io_uring relay, apart from the ring: what one
//! direction of a connection submits next after each completion
//! ([`OneWay`]), and how a connection's two directions end. [`super::uring`]
//! does the I/O.
//!
//! One buffer per direction, used serially: receive into it, send all of
//! it, receive again (as `copy_bidirectional` does with its buffer). With
//! SEND_ZC the kernel may still read the buffer after the send completes,
//! until its notification arrives, so the next receive waits for every
//! notification of the sends before it.

/// How the io_uring relay moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringIo {
    /// IORING_OP_RECV / IORING_OP_SEND on a plain buffer.
    Plain,
    /// IORING_OP_READ_FIXED / IORING_OP_WRITE_FIXED on registered buffers:
    /// no page pinning per operation.
    Fixed,
    /// READ_FIXED in, IORING_OP_SEND_ZC from the registered buffer out.
    ZeroCopy,
}

impl UringIo {
    /// Whether its buffers are registered with the ring.
    pub fn registered(self) -> bool {
        self != UringIo::Plain
    }
}

/// What one direction asks the ring to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Receive up to the whole buffer.
    Recv,
    /// Send `len` bytes of the buffer from offset `at`.
    Send { at: usize, len: usize },
    /// Nothing until another completion (a SEND_ZC notification) arrives.
    Wait,
    /// The source said EOF and everything is sent: half-close the
    /// destination; this direction is done.
    ShutdownWrite,
    /// This direction failed with errno; the connection must end.
    Fail(i32),
}

/// A completion of one direction's operation, as the ring reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// A receive's result (bytes to send on, 0 at EOF, or -errno).
    Recv(i32),
    /// A receive that leaves nothing to send yet (TLS: part of a record).
    Empty,
    /// A send's result (bytes or -errno); `notif_follows` when the kernel
    /// flagged IORING_CQE_F_MORE (SEND_ZC: a notification will come).
    Send { res: i32, notif_follows: bool },
    /// A SEND_ZC notification: the kernel is done with the buffer;
    /// `copied` when it reports it copied the data after all
    /// (IORING_NOTIF_USAGE_ZC_COPIED).
    Notif { copied: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Receiving,
    /// Sending buffer[at..end].
    Sending {
        at: usize,
        end: usize,
    },
    /// All sent; waiting for SEND_ZC notifications before reusing the buffer.
    Draining,
    /// EOF passed on, or failed.
    Finished,
}

/// One direction of a relayed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneWay {
    state: State,
    /// SEND_ZC notifications still to come.
    notifs_due: u32,
    /// EOF received while notifications were due: shut down after them.
    eof: bool,
    /// Bytes sent on.
    pub moved: u64,
    /// SEND_ZC notifications received, and how many said the kernel copied.
    pub notifs: u64,
    pub notifs_copied: u64,
}

impl Default for OneWay {
    fn default() -> Self {
        OneWay::new()
    }
}

impl OneWay {
    /// A direction about to receive (submit [`Next::Recv`] first).
    pub fn new() -> OneWay {
        OneWay {
            state: State::Receiving,
            notifs_due: 0,
            eof: false,
            moved: 0,
            notifs: 0,
            notifs_copied: 0,
        }
    }

    /// Whether this direction has nothing more to do (notifications included).
    pub fn finished(&self) -> bool {
        self.state == State::Finished && self.notifs_due == 0
    }

    /// The next step after `done`.
    pub fn complete(&mut self, done: Done) -> Next {
        match (self.state, done) {
            (_, Done::Notif { copied }) => {
                self.notifs_due = self.notifs_due.saturating_sub(1);
                self.notifs += 1;
                self.notifs_copied += u64::from(copied);
                match (self.state, self.notifs_due) {
                    (State::Draining, 0) if self.eof => {
                        self.state = State::Finished;
                        Next::ShutdownWrite
                    }
                    (State::Draining, 0) => {
                        self.state = State::Receiving;
                        Next::Recv
                    }
                    _ => Next::Wait,
                }
            }
            (State::Receiving, Done::Recv(n)) if n > 0 => {
                self.state = State::Sending {
                    at: 0,
                    end: n as usize,
                };
                Next::Send {
                    at: 0,
                    len: n as usize,
                }
            }
            (State::Receiving, Done::Recv(0)) => self.eof_seen(),
            (State::Receiving, Done::Empty) => Next::Recv,
            (State::Receiving, Done::Recv(e)) if retry(e) => Next::Recv,
            (State::Sending { at, end }, Done::Send { res, notif_follows }) => {
                self.notifs_due += u32::from(notif_follows);
                match res {
                    n if n > 0 => {
                        self.moved += n as u64;
                        let at = at + n as usize;
                        if at < end {
                            self.state = State::Sending { at, end };
                            Next::Send { at, len: end - at }
                        } else if self.notifs_due > 0 {
                            self.state = State::Draining;
                            Next::Wait
                        } else {
                            self.state = State::Receiving;
                            Next::Recv
                        }
                    }
                    e if retry(e) => Next::Send { at, len: end - at },
                    // A send that moved nothing without an error would loop forever.
                    0 => self.fail(libc::EPIPE),
                    e => self.fail(-e),
                }
            }
            (_, Done::Recv(e)) | (_, Done::Send { res: e, .. }) if e < 0 => self.fail(-e),
            // A completion this state never asked for: a bug in the relay,
            // reported as an error on the connection rather than a panic.
            _ => self.fail(libc::EPROTO),
        }
    }

    fn eof_seen(&mut self) -> Next {
        self.eof = true;
        if self.notifs_due > 0 {
            self.state = State::Draining;
            Next::Wait
        } else {
            self.state = State::Finished;
            Next::ShutdownWrite
        }
    }

    fn fail(&mut self, errno: i32) -> Next {
        self.state = State::Finished;
        Next::Fail(errno)
    }
}

/// Results worth resubmitting the same operation for.
fn retry(res: i32) -> bool {
    res == -libc::EINTR || res == -libc::EAGAIN
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPIPE: i32 = libc::EPIPE;

    /// (completions fed in order, the Next after each, finished at the end)
    #[test]
    fn one_way_steps() {
        let send = |res, notif_follows| Done::Send { res, notif_follows };
        let notif = Done::Notif { copied: false };
        type Case = (&'static str, Vec<Done>, Vec<Next>, bool);
        let cases: Vec<Case> = vec![
            (
                "receive, send all, receive again, EOF",
                vec![Done::Recv(100), send(100, false), Done::Recv(0)],
                vec![
                    Next::Send { at: 0, len: 100 },
                    Next::Recv,
                    Next::ShutdownWrite,
                ],
                true,
            ),
            (
                "a short send sends the rest",
                vec![Done::Recv(100), send(60, false), send(40, false)],
                vec![
                    Next::Send { at: 0, len: 100 },
                    Next::Send { at: 60, len: 40 },
                    Next::Recv,
                ],
                false,
            ),
            (
                "EAGAIN and EINTR resubmit the same operation",
                vec![
                    Done::Recv(-libc::EAGAIN),
                    Done::Recv(10),
                    send(-libc::EINTR, false),
                    send(10, false),
                ],
                vec![
                    Next::Recv,
                    Next::Send { at: 0, len: 10 },
                    Next::Send { at: 0, len: 10 },
                    Next::Recv,
                ],
                false,
            ),
            (
                "SEND_ZC: the buffer is reused only after its notification",
                vec![Done::Recv(10), send(10, true), notif],
                vec![Next::Send { at: 0, len: 10 }, Next::Wait, Next::Recv],
                false,
            ),
            (
                "SEND_ZC: two partial sends need both notifications",
                vec![Done::Recv(10), send(4, true), send(6, true), notif, notif],
                vec![
                    Next::Send { at: 0, len: 10 },
                    Next::Send { at: 4, len: 6 },
                    Next::Wait,
                    Next::Wait,
                    Next::Recv,
                ],
                false,
            ),
            (
                "SEND_ZC: a notification may come before the next send completes",
                vec![Done::Recv(10), send(4, true), notif, send(6, true), notif],
                vec![
                    Next::Send { at: 0, len: 10 },
                    Next::Send { at: 4, len: 6 },
                    Next::Wait,
                    Next::Wait,
                    Next::Recv,
                ],
                false,
            ),
            (
                "EOF while a notification is due: shut down after it",
                vec![Done::Recv(10), send(10, true), notif, Done::Recv(0)],
                vec![
                    Next::Send { at: 0, len: 10 },
                    Next::Wait,
                    Next::Recv,
                    Next::ShutdownWrite,
                ],
                true,
            ),
            (
                "TLS: a partial record leaves nothing to send: receive more",
                vec![Done::Empty, Done::Recv(7), send(7, false)],
                vec![Next::Recv, Next::Send { at: 0, len: 7 }, Next::Recv],
                false,
            ),
            (
                "a reset source fails the direction",
                vec![Done::Recv(-libc::ECONNRESET)],
                vec![Next::Fail(libc::ECONNRESET)],
                true,
            ),
            (
                "a closed destination fails it",
                vec![Done::Recv(5), send(-EPIPE, false)],
                vec![Next::Send { at: 0, len: 5 }, Next::Fail(EPIPE)],
                true,
            ),
            (
                "a failed SEND_ZC still owes its notification",
                vec![Done::Recv(5), send(-EPIPE, true)],
                vec![Next::Send { at: 0, len: 5 }, Next::Fail(EPIPE)],
                false,
            ),
            (
                "a send that moved nothing is an error, not a loop",
                vec![Done::Recv(5), send(0, false)],
                vec![Next::Send { at: 0, len: 5 }, Next::Fail(EPIPE)],
                true,
            ),
            (
                "a completion out of turn is an error, not a panic",
                vec![send(5, false)],
                vec![Next::Fail(libc::EPROTO)],
                true,
            ),
        ];
        for (what, dones, wants, finished) in cases {
            let mut w = OneWay::new();
            let got: Vec<Next> = dones.iter().map(|&d| w.complete(d)).collect();
            assert_eq!(got, wants, "{what}");
            assert_eq!(w.finished(), finished, "{what}: finished");
        }
    }

    #[test]
    fn counts_bytes_and_copied_notifications() {
        let mut w = OneWay::new();
        w.complete(Done::Recv(10));
        w.complete(Done::Send {
            res: 10,
            notif_follows: true,
        });
        w.complete(Done::Notif { copied: true });
        w.complete(Done::Recv(3));
        w.complete(Done::Send {
            res: 3,
            notif_follows: true,
        });
        w.complete(Done::Notif { copied: false });
        assert_eq!((w.moved, w.notifs, w.notifs_copied), (13, 2, 1));
    }
}
