//! Mode `splice`: each direction moves bytes socket → pipe → socket with
//! splice(2), so they never enter user space; one blocking thread per
//! direction (blocking sockets need no readiness loop).

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::serve::Copied;

/// Relays both directions until both ends close; on an error the bytes
/// moved so far come with it.
pub fn relay(
    down: TcpStream,
    up: TcpStream,
    pipe_size: usize,
) -> Result<Copied, (Copied, io::Error)> {
    let zero = |e| (Copied::default(), e);
    down.set_nonblocking(false).map_err(zero)?;
    up.set_nonblocking(false).map_err(zero)?;
    let (down2, up2) = (
        down.try_clone().map_err(zero)?,
        up.try_clone().map_err(zero)?,
    );
    let up_bytes = Arc::new(AtomicU64::new(0));
    let counter = up_bytes.clone();
    let upward = std::thread::Builder::new()
        .name("splice-up".into())
        .spawn(move || {
            let r = one_way(&down2, &up2, pipe_size, &counter);
            if r.is_err() {
                // Unblocks the other direction's splice.
                let _ = down2.shutdown(Shutdown::Both);
                let _ = up2.shutdown(Shutdown::Both);
            }
            r
        })
        .map_err(zero)?;
    let down_bytes = AtomicU64::new(0);
    let downward = one_way(&up, &down, pipe_size, &down_bytes);
    if downward.is_err() {
        let _ = down.shutdown(Shutdown::Both);
        let _ = up.shutdown(Shutdown::Both);
    }
    let upward = upward
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the splice thread panicked")));
    let copied = Copied {
        up: up_bytes.load(Ordering::Relaxed),
        down: down_bytes.load(Ordering::Relaxed),
    };
    match upward.and(downward) {
        Ok(()) => Ok(copied),
        Err(e) => Err((copied, e)),
    }
}

/// `from` → pipe → `to` until EOF on `from`, then half-closes `to`.
fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    pipe_size: usize,
    moved: &AtomicU64,
) -> io::Result<()> {
    let (r, w) = pipe()?;
    // Best effort: a bigger pipe means fewer splices; the default is 64 KiB.
    // SAFETY: plain fcntl on a pipe fd we own.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, pipe_size as libc::c_int) };
    loop {
        let n = splice(from.as_raw_fd(), w.as_raw_fd(), pipe_size)?;
        if n == 0 {
            break;
        }
        let mut left = n;
        while left > 0 {
            let m = splice(r.as_raw_fd(), to.as_raw_fd(), left)?;
            if m == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "splice to the socket moved nothing",
                ));
            }
            left -= m;
        }
        moved.fetch_add(n as u64, Ordering::Relaxed);
    }
    to.shutdown(Shutdown::Write)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// One splice(2) of up to `len` bytes, retried on EINTR.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: plain syscall on descriptors the caller keeps open; null offsets (sockets and pipes).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
