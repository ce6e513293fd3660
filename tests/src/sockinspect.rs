//! Reads the TCP sockets of a running process: each one's addresses and
//! socket options, as the kernel holds them. Tests use it to check what a
//! real proxy process did to its sockets (TCP_NODELAY on every data-path
//! socket), which no client-side probe can see.
//!
//! How: `pidfd_getfd(2)` duplicates each of the process's socket fds into
//! this process (root, or ptrace rights over it); `getsockopt` and
//! `getsockname` on the duplicate read the shared socket. The socket keeps
//! its own network namespace, so this works across pods.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use socket2::SockRef;

/// One TCP socket of the inspected process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSock {
    /// The fd number in the inspected process.
    pub fd: RawFd,
    pub local: SocketAddr,
    /// None for a listener or an unconnected socket.
    pub peer: Option<SocketAddr>,
    pub listening: bool,
    pub nodelay: bool,
}

impl std::fmt::Display for TcpSock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.peer {
            Some(p) => write!(f, "fd {} {} -> {}", self.fd, self.local, p)?,
            None if self.listening => write!(f, "fd {} listening on {}", self.fd, self.local)?,
            None => write!(f, "fd {} {} (unconnected)", self.fd, self.local)?,
        }
        write!(f, " nodelay={}", self.nodelay)
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; a non-negative result is
    // a new fd that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pidfd_getfd(pidfd: &OwnedFd, target: RawFd) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: as above; the kernel checks ptrace access to the target.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Every TCP socket (IPv4 and IPv6) that process `pid` holds open now.
/// Fds that close while they are read are skipped.
pub fn tcp_sockets(pid: u32) -> io::Result<Vec<TcpSock>> {
    let pidfd =
        pidfd_open(pid).map_err(|e| io::Error::new(e.kind(), format!("pidfd_open({pid}): {e}")))?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // closed meanwhile
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let dup = match pidfd_getfd(&pidfd, fd) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("pidfd_getfd({pid}, fd {fd}): {e}"),
                ))
            }
        };
        let sock = SockRef::from(&dup);
        let is_tcp = sock.r#type().ok() == Some(socket2::Type::STREAM)
            && sock.protocol().ok().flatten() == Some(socket2::Protocol::TCP);
        if !is_tcp {
            continue;
        }
        let Some(local) = sock.local_addr()?.as_socket() else {
            continue;
        };
        out.push(TcpSock {
            fd,
            local,
            peer: sock.peer_addr().ok().and_then(|a| a.as_socket()),
            listening: sock.is_listener()?,
            nodelay: sock.tcp_nodelay()?,
        });
    }
    out.sort_by_key(|s| s.fd);
    Ok(out)
}

/// All of `socks`, one per line, for assertion messages.
pub fn describe(socks: &[TcpSock]) -> String {
    socks
        .iter()
        .map(|s| format!("  {s}\n"))
        .collect::<Vec<_>>()
        .concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_sockets_and_their_nodelay() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(addr).unwrap();
        let (a, _) = l.accept().unwrap();
        c.set_nodelay(true).unwrap();
        a.set_nodelay(false).unwrap();
        let socks = tcp_sockets(std::process::id()).unwrap();
        let find = |local, peer| {
            socks
                .iter()
                .find(|s| s.local == local && s.peer == peer)
                .unwrap_or_else(|| panic!("{local} -> {peer:?} missing:\n{}", describe(&socks)))
        };
        let listener = find(addr, None);
        assert!(listener.listening);
        let client = find(c.local_addr().unwrap(), Some(addr));
        assert!(client.nodelay && !client.listening);
        let accepted = find(addr, Some(c.local_addr().unwrap()));
        assert!(!accepted.nodelay && !accepted.listening);
    }

    #[test]
    fn a_missing_process_is_an_error_naming_it() {
        // PIDs above pid_max never exist.
        let e = tcp_sockets(u32::MAX / 2).unwrap_err();
        assert!(e.to_string().contains("pidfd_open"), "{e}");
    }
}
