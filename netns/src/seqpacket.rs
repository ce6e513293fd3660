//! A Unix `SOCK_SEQPACKET` socket that carries file descriptors, for Istio's
//! ZDS hand-over: the CNI agent passes each pod's netns fd to the node proxy
//! as `SCM_RIGHTS` ancillary data.
//!
//! SEQPACKET rather than a stream because every ZDS message is one packet:
//! the kernel keeps message boundaries, so there is no framing to get wrong,
//! and an fd arrives with exactly the message it belongs to.
//!
//! Async through tokio's `AsyncFd`; std and tokio have no SEQPACKET type.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// At most this many fds are accepted with one packet; more are closed
/// and reported, never leaked.
const MAX_FDS: usize = 4;

/// One received packet.
#[derive(Debug)]
pub struct Packet {
    pub data: Vec<u8>,
    /// Descriptors that came with it, now owned by the receiver.
    pub fds: Vec<OwnedFd>,
    /// The packet was longer than the receive buffer (the rest is lost).
    pub truncated: bool,
    /// More descriptors came than fit (the extra ones were closed by the kernel).
    pub fds_truncated: bool,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd moves into the AsyncFd, so it stays open and the
    // same descriptor for as long as it is registered.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

fn seqpacket_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: fd was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_un(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // One byte is kept for the terminating NUL.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "unix socket path {} must be 1 to {} bytes long",
                path.display(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// A listening SEQPACKET socket.
pub struct SeqpacketListener {
    fd: AsyncFd<OwnedFd>,
}

/// Mode of the socket files this crate binds: only the owner may connect.
/// The ZDS and plugin sockets take control input (pods to capture), so no
/// other local user may reach them; the node proxy, the plugin and the
/// agent all run as root.
pub const SOCKET_MODE: libc::mode_t = 0o600;

/// Sets the mode the socket file will get at `bind`. On Linux a unix
/// socket's file takes its mode from the socket's inode (less the umask),
/// so setting it before `bind` leaves no moment in which another user could
/// connect, as a `chmod` after `bind` would.
fn restrict_before_bind(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fchmod(2) on a socket we own.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), SOCKET_MODE) }).map(drop)
}

/// A listening unix stream socket at `path` that only its owner may connect
/// to (see [`SOCKET_MODE`]), replacing a stale socket file left by an
/// earlier run. Non-blocking, for `tokio::net::UnixListener::from_std`.
pub fn owner_only_stream_listener(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    restrict_before_bind(sock.as_fd())?;
    remove_stale_socket(path)?;
    sock.bind(&socket2::SockAddr::unix(path)?)?;
    sock.listen(128)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path)
        }
        _ => Ok(()),
    }
}

impl SeqpacketListener {
    /// Binds `path`, replacing a stale socket file left by an earlier run;
    /// only the owner may connect (see [`SOCKET_MODE`]).
    /// Must be called inside a tokio runtime.
    pub fn bind(path: &Path) -> io::Result<SeqpacketListener> {
        Self::bind_with_mode(path, None)
    }

    /// Like [`bind`](Self::bind), and gives the socket file `mode` before it
    /// listens, so no one else can connect in between (control sockets: 0o600).
    pub fn bind_private(path: &Path, mode: u32) -> io::Result<SeqpacketListener> {
        Self::bind_with_mode(path, Some(mode))
    }

