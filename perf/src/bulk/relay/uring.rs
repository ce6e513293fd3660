//! Modes `uring*`: the relay's bytes move through one io_uring on one
//! thread, started with the relay, for all its connections. Accepting,
//! SO_ORIGINAL_DST and connecting stay on the tokio thread (once per
//! connection); the two sockets are then handed over here, and the tokio
//! side awaits the connection's end.
//!
//! Why one long-lived thread rather than one per connection (as splice):
//! `perf stat -p` and the context-switch counts see the threads that exist
//! when a run starts, so the relay's whole cost is counted.
//!
//! What each direction submits next is [`super::uring_flow`]'s decision.

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::serve::Copied;
use super::uring_flow::{Done, Next, OneWay, UringIo};
use super::uring_tls::TlsState;

/// Connections one relay carries at once. The buffers are allocated (and,
/// for `uring-fixed`/`uring-zc`, registered and so pinned) up front:
/// 2 × this × the copy buffer. A bench relay carries a few at a time.
pub const MAX_CONNS: usize = 32;
/// Submission queue entries; the completion queue is twice that.
const RING_ENTRIES: u32 = 256;
/// SEND_ZC: have the notification say whether the kernel copied after all.
const IORING_SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// In a SEND_ZC notification's result: the data was copied, not sent from our pages.
const IORING_NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

const WAKE: u64 = u64::MAX;
const OP_RECV: u64 = 1;
const OP_SEND: u64 = 2;

/// What a connection ends with: the bytes moved, and the first error if any.
pub type Outcome = Result<Copied, (Copied, io::Error)>;

struct Job {
    down: TcpStream,
    up: TcpStream,
    /// For the relay's log (peer and destination).
    what: String,
    /// Mode `uring-tls`: the established TLS connection on one of the sockets.
    tls: Option<TlsState>,
    reply: tokio::sync::oneshot::Sender<Outcome>,
}

/// The handle on the ring's thread; clones share it.
#[derive(Clone)]
pub struct UringRelay {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// An eventfd the ring always has a read pending on: written to hand over jobs.
    wake: OwnedFd,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The channel closes first, so the woken ring sees it closed and ends.
        self.jobs.lock().map(|mut j| j.take()).ok();
        write_eventfd(self.wake.as_raw_fd());
    }
}