    fn bind_with_mode(path: &Path, mode: Option<u32>) -> io::Result<SeqpacketListener> {
        let (addr, len) = sockaddr_un(path)?;
        let fd = seqpacket_socket()?;
        restrict_before_bind(fd.as_fd())?;
        remove_stale_socket(path)?;
        // SAFETY: addr is a valid sockaddr_un of length len.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                len,
            )
        })?;
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        // SAFETY: listen(2) on a socket we own.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
        Ok(SeqpacketListener { fd: register(fd)? })
    }

    /// Accepts one connection.
    pub async fn accept(&self) -> io::Result<SeqpacketConn> {
        let fd = self
            .fd
            .async_io(Interest::READABLE, |fd| {
                // SAFETY: accept4 with null address pointers is allowed.
                cvt(unsafe {
                    libc::accept4(
                        fd.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                })
            })
            .await?;
        // SAFETY: accept4 returned a new fd that nothing else owns.
        SeqpacketConn::from_owned(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// A connected SEQPACKET socket.
#[derive(Debug)]
pub struct SeqpacketConn {
    fd: AsyncFd<OwnedFd>,
}

impl SeqpacketConn {
    fn from_owned(fd: OwnedFd) -> io::Result<SeqpacketConn> {
        Ok(SeqpacketConn { fd: register(fd)? })
    }

    /// Connects to a listening socket at `path`. A Unix connect completes at
    /// once or fails (EAGAIN when the listener's backlog is full).
    pub fn connect(path: &Path) -> io::Result<SeqpacketConn> {
        let (addr, len) = sockaddr_un(path)?;
        let fd = seqpacket_socket()?;
        // SAFETY: addr is a valid sockaddr_un of length len.
        cvt(unsafe {
            libc::connect(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                len,
            )
        })?;
        SeqpacketConn::from_owned(fd)
    }

    /// A connected pair, for tests.
    pub fn pair() -> io::Result<(SeqpacketConn, SeqpacketConn)> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: fds has room for the two descriptors socketpair writes.
        cvt(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        })?;
        // SAFETY: both fds were just created and are owned by no one else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((SeqpacketConn::from_owned(a)?, SeqpacketConn::from_owned(b)?))
    }

    /// Sends one packet, with `fd` as SCM_RIGHTS when given.
    pub async fn send(&self, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let raw = fd.map(|f| f.as_raw_fd());
        self.fd
            .async_io(Interest::WRITABLE, |sock| {
                send_once(sock.as_raw_fd(), data, raw)
            })
            .await
    }

    /// Receives one packet of at most `max` bytes. `Ok(None)` when the peer
    /// has closed the connection.
    pub async fn recv(&self, max: usize) -> io::Result<Option<Packet>> {
        self.fd
            .async_io(Interest::READABLE, |sock| recv_once(sock.as_raw_fd(), max))
            .await
    }
}

impl AsFd for SeqpacketConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

/// Room for a control message of `n` fds, as u64s so it is aligned for cmsghdr.
fn cmsg_buf(n: usize) -> Vec<u64> {
    // SAFETY: CMSG_SPACE only computes a size.
    let bytes = unsafe { libc::CMSG_SPACE((n * mem::size_of::<RawFd>()) as u32) } as usize;
    vec![0u64; bytes.div_ceil(8)]
}

fn send_once(sock: RawFd, data: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let mut control = cmsg_buf(1);
    if let Some(fd) = fd {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        // SAFETY: as above, a size computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(mem::size_of::<RawFd>() as u32) } as usize;
        // SAFETY: msg_control points at a buffer of msg_controllen bytes,
        // so the first header fits and its data has room for one fd.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
        }
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {n} of {} bytes of one packet", data.len()),
        ));
    }
    Ok(())
}

fn recv_once(sock: RawFd, max: usize) -> io::Result<Option<Packet>> {
    let mut data = vec![0u8; max];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = cmsg_buf(MAX_FDS);
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = control.len() * 8;
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // Take ownership of every fd first, so none leaks whatever happens next.
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with valid headers up to
    // msg_controllen; CMSG_FIRSTHDR/NXTHDR walk them and stop at the end.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = payload / mem::size_of::<RawFd>();
                let first = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(first.add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    data.truncate(n as usize);
    Ok(Some(Packet {
        data,
        fds,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn packets_keep_boundaries_and_carry_an_fd() {
        rt().block_on(async {
            let (a, b) = SeqpacketConn::pair().unwrap();
            let mut file = tempfile_with(b"netns stand-in");
            a.send(b"first", Some(file.as_fd())).await.unwrap();
            a.send(b"second", None).await.unwrap();
            let p = b.recv(64).await.unwrap().unwrap();
            assert_eq!(p.data, b"first");
            assert_eq!(p.fds.len(), 1);
            assert!(!p.truncated && !p.fds_truncated);
            // The received fd is the same open file: its offset moves with ours.
            let mut got = std::fs::File::from(p.fds.into_iter().next().unwrap());
            got.seek(std::io::SeekFrom::Start(0)).unwrap();
            let mut s = String::new();
            got.read_to_string(&mut s).unwrap();
            assert_eq!(s, "netns stand-in");
            assert_eq!(file.stream_position().unwrap(), s.len() as u64);
            let p = b.recv(64).await.unwrap().unwrap();
            assert_eq!(p.data, b"second");
            assert!(p.fds.is_empty());
            drop(a);
            assert!(
                b.recv(64).await.unwrap().is_none(),
                "closed peer reads as None"
            );
        });
    }

    #[test]
    fn an_oversized_packet_is_reported_truncated() {
        rt().block_on(async {
            let (a, b) = SeqpacketConn::pair().unwrap();
            a.send(&[7u8; 100], None).await.unwrap();
            let p = b.recv(10).await.unwrap().unwrap();
            assert_eq!(p.data.len(), 10);
            assert!(p.truncated);
        });
    }

    #[test]
    fn listener_accepts_and_replaces_a_stale_socket() {
        rt().block_on(async {
            let dir =
                std::env::temp_dir().join(format!("trellis-seqpacket-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("s.sock");
            drop(SeqpacketListener::bind(&path).unwrap());
            // The first listener's file is still there: bind again over it.
            let l = SeqpacketListener::bind(&path).unwrap();
            let c = SeqpacketConn::connect(&path).unwrap();
            let s = l.accept().await.unwrap();
            c.send(b"hello", None).await.unwrap();
            assert_eq!(s.recv(16).await.unwrap().unwrap().data, b"hello");
            let too_long = dir.join("x".repeat(200));
            assert!(SeqpacketConn::connect(&too_long).is_err());
            std::fs::remove_dir_all(&dir).unwrap();
        });
    }

    fn tempfile_with(content: &[u8]) -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "trellis-seqpacket-fd-{}-{}",
            std::process::id(),
            content.len()
        ));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(content).unwrap();
        f
    }
}