impl UringRelay {
    /// Sets up the ring (and registers the buffers) on a new thread; fails
    /// if this kernel refuses the ring or the registration.
    pub fn start(io: UringIo, buffer: usize, label: String) -> io::Result<UringRelay> {
        // SAFETY: plain eventfd(2); the descriptor is owned right away.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd just returned this open descriptor, owned by nobody else.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let wake_fd = wake.as_raw_fd();
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("uring".into())
            .spawn(move || {
                // The ring is made on the thread that submits (SINGLE_ISSUER).
                let mut w = match Worker::new(io, buffer, rx, wake_fd, label) {
                    Ok(w) => {
                        let _ = ready_tx.send(Ok(()));
                        w
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if let Err(e) = w.run() {
                    eprintln!("relay {}: the ring failed: {e}", w.label);
                    w.fail_all(&e);
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("the io_uring thread died while starting"))??;
        Ok(UringRelay {
            inner: Arc::new(Inner {
                jobs: Mutex::new(Some(tx)),
                wake,
            }),
        })
    }

    /// Relays `down` and `up` both ways until both ends close, through
    /// `tls` (mode `uring-tls`) on the socket it names.
    pub async fn relay(
        &self,
        down: TcpStream,
        up: TcpStream,
        what: String,
        tls: Option<TlsState>,
    ) -> Outcome {
        let zero = |e| Err((Copied::default(), e));
        let (reply, done) = tokio::sync::oneshot::channel();
        let job = Job {
            down,
            up,
            what,
            tls,
            reply,
        };
        let sent = match self.inner.jobs.lock() {
            Ok(jobs) => jobs.as_ref().map(|tx| tx.send(job).is_ok()),
            Err(_) => None,
        };
        if sent != Some(true) {
            return zero(io::Error::other("the io_uring thread has stopped"));
        }
        write_eventfd(self.inner.wake.as_raw_fd());
        match done.await {
            Ok(outcome) => outcome,
            Err(_) => zero(io::Error::other(
                "the io_uring thread dropped the connection",
            )),
        }
    }
}

fn write_eventfd(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// One relayed connection on the ring.
struct Conn {
    /// [client side, server side]; direction 0 reads socks[0] and writes
    /// socks[1] (up), direction 1 the reverse (down).
    socks: [TcpStream; 2],
    ways: [OneWay; 2],
    /// Completions still to come (a SEND_ZC's notification included).
    inflight: u32,
    error: Option<io::Error>,
    what: String,
    tls: Option<TlsState>,
    reply: Option<tokio::sync::oneshot::Sender<Outcome>>,
}

impl Conn {
    /// Bytes moved each way; with TLS, the plaintext (what the apps sent).
    fn copied(&self) -> Copied {
        match &self.tls {
            Some(t) => Copied {
                up: t.plain[0],
                down: t.plain[1],
            },
            None => Copied {
                up: self.ways[0].moved,
                down: self.ways[1].moved,
            },
        }
    }

    /// Keeps the first error, with the words that explain it.
    fn fail(&mut self, message: String) -> Done {
        self.error
            .get_or_insert_with(|| io::Error::new(io::ErrorKind::InvalidData, message));
        Done::Recv(-libc::EPROTO)
    }

    fn finished(&self) -> bool {
        self.inflight == 0 && self.ways.iter().all(OneWay::finished)
    }
}

/// Every buffer, allocated once: 2 per connection slot, slot s direction d
/// at index 2s+d. Never moved while the ring may use it.
struct Arena {
    mem: Box<[u8]>,
    buffer: usize,
}

impl Arena {
    /// The first `len` bytes of buffer `index` (what a receive filled).
    fn slice(&self, index: usize, len: usize) -> &[u8] {
        &self.mem[index * self.buffer..][..len.min(self.buffer)]
    }

    fn ptr(&mut self, index: usize, at: usize) -> *mut u8 {
        debug_assert!(at <= self.buffer);
        // SAFETY: index < 2 × MAX_CONNS and at ≤ buffer keep this inside mem.
        unsafe { self.mem.as_mut_ptr().add(index * self.buffer + at) }
    }
}

struct Worker {
    ring: IoUring,
    io: UringIo,
    arena: Arena,
    conns: Vec<Option<Conn>>,
    jobs: mpsc::Receiver<Job>,
    closed: bool,
    wake_fd: RawFd,
    wake_buf: Box<u64>,
    label: String,
}

impl Worker {
    fn new(
        io: UringIo,
        buffer: usize,
        jobs: mpsc::Receiver<Job>,
        wake_fd: RawFd,
        label: String,
    ) -> io::Result<Worker> {
        // One thread submits and reaps: completions' task work runs when
        // it asks for them (DEFER_TASKRUN), not by interrupting it.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(RING_ENTRIES)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("io_uring_setup with SINGLE_ISSUER|DEFER_TASKRUN (Linux 6.1+): {e}"),
                )
            })?;
        let mut arena = Arena {
            mem: vec![0u8; 2 * MAX_CONNS * buffer].into_boxed_slice(),
            buffer,
        };
        if io.registered() {
            let iovecs: Vec<libc::iovec> = (0..2 * MAX_CONNS)
                .map(|i| libc::iovec {
                    iov_base: arena.ptr(i, 0).cast(),
                    iov_len: buffer,
                })
                .collect();
            // SAFETY: the arena lives as long as the ring (both are the worker's)
            // and is never reallocated.
            unsafe { ring.submitter().register_buffers(&iovecs) }.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("registering {} buffers of {buffer} B: {e}", iovecs.len()),
                )
            })?;
        }
        let mut w = Worker {
            ring,
            io,
            arena,
            conns: (0..MAX_CONNS).map(|_| None).collect(),
            jobs,
            closed: false,
            wake_fd,
            wake_buf: Box::new(0),
            label,
        };
        w.arm_wake()?;
        Ok(w)
    }

    fn run(&mut self) -> io::Result<()> {
        let mut cqes: VecDeque<(u64, i32, u32)> = VecDeque::new();
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                // EBUSY: the completion queue is full; reap, then submit again.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            while let Some((data, res, flags)) = cqes.pop_front() {
                if data == WAKE {
                    self.take_jobs(res)?;
                } else {
                    self.completed(data, res, flags)?;
                }
            }
            if self.closed && self.conns.iter().all(Option::is_none) {
                return Ok(());
            }
        }
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let read = opcode::Read::new(
            types::Fd(self.wake_fd),
            (&mut *self.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(WAKE);
        self.push(read)
    }

    /// The eventfd was written: start every connection handed over.
    fn take_jobs(&mut self, res: i32) -> io::Result<()> {
        if res < 0 && res != -libc::EINTR {
            return Err(io::Error::from_raw_os_error(-res));
        }
        loop {
            match self.jobs.try_recv() {
                Ok(job) => self.start(job)?,
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.closed = true;
                    return Ok(());
                }
            }
        }
        self.arm_wake()
    }

    fn start(&mut self, job: Job) -> io::Result<()> {
        let Some(slot) = self.conns.iter().position(Option::is_none) else {
            let e = io::Error::other(format!(
                "all {MAX_CONNS} io_uring connection slots are in use"
            ));
            let _ = job.reply.send(Err((Copied::default(), e)));
            return Ok(());
        };
        // io_uring polls for readiness itself; blocking sockets are what it expects.
        for s in [&job.down, &job.up] {
            if let Err(e) = s.set_nonblocking(false) {
                let _ = job.reply.send(Err((Copied::default(), e)));
                return Ok(());
            }
        }
        self.conns[slot] = Some(Conn {
            socks: [job.down, job.up],
            ways: [OneWay::new(), OneWay::new()],
            inflight: 0,
            error: None,
            what: job.what,
            tls: job.tls,
            reply: Some(job.reply),
        });
        for dir in 0..2 {
            let conn = self.conns[slot].as_mut().expect("just filled");
            // TLS: plaintext that came with the handshake, or records rustls
            // still holds, go first.
            let next = match conn.tls.as_mut().map(|t| t.pending(dir)) {
                None => Next::Recv,
                Some(Ok(done)) => conn.ways[dir].complete(done),
                Some(Err(e)) => {
                    let done = conn.fail(e);
                    conn.ways[dir].complete(done)
                }
            };
            self.act(slot, dir, next)?;
        }
        Ok(())
    }

    fn completed(&mut self, data: u64, res: i32, flags: u32) -> io::Result<()> {
        let (slot, dir, op) = ((data >> 8) as usize, ((data >> 4) & 1) as usize, data & 0xf);
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return Err(io::Error::other(format!(
                "a completion for connection slot {slot}, which is free"
            )));
        };
        conn.inflight = conn.inflight.saturating_sub(1);
        let done = if cqueue::notif(flags) {
            Done::Notif {
                copied: (res as u32) & IORING_NOTIF_USAGE_ZC_COPIED != 0,
            }
        } else if op == OP_RECV {
            match conn.tls.as_mut() {
                Some(t) if res >= 0 => {
                    let input = self.arena.slice(2 * slot + dir, res as usize);
                    match t.received(dir, input, res == 0) {
                        Ok(done) => done,
                        Err(e) => conn.fail(e),
                    }
                }
                _ => Done::Recv(res),
            }
        } else {
            let notif_follows = cqueue::more(flags);
            conn.inflight += u32::from(notif_follows);
            Done::Send { res, notif_follows }
        };
        let next = conn.ways[dir].complete(done);
        self.act(slot, dir, next)?;
        if self.conns[slot].as_ref().is_some_and(Conn::finished) {
            self.finish(slot);
        }
        Ok(())
    }

    /// Carries out `next` for direction `dir` of the connection in `slot`.
    fn act(&mut self, slot: usize, dir: usize, next: Next) -> io::Result<()> {
        let index = 2 * slot + dir;
        let io = self.io;
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        let (from, to) = (conn.socks[dir].as_raw_fd(), conn.socks[1 - dir].as_raw_fd());
        let tag = ((slot as u64) << 8) | ((dir as u64) << 4);
        let entry = match next {
            Next::Recv => {
                let (buf, len) = (self.arena.ptr(index, 0), self.arena.buffer as u32);
                match io {
                    UringIo::Plain => opcode::Recv::new(types::Fd(from), buf, len).build(),
                    UringIo::Fixed | UringIo::ZeroCopy => {
                        opcode::ReadFixed::new(types::Fd(from), buf, len, index as u16).build()
                    }
                }
                .user_data(tag | OP_RECV)
            }
            Next::Send { at, len } => {
                let buf = match &conn.tls {
                    // SAFETY: at + len ≤ out[dir].len(), which stays as it is until this send completes.
                    Some(t) => unsafe { t.out[dir].as_ptr().add(at) },
                    None => self.arena.ptr(index, at).cast_const(),
                };
                let len = len as u32;
                // MSG_WAITALL: the kernel retries a short send itself.
                let flags = libc::MSG_NOSIGNAL | libc::MSG_WAITALL;
                match io {
                    UringIo::Plain => opcode::Send::new(types::Fd(to), buf, len)
                        .flags(flags)
                        .build(),
                    UringIo::Fixed => {
                        opcode::WriteFixed::new(types::Fd(to), buf, len, index as u16).build()
                    }
                    UringIo::ZeroCopy => opcode::SendZc::new(types::Fd(to), buf, len)
                        .buf_index(Some(index as u16))
                        .flags(flags)
                        .zc_flags(IORING_SEND_ZC_REPORT_USAGE)
                        .build(),
                }
                .user_data(tag | OP_SEND)
            }
            Next::Wait => return Ok(()),
            Next::ShutdownWrite => {
                // Once per direction: a plain syscall is cheaper than a round trip through the ring.
                let _ = conn.socks[1 - dir].shutdown(Shutdown::Write);
                return Ok(());
            }
            Next::Fail(errno) => {
                conn.error
                    .get_or_insert_with(|| io::Error::from_raw_os_error(errno));
                // Wakes the other direction's pending receive (it reads EOF)
                // and fails its pending send, so the connection ends.
                for s in &conn.socks {
                    let _ = s.shutdown(Shutdown::Both);
                }
                return Ok(());
            }
        };
        conn.inflight += 1;
        self.push(entry)
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every buffer an entry points at (the arena, wake_buf)
            // lives as long as the ring and stays put until its completion.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn finish(&mut self, slot: usize) {
        let Some(mut conn) = self.conns[slot].take() else {
            return;
        };
        let copied = conn.copied();
        let (notifs, copied_notifs) = conn
            .ways
            .iter()
            .fold((0, 0), |(n, c), w| (n + w.notifs, c + w.notifs_copied));
        if notifs > 0 {
            eprintln!(
                "relay {}: {} send-zc notifications={notifs} copied-by-kernel={copied_notifs}",
                self.label, conn.what
            );
        }
        let outcome = match conn.error.take() {
            Some(e) => Err((copied, e)),
            None => Ok(copied),
        };
        if let Some(reply) = conn.reply.take() {
            let _ = reply.send(outcome);
        }
    }

    /// The ring failed: every connection ends with that error.
    fn fail_all(&mut self, e: &io::Error) {
        for conn in self.conns.iter_mut().filter_map(Option::take) {
            let copied = conn.copied();
            if let Some(reply) = conn.reply {
                let _ = reply.send(Err((copied, io::Error::new(e.kind(), e.to_string()))));
            }
        }
    }
}
